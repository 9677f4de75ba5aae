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


class NetworkTask:
    """A picklable pool task over one shared network: ``items`` -> (N, D) float32 outputs.

    Subclasses name the network's ``loader`` and give :meth:`rows` (items -> an array whose
    first axis is the items: crops, or row indices) and :meth:`forward` (the network on a
    batch of those rows). The network is built once per process (:func:`shared_model`) and
    run in fixed batches (:func:`faceeval.parallel.fixed_batches`), so a row's output never
    depends on its neighbours. On the CPU the task runs in the worker pool; on a GPU in the
    main process (:func:`faceeval.parallel.map_rows`)."""

    loader: str  # "module:function", path -> nn.Module

    def __init__(self, path: Path, sha256: str, device: str) -> None:
        self.path, self.sha256, self.device = path, sha256, device

    def rows(self, items: list) -> Any:
        return items

    def forward(self, model: Any, batch: Any) -> Any:
        raise NotImplementedError

    def __call__(self, items: list) -> Any:
        import torch

        from faceeval.parallel import feature_batch, fixed_batches
        from faceeval.timing import stage

        model = shared_model(self.loader, self.path, self.sha256, self.device)
        with stage("align"):
            rows = self.rows(items)
        with torch.inference_mode(), stage("embed"):
            return fixed_batches(lambda batch: self.forward(model, batch), rows, feature_batch(self.device))
