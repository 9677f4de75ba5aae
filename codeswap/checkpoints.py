"""Loading trained CodeSwap networks from checkpoints (always ``weights_only=True``).

:func:`read_checkpoint` is the one way codeswap reads a ``.pt``/``.pth`` file (checkpoints,
resumes, weight files); :func:`plain` is what configs become inside one.

* stage 1 (``harness train stage1``): ``model`` (+ ``ema``) state dicts and ``model_config``;
* stages 2/3 (``harness train stage2|stage3``): ``codeswap`` state dict (fusion, mask and
  the frozen autoencoder) and ``codeswap_config``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import torch

from codeswap.config import FAST, AutoencoderConfig, QuantizerConfig
from codeswap.fusion import FusionConfig
from codeswap.model import CodeSwap, CodeSwapConfig
from codeswap.vqgan import VQAutoencoder
from faceeval.errors import HarnessError
from faceeval.images import file_sha256

log = logging.getLogger(__name__)

# AutoencoderConfig fields added when `paper` became the paper's VQGAN structure; a stored
# config without them predates that change
_PAPER_STRUCTURE_KEYS = ("attn_every_block", "asymmetric_downsample")


def _dataclass_from(cls, data: dict[str, Any]):
    """Rebuild a frozen config from its checkpoint dict (lists back to tuples)."""
    kwargs = {}
    for f in fields(cls):
        if f.name in data:
            v = data[f.name]
            kwargs[f.name] = tuple(v) if isinstance(v, list) else v
    return cls(**kwargs)


def is_fast_schedule(cfg: AutoencoderConfig) -> bool:
    """True when ``cfg`` is the narrow ``fast`` schedule at any resolution / checkpointing."""
    return replace(cfg, resolution=FAST.resolution, checkpoint_levels=FAST.checkpoint_levels) == FAST


def predates_paper_structure(data: dict[str, Any]) -> bool:
    """True for a stored config written when `paper` named the narrow schedule."""
    return not any(k in data for k in _PAPER_STRUCTURE_KEYS)


def autoencoder_config(data: dict[str, Any]) -> AutoencoderConfig:
    """A stored autoencoder config; fields it lacks take their defaults, which rebuild the
    network older code built. A config stored as the old `paper` notes (one log line) that
    it is the narrow schedule now called `fast`."""
    cfg = _dataclass_from(AutoencoderConfig, {**data, "quant": QuantizerConfig(**data["quant"])})
    if predates_paper_structure(data) and is_fast_schedule(cfg):
        log.warning("note: this checkpoint's autoencoder is the narrow schedule that was called `paper`, "
                    "now called `fast` (--config fast); `paper` is now the paper's VQGAN structure")
    return cfg


def codeswap_config(data: dict[str, Any]) -> CodeSwapConfig:
    # checkpoints from before FusionConfig.position existed used the absolute position code
    fusion = {"position": "absolute", **data["fusion"]}
    return _dataclass_from(CodeSwapConfig, {
        **data, "autoencoder": autoencoder_config(data["autoencoder"]),
        "fusion": _dataclass_from(FusionConfig, fusion),
    })


def plain(value: Any) -> Any:
    """A config (or a dict of settings) as plain Python, for checkpoints and MLflow params:
    dataclasses to dicts, tuples to lists, paths to strings, all the way down."""
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    return str(value) if isinstance(value, Path) else value


def read_checkpoint(path: Path, what: str = "checkpoint") -> dict[str, Any]:
    """The contents of a torch file, read strictly: ``weights_only=True`` (no pickled code
    runs), on the CPU. A missing or unreadable file, or one that does not hold a dict, is a
    one-line :class:`HarnessError`."""
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"{what} not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HarnessError(f"cannot load {what} {path}: {first[:300]}") from None
    if not isinstance(state, dict):
        raise HarnessError(f"{path} is not a {what} this project reads (a {type(state).__name__}, expected a dict"
                           + (" written by `harness train`)" if what == "checkpoint" else ")"))
    return state


def _require(state: dict[str, Any], path: Path, keys: tuple[str, ...]) -> None:
    missing = [k for k in keys if k not in state]
    if missing:
        raise HarnessError(f"{path} is not a complete {state.get('stage')} checkpoint: missing {', '.join(missing)}")


def _build(path: Path, make, weights):
    """Build a model from a checkpoint's config and load its weights; a config or weights
    that do not fit (wrong fields, wrong shapes, missing keys) is one line naming the file."""
    try:
        model = make()
    except (TypeError, KeyError, ValueError, AttributeError) as exc:
        raise HarnessError(f"{path}: its model config is not valid ({exc})") from None
    if not isinstance(weights, dict):
        raise HarnessError(f"{path}: its weights are a {type(weights).__name__}, not a state dict")
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = next((ln for ln in lines if "size mismatch" in ln or "Missing key" in ln or "Unexpected key" in ln),
                      lines[0] if lines else "")
        raise HarnessError(f"{path}: weights do not fit the model its config describes ({detail[:300]})") from None
    return model


def load_stage1(path: Path, use_ema: bool = True) -> tuple[VQAutoencoder, str]:
    """The stage-1 autoencoder (EMA weights when present and ``use_ema``) and the file's sha256."""
    state = read_checkpoint(path)
    if state.get("stage") != "stage1":
        raise HarnessError(f"{path} is a {state.get('stage')} checkpoint, not stage1")
    _require(state, Path(path), ("model_config", "model"))
    weights = state["ema"] if use_ema and state.get("ema") is not None else state["model"]
    model = _build(Path(path), lambda: VQAutoencoder(autoencoder_config(state["model_config"])), weights)
    return model.eval(), file_sha256(Path(path))


def load_codeswap(path: Path) -> tuple[CodeSwap, dict[str, Any]]:
    """A stage-2 or stage-3 checkpoint as a ready CodeSwap model (eval mode) and its metadata."""
    state = read_checkpoint(path)
    if state.get("stage") not in ("stage2", "stage3"):
        raise HarnessError(f"{path} is a {state.get('stage')} checkpoint; CodeSwap needs a stage2 or stage3 one")
    _require(state, Path(path), ("codeswap_config", "codeswap"))
    weights = state["ema"] if state.get("ema") is not None else state["codeswap"]
    model = _build(Path(path), lambda: CodeSwap(codeswap_config(state["codeswap_config"])), weights)
    meta = {"stage": state["stage"], "step": state.get("step", 0), "sha256": file_sha256(Path(path)),
            "stage1_sha256": state.get("stage1_sha256", ""),
            "identity_net": _find_key({k: state.get(k) for k in ("swap_config", "train_config")}, "identity_net")}
    return model.eval(), meta


def _find_key(tree: Any, key: str) -> Any:
    """The first value stored under ``key`` anywhere in a nested dict (None when absent)."""
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        for v in tree.values():
            found = _find_key(v, key)
            if found is not None:
                return found
    return None
