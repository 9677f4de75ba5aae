"""Stage 2 core (paper §3.2): global fusion over both faces' codes, code selector, quantization.

Both faces' encoder features are flattened and concatenated, Z = [Z^a; Z^b] (B, 2L, d)
with L = m*n latent positions. A stack of unified self-attention layers mixes all 2L
tokens; an MLP code selector gives logits P over the N codebook entries; soft
quantization returns Z_q = softmax(P) Q. The halves of Z_q are the two swaps.

Symmetry (exact, not learned): nothing in the module tells the halves apart except
"same image" versus "other image". Both halves get the same 2D position code, and each
attention head adds a learned bias that depends only on whether query and key come from
the same image (``position="absolute"``) or on that and the 2D offset between the query's
and the key's grid cells (``position="relative"``). Swapping the inputs therefore permutes the tokens and the outputs
identically: f(a, b) = (x, y)  =>  f(b, a) = (y, x), up to float rounding.

Output convention: the half at the *target's* token positions is the swap onto that
target. For inputs (a, b): tokens at b's positions -> I_ab (identity of a, attributes of
b); tokens at a's positions -> I_ba. The residual stream at b's positions starts from
b's own codes, which carry b's layout, pose and expression.

Ablations (paper Table 3) are settings of ``FusionConfig``:
    attention="cross"   w/o S: each token attends only to the other face's tokens
    quantize="none"     w/o C: no codebook or selector; a linear map feeds the decoder
    quantize="hard"     w/o Q1: argmax code (straight-through gradient in training)
    quantize="gumbel"   w/o Q2: Gumbel-softmax sample (noise-free softmax at eval)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class FusionConfig:
    dim: int = 256  # code dimension d (the stage-1 codebook's)
    grid: int = 16  # latent side m = n
    num_codes: int = 1024  # codebook size N
    layers: int = 6  # the paper's 6-layer Transformer
    heads: int = 8
    ffn_mult: int = 4
    selector_hidden: int = 1024
    attention: Literal["unified", "cross"] = "unified"
    quantize: Literal["soft", "hard", "gumbel", "none"] = "soft"
    gumbel_tau: float = 1.0
    # NOTE: the paper does not say how the fusion knows where a code sits. "absolute": a
    # learned position code (shared by both faces) added to the tokens, plus a same/other-
    # image bias per head. "relative": a learned attention bias per head indexed by
    # (same/other image, dy, dx), initialised ALiBi-style (-slope_h * distance, slopes
    # 1, 1/2, 1/4, ... over heads), so that from the first step some heads look at the
    # same facial part of the other face and others look globally; identity then moves
    # part by part (see the stage-2 study, docs/codeswap-cpu-study.md). Checkpoints from before this setting
    # load as "absolute".
    position: Literal["absolute", "relative"] = "relative"
    # Init std of the learned position code added to the tokens (both schemes have it).
    # NOTE: 0.02 is the ViT/GPT habit; encoder tokens here have a per-dimension std near 1,
    # so at 0.02 the code is invisible to attention for thousands of steps. A short run
    # (the CPU recipe) starts it at the tokens' scale instead.
    pos_std: float = 0.02

    def __post_init__(self) -> None:
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} must be divisible by heads {self.heads}")
        if self.attention not in ("unified", "cross"):
            raise ValueError(f"attention must be 'unified' or 'cross', got {self.attention!r}")
        if self.position not in ("absolute", "relative"):
            raise ValueError(f"position must be 'absolute' or 'relative', got {self.position!r}")
        if self.quantize not in ("soft", "hard", "gumbel", "none"):
            raise ValueError(f"quantize must be soft, hard, gumbel or none, got {self.quantize!r}")

    @property
    def tokens(self) -> int:  # L = m * n per image
        return self.grid * self.grid


class FusionOutput(NamedTuple):
    codes: torch.Tensor  # (B, 2L, d) quantized codes, [a positions; b positions]
    logits: torch.Tensor | None  # (B, 2L, N) code-selector logits (None when quantize="none")
    hidden: torch.Tensor  # (B, 2L, d) fusion output before the selector


def relative_index(grid: int) -> torch.Tensor:
    """(L, L) index of the 2D offset (dy, dx) between grid cells q and k, in [0, (2g-1)**2)."""
    ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()  # (L,) each, row-major like the tokens
    dy = ys[:, None] - ys[None, :] + grid - 1  # (L, L) in [0, 2g-2]
    dx = xs[:, None] - xs[None, :] + grid - 1
    return dy * (2 * grid - 1) + dx


class PairAttention(nn.Module):
    """Multi-head attention over both faces' tokens with a same/other-image (and offset) bias."""

    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)  # "a linear layer projects the dimension" (§3.2)
        self.cross_only = cfg.attention == "cross"
        self.relative = cfg.position == "relative"
        if self.relative:
            g = cfg.grid
            idx = relative_index(g)
            self.register_buffer("rel_index", idx, persistent=False)  # (L, L)
            ys, xs = torch.meshgrid(torch.arange(1 - g, g), torch.arange(1 - g, g), indexing="ij")
            dist = (ys.float() ** 2 + xs.float() ** 2).sqrt().flatten()  # ((2g-1)**2,)
            slopes = 2.0 ** -torch.arange(cfg.heads, dtype=torch.float32)  # (H,) 1, 1/2, 1/4, ...
            init = -slopes[:, None, None] * dist[None, None, :]  # (H, 1, (2g-1)**2)
            # rel_bias[h, 0, o]: query and key in the same image at offset o; [h, 1, o]: other image
            self.rel_bias = nn.Parameter(init.repeat(1, 2, 1))  # (H, 2, (2g-1)**2)
        else:
            # bias[h, 0]: query and key in the same image; bias[h, 1]: in the other image
            self.bias = nn.Parameter(torch.zeros(cfg.heads, 2))

    def _mask(self, tokens: int, device, dtype) -> torch.Tensor:
        """Additive attention bias (H, 2L, 2L); -inf on same-image pairs for w/o S."""
        half = tokens // 2
        img = torch.arange(tokens, device=device) // half  # 0 for a's tokens, 1 for b's
        other = img[:, None] != img[None, :]  # (2L, 2L)
        if self.relative:
            same_b = self.rel_bias[:, 0][:, self.rel_index]  # (H, L, L)
            other_b = self.rel_bias[:, 1][:, self.rel_index]  # (H, L, L)
            mask = torch.cat([torch.cat([same_b, other_b], -1), torch.cat([other_b, same_b], -1)], -2).to(dtype)
        else:
            mask = self.bias.to(dtype)[:, other.long()]  # (H, 2L, 2L)
        if self.cross_only:  # w/o S: a token may not attend to its own image
            mask = mask.masked_fill(~other, float("-inf"))
        return mask

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, t, d = x.shape  # (B, 2L, d)
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (B, H, 2L, dh)
        mask = self._mask(t, x.device, q.dtype)  # (H, 2L, 2L), broadcast over B
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, 2L, dh)
        return self.proj(y.transpose(1, 2).reshape(b, t, d)), None

    @torch.no_grad()
    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        """Explicit attention probabilities (B, H, 2L, 2L), for Figure 9-style maps."""
        b, t, d = x.shape
        q, k, _ = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        logits = q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5 + self._mask(t, x.device, q.dtype)
        return logits.softmax(-1)  # (B, H, 2L, 2L)


