"""Training state beside the models: seeding and RNG capture, the EMA copy, atomic
checkpoint writes and weight checksums (for the rank-agreement check)."""

from __future__ import annotations

import copy
import hashlib
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from faceeval.errors import HarnessError


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


def restore_ema(ema: EMA | None, saved: dict[str, Tensor] | None) -> None:
    """Load a checkpoint's EMA weights into the run's EMA, when the run keeps one."""
    if ema is None:
        return
    if saved is None:
        raise HarnessError("checkpoint has no EMA weights; resume without --ema-decay or start afresh")
    ema.load_state_dict(saved)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file, then rename: a killed run never leaves half a checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def state_sha256(module: nn.Module) -> str:
    """Checksum of a module's parameters and buffers (bytes in key order): ranks agree iff equal."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def make_adam(params, cfg) -> torch.optim.Adam:
    """Adam at ``cfg.lr``/``cfg.betas``: fused (one kernel over all parameters) when
    ``cfg.fused_adam`` and the parameters' device has the kernel, else torch's default (foreach on GPU)."""
    params = list(params)
    if cfg.fused_adam:
        try:
            return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, fused=True)
        except RuntimeError:  # no fused kernel for this device or dtype
            pass
    return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas)
