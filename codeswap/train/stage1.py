"""Stage 1 (paper §3.1): train encoder, codebook and decoder by reconstruction, with a PatchGAN.

Each step is an explicit generator step then (once ``disc_start`` is reached) an explicit
discriminator step, in plain PyTorch. The generator step calls the discriminator's plain
module with its parameters frozen, so that D's DistributedDataParallel wrapper only ever
sees D's own step.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP

from codeswap.checkpoints import autoencoder_config, is_fast_schedule, plain
from codeswap.config import AutoencoderConfig, DiscriminatorConfig, LossConfig, TrainConfig
from codeswap.data import FaceFolder, list_images
from codeswap.discriminator import PatchDiscriminator
from codeswap.losses import Stage1Loss
from codeswap.perceptual import PerceptualLoss, load_perceptual
from codeswap.train.dist import DistInfo
from codeswap.train.loop import TrainLoop
from codeswap.train.state import EMA, make_adam, restore_ema
from codeswap.vqgan import VQAutoencoder, set_fused_attention
from faceeval.errors import HarnessError

VAL_IMAGES = 8  # images in the reconstruction grid when no hold-out set is given


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """Per-image PSNR (dB) of (B, 3, H, W) images in [-1, 1], measured on [0, 1]."""
    mse = ((x.float() - y.float()) * 0.5).pow(2).flatten(1).mean(1)  # (B,)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(1e-10))


class Stage1Trainer(TrainLoop):
    """Trainer for the VQ autoencoder; see :class:`codeswap.config.TrainConfig` for settings."""

    stage = "stage1"

    def __init__(self, cfg: TrainConfig, model_cfg: AutoencoderConfig, loss_cfg: LossConfig,
                 disc_cfg: DiscriminatorConfig = DiscriminatorConfig(), dist_info: DistInfo | None = None,
                 perceptual: PerceptualLoss | None = None) -> None:
        super().__init__(cfg, dist_info)
        self.model_cfg, self.loss_cfg, self.disc_cfg = model_cfg, loss_cfg, disc_cfg
        self._perceptual = perceptual

    def build(self) -> None:
        cfg, dev = self.cfg, self.device
        files = list_images(cfg.data)
        if cfg.holdout >= len(files):
            raise HarnessError(f"--holdout {cfg.holdout} leaves no training images (found {len(files)})")
        train_files = files[: len(files) - cfg.holdout]
        val_files = files[len(files) - cfg.holdout :] if cfg.holdout else files[:VAL_IMAGES]
        res = self.model_cfg.resolution
        self.dataset = FaceFolder(train_files, res, hflip=cfg.hflip, cache=cfg.cache_images)
        val = FaceFolder(val_files[:VAL_IMAGES] if not cfg.holdout else val_files, res, hflip=False)
        self.val_batch = torch.stack([val.load(i) for i in range(len(val))]).to(dev)  # (V, 3, R, R)
        self.num_train, self.num_val = len(train_files), len(val_files)

        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self.model = VQAutoencoder(self.model_cfg).to(dev, memory_format=fmt)
        set_fused_attention(self.model, cfg.fused_attention)
        self.disc = PatchDiscriminator(self.disc_cfg).to(dev, memory_format=fmt)
        perceptual = self._perceptual
        if perceptual is None and self.loss_cfg.perceptual_net != "none" and self.loss_cfg.perceptual_weight > 0:
            perceptual = load_perceptual(self.loss_cfg.perceptual_net)
        self.perceptual_sha256 = perceptual.weights_sha256 if perceptual is not None else ""
        self.loss = Stage1Loss(self.loss_cfg, perceptual).to(dev, memory_format=fmt)
        self.ema = EMA(self.model, cfg.ema_decay) if cfg.ema_decay > 0 else None

        if self.dist.world_size > 1:
            ids = [dev.index] if dev.type == "cuda" else None
            self.model_ddp: nn.Module = DDP(self.model, device_ids=ids)
            self.disc_ddp: nn.Module = DDP(self.disc, device_ids=ids)
        else:
            self.model_ddp, self.disc_ddp = self.model, self.disc
        if cfg.compile:
            import torch._functorch.config as functorch_config

            # the adaptive weight differentiates the generator graph more than once
            # (retain_graph), which AOTAutograd's donated buffers forbid
            functorch_config.donated_buffer = False
            self.model_ddp = torch.compile(self.model_ddp)
            self.disc_ddp = torch.compile(self.disc_ddp)
        self.opt_g = make_adam(self.model.parameters(), cfg)
        self.opt_d = make_adam(self.disc.parameters(), cfg)
        self.scaler = torch.amp.GradScaler(dev.type, enabled=self.amp_dtype == torch.float16)
        n = self.model_cfg.quant.num_codes
        self.usage_log = torch.zeros(n, dtype=torch.long, device=dev)  # code counts since the last log
        self.usage_restart = torch.zeros(n, dtype=torch.long, device=dev)  # since the last dead-code restart

    def run_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"data.train_images": self.num_train, "data.val_images": self.num_val,
                                  "perceptual_net": self.loss_cfg.perceptual_net
                                  if self.loss.perceptual is not None else "none",
                                  "perceptual_weights_sha256": self.perceptual_sha256,
                                  "params.generator": sum(p.numel() for p in self.model.parameters()),
                                  "params.discriminator": sum(p.numel() for p in self.disc.parameters())}
        for prefix, c in (("model", self.model_cfg), ("loss", self.loss_cfg), ("disc", self.disc_cfg)):
            params.update({f"{prefix}.{k}": v for k, v in plain(c).items()})
        return params

    def trained_modules(self) -> dict[str, nn.Module]:
        mods: dict[str, nn.Module] = {"model": self.model, "disc": self.disc}
        if self.ema is not None:
            mods["ema"] = self.ema.module
        return mods

    def train_step(self, x: Tensor, step: int) -> dict[str, Tensor]:
        adversarial = self.loss.adversarial_on(step)
        # generator step: D is used as a frozen critic through its plain module
        self.disc.requires_grad_(False)
        with self.autocast():
            rec, q = self.model_ddp(x)
            loss_g, logs = self.loss.generator_loss(x, rec, q, step, self.disc if adversarial else None,
                                                    self.model.last_layer)
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler.scale(loss_g).backward()
        self.scaler.step(self.opt_g)
        if adversarial:
            # discriminator step: real and (detached) fake in one batch; GroupNorm in D is
            # per sample, so this equals two separate passes
            self.disc.requires_grad_(True)
            with self.autocast():
                logits = self.disc_ddp(torch.cat([x, rec.detach()]))  # (2B, 1, h, w)
                real, fake = logits.chunk(2)
                loss_d, d_logs = self.loss.discriminator_loss(real, fake)
            self.opt_d.zero_grad(set_to_none=True)
            self.scaler.scale(loss_d).backward()
            self.scaler.step(self.opt_d)
            logs.update(d_logs)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.model)

        counts = q.counts.detach()
        self.usage_log += counts
        self.usage_restart += counts
        logs["train/lr_g"] = torch.tensor(self.opt_g.param_groups[0]["lr"])
        logs["train/lr_d"] = torch.tensor(self.opt_d.param_groups[0]["lr"])
        if (step + 1) % self.cfg.log_every == 0 or step + 1 == self.cfg.max_steps:
            usage = self._all_reduced(self.usage_log)
            logs["codebook/dead_codes"] = (usage == 0).sum().float()
            logs["codebook/used_fraction"] = (usage > 0).float().mean()
            probs = usage.float() / usage.sum().clamp_min(1)
            logs["codebook/window_perplexity"] = torch.exp(-(probs * probs.clamp_min(1e-10).log()).sum())
            self.usage_log.zero_()
        every = self.cfg.restart_dead_every
        if every and (step + 1) % every == 0:
            logs["codebook/restarted"] = torch.tensor(float(self._restart_dead_codes(x)))
        return {k: v.detach().to(self.device) for k, v in logs.items()}

    def _all_reduced(self, t: Tensor) -> Tensor:
        t = t.clone()
        if self.dist.world_size > 1:
            dist.all_reduce(t)
        return t

    @torch.no_grad()
    def _restart_dead_codes(self, x: Tensor) -> int:
        """Re-seed codes no rank used since the last restart with encoder outputs of rank 0's
        batch (broadcast, so every rank holds the same codebook); their Adam moments reset."""
        dead = self._all_reduced(self.usage_restart) == 0  # (N,)
        self.usage_restart.zero_()
        n_dead = int(dead.sum().item())
        if n_dead == 0:
            return 0
        weight = self.model.quantize.embedding.weight
        with self.autocast():
            z = self.model.encoder(x)  # (B, D, h, w)
        cand = z.float().permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # (B*h*w, D)
        pick = torch.randint(0, cand.shape[0], (n_dead,), device=cand.device)
        weight[dead] = cand[pick].to(weight.dtype)
        if self.dist.world_size > 1:
            dist.broadcast(weight.data, src=0)
        state = self.opt_g.state.get(weight, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][dead] = 0.0
        return n_dead

    @torch.no_grad()
    def evaluate(self, step: int) -> dict[str, float]:
        """PSNR and L1 of the validation images' reconstructions (EMA model if on), and a grid
        PNG (originals on top, reconstructions below) in ``<out>/images`` and MLflow."""
        from faceeval.images import save_png, to_uint8

        model = self.ema.module if self.ema is not None else self.model
        was_training = model.training
        model.eval()
        with self.autocast():
            rec, q = model(self.val_batch)
        model.train(was_training)
        rec = rec.float().clamp(-1, 1)
        grid = torch.cat([self.val_batch, rec], dim=2)  # (V, 3, 2R, R): original above reconstruction
        grid = grid.permute(1, 2, 0, 3).reshape(3, grid.shape[2], -1)  # (3, 2R, V*R)
        path = self.out / "images" / f"recon_{step:08d}.png"
        save_png(path, to_uint8(((grid + 1) * 0.5)[None])[0])
        self.tracker.log_file(path, "reconstructions")
        return {"val/psnr": psnr(rec, self.val_batch).mean().item(),
                "val/rec_l1": (rec - self.val_batch).abs().mean().item(),
                "val/perplexity": q.perplexity.item()}

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "disc": self.disc.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "scaler": self.scaler.state_dict(),
                "usage_log": self.usage_log.cpu(), "usage_restart": self.usage_restart.cpu(),
                "model_config": plain(self.model_cfg), "loss_config": plain(self.loss_cfg),
                "perceptual_sha256": self.perceptual_sha256}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        stored = autoencoder_config(state["model_config"])
        # checkpoint_levels is a memory setting only
        if replace(stored, checkpoint_levels=0) != replace(self.model_cfg, checkpoint_levels=0):
            hint = (" (it is the narrow schedule now called `fast`: resume with --config fast)"
                    if is_fast_schedule(stored) and not is_fast_schedule(self.model_cfg) else "")
            raise HarnessError("checkpoint was trained with a different model config; use the same "
                               f"--config/--resolution{hint}")
        self.model.load_state_dict(state["model"])
        self.disc.load_state_dict(state["disc"])
        restore_ema(self.ema, state["ema"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.scaler.load_state_dict(state["scaler"])
        self.usage_log.copy_(state["usage_log"])
        self.usage_restart.copy_(state["usage_restart"])