class FusionBlock(nn.Module):
    """Pre-norm block: attention + projection, then FFN, each with a residual."""

    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim)
        self.attn = PairAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.dim)
        self.ffn = nn.Sequential(
            nn.Linear(cfg.dim, cfg.ffn_mult * cfg.dim), nn.GELU(), nn.Linear(cfg.ffn_mult * cfg.dim, cfg.dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))[0]  # (B, 2L, d)
        return x + self.ffn(self.norm2(x))


def quantize_codes(logits: torch.Tensor, codebook: torch.Tensor, mode: str, training: bool,
                   tau: float = 1.0) -> torch.Tensor:
    """Codes from selector logits (B, T, N) and codebook (N, d) -> (B, T, d).

    soft:   softmax(P) Q                                (paper Eq. 8)
    hard:   one_hot(argmax P) Q; straight-through softmax gradient while training
    gumbel: gumbel_softmax(P, tau) Q while training; softmax(P / tau) Q at eval
    """
    if mode == "soft":
        weights = logits.softmax(-1)
    elif mode == "hard":
        hard = F.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)
        if training:
            soft = logits.softmax(-1)
            weights = hard + soft - soft.detach()  # value of `hard`, gradient of `soft`
        else:
            weights = hard
    elif mode == "gumbel":
        weights = F.gumbel_softmax(logits, tau=tau, hard=False, dim=-1) if training else (logits / tau).softmax(-1)
    else:
        raise ValueError(f"unknown quantize mode {mode!r}")
    return weights @ codebook.to(weights.dtype)  # (B, T, d)


