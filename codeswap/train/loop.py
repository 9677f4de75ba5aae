"""The training machinery shared by every CodeSwap stage.

One process per device; under ``torchrun`` the processes form a group (NCCL on CUDA, gloo on
CPU) and models are wrapped in DistributedDataParallel by the stage. This module owns what
does not depend on the stage: process group, precision, seeding and RNG capture, the
resumable data position, EMA, checkpoints (written atomically by rank 0), MLflow and the
progress bar. A stage subclasses :class:`TrainLoop` and supplies the models, one training
step and its state.
"""

from __future__ import annotations

import json
import os
import random
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any, ContextManager, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from codeswap.config import TrainConfig
from codeswap.data import ResumableSampler
from harness.errors import HarnessError
from harness.tracking import Tracker


class DistInfo(NamedTuple):
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the torchrun process group if there is one (``WORLD_SIZE`` > 1) and pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise HarnessError("--device cuda asked for, but no CUDA device is visible")
        dev = torch.device("cuda", local if device == "cuda" else torch.device(device).index or 0)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, local, dev)


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def configure_backends() -> None:
    """TF32 matmuls and convolutions on Ampere+ (fp32 runs), cuDNN autotuning."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a precision setting; None means plain fp32 (TF32 on GPU)."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


def autocast(device: torch.device, dtype: torch.dtype | None) -> ContextManager:
    return torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else nullcontext()


def make_adam(params, cfg: TrainConfig) -> torch.optim.Adam:
    """Adam at ``cfg.lr``/``cfg.betas``: fused (one kernel over all parameters) when
    ``cfg.fused_adam`` and the parameters' device has the kernel, else torch's default (foreach on GPU)."""
    params = list(params)
    if cfg.fused_adam:
        try:
            return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, fused=True)
        except RuntimeError:  # no fused kernel for this device or dtype
            pass
    return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng() -> dict[str, Any]:
    """This process's RNG states, in a form ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                  "has_gauss": has_gauss, "gauss": gauss},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x: Any) -> Any:
    # random.setstate needs tuples; a checkpoint round trip may give lists
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


class EMA:
    """Exponential moving average of a module's parameters (buffers are copied)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        import copy

        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_p = list(self.module.parameters())
        torch._foreach_lerp_(ema_p, [p.detach() for p in model.parameters()], 1.0 - self.decay)
        for eb, b in zip(self.module.buffers(), model.buffers()):
            eb.copy_(b)

    def state_dict(self) -> dict[str, Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.module.load_state_dict(state)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file, then rename: a killed run never leaves half a checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def state_sha256(module: nn.Module) -> str:
    """Checksum of a module's parameters and buffers (bytes in key order): ranks agree iff equal."""
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class RunTracker(Tracker):
    """MLflow for training runs, in the harness's store (SQLite under the output folder)."""

    def start(self, name: str, params: dict[str, Any], run_id: str | None = None) -> str | None:
        """Start (or, with ``run_id``, continue) a run; returns its id."""
        if not self.enabled:
            return None
        mlflow = self._client()
        run = mlflow.start_run(run_id=run_id) if run_id else mlflow.start_run(run_name=name)
        if not run_id:
            mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})
        return run.info.run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.enabled:
            self._client().log_metrics(metrics, step=step)

    def log_file(self, path: Path, artifact_path: str) -> None:
        if self.enabled:
            self._client().log_artifact(str(path), artifact_path=artifact_path)

    def end(self) -> None:
        if self.enabled and self._mlflow is not None:
            self._mlflow.end_run()


