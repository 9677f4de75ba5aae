"""Stage 2 (paper §3.2): train the global fusion module and code selector; stage 1 frozen.

Pairs come from the batch itself: image i is paired with image i+1 (a roll), and a share
``same_rate`` of the pairs, chosen by a generator seeded with the step, uses the same
image twice, so the reconstruction loss (Eq. 11) has identical pairs to work on. Both
directions come out of one pass; every loss is symmetric in (a, b).

Stage 3 (:mod:`codeswap.train.stage3`) reuses this trainer with the mask generator as the
only trainable part.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP

from codeswap.checkpoints import codeswap_config, load_stage1, plain_config
from codeswap.config import TrainConfig
from codeswap.data import FaceFolder, list_images
from codeswap.model import CodeSwap, CodeSwapConfig
from codeswap.swap_losses import (SwapLossWeights, code_cycle_loss, expression_loss, identity_loss,
                                  reconstruction_loss)
from codeswap.train.loop import EMA, DistInfo, TrainLoop, _plain
from codeswap.train.nets import load_expression_net, load_identity_net
from harness.errors import HarnessError

VAL_PAIRS = 4


@dataclass(frozen=True)
class SwapTrainConfig:
    """What stage 2 (and 3) add to the shared :class:`TrainConfig`."""

    stage1: str = ""  # stage-1 checkpoint (stage 2) or stage-2 checkpoint (stage 3)
    variant: str = "full"  # full, wo_c, wo_s, wo_q1, wo_q2, wo_m
    layers: int = 6
    heads: int = 8
    selector_hidden: int = 1024
    position: str = "relative"  # fusion position scheme (FusionConfig.position): relative or absolute
    pos_std: float = 0.02  # init std of the fusion's position code (FusionConfig.pos_std)
    mask_level: int | None = None  # autoencoder level feeding the mask (None: resolution / 8 or nearest)
    weights: SwapLossWeights = field(default_factory=SwapLossWeights)
    same_rate: float = 0.2  # share of pairs made of one image twice (reconstruction pairs)
    identity_net: str = "facenet"
    identity_size: int | None = None  # input side of the identity network (None: its own, 160 for FaceNet)
    # L_id through randomly shifted/blurred copies (codeswap.train.nets.AugmentedIdentity); 0: off.
    # NOTE: not in the paper; with a weak identity network at low resolution it keeps L_id
    # from drawing adversarial patterns (see the README's stage-2 study)
    identity_augment: float = 0.0
    expression_net: str = "none"  # "deep3d" with expression_checkpoint; none: L_exp is off
    expression_checkpoint: str | None = None
    perceptual_net: str = "mobilenet_v2"  # vgg16 (paper, from a file), mobilenet_v2 (offline), none

    def __post_init__(self) -> None:
        if not 0.0 <= self.same_rate <= 1.0:
            raise ValueError(f"same_rate must be in [0, 1], got {self.same_rate}")


def make_pairs(x: Tensor, same_rate: float, step: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """(B, 3, R, R) batch -> (a, b, same): b is the batch rolled by one, or a itself where
    ``same`` (B,) is True. The choice depends only on (seed, step), not on the device."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    same = torch.rand(x.shape[0], generator=g) < same_rate  # (B,) on CPU
    b = torch.roll(x, shifts=1, dims=0)
    same_d = same.to(x.device)
    b = torch.where(same_d[:, None, None, None], x, b)
    return x, b, same_d