class GlobalFusion(nn.Module):
    """Unified self-attention fusion + MLP code selector + quantization (paper §3.2)."""

    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.pos = nn.Parameter(torch.zeros(1, cfg.tokens, cfg.dim))  # shared by both faces
        nn.init.trunc_normal_(self.pos, std=cfg.pos_std, a=-2 * cfg.pos_std, b=2 * cfg.pos_std)
        self.blocks = nn.ModuleList(FusionBlock(cfg) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.dim)
        if cfg.quantize == "none":  # w/o C: features go to the decoder directly
            self.to_codes = nn.Linear(cfg.dim, cfg.dim)
            self.selector = None
        else:
            self.selector = nn.Sequential(
                nn.Linear(cfg.dim, cfg.selector_hidden), nn.GELU(), nn.Linear(cfg.selector_hidden, cfg.num_codes)
            )

    def forward(self, za: torch.Tensor, zb: torch.Tensor, codebook: torch.Tensor | None) -> FusionOutput:
        """za, zb: (B, L, d) flattened encoder features; codebook: (N, d) frozen entries."""
        if za.shape != zb.shape or za.shape[1:] != (self.cfg.tokens, self.cfg.dim):
            raise ValueError(f"expected two (B, {self.cfg.tokens}, {self.cfg.dim}) inputs, "
                             f"got {tuple(za.shape)} and {tuple(zb.shape)}")
        x = torch.cat([za + self.pos, zb + self.pos], dim=1)  # (B, 2L, d)
        for block in self.blocks:
            x = block(x)
        h = self.norm(x)  # (B, 2L, d)
        if self.selector is None:
            return FusionOutput(self.to_codes(h), None, h)
        if codebook is None:
            raise ValueError("a codebook (N, d) is required unless quantize='none'")
        logits = self.selector(h)  # (B, 2L, N)
        codes = quantize_codes(logits, codebook, self.cfg.quantize, self.training, self.cfg.gumbel_tau)
        return FusionOutput(codes, logits, h)

    def attention_maps(self, za: torch.Tensor, zb: torch.Tensor) -> list[torch.Tensor]:
        """Per layer, the attention probabilities (B, H, 2L, 2L) (paper Figure 9)."""
        x = torch.cat([za + self.pos, zb + self.pos], dim=1)
        maps = []
        for block in self.blocks:
            maps.append(block.attn.attention_map(block.norm1(x)))
            x = block(x)
        return maps

    @staticmethod
    def split(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 2L, d) -> (codes of I_ab, codes of I_ba): b's positions hold I_ab."""
        half = codes.shape[1] // 2
        return codes[:, half:], codes[:, :half]
