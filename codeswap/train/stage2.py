"""Stage 2 (paper §3.2): train the global fusion module and code selector; stage 1 frozen.

Pairs come from the batch itself: image i is paired with image i+1 (a roll), and a share
``same_rate`` of the pairs, chosen by a generator seeded with the step, uses the same
image twice, so the reconstruction loss (Eq. 11) has identical pairs to work on. Both
directions come out of one pass; every loss is symmetric in (a, b).

Stage 3 (:mod:`codeswap.train.stage3`) reuses this trainer with the mask generator as the
only trainable part.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP

from codeswap.checkpoints import codeswap_config, load_codeswap, load_stage1, plain
from codeswap.config import SwapTrainConfig, TrainConfig
from codeswap.data import FaceFolder, list_images
from codeswap.model import CodeSwap, CodeSwapConfig
from codeswap.swap_losses import SwapLoss, TeacherAnswers
from codeswap.train.dist import DistInfo
from codeswap.train.loop import TrainLoop
from codeswap.train.nets import load_expression_net, load_identity_net
from codeswap.train.state import EMA, restore_ema
from faceeval.errors import HarnessError

VAL_PAIRS = 4


def param_groups(module: nn.Module, lr: float, position_mult: float) -> list[dict]:
    """Adam groups: attention biases and the position code at ``lr * position_mult``, the rest at ``lr``."""
    pos, rest = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (pos if name.endswith(("rel_bias", "attn.bias")) or name in ("pos", "fusion.pos") else rest).append(p)
    return [{"params": rest}, {"params": pos, "lr": lr * position_mult}]


def face_region(side: int, device=None) -> Tensor:
    """(1, 1, side, side) soft mask of the inner face in an FFHQ-aligned crop: an ellipse over
    the face box of the aligned template, feathered over ~6 % of the side."""
    from faceeval.constants import FFHQ_FACE_BOX

    x0, y0, x1, y1 = FFHQ_FACE_BOX
    t = (torch.arange(side, device=device, dtype=torch.float32) + 0.5) / side  # (side,)
    cy, cx, ry, rx = (y0 + y1) / 2 + 0.02, (x0 + x1) / 2, (y1 - y0) * 0.42, (x1 - x0) * 0.40
    d = ((t[:, None] - cy) / ry) ** 2 + ((t[None, :] - cx) / rx) ** 2  # (side, side), 1 on the ellipse
    return torch.sigmoid((1.0 - d) / 0.12)[None, None]


def paste_pairs(a: Tensor, b: Tensor, same: Tensor, rate: float, step: int, seed: int) -> tuple[Tensor, Tensor]:
    """Replace a share ``rate`` of the non-identical pairs' b by a with b's inner face pasted
    in (b' = a (1 - M) + b M); returns (b, paste (B,) bool)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step + 7_777)
    paste = (torch.rand(a.shape[0], generator=g) < rate).to(a.device) & ~same
    m = face_region(a.shape[-1], a.device).to(a.dtype)  # (1, 1, R, R)
    pasted = a * (1 - m) + b * m
    return torch.where(paste[:, None, None, None], pasted, b), paste


def paste_loss(a: Tensor, b: Tensor, ab: Tensor, ba: Tensor, paste: Tensor) -> Tensor:
    """The known answers of face-pasted pairs (a, b'): I_ab' = a and I_b'a = b' (L1, mean over
    those pairs): Eq. 11's masked L1 with the answers crossed."""
    from codeswap.swap_losses import reconstruction_loss

    return reconstruction_loss(b, a, ab, ba, paste)[0]  # 0.5 (|I_b'a - b'| + |I_ab' - a|)


def make_pairs(x: Tensor, same_rate: float, step: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """(B, 3, R, R) batch -> (a, b, same): b is the batch rolled by one, or a itself where
    ``same`` (B,) is True. The choice depends only on (seed, step), not on the device."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    same = torch.rand(x.shape[0], generator=g) < same_rate  # (B,) on CPU
    b = torch.roll(x, shifts=1, dims=0)
    same_d = same.to(x.device)
    b = torch.where(same_d[:, None, None, None], x, b)
    return x, b, same_d


def warm_start(model: CodeSwap, path: str) -> None:
    """Copy the fusion weights of the stage-2 or stage-3 checkpoint ``path`` into ``model``
    (in place). The checkpoint must hold the same stage-1 prior (every autoencoder tensor
    equal) and a fusion of the same shape; anything else is a one-line error."""
    init, _ = load_codeswap(Path(path))
    ours, theirs = model.autoencoder.state_dict(), init.autoencoder.state_dict()
    if ours.keys() != theirs.keys() or any(not torch.equal(ours[k], theirs[k].to(ours[k].dtype)) for k in ours):
        raise HarnessError(f"--init {path} was trained on another stage-1 prior than --stage1")
    fusion = init.fusion.state_dict()
    shapes = {k: tuple(v.shape) for k, v in model.fusion.state_dict().items()}
    if shapes != {k: tuple(v.shape) for k, v in fusion.items()}:
        raise HarnessError(f"--init {path} has another fusion (layers, heads, selector width or variant) "
                           "than this training's")
    model.fusion.load_state_dict(fusion)


class Stage2Trainer(TrainLoop):
    """Trains ``CodeSwap.fusion`` (stage 2); ``trainable`` picks the parameters (stage 3: mask)."""

    stage = "stage2"

    def __init__(self, cfg: TrainConfig, swap_cfg: SwapTrainConfig, dist_info: DistInfo | None = None,
                 nets: dict[str, nn.Module | None] | None = None) -> None:
        super().__init__(cfg, dist_info)
        self.swap_cfg = swap_cfg
        self._nets = nets  # tests inject small stand-ins; None loads the configured ones

    # --- model ---------------------------------------------------------------------------
    def build_model(self) -> CodeSwap:
        sc = self.swap_cfg
        autoencoder, self.stage1_sha256 = load_stage1(sc.stage1)
        cfg = CodeSwapConfig.for_autoencoder(autoencoder.cfg, sc.variant, layers=sc.layers, heads=sc.heads,
                                             selector_hidden=sc.selector_hidden, position=sc.position,
                                             pos_std=sc.pos_std)
        model = CodeSwap(replace(cfg, mask_level=sc.mask_level), autoencoder)
        if sc.init:
            warm_start(model, sc.init)
        return model

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
        self.dataset = FaceFolder(train_files, res, hflip=cfg.hflip, cache=cfg.cache_images,
                                  with_index=bool(self.swap_cfg.teacher_answers))
        self.answers = self._teacher_answers(train_files)
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
        self.loss = SwapLoss(sc.weights, nets.get("identity"), nets.get("expression"), nets.get("perceptual"),
                             sc.teacher_cells).to(dev)
        self.loss.requires_grad_(False)
        self.ema = EMA(self.model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.model_ddp: nn.Module = self.model
        if self.dist.world_size > 1:
            self.model_ddp = DDP(self.model, device_ids=[dev.index] if dev.type == "cuda" else None)
        if cfg.compile:
            self.model_ddp = torch.compile(self.model_ddp)
        self.opt = torch.optim.Adam(param_groups(self.trainable(), cfg.lr, self.swap_cfg.position_lr_mult),
                                    lr=cfg.lr, betas=cfg.betas)
        self.scaler = torch.amp.GradScaler(dev.type, enabled=self.amp_dtype == torch.float16)

    def _teacher_answers(self, train_files: list[Path]) -> TeacherAnswers | None:
        """The given teacher answers (``--teacher-answers``), encoded with this prior, or None."""
        sc, cfg = self.swap_cfg, self.cfg
        if not sc.teacher_answers:
            return None
        if cfg.hflip:
            raise HarnessError("--teacher-answers holds answers for unmirrored pairs: train with --no-hflip")
        if sc.paste_rate > 0:
            raise HarnessError("--teacher-answers cannot be combined with face-pasted pairs (paste_rate)")
        root = Path(cfg.data)
        own = torch.stack([self.dataset.load(i) for i in range(len(self.dataset))])  # (N, 3, R, R)
        return TeacherAnswers.load(sc.teacher_answers, [f.relative_to(root).as_posix() for f in train_files],
                                   own, self.model.autoencoder)

    def trained_modules(self) -> dict[str, nn.Module]:
        """The whole CodeSwap (trained part and frozen stages alike) and its EMA copy."""
        mods: dict[str, nn.Module] = {"codeswap": self.model}
        if self.ema is not None:
            mods["ema"] = self.ema.module
        return mods

    def run_params(self) -> dict[str, Any]:
        return {"data.train_images": self.num_train, "data.val_images": self.num_val,
                "stage1_sha256": self.stage1_sha256,
                "params.trainable": sum(p.numel() for p in self.trainable().parameters()),
                **{f"swap.{k}": v for k, v in plain(self.swap_cfg).items()},
                **{f"model.{k}": v for k, v in plain(self.model.cfg).items() if k != "autoencoder"}}

    # --- one step ------------------------------------------------------------------------
    def teacher_scale(self, step: int) -> float:
        """The code teacher's share of its weight at ``step`` (0-based): 1 throughout, or falling
        linearly from 1 at step 0 to 0 at ``teacher_decay_steps`` and 0 after."""
        n = self.swap_cfg.teacher_decay_steps
        return 1.0 if n == 0 else max(0.0, 1.0 - step / n)

    def train_step(self, batch: Tensor | list[Tensor], step: int) -> dict[str, Tensor]:
        x, index = batch if isinstance(batch, list) else (batch, None)  # index (B,): with --teacher-answers
        a, b, same = make_pairs(x, self.swap_cfg.same_rate, step, self.cfg.seed)
        answers = None
        if self.answers is not None:  # b's image indices are a's rolled as make_pairs rolled the images
            ib = torch.where(same.cpu(), index, torch.roll(index, shifts=1, dims=0))
            answers = self.answers.teacher(index, ib).to(x.device)  # (B, 2L)
        paste = None
        if self.swap_cfg.paste_rate > 0:
            b, paste = paste_pairs(a, b, same, self.swap_cfg.paste_rate, step, self.cfg.seed)
        with self.autocast():
            out = self.model_ddp(a, b, blend_mask=self.blend_mask)
            loss, logs = self.loss(self.model, a, b, same, out, teacher_scale=self.teacher_scale(step),
                                   answers=answers)
            if paste is not None:
                lp = paste_loss(a, b, out.ab, out.ba, paste)
                loss = loss + self.swap_cfg.paste_weight * lp
                logs["train/paste_recon"] = lp.detach()
            loss, logs = self.extra_loss(a, b, out, loss, logs, step)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.model)
        logs["train/lr"] = torch.tensor(self.opt.param_groups[0]["lr"])
        if self.swap_cfg.teacher_decay_steps:
            logs["train/w_teacher"] = torch.tensor(self.swap_cfg.weights.teacher * self.teacher_scale(step))
        return {k: v.detach().float().to(self.device) for k, v in logs.items()}

    @torch.no_grad()
    def evaluate(self, step: int) -> dict[str, float]:
        """Held-out pairs: identity cosine of I_ab to a versus b to a (when an identity
        network is loaded), and a grid PNG: a, b, I_ab, I_ba (one pair per column)."""
        from faceeval.images import save_png, to_uint8

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
                "codeswap_config": plain(self.model.cfg), "swap_config": plain(self.swap_cfg),
                "stage1_sha256": self.stage1_sha256}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if codeswap_config(state["codeswap_config"]) != self.model.cfg:
            raise HarnessError("checkpoint was trained with a different CodeSwap config; use the same settings")
        self.model.load_state_dict(state["codeswap"])
        restore_ema(self.ema, state["ema"])
        self.opt.load_state_dict(state["opt"])
        self.scaler.load_state_dict(state["scaler"])
