"""Processes and devices for training: the torchrun process group, the device, precision.

One process per device; under ``torchrun`` the processes form a group (NCCL on CUDA, gloo on
CPU) and each stage wraps its models in DistributedDataParallel.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from typing import NamedTuple

import torch
import torch.distributed as dist

from faceeval.errors import HarnessError


class DistInfo(NamedTuple):
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str) -> str:
    """``auto`` -> cuda when a GPU is visible, else cpu; any other name must be a device
    this machine has (one-line error otherwise): :func:`faceeval.checks.resolve_device`."""
    from faceeval.checks import resolve_device as checked

    return checked(name)


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the torchrun process group if there is one (``WORLD_SIZE`` > 1) and pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device)
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


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    return torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else nullcontext()
