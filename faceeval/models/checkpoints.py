"""Reading third-party checkpoints: always ``torch.load(weights_only=True)``, keys
checked one by one, one clear line when a file is not what it should be.

* :func:`read_torch`: a file -> whatever it holds (tensors, dicts, lists), or one line
  naming the file when it is not a readable torch file;
* :func:`read_state_dict`: a file -> ``{name: tensor}`` (``state_dict`` wrappers and
  DataParallel's ``module.`` prefixes removed);
* :func:`load_strict`: keys and shapes compared before ``load_state_dict(strict=True)``,
  naming what is missing, unexpected or of the wrong shape;
* :func:`load_pickled_modules`: a pickled whole model read with ``weights_only=True``,
  the classes it names allow-listed and bound to this project's own (no code from the
  file runs).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from faceeval.errors import HarnessError


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text.splitlines()[0][:200]}" if text else type(exc).__name__


def read_torch(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; a file that is not a loadable
    torch file (truncated, garbage, pickled code) is a one-line error naming it."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)  # no pickled code runs
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise HarnessError(f"{path.name}: not a readable torch state dict ({_first_line(exc)})") from None


def is_state_dict(state: Any) -> bool:
    """True for a name -> tensor dict."""
    return isinstance(state, dict) and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items())


def read_state_dict(path: Path, what: str) -> dict[str, Tensor]:
    """``torch.load(path, weights_only=True)`` as a name -> tensor dict, ``module.``
    prefixes stripped; anything else is a one-line error naming ``what`` was expected."""
    path = Path(path)
    state = read_torch(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not is_state_dict(state):
        raise HarnessError(f"{path.name}: expected a {what} state dict (name -> tensor), got {type(state).__name__}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _listed(keys: list[str], limit: int = 3) -> str:
    return f"{keys[:limit]}{'...' if len(keys) > limit else ''}"


def load_strict(model: nn.Module, state: dict[str, Tensor], path: Path | str, what: str, listed: int = 3) -> nn.Module:
    """Load ``state`` into ``model`` only if every key and shape matches; otherwise a
    one-line error: ``<file>: keys do not match <what> (missing ...; unexpected ...; shape ...)``;
    a ``state`` that is not a name -> tensor dict is one too."""
    if not is_state_dict(state):
        raise HarnessError(f"{Path(path).name}: not {what} (expected a state dict of tensors, "
                           f"got {type(state).__name__})")
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}" for k in sorted(set(own) & set(state))
              if tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = ([f"missing {_listed(missing, listed)}"] if missing else []) + (
            [f"unexpected {_listed(unexpected, listed)}"] if unexpected else []) + (
            [f"shape mismatch {_listed(shapes, 2)}"] if shapes else [])
        raise HarnessError(f"{Path(path).name}: keys do not match {what} ({'; '.join(parts)})")
    model.load_state_dict(state, strict=True)
    return model


def load_pickled_modules(path: Path, allowed: Iterable[Any], what: str) -> Any:
    """A pickled object of known classes, read with ``weights_only=True``: ``allowed``
    lists classes (or ``(class, "pickled.module.Name")`` pairs) the unpickler may build."""
    with torch.serialization.safe_globals(list(allowed)):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling refusal becomes one clear line
            raise HarnessError(f"{path}: cannot read as {what} with weights_only=True ({_first_line(exc)})") from None
