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

Every training setting is declared once, here: a field whose default is a :func:`setting`
also carries its command-line help (:func:`faceeval.options.setting`), and ``harness train`` (:mod:`codeswap.cli`)
builds its options from those fields, so a default cannot differ between the CLI and the code.
:data:`STAGE_TRAIN` holds each stage's defaults for the shared loop settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from faceeval.constants import FACE_CLASSES
from faceeval.options import setting


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
    checkpoint_levels: int = setting(0, "Recompute activations of the first N levels in backward.")
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
    perceptual_weight: float = setting(1.0, "Weight of the perceptual term.")
    perceptual_net: Literal["vgg16", "mobilenet_v2", "none"] = setting(
        "vgg16", "vgg16 (paper; local file), mobilenet_v2 (ships offline) or none.", flag="--perceptual")
    # multiplies the adaptive weight (taming-transformers' default)
    disc_weight: float = setting(0.8, "Scale of the adaptive adversarial weight (0: no GAN).")
    # step from which D is trained and the adversarial term is on
    disc_start: int = setting(30_000, "Step from which the PatchGAN trains and counts.")
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

    data: str = setting("", "Folder of aligned face images (flat, nested, or FFHQ's layout).", path=True,
                        required=True)
    out: str = setting("runs/stage1", "Run folder: checkpoints, images, metrics, MLflow.", flag=("--out", "-o"),
                       path=True)
    batch_size: int = setting(16, "Images per process (global = this x processes).", min=1)
    # paper §4.2: 1,000K iterations for stage 1 (global batch 32), 600K for stage 2, 10K for stage 3
    max_steps: int = setting(1_000_000, "Steps to train (paper: 1,000K stage 1, 600K stage 2, 10K stage 3).",
                             min=1)
    # NOTE: the paper's text reads "Adam ... with a 10# learning rate"; the exponent is lost
    # in extraction. 1e-4 is our reading (CodeFormer's stage 1 uses the same order).
    lr: float = setting(1e-4, "Adam learning rate (every trained network).")
    betas: tuple[float, float] = (0.9, 0.99)
    seed: int = setting(0, "Seed of the weights, the data order and the pairs.")
    device: str = setting("auto", "auto, cpu or cuda (under torchrun: each rank's GPU).")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = setting(
        "auto", "auto (bf16 on GPU, fp32 on CPU), bf16, fp16 or fp32.")
    compile: bool = setting(False, "torch.compile the trained networks.")
    channels_last: bool = setting(True, "Channels-last memory format (applied on CUDA only).")
    fused_adam: bool = setting(True, "Adam(fused=True) where the device supports it, else foreach.")
    fused_attention: bool = setting(True, "SDPA in the autoencoder's attention blocks (off: plain maths).")
    ema_decay: float = setting(0.0, "EMA of the trained weights (0: off; 0.999 is a common choice).")
    num_workers: int = setting(4, "Data-loading processes.", min=0)
    hflip: bool = setting(True, "Mirror each training image at random (--no-hflip: never).")
    # last N images (sorted order) are kept out of training for validation
    holdout: int = setting(0, "Keep the last N images out of training, for validation.", min=0)
    cache_images: bool = setting(False, "Keep decoded images in memory (small folders).")
    log_every: int = setting(50, "Steps between logged figures.", min=1)
    image_every: int = setting(1000, "Steps between validation images and figures.", min=1)
    ckpt_every: int = setting(5000, "Steps between checkpoints (last.pt).", min=1)
    keep_every: int = setting(0, "Also keep step_XXXXXXXX.pt every N steps (0: only last.pt).", min=0)
    restart_dead_every: int = setting(0, "Re-seed unused codes every N steps (0: off).", min=0)
    mlflow: bool = setting(True, "Log to MLflow (SQLite in --out unless --tracking-uri).")
    tracking_uri: str | None = setting(None, "MLflow tracking URI.")
    progress: bool = setting(True, "Show a progress bar on a terminal (in a log: a plain line every 30 s).")


#: default face cells of the code teacher (SwapTrainConfig.teacher_cells): top, left, bottom, right
TEACHER_CELLS = (0.25, 0.1875, 1.0, 0.875)


