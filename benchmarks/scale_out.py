"""How `harness run` scales with processes: torchrun ranks and --workers, same numbers.

Builds a folder of face photos from the bundled demo faces (28 people; each photo a
slightly moved, scaled, mirrored or relit copy, so every photo is new content and every
pair is computed), then runs the same `harness run --protocol folder` command from an
empty --out at each setting (default: 1 process x 1 worker, 1 x 2 workers, 2 ranks x 1
worker), with `target` and `classical` and the default metric suite. Prints wall time,
pairs/s, the speed-up over the first setting, whether the numbers are identical to it,
and the process-seconds per stage (decode, detect, landmarks, align, embed, swap, write,
aggregate; "wait" is a process waiting for its worker pool) summed over every process.

    python benchmarks/scale_out.py --pairs 1000                  # the issue's run
    python benchmarks/scale_out.py --pairs 200 --settings 1x1 2x1
    python benchmarks/scale_out.py --settings 1x2 --metric identity --metric pose \
        --metric expression --metric fid_facenet                 # the stand-in suite, same photos
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = ("target", "classical")


def write_photos(folder: Path, count: int) -> None:
    """``count`` distinct photos of the demo's 28 people, ``folder/<identity>/<k>.png``:
    each a demo crop moved, scaled and rotated a little, maybe mirrored and relit."""
    import cv2
    import numpy as np

    from faceeval.constants import DEMO_DIR
    from faceeval.images import load_rgb, save_png

    faces = json.loads((DEMO_DIR / "faces.json").read_text())
    for k in range(count):
        face = faces[k % len(faces)]
        img = load_rgb(DEMO_DIR / face["file"])  # (256, 256, 3) aligned crop
        v = k // len(faces)  # the variation of this copy
        angle, scale = (v % 5 - 2) * 2.0, 0.9 + 0.05 * (v % 3)
        m = cv2.getRotationMatrix2D((128, 128), angle, scale)
        m[:, 2] += ((v % 7) - 3, (v % 4) - 1.5)
        out = cv2.warpAffine(img, m, (256, 256), borderMode=cv2.BORDER_REFLECT_101)
        if v % 2:
            out = out[:, ::-1]
        out = np.clip(out.astype(np.float32) * (0.9 + 0.04 * (v % 6)), 0, 255).astype(np.uint8)
        save_png(folder / face["identity"] / f"{v:04d}.png", np.ascontiguousarray(out))


def command(setting: str, photos: Path, out: Path, pairs: int, batch_size: int, report: bool,
            metrics: list[str] | None = None) -> list[str]:
    ranks, workers = (int(x) for x in setting.split("x"))
    args = ["run", "--protocol", "folder", "--root", str(photos), "--num-pairs", str(pairs), "--device", "cpu",
            "--batch-size", str(batch_size), "--out", str(out), "--workers", str(workers), "--no-mlflow",
            *(a for m in METHODS for a in ("--method", m)), *(a for m in metrics or () for a in ("--metric", m))]
    if not report:
        args.append("--no-report")
    if ranks == 1:
        return [sys.executable, "-m", "harness.cli", *args]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks), "--master-port",
            str(port), "-m", "harness.cli", *args]


def numbers(out: Path) -> str:
    summaries = [json.loads(p.read_text()) for p in out.glob("runs/*/*/summary.json")]
    return json.dumps({s["method"]: s["metrics"] for s in summaries}, sort_keys=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=1000, help="photos in the folder = pairs")
    p.add_argument("--settings", nargs="+", default=["1x1", "1x2", "2x1"],
                   help="RANKSxWORKERS per run; the first is the baseline")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--report", action="store_true", help="also render the report (rank 0, serial)")
    p.add_argument("--keep", type=Path, default=None, help="keep the photos and outputs in this folder")
    p.add_argument("--metric", action="append", default=None,
                   help="a metric to run (repeat; default: the default suite)")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = a.keep or Path(tmp)
        photos = base / "photos"
        if not photos.is_dir():
            write_photos(photos, a.pairs)
        rows = []
        for setting in a.settings:
            out = base / f"out-{setting}"
            t0 = time.perf_counter()
            proc = subprocess.run(command(setting, photos, out, a.pairs, a.batch_size, a.report, a.metric),
                                  capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                sys.exit(f"{setting} failed:\n{proc.stderr[-3000:]}")
            scale = json.loads((out / "results.json").read_text())["scale"]
            rows.append((setting, wall, numbers(out), scale["stage_s"]))
        suite = f"metrics {', '.join(a.metric)}" if a.metric else "default metric suite"
        print(f"{a.pairs} pairs (folder of demo-face photos), methods {', '.join(METHODS)}, {suite}, "
              f"--batch-size {a.batch_size}, {'with' if a.report else 'without'} report, no MLflow")
        print(f"{'ranks x workers':>15} {'wall s':>8} {'pairs/s':>8} {'speed-up':>8}  same numbers")
        for setting, wall, nums, _ in rows:
            print(f"{setting:>15} {wall:8.1f} {a.pairs / wall:8.2f} {rows[0][1] / wall:7.2f}x  "
                  f"{'yes' if nums == rows[0][2] else 'NO'}")
        stages = sorted({k for *_, st in rows for k in st}, key=lambda k: [r[3].get(k, 0) for r in rows[:1]],
                        reverse=True)
        print("process-seconds per stage (all processes):")
        print(f"{'ranks x workers':>15} " + " ".join(f"{k:>9}" for k in stages))
        for setting, _, _, st in rows:
            print(f"{setting:>15} " + " ".join(f"{st.get(k, 0.0):9.1f}" for k in stages))


if __name__ == "__main__":
    main()
