"""How fast the HTML report renders and becomes interactive at scale.

Builds synthetic run records (summary.json + pairs.parquet per method, as the runner
writes them) for N pairs x M methods whose images are the demo faces (so thumbnails are
few: they are cached by content), renders ``report/index.html``, loads it in headless
Chromium and prints the render time in Python, the page size, and the browser's time to
interactive: ``performance.now()`` when the page's script sets ``window.reportReady``
(data parsed, tables sortable, distributions drawn, first page of the pair browser shown),
plus the time to re-sort the pair browser by another method's metric.

    python benchmarks/report_speed.py [--pairs 10000] [--methods 8] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from faceeval.summaries import RunSummary

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "protocols" / "demo_faces"

METRICS = {  # key: (label, higher_is_better, unit, scale, metric, backend, typical mean, spread)
    "id_retrieval_top1_dlib": ("ID retrieval top-1 [dlib]", True, "%", 100.0, "identity", "dlib_resnet_v1", .5, None),
    "id_similarity_dlib": ("ID similarity [dlib]", True, "cosine", 1.0, "identity", "dlib_resnet_v1", .9, .03),
    "id_retrieval_top1_facenet": ("ID retrieval top-1 [facenet]", True, "%", 100.0, "identity_facenet",
                                  "facenet_casia_torch", .3, None),
    "id_similarity_facenet": ("ID similarity [facenet]", True, "cosine", 1.0, "identity_facenet",
                              "facenet_casia_torch", .45, .1),
    "pose_error_pnp": ("Pose error [PnP]", False, "deg", 1.0, "pose", "pnp_dlib68_meanface", 4.0, 2.0),
    "expression_error_lmk": ("Expression error [landmarks]", False, "% IOD", 100.0, "expression",
                             "dlib68_procrustes", .035, .01),
}


def synthetic_runs(out: Path, pairs: int, methods: int, seed: int = 0) -> list[RunSummary]:
    """Write ``out/runs/synthetic/<method>-<id>/`` folders like the runner's; returns the summaries."""
    import pandas as pd

    from faceeval.images import file_sha256
    from faceeval.summaries import RunSummary

    rng = np.random.default_rng(seed)
    faces = sorted(DEMO.glob("*.png"))
    shas = [file_sha256(f) for f in faces]
    swaps = out / "cache" / "swaps" / "synthetic"
    swaps.mkdir(parents=True, exist_ok=True)
    for f, sha in zip(faces, shas):  # swapped crops: the demo faces, stored by content like the swap cache
        shutil.copyfile(f, swaps / f"{sha}.png")
    src = rng.integers(0, len(faces), pairs)  # (pairs,) face index of each pair's source
    tgt = (src + 1 + rng.integers(0, len(faces) - 1, pairs)) % len(faces)
    difficulty = rng.normal(0, 1, pairs)  # shared by every method: paired differences matter
    names = ["source", "target"] + [f"method_{i}" for i in range(methods - 2)]
    summaries = []
    for k, name in enumerate(names):
        frame = {"pair_id": [f"{i:05d}" for i in range(pairs)], "source": [faces[i].name for i in src],
                 "target": [faces[i].name for i in tgt], "source_id": [faces[i].stem for i in src],
                 "target_id": [faces[i].stem for i in tgt]}
        pick = rng.integers(0, len(faces), pairs)
        frame["swap_sha256"] = [shas[i] for i in pick]
        frame["swap_file"] = [f"cache/swaps/synthetic/{shas[i]}.png" for i in pick]
        metrics = {}
        for key, (label, hib, unit, scale, metric, backend, mean, spread) in METRICS.items():
            shift = 0.02 * k * (1 if hib else -1)
            if spread is None:  # a hit rate
                v = (rng.random(pairs) < np.clip(mean + shift + 0.1 * difficulty, 0, 1)).astype(float)
            else:
                v = mean * (1 + shift) + spread * (0.7 * difficulty + 0.3 * rng.normal(0, 1, pairs))
            frame[key] = v
            metrics[key] = {"label": label, "higher_is_better": hib, "unit": unit, "scale": scale, "metric": metric,
                            "backend": backend, "value": float(v.mean()), "ci_low": float(v.mean() - 0.01),
                            "ci_high": float(v.mean() + 0.01), "n": pairs}
        metrics["fid_facenet"] = {"label": "FID [FaceNet features]", "higher_is_better": False, "unit": "",
                                  "scale": 1.0, "metric": "fid_facenet", "backend": "facenet_casia_512",
                                  "value": 40.0 - k, "raw_value": 40.0 - k, "ci_low": None, "ci_high": None,
                                  "n": pairs, "lower_bound": 0.0, "feature_dim": 512}
        run_dir = out / "runs" / "synthetic" / f"{name}-{k:016x}"
        run_dir.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(frame).to_parquet(run_dir / "pairs.parquet", index=False)
        backends = {m: {"name": b, "description": f"synthetic {b}", "standard": False, "weights": [["w.bin", "0" * 64]]}
                    for _, _, _, _, m, b, _, _ in METRICS.values()}
        backends["fid_facenet"] = {"name": "facenet_casia_512", "description": "synthetic 512-d", "standard": False,
                                   "weights": []}
        summary = {"run_id": f"{k:016x}", "protocol": "synthetic", "protocol_version": "1", "protocol_settings": {},
                   "manifest_sha256": "a" * 64, "gallery_sha256": "b" * 64, "seed": seed, "num_pairs": pairs,
                   "resolution": 256, "root": str(DEMO), "method": name, "method_info": {"name": name},
                   "method_key": f"{k:016x}", "metrics": metrics, "backends": backends,
                   "scored_by_training_model": [], "confidence": 0.95, "bootstrap_resamples": 1000, "notes": [],
                   "swaps": {"computed": pairs, "cached": 0}, "timing_s": {"swap": 0.0, "score": 0.0},
                   "device": "cpu", "finished": f"2026-01-01T00:00:{k:02d}+00:00",
                   "environment": {"git_commit": "synthetic", "python": "3", "platform": "x", "packages": {}},
                   "run_dir": str(run_dir)}
        (run_dir / "summary.json").write_text(json.dumps(summary))
        summaries.append(RunSummary.from_dict(summary))
    return summaries


