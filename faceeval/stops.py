"""Ctrl-C and SIGTERM: how a long run stops.

While :func:`handling` is active (``harness run`` and :func:`harness.evaluate`, in the main
thread), SIGINT and SIGTERM raise :class:`Interrupted`, a ``KeyboardInterrupt``, so every
``finally`` runs: the worker pool is shut down and its processes ended, MLflow runs end
KILLED, caches keep what finished. The signal is also remembered: Python ignores an
exception raised while it runs a ``__del__`` or a weakref callback ("Exception ignored
in: ..."), so a signal that lands there would be lost; the work loops call :func:`check`,
which raises again, and the CLI exits 130 (SIGINT) or 143 (SIGTERM) whatever happened.

Example:
    >>> from harness import stops
    >>> with stops.handling():  # doctest: +SKIP
    ...     for batch in batches:
    ...         stops.check()   # raises Interrupted once a signal came, even a swallowed one
    ...         work(batch)
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

#: what the CLI prints when a run is stopped by a signal
MESSAGE = "interrupted: finished work is cached; run the same command again to resume"

_received: list[int] = []  # signal numbers received while handling (the first decides the exit code)
_depth = [0]


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread when SIGINT or SIGTERM arrives; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _handler(signum, frame) -> None:
    _received.append(signum)
    raise Interrupted(signum)


def received() -> int | None:
    """The first signal received while handling (None when none came)."""
    return _received[0] if _received else None


def exit_code(signum: int | None) -> int:
    """The shell's convention: 128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + (signum or signal.SIGINT)


def check() -> None:
    """Raise :class:`Interrupted` if a signal arrived (also one whose exception Python
    swallowed); call it between units of work."""
    if _received:
        raise Interrupted(_received[0])


def reset() -> None:
    """Forget received signals (tests; a Python session that carries on after one)."""
    _received.clear()


@contextmanager
def handling() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` inside the block. Only in the main
    thread (Python delivers signals there; elsewhere the block runs unchanged); nested
    blocks keep the outer handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _depth[0]:  # an outer block handles them
        _depth[0] += 1
        try:
            yield
        finally:
            _depth[0] -= 1
        return
    _received.clear()  # a signal that stopped an earlier run in this process is not this run's
    previous = {s: signal.signal(s, _handler) for s in (signal.SIGINT, signal.SIGTERM)}
    _depth[0] = 1
    try:
        yield
    finally:
        _depth[0] = 0
        for s, h in previous.items():
            signal.signal(s, h)
