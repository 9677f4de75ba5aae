"""What several test files share: the repository root, the hang guard on subprocesses, and the
command line run as a subprocess (``python -m harness.cli ...``).

Test files import it as ``from helpers import ...`` (``tests/`` is on ``sys.path`` while pytest
runs, as for ``onnx_models`` and ``metrics_helpers``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

#: the repository root (the folder holding pyproject.toml)
REPO = Path(__file__).resolve().parents[1]

#: seconds a test's subprocess may run: only against a hung process, never a speed limit (a busy
#: 2-core machine runs the longest of them for minutes; see docs/testing.md)
HANG_GUARD_S = 3600


def cli_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a command-line subprocess: this process's, ``HARNESS_DEBUG`` empty
    (errors as the user sees them: one line, no traceback), then ``env`` on top."""
    return {**os.environ, "HARNESS_DEBUG": "", **(env or {})}


def harness_cli(*args: str, env: Mapping[str, str] | None = None, cwd: Path | str | None = None,
                check: bool = False, timeout: float = HANG_GUARD_S) -> subprocess.CompletedProcess:
    """``python -m harness.cli ARGS`` in a subprocess of this interpreter, stdout and stderr
    captured as text, its environment :func:`cli_env` (``env`` on top), stopped after
    ``timeout`` seconds (the hang guard). ``check=True``: a non-zero exit fails the test with
    the command and its stderr."""
    proc = subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          env=cli_env(env), cwd=cwd, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"harness {' '.join(args)} failed (exit {proc.returncode}):\n{proc.stderr}")
    return proc
