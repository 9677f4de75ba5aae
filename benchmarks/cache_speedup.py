"""How much a fully cached re-run saves: the same `harness run` twice into a fresh folder.

By default the issue-28 example: the `folder` protocol on 98 photos made from the demo
faces (benchmarks/scale_out.py's photos), `-m source -m target`, the default metric suite,
MLflow and the report on. Prints each run's wall time and its split: start-up (the CLI
process until the evaluation starts: imports), swap + score (the cacheable work), the rest
of the evaluation (protocol, report, MLflow, results), and whether the cached run waited
on worker processes (it should start none), then the speed-up.

    python benchmarks/cache_speedup.py [--photos 98] [--protocol folder] [--method source --method target]
    python benchmarks/cache_speedup.py --protocol demo --method all
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(args: list[str], out: Path) -> dict[str, float]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "run", *args], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(proc.stderr)
    work = sum(float(a) + float(b) for a, b in re.findall(r"swap ([\d.]+)s, score ([\d.]+)s", proc.stderr))
    res = json.loads((out / "results.json").read_text())
    evaluation = float(res["seconds"])
    stages = res.get("scale", {}).get("stage_s", {})
    return {"wall": wall, "startup": wall - evaluation, "work": work, "rest": evaluation - work,
            "wait": float(stages.get("wait", 0.0))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--protocol", default="folder")
    p.add_argument("--method", action="append", default=None)
    p.add_argument("--root", default=None, help="photo folder (folder protocol; default: --photos made here)")
    p.add_argument("--photos", type=int, default=98, help="photos to make for the folder protocol")
    a = p.parse_args()
    methods = a.method or ["source", "target"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        root = a.root
        if a.protocol == "folder" and root is None:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from scale_out import write_photos

            root = str(Path(tmp) / "photos")
            write_photos(Path(root), a.photos)
        args = ["--protocol", a.protocol, "--out", str(out), "--device", "cpu"]
        args += [x for m in methods for x in ("--method", m)]
        if root:
            args += ["--root", root]
        first = run(args, out)
        second = run(args, out)
    what = f"{a.photos} photos, " if a.protocol == "folder" and a.root is None else ""
    print(f"methods: {', '.join(methods)} on {a.protocol} ({what}default metric suite, report and MLflow on)")
    for name, r in (("first run ", first), ("cached run", second)):
        print(f"{name}: wall {r['wall']:6.2f}s = start-up {r['startup']:5.2f}s + swap+score {r['work']:6.2f}s "
              f"+ rest {r['rest']:5.2f}s (protocol, report, MLflow); waiting on workers {r['wait']:5.2f}s")
    print(f"speed-up  : wall {first['wall'] / second['wall']:5.1f}x  "
          f"swap+score {first['work'] / max(second['work'], 1e-9):5.1f}x")


if __name__ == "__main__":
    main()