def measure(page_path: Path, chromium: str) -> dict[str, float]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"], headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        t0 = time.perf_counter()
        page.goto(page_path.resolve().as_uri())
        page.wait_for_function("window.reportReady !== undefined", timeout=120_000)
        wall = time.perf_counter() - t0
        ready = page.evaluate("window.reportReady")
        resort = page.evaluate("""() => {
            const sel = document.querySelector('.browser select[data-role="a"]');
            const t = performance.now();
            sel.value = sel.options[sel.options.length - 1].value;
            sel.dispatchEvent(new Event('change'));
            return performance.now() - t; }""")
        browser.close()
    if errors:
        raise SystemExit(f"page errors: {errors}")
    return {"interactive_ms": ready, "load_wall_s": wall, "resort_ms": resort}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=10_000)
    ap.add_argument("--methods", type=int, default=8, help="including the source and target rows")
    ap.add_argument("--out", type=Path, default=None, help="folder for the synthetic runs (default: a temporary one)")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = ap.parse_args()
    from reports.html import write_html_report

    tmp = None
    out = args.out or Path(tmp := tempfile.mkdtemp(prefix="report-speed-"))
    try:
        summaries = synthetic_runs(out, args.pairs, args.methods)
        t0, c0 = time.perf_counter(), time.process_time()
        path = write_html_report(out, summaries)
        render, render_cpu = time.perf_counter() - t0, time.process_time() - c0
        size = path.stat().st_size / 1e6
        thumbs = len(list((out / "report" / "thumbs").glob("*.jpg")))
        got = measure(path, args.chromium)
        print(f"{args.pairs} pairs x {args.methods} methods: render {render:.1f}s wall / "
              f"{render_cpu:.1f}s CPU (Python), page {size:.1f} MB, "
              f"{thumbs} thumbnails")
        print(f"interactive after {got['interactive_ms'] / 1000:.2f}s (performance.now() at ready; "
              f"navigation to ready {got['load_wall_s']:.2f}s wall); re-sorting the pair browser "
              f"{got['resort_ms']:.0f} ms")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