class TrainLoop:
    """Stage-independent loop: data position, steps, logging, evaluation and checkpoints.

    Subclasses set ``self.dataset`` in :meth:`build` and implement :meth:`train_step`,
    :meth:`state_dict` / :meth:`load_state_dict` (their models and optimisers),
    :meth:`evaluate` and :meth:`run_params`.
    """

    stage = "stage"

    def __init__(self, cfg: TrainConfig, dist_info: DistInfo | None = None) -> None:
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
        configure_backends()
        # the same seed on every rank while building, so that models start identical (DDP
        # would broadcast rank 0's weights, but copies such as the EMA are made before that);
        # then a per-rank seed for whatever randomness the steps use
        seed_all(cfg.seed)
        self.dataset: torch.utils.data.Dataset
        self.build()
        seed_all(cfg.seed + self.dist.rank)
        self.sampler = ResumableSampler(len(self.dataset), cfg.batch_size, cfg.seed, self.dist.rank, self.dist.world_size)

    # --- to implement in a stage -------------------------------------------------------
    def build(self) -> None:
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
        return {}

    # --- shared ---------------------------------------------------------------------------
    def autocast(self) -> ContextManager:
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
                     "train_config": _plain(asdict(self.cfg)), **self.state_dict()}
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
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
            raise HarnessError(f"cannot load checkpoint {path}: {exc}") from None
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
        from torch.utils.data import DataLoader
        from tqdm import tqdm

        cfg = self.cfg
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
                  "autocast": str(self.amp_dtype), **{f"train.{k}": v for k, v in _plain(asdict(cfg)).items()},
                  **self.run_params()}
        self.run_id = self.tracker.start(f"{self.stage} {self.out.name}", params, self.run_id)
        last: dict[str, float] = {}
        if self.dist.is_main and self.step == 0:
            last.update(self._evaluate(0))
        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=not (cfg.progress and self.dist.is_main),
                   desc=self.stage, dynamic_ncols=True)
        global_batch = cfg.batch_size * self.dist.world_size
        t_window, n_window = time.perf_counter(), 0
        try:
            while self.step < cfg.max_steps:
                self.epoch, self.batch_in_epoch = self._position()
                self.sampler.set_position(self.epoch, self.batch_in_epoch)
                loader = DataLoader(self.dataset, batch_size=cfg.batch_size, sampler=self.sampler,
                                    num_workers=cfg.num_workers, pin_memory=self.device.type == "cuda",
                                    drop_last=True, persistent_workers=False)
                for batch in loader:
                    batch = batch.to(self.device, non_blocking=True)
                    if self.channels_last:
                        batch = batch.contiguous(memory_format=torch.channels_last)
                    logs = self.train_step(batch, self.step)
                    self.step += 1
                    self.batch_in_epoch += 1
                    n_window += 1
                    bar.update(1)
                    if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                        figures = self._reduce_logs(logs)
                        if self.device.type == "cuda":
                            torch.cuda.synchronize()
                        now = time.perf_counter()
                        figures["perf/images_per_s"] = n_window * global_batch / max(now - t_window, 1e-9)
                        t_window, n_window = now, 0
                        figures["perf/epoch"] = float(self.epoch)
                        self._write_metrics(self.step, figures)
                        last.update(figures)
                        bar.set_postfix(loss=f"{figures.get('train/g_total', float('nan')):.4f}",
                                        img_s=f"{figures['perf/images_per_s']:.1f}")
                    if self.dist.is_main and (self.step % cfg.image_every == 0 or self.step == cfg.max_steps):
                        last.update(self._evaluate(self.step))
                    if self.step % cfg.ckpt_every == 0 or self.step == cfg.max_steps:
                        self.save_checkpoint()
                    if self.step >= cfg.max_steps:
                        break
            self._record_rank_agreement()
        finally:
            bar.close()
            self.tracker.end()
        return last

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
                raise HarnessError(f"ranks hold different weights after step {self.step}; see {self.out / 'ranks.json'}")


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    """Config values as plain Python (tuples to lists, paths to str, nested dicts too) for
    checkpoints and params."""

    def conv(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, (tuple, list)):
            return [conv(x) for x in v]
        return str(v) if isinstance(v, Path) else v

    return conv(d)
