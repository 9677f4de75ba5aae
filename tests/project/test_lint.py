"""The lint (issue 25): ``ruff check`` with pyproject.toml's ``[tool.ruff]`` finds nothing.

The rules (pycodestyle, pyflakes, isort, bugbear, pyupgrade, blind except, and RUF100 for
``noqa`` comments no enabled rule needs) are in pyproject.toml; ruff is a dev dependency,
pinned in constraints.txt. ``ruff check --fix`` repairs most findings. The test is also shown
to fail: the same command on a file with known violations reports each of them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from helpers import REPO

pytest.importorskip("ruff", reason="ruff is a dev dependency (pip install -e '.[dev]')")

PYPROJECT = REPO / "pyproject.toml"


def _ruff_check(*paths: str, cwd=REPO, output="concise") -> subprocess.CompletedProcess:
    # --no-cache: nothing written into the checkout (tests run in parallel)
    return subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--config", str(PYPROJECT),
                           "--output-format", output, *paths],
                          cwd=cwd, capture_output=True, text=True, timeout=600)


def test_ruff_finds_nothing():
    done = _ruff_check(".")
    assert done.returncode == 0, f"ruff check found problems (fix with `ruff check --fix`):\n{done.stdout}{done.stderr}"


def test_ruff_check_fails_on_a_violation(tmp_path):
    """The check is live: each kind of finding the configuration enables is reported, and exits 1."""
    bad = tmp_path / "bad.py"
    bad.write_text(textwrap.dedent("""\
        import sys
        import os

        from harness import cli
        import numpy


        def f(items=[]):
            try:
                return len(items) == None
            except Exception:
                return sys.argv  # noqa: E731
    """))
    done = _ruff_check(str(bad), cwd=tmp_path, output="json")
    assert done.returncode == 1, done.stdout + done.stderr
    found = {f["code"] for f in json.loads(done.stdout)}
    # unsorted imports (numpy, a third-party package, after the first-party harness), an unused
    # import, a mutable default, == None, a blind except, a noqa that no rule needs
    assert {"I001", "F401", "B006", "E711", "BLE001", "RUF100"} <= found, done.stdout
