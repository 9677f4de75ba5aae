"""Run the tests against the lowest versions pyproject.toml allows (not part of CI).

Reads every runtime and dev requirement's lower bound (``name>=X``) from pyproject.toml,
writes them as ``name==X.*`` constraints (the newest patch of the lowest series), builds a
separate venv with them (pip resolves everything else) and runs pytest there. A requirement
without a lower bound is left to pip.

    python3 scripts/lowest_versions.py                         # whole suite, venv .venv-lowest
    python3 scripts/lowest_versions.py -- tests/harness/test_api.py -x # pytest arguments after --
    python3 scripts/lowest_versions.py --print                 # only print the constraints

Exit status: pip's if the install fails (a lower bound that does not install together with
the others is too low), else pytest's. Extra pip arguments (for example a CPU-only torch
index) go in $LOWEST_PIP_ARGS.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_LOWER = re.compile(r"^\s*([A-Za-z0-9._-]+)\s*(?:\[[^\]]*\])?\s*(.*)$")


def lowest_pins(pyproject: Path = REPO / "pyproject.toml", extras: tuple[str, ...] = ("dev",)) -> list[str]:
    """``name==lower.*`` for every requirement of the project (and ``extras``) that has ``>=``."""
    project = tomllib.loads(pyproject.read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project.get("optional-dependencies", {}).get(extra, [])
    pins = []
    for req in reqs:
        name, spec = _LOWER.match(req.split(";")[0]).groups()
        low = [s.strip()[2:].strip() for s in spec.split(",") if s.strip().startswith(">=")]
        if low:
            pins.append(f"{name}=={low[0]}.*")  # the lowest series: 4.10 -> 4.10.0.84
    return pins


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--venv", type=Path, default=REPO / ".venv-lowest", help="venv folder to (re)use")
    ap.add_argument("--print", action="store_true", help="print the constraints and stop")
    ap.add_argument("pytest_args", nargs="*", help="after --: arguments for pytest (default: the whole suite)")
    args = ap.parse_args()
    pins = lowest_pins()
    if args.print:
        print("\n".join(pins))
        return 0
    args.venv.mkdir(parents=True, exist_ok=True)
    constraints = args.venv / "lowest-constraints.txt"
    constraints.write_text("\n".join(pins) + "\n")
    py = args.venv / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(args.venv)], check=True)
    pip = [str(py), "-m", "pip", "install", "-q", "-c", str(constraints),
           *shlex.split(os.environ.get("LOWEST_PIP_ARGS", "")), "-e", f"{REPO}[dev]"]
    print("+", " ".join(pip), flush=True)
    rc = subprocess.run(pip).returncode
    if rc:
        print(f"install with the lowest versions failed (pip exit {rc}); constraints: {constraints}", file=sys.stderr)
        return rc
    subprocess.run([str(py), "-m", "pip", "freeze", "--exclude-editable"],
                   stdout=(args.venv / "freeze.txt").open("w"), check=True)
    print(f"installed versions: {args.venv / 'freeze.txt'}", flush=True)
    test = [str(py), "-m", "pytest", "-p", "no:cacheprovider", *(args.pytest_args or [])]
    print("+", " ".join(test), flush=True)
    return subprocess.run(test, cwd=REPO).returncode


if __name__ == "__main__":
    sys.exit(main())
