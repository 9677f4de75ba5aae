"""Checks of what a run is given, made before any expensive work: a run that will fail
fails in its first seconds, with one line."""

from __future__ import annotations

import re
from pathlib import Path

from faceeval.errors import HarnessError

_DEVICE = re.compile(r"^(cpu|cuda|mps)(:\d+)?$")


def resolve_device(name: str) -> str:
    """``auto`` -> cuda when available, else cpu; any other name must be a device this
    machine has (cpu, cuda, cuda:N, mps)."""
    name = name.strip().lower()
    if name == "cpu":
        return name  # every machine has one; torch is not imported for it (a cached run may never need torch)
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not _DEVICE.match(name):
        raise HarnessError(f"--device {name!r} is not a device: choose cpu, cuda, cuda:N, mps or auto")
    kind, _, index = name.partition(":")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise HarnessError(f"--device {name}: no CUDA device on this machine (use cpu or auto)")
        if index and int(index) >= torch.cuda.device_count():
            raise HarnessError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise HarnessError(f"--device {name}: MPS is not available on this machine (use cpu or auto)")
    return name


def check_out_dir(out: Path) -> Path:
    """``--out`` must be a folder (or not exist yet, with a folder as its nearest existing
    parent) that can be written to. Returns it resolved."""
    out = Path(out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise HarnessError(f"--out {out} is a file, not a folder")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise HarnessError(f"--out {out}: {parent} is a file, not a folder")
    import os

    if not os.access(parent, os.W_OK | os.X_OK):
        raise HarnessError(f"--out {out}: {parent} is not writable")
    return out


_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")


def check_name(kind: str, name: str) -> str:
    """A name that becomes part of a path inside ``--out`` (a method's name or label, a
    protocol's name): letters, digits, ``_``, ``-`` and ``.``, not starting with ``.``, at
    most 100 characters. So ``../x``, ``a/b`` or an absolute path can never lead a file
    outside its folder. Returns ``name``."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise HarnessError(f"{kind} {name!r} is not a name: use letters, digits, '_', '-' and '.' "
                           "(not starting with '.', at most 100 characters)")
    return name


def inside(base: Path, rel: str) -> Path:
    """``base / rel`` when ``rel`` is relative and has no ``..`` that climbs out of ``base``,
    else a HarnessError: a relative path read from a file inside ``--out`` (pairs.parquet,
    summary.json) never leads a read outside the folder it is relative to. Checked on the
    text, so a dataset whose images are symlinks to another disk still reads."""
    import os

    norm = os.path.normpath(str(rel))
    if os.path.isabs(norm) or norm == ".." or norm.startswith(".." + os.sep):
        raise HarnessError(f"{rel!r} points outside {base}: not read")
    return Path(base) / norm


def input_root(stored_root: str, run_dir: str, out_dir: Path) -> Path:
    """The dataset root a report reads a run's input faces from (``stored_root``, as its
    summary names it): inside the output folder (prepared crops under ``cache/``) or the demo
    faces shipped with the harness; any other path written in a ``summary.json`` is refused in
    one line, never read."""
    from faceeval.constants import DEMO_DIR

    root = Path(str(stored_root or "")).resolve()
    if root.is_relative_to(Path(out_dir).resolve()) or root == DEMO_DIR.resolve():
        return root
    raise HarnessError(f"run {Path(str(run_dir or '?')).name}: its summary.json names the dataset root "
                       f"{root}, outside {out_dir} and not the shipped demo faces: not read (re-run the method to "
                       "rewrite its summary)")

