"""One frozen instance of each network per (loader, weight file, device) and process.

The metrics run their networks in the worker pool on the CPU (each worker builds the network
once, on its first task) and in the main process on a GPU; both ask here, so a network is
built once wherever it runs. Loaders take the weight file's path and return an ``nn.Module``;
they load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

_MODELS: dict[tuple[str, str, str, str], Any] = {}


def shared_model(loader: str, path: Path, sha256: str, device: str) -> Any:
    """``loader`` ("module:function", path -> nn.Module) applied once per file content and
    device; the module is moved to ``device``, frozen and in eval mode."""
    import torch

    key = (loader, str(path), sha256, str(device))
    if key not in _MODELS:
        mod, fn = loader.split(":")
        with torch.inference_mode(False):  # normal tensors even when first used inside inference mode
            model = getattr(importlib.import_module(mod), fn)(Path(path))
            _MODELS[key] = model.to(device).requires_grad_(False).eval()
    return _MODELS[key]
