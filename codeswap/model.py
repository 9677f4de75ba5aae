"""The whole CodeSwap network: frozen stage-1 autoencoder + stage-2 fusion + stage-3 mask.

    a, b (B, 3, R, R) in [-1, 1]
      -> shared frozen encoder -> Z^a, Z^b (B, L, d), L = latent grid squared
      -> GlobalFusion (unified self-attention, code selector, soft quantization)
      -> codes of I_ab (at b's positions) and I_ba (at a's positions)
      -> frozen decoder, both directions in one batch -> raw swaps
      -> mask generator (target's encoder features + swap's decoder features)
      -> I_ab = raw_ab * M_ab + b * (1 - M_ab), and likewise I_ba

Ablation "w/o M" is ``use_mask=False``: the raw decoder output is the result. The other
ablations live in :class:`codeswap.fusion.FusionConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
from torch import Tensor, nn

from codeswap.config import AutoencoderConfig
from codeswap.fusion import FusionConfig, FusionOutput, GlobalFusion
from codeswap.mask import MaskConfig, MaskGenerator, blend
from codeswap.variants import VARIANTS  # Table 3's ablations (and w/o M, §4.4); re-exported here
from codeswap.vqgan import VQAutoencoder


@dataclass(frozen=True)
class CodeSwapConfig:
    autoencoder: AutoencoderConfig
    fusion: FusionConfig
    use_mask: bool = True
    mask_hidden: int = 64
    # The autoencoder level (0 = full resolution) whose encoder and decoder features feed the
    # mask generator. None: the level at resolution / 8 (the 64x64 level of a 512 model, the
    # middle of the network) when the autoencoder has one, else the level nearest to it.
    # NOTE: the paper says only "middle layer features" (§3.3); checkpoints written before
    # this setting existed used resolution / 8, which None reproduces.
    mask_level: int | None = None

    def __post_init__(self) -> None:
        n = self.autoencoder.num_levels
        if self.mask_level is not None and not 0 <= self.mask_level < n:
            raise ValueError(f"mask_level {self.mask_level} outside the autoencoder's levels 0..{n - 1}")

    @staticmethod
    def for_autoencoder(ae: AutoencoderConfig, variant: str = "full", **fusion_kw) -> CodeSwapConfig:
        """A config whose fusion matches the autoencoder's codebook and latent grid."""
        if variant not in VARIANTS:
            raise ValueError(f"unknown CodeSwap variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        change = dict(VARIANTS[variant])
        use_mask = bool(change.pop("use_mask", True))
        fusion = FusionConfig(dim=ae.quant.code_dim, grid=ae.latent_size, num_codes=ae.quant.num_codes,
                              **{**fusion_kw, **change})
        return CodeSwapConfig(autoencoder=ae, fusion=fusion, use_mask=use_mask)

    def with_variant(self, variant: str) -> CodeSwapConfig:
        base = replace(self.fusion, attention="unified", quantize="soft")
        change = dict(VARIANTS[variant])
        use_mask = bool(change.pop("use_mask", True))
        return replace(self, fusion=replace(base, **change), use_mask=use_mask)

    @property
    def mask_level_index(self) -> int:
        """The level feeding the mask (see ``mask_level``)."""
        if self.mask_level is not None:
            return self.mask_level
        ae = self.autoencoder
        want = ae.resolution // 8
        return min(range(ae.num_levels), key=lambda lv: (abs(ae.resolution // 2**lv - want), lv))

    @property
    def mask_side(self) -> int:
        """Side of the feature maps at the mask level."""
        return self.autoencoder.resolution // 2**self.mask_level_index


class SwapOutput(NamedTuple):
    ab: Tensor  # (B, 3, R, R) identity of a on b, final (blended when a mask is used)
    ba: Tensor  # (B, 3, R, R) identity of b on a
    raw_ab: Tensor  # decoder outputs before blending
    raw_ba: Tensor
    mask_ab: Tensor | None  # (B, 1, R, R)
    mask_ba: Tensor | None
    fusion: FusionOutput  # codes (B, 2L, d) in [a positions; b positions], logits, hidden
    za: Tensor  # (B, L, d) encoder features of a
    zb: Tensor


def tokens(z: Tensor) -> Tensor:
    """(B, d, m, n) feature map -> (B, m*n, d) tokens (row-major)."""
    return z.flatten(2).transpose(1, 2)


def grid(t: Tensor, side: int) -> Tensor:
    """(B, m*n, d) tokens -> (B, d, side, side) feature map."""
    return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], side, side)


class CodeSwap(nn.Module):
    """Stage 2 + 3 around a frozen stage-1 autoencoder."""

    def __init__(self, cfg: CodeSwapConfig, autoencoder: VQAutoencoder | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.autoencoder = autoencoder if autoencoder is not None else VQAutoencoder(cfg.autoencoder)
        self.autoencoder.requires_grad_(False).eval()  # frozen in stages 2 and 3
        self.fusion = GlobalFusion(cfg.fusion)
        self.mask = None
        if cfg.use_mask:
            ch = cfg.autoencoder.channels[cfg.mask_level_index]
            self.mask = MaskGenerator(MaskConfig(enc_channels=ch, dec_channels=ch, hidden=cfg.mask_hidden,
                                                 feature_size=cfg.mask_side))

    def train(self, mode: bool = True) -> CodeSwap:
        super().train(mode)
        self.autoencoder.eval()  # frozen: GroupNorm has no running stats, but keep eval semantics
        return self

    @property
    def codebook(self) -> Tensor:
        return self.autoencoder.quantize.embedding.weight  # (N, d)

    def encode(self, x: Tensor) -> tuple[Tensor, dict[int, Tensor]]:
        """Image (B, 3, R, R) -> encoder tokens (B, L, d) and per-level features."""
        z, feats = self.autoencoder.encoder(x, return_features=True)  # (B, d, m, n)
        return tokens(z), feats

    def decode(self, codes: Tensor) -> tuple[Tensor, dict[int, Tensor]]:
        """Codes (B, L, d) -> image (B, 3, R, R) and per-level decoder features."""
        side = self.cfg.autoencoder.latent_size
        return self.autoencoder.decode(grid(codes, side), return_features=True)

    def fuse(self, za: Tensor, zb: Tensor) -> FusionOutput:
        return self.fusion(za, zb, None if self.fusion.selector is None else self.codebook)

    def forward(self, a: Tensor, b: Tensor, blend_mask: bool = True) -> SwapOutput:
        """Both swaps of (a, b). ``blend_mask=False`` returns the raw decoder outputs (stage 2
        trains without the mask, which only exists from stage 3 on)."""
        if a.shape != b.shape:
            raise ValueError(f"inputs differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
        bsz = a.shape[0]
        with torch.no_grad():
            z, enc_feats = self.encode(torch.cat([a, b]))  # (2B, L, d): frozen encoder
        za, zb = z[:bsz], z[bsz:]
        fused = self.fuse(za, zb)
        codes_ab, codes_ba = GlobalFusion.split(fused.codes)  # (B, L, d) each
        raw, dec_feats = self.decode(torch.cat([codes_ab, codes_ba]))  # (2B, 3, R, R)
        raw_ab, raw_ba = raw[:bsz], raw[bsz:]
        if self.mask is None or not blend_mask:
            return SwapOutput(raw_ab, raw_ba, raw_ab, raw_ba, None, None, fused, za, zb)
        side = self.cfg.mask_side
        # the target of I_ab is b: b's encoder features pair with I_ab's decoder features
        enc_target = torch.cat([enc_feats[side][bsz:], enc_feats[side][:bsz]])  # (2B, C, s, s)
        m = self.mask(enc_target, dec_feats[side], a.shape[-1])  # (2B, 1, R, R)
        out = blend(raw, torch.cat([b, a]), m)
        return SwapOutput(out[:bsz], out[bsz:], raw_ab, raw_ba, m[:bsz], m[bsz:], fused, za, zb)

    def cycle_codes(self, fused: FusionOutput) -> tuple[Tensor, Tensor]:
        """Eq. 13: feed the swapped codes through the fusion again, without the decoder.

        Returns (codes that should be a's, codes that should be b's), each (B, L, d).
        """
        codes_ab, codes_ba = GlobalFusion.split(fused.codes)
        # fuse(x=ab, y=ba): at y's positions "identity of x on y" = a's identity, a's attributes
        again = self.fuse(codes_ab, codes_ba)
        back_a, back_b = GlobalFusion.split(again.codes)
        return back_a, back_b

    @torch.no_grad()
    def region_swap(self, a: Tensor, b: Tensor, region: Tensor) -> Tensor:
        """Paper Fig. 8: identity of a on b only inside ``region`` (m, n) bool on the latent grid;
        elsewhere b keeps its own stage-1 codes. Returns (B, 3, R, R) without blending."""
        out = self.forward(a, b)
        codes_ab, _ = GlobalFusion.split(out.fusion.codes)  # (B, L, d)
        own = tokens(self.autoencoder.quantize(grid(out.zb, self.cfg.autoencoder.latent_size)).z_q)  # (B, L, d)
        keep = region.flatten().to(codes_ab.device)[None, :, None]  # (1, L, 1)
        mixed = torch.where(keep, codes_ab.to(own.dtype), own)
        return self.decode(mixed)[0]

    @torch.no_grad()
    def region_attention(self, a: Tensor, b: Tensor, region: Tensor, layer: int = -1) -> tuple[Tensor, Tensor]:
        """Paper Fig. 9: where b's region tokens look, averaged over heads and region tokens.

        Returns attention maps over a's and b's latent grids, each (B, m, n), summing to 1 together.
        """
        z, _ = self.encode(torch.cat([a, b]))
        za, zb = z[: a.shape[0]], z[a.shape[0] :]
        maps = self.fusion.attention_maps(za, zb)[layer]  # (B, H, 2L, 2L)
        L = za.shape[1]
        rows = L + torch.nonzero(region.flatten(), as_tuple=False).flatten().to(maps.device)  # b's region tokens
        att = maps[:, :, rows, :].mean(dim=(1, 2))  # (B, 2L)
        side = self.cfg.autoencoder.latent_size
        return att[:, :L].reshape(-1, side, side), att[:, L:].reshape(-1, side, side)
