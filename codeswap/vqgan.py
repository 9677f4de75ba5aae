"""The stage-1 autoencoder (paper §3.1): encoder E, codebook Q, decoder D, as in VQGAN.

Images are (B, 3, H, W) in [-1, 1]. Parameter names follow taming-transformers' layout
(``encoder.down.{level}.block.{i}``, ``mid.block_1``, ``norm_out``, ``conv_out``) so that
porting a checkpoint is a key-by-key shape check.

The structure comes from the config: ``paper`` and ``codeformer`` build VQGAN's layout as
CodeFormer uses it for 512 px faces (the resampling keeps width, the next level's first
residual block changes it, attention after every residual block at the latent grid, a
middle block of ResBlock-attention-ResBlock); ``fast`` builds a narrower schedule. Speed
choices that leave the maths unchanged: attention through ``scaled_dot_product_attention``
(fused kernels on GPU), ops that are channels-last and bf16 friendly, and residual blocks
of the first ``checkpoint_levels`` levels that can recompute their activations in backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from codeswap.config import AutoencoderConfig
from codeswap.quantize import QuantizerOutput, VectorQuantizer


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ResBlock(nn.Module):
    """norm-SiLU-conv3x3 twice, plus a 1x1 skip when the width changes."""

    def __init__(self, in_ch: int, out_ch: int, groups: int) -> None:
        super().__init__()
        self.norm1 = _norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = _norm(out_ch, groups)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.use_checkpoint = False  # set by the owner from the config

    def _forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h

    def forward(self, x: Tensor) -> Tensor:
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)


class AttnBlock(nn.Module):
    """Multi-head self-attention over the H*W positions of a feature map, with a residual.

    One 1x1 convolution gives q, k and v together (taming/CodeFormer use three; the
    parameter count is the same). ``fused`` (default) runs ``scaled_dot_product_attention``
    (flash / memory-efficient kernels on GPU); False runs the plain softmax(q k^T) v, the
    same maths, kept to measure what fusing gains (:func:`set_fused_attention`).
    """

    def __init__(self, channels: int, heads: int, groups: int) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention width {channels} not divisible by {heads} heads")
        self.heads = heads
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)
        self.fused = True

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x))  # (B, 3C, H, W)
        qkv = qkv.reshape(b, 3, self.heads, c // self.heads, h * w)  # (B, 3, nh, hs, T)
        q, k, v = qkv.permute(1, 0, 2, 4, 3).unbind(0)  # each (B, nh, T, hs)
        if self.fused:
            y = F.scaled_dot_product_attention(q, k, v)  # (B, nh, T, hs)
        else:  # the unfused reference: the full (T, T) map is materialised and kept for backward
            att = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (B, nh, T, T)
            y = att.softmax(-1) @ v  # (B, nh, T, hs)
        y = y.permute(0, 1, 3, 2).reshape(b, c, h, w)  # (B, C, H, W)
        return x + self.proj_out(y)


class Downsample(nn.Module):
    """Strided 3x3 convolution: halves H and W (and, in the narrow schedule, moves to the
    next level's width).

    ``asymmetric``: zero-pad one column right and one row below, then convolve without
    padding (taming-transformers and CodeFormer); otherwise pad one on every side. Same
    weights and output shapes; the sampling grid differs by one pixel.
    """

    def __init__(self, in_ch: int, out_ch: int, asymmetric: bool = False) -> None:
        super().__init__()
        self.asymmetric = asymmetric
        self.conv = nn.Conv2d(in_ch, out_ch, 3, stride=2, padding=0 if asymmetric else 1)

    def forward(self, x: Tensor) -> Tensor:
        if self.asymmetric:
            x = F.pad(x, (0, 1, 0, 1))  # (B, C, H+1, W+1)
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest 2x upsampling then a 3x3 convolution: doubles H and W.

    In the narrow schedule (``resample_changes_width``) the convolution already maps to the
    next level's width, the cheapest place to change it; VQGAN keeps the width here and
    changes it in the next residual block.
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution level: residual blocks, optional attention, optional resampling.

    Attention levels get one attention block after every residual block when the config's
    ``attn_every_block`` is set (taming/CodeFormer: ``attn.{i}``), else one after the last
    (``attn``).
    """

    def __init__(self, in_ch: int, out_ch: int, n_blocks: int, attn: bool, resample: nn.Module | None,
                 cfg: AutoencoderConfig, use_checkpoint: bool) -> None:
        super().__init__()
        self.block = nn.ModuleList(
            ResBlock(in_ch if i == 0 else out_ch, out_ch, cfg.norm_groups) for i in range(n_blocks))
        for blk in self.block:
            blk.use_checkpoint = use_checkpoint
        self.attn_every_block = attn and cfg.attn_every_block
        self.attn: nn.Module
        if self.attn_every_block:
            self.attn = nn.ModuleList(AttnBlock(out_ch, cfg.attn_heads, cfg.norm_groups) for _ in range(n_blocks))
        else:
            self.attn = AttnBlock(out_ch, cfg.attn_heads, cfg.norm_groups) if attn else nn.Identity()
        self.resample = resample if resample is not None else nn.Identity()

    def body(self, x: Tensor) -> Tensor:
        if self.attn_every_block:
            for blk, att in zip(self.block, self.attn):
                x = att(blk(x))
            return x
        for blk in self.block:
            x = blk(x)
        return self.attn(x)


class Middle(nn.Module):
    """ResBlock, attention, ResBlock at the latent grid."""

    def __init__(self, channels: int, cfg: AutoencoderConfig) -> None:
        super().__init__()
        self.block_1 = ResBlock(channels, channels, cfg.norm_groups)
        self.attn_1 = AttnBlock(channels, cfg.attn_heads, cfg.norm_groups)
        self.block_2 = ResBlock(channels, channels, cfg.norm_groups)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


Features = dict[int, Tensor]  # spatial side -> (B, C, side, side) feature map


class Encoder(nn.Module):
    """(B, 3, R, R) image -> (B, code_dim, R/2**(L-1), R/2**(L-1)) continuous latent z."""

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        ch = cfg.channels
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.down = nn.ModuleList()
        for lv in range(cfg.num_levels):
            last = lv == cfg.num_levels - 1
            asym = cfg.asymmetric_downsample
            if cfg.resample_changes_width:  # the level's blocks keep one width
                in_ch, down = ch[lv], None if last else Downsample(ch[lv], ch[lv + 1], asym)
            else:  # VQGAN: the level's first block changes width
                in_ch, down = ch[max(lv - 1, 0)], None if last else Downsample(ch[lv], ch[lv], asym)
            self.down.append(Level(in_ch, ch[lv], cfg.enc_blocks[lv], lv in cfg.attn_levels, down, cfg,
                                   lv < cfg.checkpoint_levels))
        self.mid = Middle(ch[-1], cfg)
        self.norm_out = _norm(ch[-1], cfg.norm_groups)
        self.conv_out = nn.Conv2d(ch[-1], cfg.quant.code_dim, 3, padding=1)

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | tuple[Tensor, Features]:
        """Features (if asked) are each level's output before downsampling, keyed by side."""
        feats: Features = {}
        h = self.conv_in(x)
        for level in self.down:
            h = level.body(h)
            if return_features:
                feats[h.shape[-1]] = h
            h = level.resample(h)
        z = self.conv_out(F.silu(self.norm_out(self.mid(h))))  # (B, code_dim, h, w)
        return (z, feats) if return_features else z


class Decoder(nn.Module):
    """(B, code_dim, h, w) quantized latent -> (B, 3, h*2**(L-1), w*2**(L-1)) image."""

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        ch = cfg.channels
        self.conv_in = nn.Conv2d(cfg.quant.code_dim, ch[-1], 3, padding=1)
        self.mid = Middle(ch[-1], cfg)
        # up[lv] runs at level lv; it is applied from the deepest level up to level 0
        self.up = nn.ModuleList()
        for lv in range(cfg.num_levels):
            if cfg.resample_changes_width:
                in_ch, up = ch[lv], Upsample(ch[lv], ch[lv - 1]) if lv > 0 else None
            else:
                in_ch, up = ch[min(lv + 1, cfg.num_levels - 1)], Upsample(ch[lv], ch[lv]) if lv > 0 else None
            self.up.append(Level(in_ch, ch[lv], cfg.dec_blocks[lv], lv in cfg.attn_levels, up, cfg,
                                 lv < cfg.checkpoint_levels))
        self.norm_out = _norm(ch[0], cfg.norm_groups)
        self.conv_out = nn.Conv2d(ch[0], cfg.in_channels, 3, padding=1)

    def forward(self, z_q: Tensor, return_features: bool = False) -> Tensor | tuple[Tensor, Features]:
        """Features (if asked) are each level's output before upsampling, keyed by side."""
        feats: Features = {}
        h = self.mid(self.conv_in(z_q))
        for level in reversed(self.up):
            h = level.body(h)
            if return_features:
                feats[h.shape[-1]] = h
            h = level.resample(h)
        x = self.conv_out(F.silu(self.norm_out(h)))  # (B, 3, H, W)
        return (x, feats) if return_features else x


class VQAutoencoder(nn.Module):
    """Encoder + codebook + decoder. ``forward(x)`` returns ``(reconstruction, QuantizerOutput)``."""

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.quantize = VectorQuantizer(cfg.quant)
        self.decoder = Decoder(cfg)

    def encode(self, x: Tensor, return_features: bool = False) -> QuantizerOutput | tuple[QuantizerOutput, Features]:
        """Image (B, 3, R, R) in [-1, 1] -> quantizer output; with ``return_features`` also the
        encoder's per-level feature maps {side: (B, C, side, side)}."""
        if return_features:
            z, feats = self.encoder(x, return_features=True)
            return self.quantize(z), feats
        return self.quantize(self.encoder(x))

    def decode(self, z_q: Tensor, return_features: bool = False) -> Tensor | tuple[Tensor, Features]:
        """Quantized latent (B, code_dim, h, w) -> image (B, 3, R, R); optionally decoder features."""
        return self.decoder(z_q, return_features=return_features)

    def decode_indices(self, indices: Tensor) -> Tensor:
        """Code indices (B, h, w) -> image (B, 3, R, R)."""
        return self.decoder(self.quantize.lookup(indices))

    def forward(self, x: Tensor) -> tuple[Tensor, QuantizerOutput]:
        q = self.encode(x)
        return self.decode(q.z_q), q

    @property
    def last_layer(self) -> Tensor:
        """The decoder's last weight, where the adaptive GAN weight compares gradient norms."""
        return self.decoder.conv_out.weight


def set_fused_attention(model: nn.Module, fused: bool) -> None:
    """Switch every attention block of ``model`` between fused SDPA and the plain maths."""
    for m in model.modules():
        if isinstance(m, AttnBlock):
            m.fused = fused
