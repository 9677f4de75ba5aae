"""Frozen configuration dataclasses for the CodeSwap networks and their stage-1 training.

Named configs (``MODEL_CONFIGS``):

* ``paper``: the paper's model (§4.2: "512 x 512 images within a 16 x 16 x 512 latent space
  ... a codebook of 1,024 codes, following the autoencoder structure from [VQGAN]"):
  VQGAN's encoder/decoder as CodeFormer lays it out for 512 px faces, with 512-d codes.
  Its stage-1 speed comes from engineering (bf16, fused attention, torch.compile,
  activation checkpointing, fused Adam; see ``TrainConfig``), not from a smaller network.
* ``fast``: a narrower width schedule (32 to 512 channels, resampling convolutions change
  width, one residual block at the two finest levels), about a third of ``paper``'s FLOPs.
  It was called ``paper`` before; checkpoints stored under that name load as ``fast``.
* ``codeformer``: CodeFormer's own stage-1 VQGAN (256-d codes): the anchor the speed goal is
  measured against. It is ``paper``'s structure except for the code dimension (256).
* ``tiny``: 64x64 input, 8x8 latent, 64 codes; trains on CPU in seconds (tests, smoke runs).

Configs are never mutated; variants are made with :func:`dataclasses.replace` at the edges
(CLI, tests).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal


@dataclass(frozen=True)
class QuantizerConfig:
    """Vector-quantized codebook (paper §3.1, Eq. 1 and 4)."""

    num_codes: int = 1024
    code_dim: int = 256
    beta: float = 0.25  # commitment weight of Eq. 4


@dataclass(frozen=True)
class AutoencoderConfig:
    """Encoder/decoder widths and depths. The latent grid is ``resolution / 2**(len(channels)-1)``.

    ``channels[i]`` is the width at level ``i`` (level 0 = full resolution); the encoder
    downsamples between levels and the decoder mirrors it. ``attn_levels`` lists the levels
    that get self-attention after their residual blocks (besides the middle blocks, which
    always have one at the latent grid).
    """

    resolution: int = 512
    in_channels: int = 3
    channels: tuple[int, ...] = (32, 64, 128, 256, 256, 512)
    enc_blocks: tuple[int, ...] = (1, 1, 2, 2, 2, 2)  # residual blocks per encoder level
    dec_blocks: tuple[int, ...] = (1, 1, 2, 2, 2, 2)  # residual blocks per decoder level
    attn_levels: tuple[int, ...] = ()
    attn_heads: int = 1
    norm_groups: int = 32
    # True: the strided/upsampling convolutions change width, so high-resolution levels run
    # at their own (narrow) width only; False: VQGAN/CodeFormer, the next block changes it
    resample_changes_width: bool = True
    # The next two default to the layout before they existed, so that a checkpoint's stored
    # config without them rebuilds the network it was trained with.
    # True: an attention block after every residual block of an attention level (taming,
    # CodeFormer); False: one after the level's last residual block
    attn_every_block: bool = False
    # True: pad right/bottom by one, then an unpadded stride-2 conv (taming, CodeFormer);
    # False: padding 1 on every side. Same weights and shapes, grids one pixel apart
    asymmetric_downsample: bool = False
    # recompute activations in backward for residual blocks at levels < this (saves memory)
    checkpoint_levels: int = 0
    quant: QuantizerConfig = field(default_factory=QuantizerConfig)

    def __post_init__(self) -> None:
        n = len(self.channels)
        if len(self.enc_blocks) != n or len(self.dec_blocks) != n:
            raise ValueError(f"channels, enc_blocks and dec_blocks need one entry per level ({n})")
        if self.resolution % (2 ** (n - 1)):
            raise ValueError(f"resolution {self.resolution} is not divisible by 2**{n - 1}")
        if any(c % self.norm_groups for c in self.channels):
            raise ValueError(f"every width in {self.channels} must be divisible by norm_groups={self.norm_groups}")
        if any(not 0 <= lv < n for lv in self.attn_levels):
            raise ValueError(f"attn_levels {self.attn_levels} outside 0..{n - 1}")

    @property
    def num_levels(self) -> int:
        return len(self.channels)

    @property
    def latent_size(self) -> int:
        """Side of the square latent grid (16 for the paper's 512 input)."""
        return self.resolution // 2 ** (self.num_levels - 1)


@dataclass(frozen=True)
class DiscriminatorConfig:
    """PatchGAN (pix2pix / VQGAN): ``n_layers`` strided 4x4 convolutions, one logit per patch."""

    in_channels: int = 3
    base_channels: int = 64
    n_layers: int = 3
    # NOTE: GroupNorm instead of pix2pix's BatchNorm: per-sample normalisation lets real and
    # fake go through D in one concatenated batch with the same result as two passes, and
    # leaves no buffers to synchronise across DDP ranks. The loss keeps its meaning.
    norm_groups: int = 32


@dataclass(frozen=True)
class LossConfig:
    """Stage-1 loss (paper Eq. 2): L1 + perceptual + lambda * adversarial + codebook."""

    l1_weight: float = 1.0
    perceptual_weight: float = 1.0
    perceptual_net: Literal["vgg16", "mobilenet_v2", "none"] = "vgg16"
    disc_weight: float = 0.8  # multiplies the adaptive weight (taming-transformers' default)
    disc_start: int = 30_000  # step from which D is trained and the adversarial term is on
    gan_loss: Literal["vanilla", "hinge"] = "vanilla"  # vanilla = the paper's log D + log(1 - D)
    adaptive_weight_max: float = 1e4
    codebook_weight: float = 1.0


# The paper's autoencoder: VQGAN's structure as CodeFormer uses it for 512 px faces
# (CodeFormer's VQGAN_512_ds32_nearest_stage1: nf 64, ch_mult 1,2,2,4,4,8, two residual
# blocks per level, attention at 16x16). Parameter count: 66.36 M (tests pin it).
PAPER = AutoencoderConfig(
    resolution=512,
    channels=(64, 128, 128, 256, 256, 512),  # 512 -> 16 px: five halvings, latent width 512
    enc_blocks=(2, 2, 2, 2, 2, 2),
    # NOTE: the paper is silent on decoder depth. CodeFormer's generator has two residual
    # blocks per level, like its encoder; taming-transformers' decoder has three
    # (num_res_blocks + 1). We follow CodeFormer, the public VQGAN for 512 px faces.
    dec_blocks=(2, 2, 2, 2, 2, 2),
    # NOTE: the paper is silent on attention placement. taming-transformers and CodeFormer
    # both put one after every residual block at 16x16 (attn_resolutions [16]: the latent
    # level here) besides the middle block's; so do we.
    attn_levels=(5,),
    attn_every_block=True,
    # NOTE: the paper is silent on heads; taming-transformers and CodeFormer use a single
    # head over the full width (scale C^-1/2). One head here too. (Stage 2's fusion
    # Transformer has 8 heads of d/8, FusionConfig.heads, as CodeFormer's transformer.)
    attn_heads=1,
    norm_groups=32,  # GroupNorm(32, eps 1e-6) in both references
    resample_changes_width=False,  # strided conv / upsample conv keep the width
    asymmetric_downsample=True,
    # NOTE: code dimension d. The paper's §3.1 writes Z in R^{m x n x d} with codes q in R^d,
    # and §4.2 "a 16 x 16 x 512 latent space", so d = 512 here. CodeFormer and
    # taming-transformers (faceshq_vqgan) quantize 256-d codes (emb_dim / embed_dim 256) after
    # a 512-wide (CodeFormer) last feature map; `codeformer` keeps 256. Both use the plain
    # nearest-code quantizer with beta 0.25 (CodeFormer: no 1x1 quant_conv; taming has one).
    quant=QuantizerConfig(num_codes=1024, code_dim=512, beta=0.25),
)
# CodeFormer's VQGAN (63.74 M parameters, as its own code builds): `paper` with 256-d codes.
# The anchor of the stage-1 speed goal; kept apart from `paper` because the code dimension
# differs. One difference from CodeFormer's code, none in shapes or parameters: its encoder
# and generator end in GroupNorm -> conv, while taming-transformers (and this code) put a
# SiLU between; everything else computes the same (checked by porting its weights).
CODEFORMER = replace(PAPER, quant=QuantizerConfig(num_codes=1024, code_dim=256))
# The narrow schedule (called `paper` until the paper's own structure took that name):
# narrow where activations are largest, resampling convolutions change width, one
# residual block at the two finest levels, attention only in the middle blocks, 256-d codes.
FAST = AutoencoderConfig(
    resolution=512,
    channels=(32, 64, 128, 256, 256, 512),
    enc_blocks=(1, 1, 2, 2, 2, 2),
    dec_blocks=(1, 1, 2, 2, 2, 2),
    attn_levels=(),
    resample_changes_width=True,
    quant=QuantizerConfig(num_codes=1024, code_dim=256),
)
TINY = AutoencoderConfig(
    resolution=64,
    channels=(16, 32, 32, 64),
    enc_blocks=(1, 1, 1, 1),
    dec_blocks=(1, 1, 1, 1),
    norm_groups=8,
    quant=QuantizerConfig(num_codes=64, code_dim=32),
)
MODEL_CONFIGS: dict[str, AutoencoderConfig] = {"paper": PAPER, "fast": FAST, "codeformer": CODEFORMER, "tiny": TINY}


@dataclass(frozen=True)
class TrainConfig:
    """Settings of the shared training loop (every stage). ``batch_size`` is per process."""

    data: str = ""
    out: str = "runs/stage1"
    batch_size: int = 16
    max_steps: int = 1_000_000  # paper §4.2: 1,000K iterations for stage 1 (global batch 32)
    # NOTE: the paper's text reads "Adam ... with a 10# learning rate"; the exponent is lost
    # in extraction. 1e-4 is our reading (CodeFormer's stage 1 uses the same order).
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda (the local rank's GPU under torchrun)
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    compile: bool = False
    channels_last: bool = True  # applied on CUDA only
    fused_adam: bool = True  # Adam(fused=True) where the device supports it, else foreach
    fused_attention: bool = True  # SDPA in the autoencoder's attention blocks (False: plain maths)
    ema_decay: float = 0.0  # 0 turns the EMA generator off; 0.999 is a common choice
    num_workers: int = 4
    hflip: bool = True
    holdout: int = 0  # last N images (sorted order) are kept out of training for validation
    cache_images: bool = False  # keep decoded, resized images in memory (small sets)
    log_every: int = 50
    image_every: int = 1000
    ckpt_every: int = 5000
    keep_every: int = 0  # also keep step_XXXXXXXX.pt every N steps (0: only last.pt)
    restart_dead_every: int = 0  # re-seed codes unused for N steps from encoder outputs (0: off)
    mlflow: bool = True
    tracking_uri: str | None = None
    progress: bool = True
