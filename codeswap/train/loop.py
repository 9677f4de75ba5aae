"""The training loop every CodeSwap stage shares.

:class:`TrainLoop` owns what does not depend on the stage: the resumable data position,
steps, logging, evaluation, checkpoints (written atomically by rank 0), MLflow, the progress
bar and the rank-agreement check. A stage subclasses it and supplies the models, one
training step and its state. The helpers live beside it: :mod:`codeswap.train.dist`
(process group, device, precision), :mod:`codeswap.train.state` (seeding, RNG capture, EMA,
atomic saves, checksums) and :mod:`codeswap.train.tracking` (MLflow).
"""

from __future__ import annotations

import json
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from codeswap.checkpoints import plain, read_checkpoint
from codeswap.config import TrainConfig
from codeswap.data import ResumableSampler
from codeswap.train.dist import DistInfo, autocast, autocast_dtype, configure_backends, init_distributed
from codeswap.train.progress import StepProgress
from codeswap.train.state import atomic_torch_save, capture_rng, restore_rng, seed_all, state_sha256
from codeswap.train.tracking import RunTracker
from faceeval.errors import HarnessError


class TrainLoop:
    """Stage-independent loop: data position, steps, logging, evaluation and checkpoints.

    Subclasses set ``self.dataset`` in :meth:`build` and implement :meth:`train_step`,
    :meth:`state_dict` / :meth:`load_state_dict` (their models and optimisers),
    :meth:`evaluate` and :meth:`run_params`.
    """

    stage = "stage"

    def __init__(self, cfg: TrainConfig, dist_info: DistInfo | None = None) -> None:
        """Settings and the process group only; the models, data and optimisers are built by
        :meth:`setup` (which :meth:`run` calls), so a stage sets its own attributes after
        ``super().__init__`` like any subclass."""
        self.cfg = cfg
        self.dist = dist_info or init_distributed(cfg.device)
        self.device = self.dist.device
        self.amp_dtype = autocast_dtype(cfg.precision, self.device)
        # channels-last pays off with cuDNN; oneDNN on CPU runs these nets slower with it
        self.channels_last = cfg.channels_last and self.device.type == "cuda"
        self.out = Path(cfg.out).resolve()
        self.ckpt_dir = self.out / "checkpoints"
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.run_id: str | None = None
        self.tracker = RunTracker(self.out, cfg.tracking_uri, enabled=cfg.mlflow and self.dist.is_main)
        self.dataset: torch.utils.data.Dataset
        self.sampler: ResumableSampler | None = None  # set by setup()

    def setup(self) -> TrainLoop:
        """Build the stage (once): models, data, optimisers. ``run`` and ``resume`` call it;
        call it first to use the trainer's models or ``train_step`` without ``run``."""
        if self.sampler is not None:
            return self
        configure_backends()
        # the same seed on every rank while building, so that models start identical (DDP
        # would broadcast rank 0's weights, but copies such as the EMA are made before that);
        # then a per-rank seed for whatever randomness the steps use
        seed_all(self.cfg.seed)
        self.build()
        seed_all(self.cfg.seed + self.dist.rank)
        self.sampler = ResumableSampler(len(self.dataset), self.cfg.batch_size, self.cfg.seed, self.dist.rank,
                                        self.dist.world_size)
        return self

    # --- to implement in a stage -------------------------------------------------------
    def build(self) -> None:
        """Create the models, ``self.dataset`` and the optimisers (called once, by :meth:`setup`)."""
        raise NotImplementedError

    def train_step(self, batch: Tensor, step: int) -> dict[str, Tensor]:
        """One optimisation step on this rank's batch; returns detached scalar logs."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def evaluate(self, step: int) -> dict[str, float]:
        """Rank 0 only: validation figures and images (logged by the stage itself)."""
        return {}

    def run_params(self) -> dict[str, Any]:
        return {}

    def trained_modules(self) -> dict[str, nn.Module]:
        """The modules whose weights every rank must hold identically (checked at the end)."""
        raise NotImplementedError

    # --- shared ---------------------------------------------------------------------------
    def autocast(self) -> AbstractContextManager:
        return autocast(self.device, self.amp_dtype)

    def _reduce_logs(self, logs: dict[str, Tensor]) -> dict[str, float]:
        """Average scalar logs over ranks (one collective), then read them on the host."""
        keys = sorted(logs)
        values = torch.stack([logs[k].float().reshape(()) for k in keys])
        if self.dist.world_size > 1:
            dist.all_reduce(values)
            values /= self.dist.world_size
        return dict(zip(keys, values.tolist()))

    def _position(self) -> tuple[int, int]:
        if self.batch_in_epoch >= self.sampler.batches_per_epoch:
            return self.epoch + 1, 0
        return self.epoch, self.batch_in_epoch

    def save_checkpoint(self) -> Path:
        """Every rank contributes its RNG state; rank 0 writes ``last.pt`` (and keeps a copy
        every ``keep_every`` steps)."""
        rngs: list[Any] = [capture_rng()]
        if self.dist.world_size > 1:
            rngs = [None] * self.dist.world_size
            dist.all_gather_object(rngs, capture_rng())
        epoch, batch = self._position()
        path = self.ckpt_dir / "last.pt"
        if self.dist.is_main:
            state = {"stage": self.stage, "step": self.step, "epoch": epoch,
                     "samples_in_epoch": batch * self.cfg.batch_size * self.dist.world_size,
                     "world_size": self.dist.world_size, "rng": rngs, "mlflow_run_id": self.run_id,
                     "train_config": plain(self.cfg), **self.state_dict()}
            atomic_torch_save(state, path)
            if self.cfg.keep_every and self.step % self.cfg.keep_every == 0:
                atomic_torch_save(state, self.ckpt_dir / f"step_{self.step:08d}.pt")
        if self.dist.world_size > 1:
            dist.barrier()
        return path

    def resume(self, path: Path | None = None) -> bool:
        """Load ``path`` (default: ``<out>/checkpoints/last.pt``); False if there is none."""
        path = path or self.ckpt_dir / "last.pt"
        if not path.is_file():
            return False
        self.setup()
        state = read_checkpoint(path)
        if state.get("stage") != self.stage:
            raise HarnessError(f"{path} is a {state.get('stage')} checkpoint, not {self.stage}")
        self.load_state_dict(state)
        # the position is kept in samples, so that a resume with another number of processes
        # or batch size continues the same epoch at the same place (to within one batch)
        self.step, self.epoch = state["step"], state["epoch"]
        self.batch_in_epoch = state["samples_in_epoch"] // (self.cfg.batch_size * self.dist.world_size)
        self.run_id = state.get("mlflow_run_id")
        if state["world_size"] == self.dist.world_size:
            restore_rng(state["rng"][self.dist.rank])
        else:
            # the data position carries over; per-rank RNG streams cannot
            seed_all(self.cfg.seed + self.dist.rank + self.step)
        return True

    def _metrics_file(self) -> Path:
        return self.out / "metrics.jsonl"

    def _trim_metrics(self) -> None:
        # after a resume, drop rows the interrupted run logged past its last checkpoint
        f = self._metrics_file()
        if self.dist.is_main and f.is_file():
            rows = [r for r in f.read_text().splitlines() if r and json.loads(r)["step"] <= self.step]
            f.write_text("".join(r + "\n" for r in rows))

    def _write_metrics(self, step: int, logs: dict[str, float]) -> None:
        if self.dist.is_main:
            with self._metrics_file().open("a") as fh:
                fh.write(json.dumps({"step": step, **logs}) + "\n")
            self.tracker.log_metrics(logs, step)

    def _evaluate(self, step: int) -> dict[str, float]:
        figures = self.evaluate(step)
        if figures:
            self._write_metrics(step, figures)
        return figures

    def run(self, resume: bool = False) -> dict[str, float]:
        """Train to ``max_steps``; returns the last logged figures."""
        cfg = self.cfg
        self._start_run(resume)
        last: dict[str, float] = {}
        if self.dist.is_main and self.step == 0:
            last.update(self._evaluate(0))
        # a bar on a terminal (with --progress), plain lines in a log (codeswap.train.progress)
        bar = StepProgress(self.stage, cfg.max_steps, self.step, enabled=self.dist.is_main, bar=cfg.progress)
        try:
            self._train_to_max_steps(bar, last)
            self._record_rank_agreement()
        finally:
            bar.close()
            self.tracker.end()
        return last

    def _start_run(self, resume: bool) -> None:
        """Build the stage, resume from the last checkpoint (``resume``; else refuse to overwrite
        one), start the metrics file over or trim it, and start the tracking run."""
        cfg = self.cfg
        self.setup()
        self.out.mkdir(parents=True, exist_ok=True)
        resumed = self.resume() if resume else False
        if not resume and (self.ckpt_dir / "last.pt").is_file():
            raise HarnessError(f"{self.ckpt_dir / 'last.pt'} exists: pass --resume to continue it, "
                               "or choose another --out")
        if resumed:
            self._trim_metrics()
        elif self.dist.is_main:
            self._metrics_file().unlink(missing_ok=True)
        params = {"stage": self.stage, "world_size": self.dist.world_size, "device": self.device.type,
                  "autocast": str(self.amp_dtype), **{f"train.{k}": v for k, v in plain(cfg).items()},
                  **self.run_params()}
        self.run_id = self.tracker.start(f"{self.stage} {self.out.name}", params, self.run_id)

    def _train_to_max_steps(self, bar: StepProgress, last: dict[str, float]) -> None:
        """Epochs of batches from the resumable sampler until ``max_steps``: log, evaluate and
        checkpoint on their schedules; ``last`` gets every logged figure."""
        from torch.utils.data import DataLoader

        cfg = self.cfg
        global_batch = cfg.batch_size * self.dist.world_size
        t_window, n_window = time.perf_counter(), 0
        while self.step < cfg.max_steps:
            self.epoch, self.batch_in_epoch = self._position()
            self.sampler.set_position(self.epoch, self.batch_in_epoch)
            loader = DataLoader(self.dataset, batch_size=cfg.batch_size, sampler=self.sampler,
                                num_workers=cfg.num_workers, pin_memory=self.device.type == "cuda",
                                drop_last=True, persistent_workers=False)
            for batch in loader:
                logs = self._train_batch(batch)
                n_window += 1
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                    figures, t_window = self._log_figures(logs, n_window * global_batch, t_window)
                    n_window = 0
                    last.update(figures)
                    bar.set_postfix(loss=f"{figures.get('train/g_total', float('nan')):.4f}",
                                    img_s=f"{figures['perf/images_per_s']:.1f}")
                if self.dist.is_main and (self.step % cfg.image_every == 0 or self.step == cfg.max_steps):
                    last.update(self._evaluate(self.step))
                if self.step % cfg.ckpt_every == 0 or self.step == cfg.max_steps:
                    self.save_checkpoint()
                if self.step >= cfg.max_steps:
                    break

    def _train_batch(self, batch: Tensor | list[Tensor]) -> dict[str, Tensor]:
        """One step on this rank's batch (moved to the device): ``train_step``, then the step and
        the position in the epoch advance. A dataset of (image, index) items gives ``[images,
        indices]``: the images move to the device, the indices stay."""
        images, indices = batch if isinstance(batch, list | tuple) else (batch, None)
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        logs = self.train_step(images if indices is None else [images, indices], self.step)
        self.step += 1
        self.batch_in_epoch += 1
        return logs

    def _log_figures(self, logs: dict[str, Tensor], images: int, since: float) -> tuple[dict[str, float], float]:
        """The step's figures (logs averaged over ranks, throughput of the ``images`` trained since
        ``since``, epoch), written to the metrics; returns them and the time they were taken."""
        figures = self._reduce_logs(logs)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        figures["perf/images_per_s"] = images / max(now - since, 1e-9)
        figures["perf/epoch"] = float(self.epoch)
        self._write_metrics(self.step, figures)
        return figures, now

    def _record_rank_agreement(self) -> None:
        """Under several processes, write ``<out>/ranks.json``: each rank's own checksum of
        each trained module, so that a diverged replica is visible rather than silent."""
        if self.dist.world_size == 1:
            return
        mine = {name: state_sha256(m) for name, m in self.trained_modules().items()}
        every: list[Any] = [None] * self.dist.world_size
        dist.all_gather_object(every, mine)
        if self.dist.is_main:
            agree = all(r == every[0] for r in every)
            (self.out / "ranks.json").write_text(json.dumps(
                {"world_size": self.dist.world_size, "step": self.step, "agree": agree, "sha256": every}, indent=1))
            if not agree:
                raise HarnessError(f"ranks hold different weights after step {self.step}; "
                                   f"see {self.out / 'ranks.json'}")