class SwapLoss(nn.Module):
    """L_swap (Eq. 9): reconstruction + identity + perceptual + expression + code cycle."""

    def __init__(self, weights: SwapLossWeights, identity: nn.Module | None, expression: nn.Module | None,
                 perceptual: nn.Module | None) -> None:
        super().__init__()
        self.w = weights
        self.identity, self.expression, self.perceptual = identity, expression, perceptual

    def forward(self, model: CodeSwap, a: Tensor, b: Tensor, same: Tensor, out) -> tuple[Tensor, dict[str, Tensor]]:
        logs: dict[str, Tensor] = {}
        total = a.new_zeros((), dtype=torch.float32)
        rec, rl = reconstruction_loss(a, b, out.ab, out.ba, same)
        total = total + self.w.recon * rec
        logs["train/recon"] = rec.detach()
        if self.identity is not None and self.w.identity > 0:
            lid, il = identity_loss(self.identity, a, b, out.ab, out.ba)
            total = total + self.w.identity * lid
            logs["train/id"] = lid.detach()
            logs["train/id_cos"] = torch.tensor(il["train/id_cos"])
        if self.perceptual is not None and self.w.perceptual > 0:
            # NOTE: the paper does not say which pairs L_per compares; here each swap is
            # compared with its target (attribute preservation), both directions.
            lper = 0.5 * (self.perceptual(out.ab, b) + self.perceptual(out.ba, a))
            total = total + self.w.perceptual * lper
            logs["train/per"] = lper.detach()
        if self.expression is not None and self.w.expression > 0:
            lexp, _ = expression_loss(self.expression, a, b, out.ab, out.ba)
            total = total + self.w.expression * lexp
            logs["train/exp"] = lexp.detach()
        if self.w.cycle > 0:
            back_a, back_b = model.cycle_codes(out.fusion)
            lcyc, _ = code_cycle_loss(back_a, back_b, out.za, out.zb)
            total = total + self.w.cycle * lcyc
            logs["train/cycle"] = lcyc.detach()
        logs["train/g_total"] = total.detach()
        return total, logs