@dataclass(frozen=True)
class SwapLossWeights:
    """Weights of L_swap (paper Eq. 9)."""

    recon: float = 1.0
    identity: float = setting(1.5, "lambda_id (paper: 1.5).", flag="--w-id")
    perceptual: float = setting(2e-3, "lambda_per (paper: 2e-3).", flag="--w-per")
    expression: float = setting(0.5, "lambda_exp (paper: 0.5).", flag="--w-exp")
    cycle: float = setting(1.0, "Weight of the code-cycle loss (paper: 1).", flag="--w-cycle")
    # NOTE: not in the paper (see codeswap.swap_losses.code_teacher_loss and
    # docs/codeswap-cpu-study.md, "Does CodeSwap learn to swap?"): 0 trains with the paper's L_swap alone.
    teacher: float = setting(0.0, "Weight of the code-teacher cross-entropy: the selector is taught the target's "
                                  "stage-1 codes with the source's in the face cells (not in the paper; 0: off).",
                             flag="--w-teacher")


@dataclass(frozen=True)
class SwapTrainConfig:
    """What stage 2 (and 3) add to the shared :class:`TrainConfig`."""

    # stage-1 checkpoint (stage 2) or stage-2 checkpoint (stage 3)
    stage1: str = setting("", "Checkpoint to start from (`harness train stage1|stage2 ...` /checkpoints/last.pt).",
                          path=True, required=True)
    # NOTE: not in the paper: a warm start, e.g. from a model trained with the code teacher
    # (the teacher's weight then falls to 0 for the rest of training; README "CodeSwap CPU study")
    init: str | None = setting(None, "Stage 2 only: a stage-2 or stage-3 checkpoint (same stage-1 prior) whose "
                            "fusion weights start this training; steps and the optimiser start fresh.", path=True)
    variant: str = setting("full", "full, or an ablation: wo_c, wo_s, wo_q1, wo_q2 (wo_m needs no training: "
                                   "it drops the mask).")
    layers: int = setting(6, "Fusion transformer layers (paper: 6).", min=1)
    heads: int = setting(8, "Fusion attention heads.", min=1)
    selector_hidden: int = setting(1024, "Hidden width of the code selector.", min=1)
    position: Literal["relative", "absolute"] = setting(
        "relative", "How the fusion knows where a code sits: relative (2D offset bias per head) "
        "or absolute (a learned position code only; checkpoints from before).")
    pos_std: float = setting(0.02, "Init std of the fusion's learned position code.")
    mask_level: int | None = setting(None, "Autoencoder level (0 = full resolution) whose features feed the mask "
                                           "(default: the level at resolution / 8, or the nearest).")
    weights: SwapLossWeights = field(default_factory=SwapLossWeights)
    # share of pairs made of one image twice (reconstruction pairs)
    same_rate: float = setting(0.2, "Share of pairs made of one image twice (L_recon).")
    identity_net: str = setting("facenet", "Differentiable identity network for L_id: facenet (offline port), "
                                           "sface (the default suite's judge: a study setting) or none.")
    identity_size: int | None = None  # input side of the identity network (None: its own, 160 for FaceNet)
    # NOTE: not in the paper; with a weak identity network at low resolution it keeps L_id
    # from drawing adversarial patterns (see the stage-2 study, docs/codeswap-cpu-study.md)
    identity_augment: float = setting(0.0, "L_id through randomly shifted and blurred copies of both images "
                                           "(strength; 0: off).")
    # NOTE: not in the paper (a study setting, docs/codeswap-cpu-study.md): pairs
    # (a, b') with b' = a carrying b's inner face, whose swaps have known answers,
    # I_ab' = a and I_b'a = b' (Eq. 11's reconstruction on pairs that differ inside the face)
    paste_rate: float = 0.0
    paste_weight: float = 1.0
    # The face cells of the code teacher (--w-teacher), as fractions of the latent grid: top,
    # left, bottom, right (FFHQ-aligned crops). The default is rows 4-15 and columns 3-13 of
    # a 16x16 grid: the box whose pasted stage-1 codes carry the source best on the demo
    # faces (dlib retrieval 84 % with the demo prior; the inner face alone, rows 5-13 and
    # columns 4-11, carries far less).
    teacher_cells: tuple[float, float, float, float] = TEACHER_CELLS
    # NOTE: not in the paper (issue 27): the teacher as a warm-up whose weight falls to 0
    teacher_decay_steps: int = setting(0, "Stage 2: the code teacher's weight falls linearly from --w-teacher to 0 "
                                          "over this many steps, then stays 0 (0: constant).", min=0)
    # NOTE: not in the paper (issue 27): the teacher's answers given per pair of training
    # images (codeswap.swap_losses.TeacherAnswers) instead of the source's codes pasted in
    teacher_answers: str | None = setting(
        None, "Stage 2: a teacher-answers file (benchmarks/codeswap_teacher_oracle.py --teacher-answers): the code "
              "teacher learns these answers instead of pasting the source's codes in the face cells "
              "(needs --no-hflip).",
        path=True)
    # learning-rate multiplier of the fusion's attention biases and position code (study setting)
    position_lr_mult: float = 1.0
    # "deep3d" with expression_checkpoint; blendshapes / whenet / blendshapes+whenet: the default
    # suite's networks (harness weights fetch); none: L_exp is off
    expression_net: str = setting("none", "Expression network for L_exp: deep3d (with --expression-checkpoint), "
                                          "blendshapes, whenet, blendshapes+whenet (harness weights fetch) or none.")
    expression_checkpoint: str | None = setting(None, "Deep3DFaceRecon checkpoint (epoch_20.pth).", path=True)
    perceptual_net: str = setting("vgg16", "vgg16 (paper; local file), mobilenet_v2 (offline) or none.",
                                  flag="--perceptual")

    def __post_init__(self) -> None:
        if not 0.0 <= self.same_rate <= 1.0:
            raise ValueError(f"same_rate must be in [0, 1], got {self.same_rate}")
        top, left, bottom, right = self.teacher_cells
        if not (0.0 <= top < bottom <= 1.0 and 0.0 <= left < right <= 1.0):
            raise ValueError(f"teacher_cells must be (top, left, bottom, right) fractions with top < bottom and "
                             f"left < right, got {self.teacher_cells}")


