"""How much a fully cached re-run saves: the same `harness run` twice into a fresh folder.

Prints, for each of the two runs, the CLI wall time and the seconds each method spent
swapping and scoring (the cacheable work), then the ratios. Fixed start-up (importing
torch, MLflow, matplotlib; rendering the report) is paid by both runs and dominates on
a 28-pair demo; on full protocols (1,000+ pairs) the work ratio is what a user sees.

    python benchmarks/cache_speedup.py [--protocol demo] [--method source --method target]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time


def run(args: list[str]) -> tuple[float, float]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "run", *args], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(proc.stderr)
    work = sum(float(a) + float(b) for a, b in re.findall(r"swap ([\d.]+)s, score ([\d.]+)s", proc.stderr))
    return wall, work


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--protocol", default="demo")
    p.add_argument("--method", action="append", default=None)
    p.add_argument("--root", default=None)
    a = p.parse_args()
    methods = a.method or ["source", "target"]
    with tempfile.TemporaryDirectory() as out:
        args = ["--protocol", a.protocol, "--out", out, "--device", "cpu"]
        args += [x for m in methods for x in ("--method", m)]
        if a.root:
            args += ["--root", a.root]
        first = run(args)
        second = run(args)
    print(f"methods: {', '.join(methods)} on {a.protocol}")
    print(f"first run : wall {first[0]:6.2f}s  swap+score {first[1]:6.2f}s")
    print(f"cached run: wall {second[0]:6.2f}s  swap+score {second[1]:6.2f}s")
    print(f"speed-up  : wall {first[0] / second[0]:5.1f}x  swap+score {first[1] / max(second[1], 1e-9):5.1f}x")


if __name__ == "__main__":
    main()