class Stage2Trainer(TrainLoop):
    """Trains ``CodeSwap.fusion`` (stage 2); ``trainable`` picks the parameters (stage 3: mask)."""

    stage = "stage2"

    def __init__(self, cfg: TrainConfig, swap_cfg: SwapTrainConfig, dist_info: DistInfo | None = None,
                 nets: dict[str, nn.Module | None] | None = None) -> None:
        self.swap_cfg = swap_cfg
        self._nets = nets  # tests inject small stand-ins; None loads the configured ones
        super().__init__(cfg, dist_info)

    # --- model ---------------------------------------------------------------------------
    def build_model(self) -> CodeSwap:
        sc = self.swap_cfg
        autoencoder, self.stage1_sha256 = load_stage1(sc.stage1)
        cfg = CodeSwapConfig.for_autoencoder(autoencoder.cfg, sc.variant, layers=sc.layers, heads=sc.heads,
                                             selector_hidden=sc.selector_hidden, position=sc.position,
                                             pos_std=sc.pos_std)
        return CodeSwap(replace(cfg, mask_level=sc.mask_level), autoencoder)

    blend_mask = False  # stage 2 trains on the raw decoder outputs

    def trainable(self) -> nn.Module:
        return self.model.fusion

    def extra_loss(self, a: Tensor, b: Tensor, out, loss: Tensor, logs: dict[str, Tensor],
                   step: int) -> tuple[Tensor, dict[str, Tensor]]:
        """Hook for stage 3's mask supervision; stage 2 adds nothing."""
        return loss, logs

    def build(self) -> None:
        cfg, dev = self.cfg, self.device
        self.model = self.build_model().to(dev)
        self.model.requires_grad_(False)
        self.trainable().requires_grad_(True)
        res = self.model.cfg.autoencoder.resolution
        files = list_images(cfg.data)
        if cfg.holdout >= len(files):
            raise HarnessError(f"--holdout {cfg.holdout} leaves no training images (found {len(files)})")
        train_files = files[: len(files) - cfg.holdout]
        val_files = files[len(files) - cfg.holdout :] if cfg.holdout else files[: 2 * VAL_PAIRS]
        self.dataset = FaceFolder(train_files, res, hflip=cfg.hflip, cache=cfg.cache_images)
        val = FaceFolder(val_files, res, hflip=False)
        v = torch.stack([val.load(i) for i in range(len(val))]).to(dev)  # (V, 3, R, R)
        n = len(v) // 2
        if n == 0:
            raise HarnessError("stage 2 validation needs at least 2 images (use --holdout 2 or more)")
        self.val_a, self.val_b = v[:n], v[n : 2 * n]  # held-out pairs of different images
        self.num_train, self.num_val = len(train_files), len(val_files)

        sc = self.swap_cfg
        if self._nets is not None:
            nets = self._nets
        else:
            from codeswap.perceptual import load_perceptual

            nets = {"identity": load_identity_net(sc.identity_net, sc.identity_size, sc.identity_augment),
                    "expression": load_expression_net(sc.expression_net, sc.expression_checkpoint),
                    "perceptual": None if sc.perceptual_net == "none" or sc.weights.perceptual == 0
                    else load_perceptual(sc.perceptual_net)}
        self.loss = SwapLoss(sc.weights, nets.get("identity"), nets.get("expression"), nets.get("perceptual")).to(dev)
        self.loss.requires_grad_(False)
        self.ema = EMA(self.model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.model_ddp: nn.Module = self.model
        if self.dist.world_size > 1:
            self.model_ddp = DDP(self.model, device_ids=[dev.index] if dev.type == "cuda" else None)
        if cfg.compile:
            self.model_ddp = torch.compile(self.model_ddp)
        self.opt = torch.optim.Adam([p for p in self.trainable().parameters()], lr=cfg.lr, betas=cfg.betas)
        self.scaler = torch.amp.GradScaler(dev.type, enabled=self.amp_dtype == torch.float16)

    def run_params(self) -> dict[str, Any]:
        return {"data.train_images": self.num_train, "data.val_images": self.num_val,
                "stage1_sha256": self.stage1_sha256,
                "params.trainable": sum(p.numel() for p in self.trainable().parameters()),
                **{f"swap.{k}": v for k, v in _plain(asdict(self.swap_cfg)).items()},
                **{f"model.{k}": v for k, v in _plain(plain_config(self.model.cfg)).items() if k != "autoencoder"}}

    # --- one step ------------------------------------------------------------------------
    def train_step(self, x: Tensor, step: int) -> dict[str, Tensor]:
        a, b, same = make_pairs(x, self.swap_cfg.same_rate, step, self.cfg.seed)
        with self.autocast():
            out = self.model_ddp(a, b, blend_mask=self.blend_mask)
            loss, logs = self.loss(self.model, a, b, same, out)
            loss, logs = self.extra_loss(a, b, out, loss, logs, step)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.model)
        logs["train/lr"] = torch.tensor(self.opt.param_groups[0]["lr"])
        return {k: v.detach().float().to(self.device) for k, v in logs.items()}

    @torch.no_grad()
    def evaluate(self, step: int) -> dict[str, float]:
        """Held-out pairs: identity cosine of I_ab to a versus b to a (when an identity
        network is loaded), and a grid PNG: a, b, I_ab, I_ba (one pair per column)."""
        from harness.images import save_png, to_uint8

        model = self.ema.module if self.ema is not None else self.model
        was = model.training
        model.eval()
        with self.autocast():
            out = model(self.val_a, self.val_b, blend_mask=self.blend_mask)
        model.train(was)
        ab, ba = out.ab.float().clamp(-1, 1), out.ba.float().clamp(-1, 1)
        grid = torch.cat([self.val_a, self.val_b, ab, ba], dim=2)  # (n, 3, 4R, R)
        grid = grid.permute(1, 2, 0, 3).reshape(3, grid.shape[2], -1)  # (3, 4R, n*R)
        path = self.out / "images" / f"swap_{step:08d}.png"
        save_png(path, to_uint8(((grid + 1) * 0.5)[None])[0])
        self.tracker.log_file(path, "swaps")
        same = model(self.val_a, self.val_a, blend_mask=self.blend_mask).ab.float()
        figures = {"val/recon_l1": (same - self.val_a).abs().mean().item()}
        ident = self.loss.identity
        if ident is not None:
            ea = ident(self.val_a)
            figures["val/id_cos_ab_to_source"] = torch.cosine_similarity(ident(ab), ea).mean().item()
            figures["val/id_cos_target_to_source"] = torch.cosine_similarity(ident(self.val_b), ea).mean().item()
        return figures

    # --- checkpoints ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"codeswap": self.model.state_dict(), "ema": self.ema.state_dict() if self.ema is not None else None,
                "opt": self.opt.state_dict(), "scaler": self.scaler.state_dict(),
                "codeswap_config": plain_config(self.model.cfg), "swap_config": _plain(asdict(self.swap_cfg)),
                "stage1_sha256": self.stage1_sha256}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if codeswap_config(state["codeswap_config"]) != self.model.cfg:
            raise HarnessError("checkpoint was trained with a different CodeSwap config; use the same settings")
        self.model.load_state_dict(state["codeswap"])
        if self.ema is not None:
            if state["ema"] is None:
                raise HarnessError("checkpoint has no EMA weights; resume without --ema-decay or start afresh")
            self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["opt"])
        self.scaler.load_state_dict(state["scaler"])
