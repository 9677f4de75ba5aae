"""Where the time goes: seconds per stage of a run (decode, detect, landmarks, embed, ...).

Code marks its stages with ``with stage("detect"):``. Stages nest; each second counts once,
for the innermost stage open at that moment (a classical swap's detection is "detect", the
rest of the swap "swap"). Totals are per process; the worker pool and the torchrun ranks
send theirs back (:func:`add`), so a run reports process-seconds per stage summed over
every process that worked for it.

Example:
    >>> from faceeval.timing import stage, snapshot
    >>> with stage("decode"):
    ...     pass
    >>> "decode" in snapshot()
    True
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

#: the stages a run reports, in the order tables show them
STAGES = ("decode", "detect", "landmarks", "align", "embed", "swap", "write", "aggregate", "wait", "other")

_local = threading.local()
_totals: dict[str, float] = {}
_lock = threading.Lock()


def _stack() -> list[list]:
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Count the time inside the block as ``name`` (minus time in stages opened inside it)."""
    stack = _stack()
    entry = [name, time.perf_counter(), 0.0]  # name, start, seconds spent in inner stages
    stack.append(entry)
    try:
        yield
    finally:
        stack.pop()
        elapsed = time.perf_counter() - entry[1]
        with _lock:
            _totals[name] = _totals.get(name, 0.0) + elapsed - entry[2]
        if stack:
            stack[-1][2] += elapsed


def snapshot() -> dict[str, float]:
    """This process's seconds per stage so far (finished stages only)."""
    with _lock:
        return dict(_totals)


def add(times: Mapping[str, float]) -> None:
    """Add seconds measured elsewhere (a worker process, another rank) to this process's totals."""
    with _lock:
        for name, seconds in times.items():
            _totals[name] = _totals.get(name, 0.0) + float(seconds)


def since(before: Mapping[str, float]) -> dict[str, float]:
    """Seconds per stage added since ``before`` (a :func:`snapshot`), rounded to ms."""
    now = snapshot()
    return {k: round(v - before.get(k, 0.0), 3) for k, v in now.items() if v - before.get(k, 0.0) > 0.0005}


def merged(*parts: Mapping[str, float]) -> dict[str, float]:
    """Sum of several stage-time dicts, in :data:`STAGES` order (unknown stages last)."""
    total: dict[str, float] = {}
    for part in parts:
        for k, v in part.items():
            total[k] = total.get(k, 0.0) + v
    order = [k for k in STAGES if k in total] + sorted(k for k in total if k not in STAGES)
    return {k: round(total[k], 3) for k in order}