MASK_SOURCES = ("landmarks", "parsing")


@dataclass(frozen=True)
class MaskTrainConfig:
    """What stage 3 adds: the supervised phase of the mask generator (paper §3.3)."""

    supervised_steps: int = setting(5000, "Steps against face masks before the unsupervised phase.", min=0)
    mask_weight: float = 1.0
    forehead: float = 0.35  # landmarks: upward extension of the hull, as a share of the brow-to-chin height
    mask_source: str = setting(
        "landmarks", "Supervised mask targets: landmarks (dlib-68 hull, offline) or parsing (BiSeNet face parsing, "
                     "as the paper; needs 79999_iter.pth in the weights folder, see `harness weights`).")
    face_classes: tuple[int, ...] = FACE_CLASSES  # parsing: the classes counted as face

    def __post_init__(self) -> None:
        from faceeval.errors import HarnessError
        from faceeval.models.bisenet import NUM_CLASSES

        if self.mask_source not in MASK_SOURCES:
            raise HarnessError(f"mask source {self.mask_source!r}: use one of {', '.join(MASK_SOURCES)}")
        if not self.face_classes or not all(0 <= c < NUM_CLASSES for c in self.face_classes):
            raise HarnessError(f"face classes {self.face_classes}: need at least one BiSeNet class id "
                               f"in 0..{NUM_CLASSES - 1}")


#: Each stage's defaults for the loop settings: the starting point of `harness train stageN`.
STAGE_TRAIN: dict[str, TrainConfig] = {
    "stage1": TrainConfig(),
    "stage2": TrainConfig(out="runs/stage2", max_steps=600_000, holdout=8),
    "stage3": TrainConfig(out="runs/stage3", max_steps=10_000, holdout=8, ckpt_every=2000),
}
