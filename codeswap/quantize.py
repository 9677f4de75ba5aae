"""Nearest-code vector quantization with straight-through gradients (paper §3.1, Eq. 1 and 4)."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from codeswap.config import QuantizerConfig


class QuantizerOutput(NamedTuple):
    """What :class:`VectorQuantizer` returns.

    z_q: (B, D, h, w) quantized features; gradients pass straight through to ``z``.
    loss: codebook_loss + beta * commitment_loss (Eq. 4), a scalar.
    codebook_loss: mean ||sg[z] - z_q||^2, trains the codes.
    commitment_loss: mean ||z - sg[z_q]||^2 (unweighted), trains the encoder.
    indices: (B, h, w) int64 code index per latent cell.
    perplexity: exp(entropy) of the batch's code usage (1 = one code, num_codes = uniform).
    counts: (num_codes,) how often each code was chosen in this batch.
    """

    z_q: Tensor
    loss: Tensor
    codebook_loss: Tensor
    commitment_loss: Tensor
    indices: Tensor
    perplexity: Tensor
    counts: Tensor


class VectorQuantizer(nn.Module):
    """A learnable codebook ``embedding.weight`` (num_codes, code_dim); each latent cell is
    replaced by its nearest code in Euclidean distance.

    The distance and argmin run in float32 even under autocast: bf16 rounding would pick
    different codes for near ties and make training depend on the precision.
    """

    def __init__(self, cfg: QuantizerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.num_codes, cfg.code_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / cfg.num_codes, 1.0 / cfg.num_codes)

    def nearest(self, z: Tensor) -> Tensor:
        """Indices (B, h, w) of the nearest code for each cell of z (B, D, h, w)."""
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d).float()  # (B*h*w, D)
        codes = self.embedding.weight.float()  # (N, D)
        # ||z||^2 is the same for every code, so it does not change the argmin
        dist = codes.pow(2).sum(1)[None, :] - 2.0 * flat @ codes.t()  # (B*h*w, N)
        return dist.argmin(dim=1).view(b, h, w)  # (B, h, w)

    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantize z (B, D, h, w); see :class:`QuantizerOutput`."""
        with torch.autocast(device_type="cuda" if z.is_cuda else "cpu", enabled=False):
            z32 = z.float()
            indices = self.nearest(z32)  # (B, h, w)
            z_q = self.lookup(indices)  # (B, D, h, w) float32
            codebook_loss = F.mse_loss(z_q, z32.detach())
            commitment_loss = F.mse_loss(z32, z_q.detach())
            loss = codebook_loss + self.cfg.beta * commitment_loss
            # straight-through: forward value z_q, gradient d z_q / d z = identity
            z_st = z32 + (z_q - z32).detach()
            flat_idx = indices.flatten()  # (B*h*w,)
            # scatter_add rather than bincount: it has meta/compile kernels (no data-dependent shape)
            counts = flat_idx.new_zeros(self.cfg.num_codes).scatter_add_(0, flat_idx, torch.ones_like(flat_idx))
            probs = counts.float() / counts.sum().clamp_min(1)
            perplexity = torch.exp(-(probs * torch.log(probs.clamp_min(1e-10))).sum())
        return QuantizerOutput(z_st.to(z.dtype), loss, codebook_loss, commitment_loss, indices, perplexity, counts)

    def lookup(self, indices: Tensor) -> Tensor:
        """Codes for indices (B, h, w) as a feature map (B, D, h, w): the inverse of :meth:`nearest`."""
        z_q = self.embedding(indices)  # (B, h, w, D)
        return z_q.permute(0, 3, 1, 2).contiguous()  # (B, D, h, w)
