"""Training progress: a tqdm bar on a terminal, plain lines elsewhere.

A training of minutes to days runs as often under ``nohup``, a scheduler or CI as in a
terminal. :class:`StepProgress` draws a bar when stderr is a terminal; when it is not (a log
file, a pipe) it writes one plain line every :data:`PLAIN_EVERY_S` seconds and one at the
end, so a log shows the training moving without carriage-return debris.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

#: seconds between plain progress lines when stderr is not a terminal
PLAIN_EVERY_S = 30.0


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class StepProgress:
    """The tqdm-like calls the training loop makes (``update``, ``set_postfix``, ``close``).

    ``enabled``: this process reports at all (rank 0); ``bar``: a bar is wanted (``--progress``).
    On a terminal the bar shows when ``bar`` is set; off a terminal plain lines are written
    whenever ``enabled`` (a log has no bar to turn off).
    """

    def __init__(self, desc: str, total: int, initial: int = 0, *, enabled: bool = True, bar: bool = True,
                 stream: TextIO | None = None, every_s: float | None = None) -> None:
        self.desc, self.total, self.n = desc, total, initial
        self.stream = stream or sys.stderr
        self.every_s = PLAIN_EVERY_S if every_s is None else every_s
        self.postfix: dict[str, Any] = {}
        tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._bar = None
        if enabled and bar and tty:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, file=self.stream)
        self._plain = enabled and not tty
        self._t0 = self._last = time.monotonic()
        self._n0 = initial

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self._plain and time.monotonic() - self._last >= self.every_s:
            self._line()

    def set_postfix(self, **kw: Any) -> None:
        self.postfix = kw
        if self._bar is not None:
            self._bar.set_postfix(**kw)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._plain and self.n > self._n0:
            self._line(final=True)

    def _line(self, final: bool = False) -> None:
        now = time.monotonic()
        self._last = now
        elapsed = now - self._t0
        rate = (self.n - self._n0) / elapsed if elapsed > 0 else 0.0
        pct = 100.0 * self.n / self.total if self.total else 100.0
        parts = [f"{self.desc}: step {self.n}/{self.total} ({pct:.0f}%)", f"{rate:.2f} steps/s",
                 f"elapsed {_duration(elapsed)}"]
        if not final and rate > 0 and self.n < self.total:
            parts.append(f"eta {_duration((self.total - self.n) / rate)}")
        parts += [f"{k} {v}" for k, v in self.postfix.items()]
        print(", ".join(parts) + (" (stopped)" if final and self.n < self.total else ""), file=self.stream, flush=True)
