"""Frozen configuration dataclasses for the CodeSwap networks and their stage-1 training.

Named configs (``MODEL_CONFIGS``):

* ``paper``: the paper's size (§4.2: 512x512 input, 16x16 latent, 1,024 codes), with a
  width schedule chosen for speed: few channels at the high-resolution levels, where the
  activations (and so memory and FLOPs) are largest, and the full width near the latent.
* ``codeformer``: a CodeFormer-style VQGAN (nf 64, ch_mult 1,2,2,4,4,8, two residual blocks
  per level, 256-d codes): the reference the speed goal is measured against.
* ``tiny``: 64x64 input, 8x8 latent, 64 codes; trains on CPU in seconds (tests, smoke runs).

Configs are never mutated; variants are made with :func:`dataclasses.replace` at the edges
(CLI, tests).
"""

from __future__ import annotations

from dataclasses import dataclass, field
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


PAPER = AutoencoderConfig(quant=QuantizerConfig(num_codes=1024, code_dim=256))
CODEFORMER = AutoencoderConfig(
    channels=(64, 128, 128, 256, 256, 512),
    enc_blocks=(2, 2, 2, 2, 2, 2),
    dec_blocks=(2, 2, 2, 2, 2, 2),
    attn_levels=(5,),
    resample_changes_width=False,
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
MODEL_CONFIGS: dict[str, AutoencoderConfig] = {"paper": PAPER, "codeformer": CODEFORMER, "tiny": TINY}


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
