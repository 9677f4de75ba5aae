"""The runner: pairs -> swaps (cached) -> metric rows -> aggregates with bootstrap CIs.

Everything expensive is content-addressed (see ``harness.cache``), so the same command
after a kill recomputes only what had not finished, and a fully cached re-run reads
swaps and features back and gives identical numbers.

Output folder layout (``--out``, default ``./harness-out``):
    cache/swaps/<method>-<fp>/..png   swapped crops, by content
    cache/features.sqlite             metric features, by (backend, pixels)
    cache/crops/                      aligned crops of prepared photo folders
    runs/<protocol>/<method>-<id>/    summary.json, pairs.parquet, pairs.csv, gallery.csv
    report/                           tables and grids (``harness report``)
    mlflow.db, mlartifacts/           the MLflow store
"""

from __future__ import annotations

import datetime as _dt
import json
import time
import warnings
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.api import EvalBatch, EvalContext, Metric, PairSet, SwapMethod
from harness.cache import FeatureStore, SwapStore, stable_hash
from harness.errors import HarnessError
from harness.images import atomic_write_bytes, atomic_write_text, load_rgb, pixel_sha256, save_png, to_tensor, to_uint8
from harness.provenance import environment

# Output checks (per pair, on every method's output): what a swap must not be.
#   non_finite: the method returned NaN/Inf somewhere (stored with NaN->0, +Inf->1)
#   blank:      a (near-)constant image: grey-level standard deviation below BLANK_STD
#   no_face:    dlib's HOG detector finds no face in the output crop
# Flagged pairs are counted per method, named in the notes and the report, and their
# per-pair metric values (identity, pose, expression) are NaN: left out of the means and
# of n. Dataset-level values (FID) see every output as it is.
OUTPUT_FLAGS = ("non_finite", "blank", "no_face")
BLANK_STD = 2.0  # on 0..255 grey levels
FACE_CHECK_NS = "output_face_check:dlib_hog:v1"


@dataclass(frozen=True)
class RunConfig:
    out_dir: Path
    device: str = "cpu"
    batch_size: int = 16
    save_images: bool = False  # also copy swapped crops to the run folder, named by pair id
    bootstrap_resamples: int = 1000
    confidence: float = 0.95
    progress: bool = True


@dataclass
class ImageSource:
    """Loads a pair set's images, memoising pixels' sha256 (the cache keys) and keeping
    the most recently used decoded images (``keep`` of them) in memory."""

    pairset: PairSet
    keep: int = 1024
    _sha: dict[str, str] = field(default_factory=dict)
    _pixels: OrderedDict[str, np.ndarray] = field(default_factory=OrderedDict)

    def load(self, rel: str) -> np.ndarray:
        if rel in self._pixels:
            self._pixels.move_to_end(rel)
            return self._pixels[rel]
        img = load_rgb(self.pairset.path(rel))
        size = self.pairset.resolution
        if img.shape[:2] != (size, size):
            raise HarnessError(f"{rel}: expected a {size}x{size} aligned crop, got {img.shape[1]}x{img.shape[0]}")
        img.setflags(write=False)  # shared between callers: nobody may change it in place
        self._sha.setdefault(rel, pixel_sha256(img))
        self._pixels[rel] = img
        if len(self._pixels) > self.keep:
            self._pixels.popitem(last=False)
        return img

    def sha(self, rel: str) -> str:
        if rel not in self._sha:
            self.load(rel)
        return self._sha[rel]


def _batches(seq: list, size: int):
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


def _progress(iterable, enabled: bool, **kw):
    """A tqdm bar, only when asked for and stderr is a terminal (no debris in logs or pipes)."""
    import sys

    if not enabled or not sys.stderr.isatty():
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, leave=False, dynamic_ncols=True, **kw)


def run_swaps(method: SwapMethod, pairset: PairSet, images: ImageSource, cfg: RunConfig) -> tuple[dict[str, str], SwapStore, int]:
    """Swap every pair not already cached. Returns ({pair_id: swap key}, store, #computed)."""
    store = SwapStore(cfg.out_dir / "cache", method.fingerprint())
    size = pairset.resolution
    keys = {p.pair_id: SwapStore.pair_key(images.sha(p.source), images.sha(p.target), size) for p in pairset.pairs}
    todo = [p for p in pairset.pairs if not store.has(keys[p.pair_id])]
    if not todo:
        return keys, store, 0
    import torch  # only when there is work: a fully cached run never needs it here

    in_size = method.resolution or size
    batches = list(_batches(todo, cfg.batch_size))
    with torch.inference_mode():
        for batch in _progress(batches, cfg.progress, desc=f"swap {method.name}", unit="batch"):
            src = to_tensor(np.stack([images.load(p.source) for p in batch]), in_size, cfg.device)  # (B,3,S,S)
            tgt = to_tensor(np.stack([images.load(p.target) for p in batch]), in_size, cfg.device)
            out = method.swap_batch(batch, src, tgt)  # (B,3,S,S) [0,1]
            if out.shape != src.shape:
                raise HarnessError(f"method {method.name} returned {tuple(out.shape)}, expected {tuple(src.shape)}")
            finite = torch.isfinite(out).flatten(1).all(1).tolist()  # (B,) per-pair check before any rounding
            out = torch.nan_to_num(out.float(), nan=0.0, posinf=1.0, neginf=0.0)
            for p, img, ok in zip(batch, to_uint8(out, size), finite):  # (S,S,3) uint8 at the protocol size
                store.put(keys[p.pair_id], img, flag=None if ok else "non_finite")
    return keys, store, len(todo)


def _faces_found(images: list[np.ndarray]) -> np.ndarray:
    """(N, 1) float32: 1.0 where dlib's HOG detector finds a face in the crop. Crops under
    200 px are upsampled once (the detector's smallest face is about 80 px)."""
    from harness.faces.dlib_models import hog_detector

    det = hog_detector()
    out = np.zeros((len(images), 1), np.float32)
    for i, img in enumerate(images):
        rects = det(np.ascontiguousarray(img), 1 if img.shape[0] < 200 else 0)
        out[i, 0] = float(len(rects) > 0)
    return out


def output_flags(swapped: np.ndarray, shas: list[str], stored: list[str | None], features: FeatureStore) -> list[str]:
    """Per output: "" when it is a face, else the first of OUTPUT_FLAGS that applies.
    swapped: (B, S, S, 3) uint8; stored: flags kept with the swaps (non_finite)."""
    from harness.cache import cached_features

    grey = swapped.astype(np.float32).mean(axis=3)  # (B, S, S)
    blank = grey.reshape(len(swapped), -1).std(axis=1) < BLANK_STD  # (B,)
    found = cached_features(features, FACE_CHECK_NS, shas, list(swapped), _faces_found)[:, 0] > 0.5  # (B,)
    flags = []
    for flag, b, f in zip(stored, blank, found):
        flags.append(flag or ("blank" if b else "" if f else "no_face"))
    return flags


def bootstrap_ci(values: np.ndarray, resamples: int, confidence: float, seed: int) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (scipy.stats.bootstrap); NaN when n < 2."""
    from scipy.stats import bootstrap

    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size < 2:
        return float("nan"), float("nan")
    if np.all(values == values[0]):
        return float(values[0]), float(values[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = bootstrap((values,), np.mean, confidence_level=confidence, n_resamples=resamples,
                        method="percentile", rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def score(method_name: str, pairset: PairSet, keys: dict[str, str], store: SwapStore, metrics: list[Metric],
          images: ImageSource, features: FeatureStore, cfg: RunConfig):
    """Per-pair metric rows (a DataFrame) and dataset-level values."""
    ctx = EvalContext(pairset=pairset, device=cfg.device, feature_cache=features, load_image=images.load,
                      image_sha=images.sha)
    owners: dict[str, str] = {}
    for m in metrics:
        for k in m.keys:
            if k.key in owners:
                raise HarnessError(f"metrics {owners[k.key]} and {m.name} both produce {k.key}: score them in separate runs")
            owners[k.key] = m.name
    for m in metrics:
        m.prepare(ctx)
    rows: dict[str, list] = {"pair_id": [], "source": [], "target": [], "source_id": [], "target_id": [],
                             "swap_sha256": [], "swap_file": [], "output_flag": []}
    values: dict[str, list[np.ndarray]] = {}
    pairs = list(pairset.pairs)
    for batch in _progress(list(_batches(pairs, cfg.batch_size)), cfg.progress, desc=f"score {method_name}", unit="batch"):
        swapped = np.stack([store.get(keys[p.pair_id]) for p in batch])  # (B,S,S,3) uint8
        eb = EvalBatch(
            pair_ids=[p.pair_id for p in batch],
            source=np.stack([images.load(p.source) for p in batch]),
            target=np.stack([images.load(p.target) for p in batch]),
            swapped=swapped,
            source_sha=[images.sha(p.source) for p in batch],
            target_sha=[images.sha(p.target) for p in batch],
            swapped_sha=[pixel_sha256(s) for s in swapped],
        )
        flags = output_flags(swapped, eb.swapped_sha, [store.flag(keys[p.pair_id]) for p in batch], features)
        rows["output_flag"].extend(flags)
        for p, sha in zip(batch, eb.swapped_sha):
            for col in ("pair_id", "source", "target", "source_id", "target_id"):
                rows[col].append(getattr(p, col))
            rows["swap_sha256"].append(sha)
            rows["swap_file"].append(store.path(keys[p.pair_id]).relative_to(cfg.out_dir).as_posix())
        for m in metrics:
            out = m.update(eb, ctx)
            for k in m.keys:
                if k.per_pair:
                    v = np.asarray(out[k.key], dtype=np.float64)
                    if v.shape != (len(batch),):
                        raise HarnessError(f"metric {m.name} returned shape {v.shape} for {k.key}, expected ({len(batch)},)")
                    values.setdefault(k.key, []).append(v)
    frame = pd.DataFrame(rows)
    flagged = (frame["output_flag"] != "").to_numpy()  # (N,) outputs that are not faces
    for key, parts in values.items():
        v = np.concatenate(parts)
        v[flagged] = np.nan  # never scored as if they were faces: out of the means and of n
        frame[key] = v
    dataset_level: dict[str, float] = {}
    for m in metrics:
        dataset_level.update(m.compute(ctx))
    return frame, dataset_level


def run_method(method: SwapMethod, pairset: PairSet, metrics: list[Metric], cfg: RunConfig,
               features: FeatureStore) -> dict[str, Any]:
    """Swap, score and aggregate one method on one pair set; writes its run folder."""
    if not isinstance(method, SwapMethod):
        raise HarnessError(f"{type(method).__name__} is not a harness.api.SwapMethod: subclass it (its hooks "
                           "prepare, swap_batch, fingerprint and describe have defaults)")
    t0 = time.perf_counter()
    method_notes = [str(n) for n in (method.prepare(pairset) or [])]
    images = ImageSource(pairset)
    keys, store, computed = run_swaps(method, pairset, images, cfg)
    t_swap = time.perf_counter() - t0
    frame, dataset_level = score(method.name, pairset, keys, store, metrics, images, features, cfg)
    t_score = time.perf_counter() - t0 - t_swap

    metric_fps = {m.name: m.fingerprint() for m in metrics}
    run_id = stable_hash([pairset.protocol, pairset.version, pairset.manifest_sha256, pairset.gallery_sha256,
                          method.fingerprint(), metric_fps])
    run_dir = cfg.out_dir / "runs" / pairset.protocol / f"{method.name}-{run_id}"
    if run_dir.exists() and not run_dir.is_dir():
        raise HarnessError(f"{run_dir} exists and is not a folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    pairset.write(run_dir)
    import io

    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    atomic_write_bytes(run_dir / "pairs.parquet", buf.getvalue())
    if cfg.save_images:
        for pid, key in keys.items():
            save_png(run_dir / "images" / f"{pid}.png", store.get(key))

    results: dict[str, Any] = {}
    for m in metrics:
        backend = m.backend()
        for k in m.keys:
            entry = {"label": k.label, "higher_is_better": k.higher_is_better, "unit": k.unit, "scale": k.scale,
                     "metric": m.name, "backend": backend.name}
            if k.per_pair:
                v = frame[k.key].to_numpy()
                lo, hi = bootstrap_ci(v, cfg.bootstrap_resamples, cfg.confidence, pairset.seed)
                n = int(np.isfinite(v).sum())  # every pair flagged or failed: no mean, n = 0
                entry.update(value=float(np.nanmean(v)) if n else float("nan"), ci_low=lo, ci_high=hi, n=n)
            else:
                raw = float(dataset_level[k.key])
                value = raw if k.lower_bound is None or not np.isfinite(raw) else max(raw, k.lower_bound)
                entry.update(value=value, raw_value=raw, ci_low=None, ci_high=None, n=len(frame),
                             lower_bound=k.lower_bound, feature_dim=k.feature_dim)
            results[k.key] = entry
    checks = {f: int((frame["output_flag"] == f).sum()) for f in OUTPUT_FLAGS}
    checks["flagged"] = sum(checks.values())
    checks["examples"] = frame.loc[frame["output_flag"] != "", "pair_id"].head(5).tolist()
    notes = (list(pairset.notes) + [f"{method.name}: {n}" for n in method_notes]
             + [f"{method.name}: {n}" for m in metrics for n in m.notes()])
    if checks["flagged"]:
        kinds = ", ".join(f"{checks[f]} {f.replace('_', ' ')}" for f in OUTPUT_FLAGS if checks[f])
        notes.append(f"{method.name}: {checks['flagged']} of {len(frame)} outputs flagged ({kinds}; e.g. pairs "
                     f"{', '.join(checks['examples'])}): left out of the per-pair means")
    backends = {m.name: asdict(m.backend()) for m in metrics}
    # The evaluator should not be the model the method optimised: flag it when it is.
    training_model = method.identity_model
    scored_by_training_model = sorted(k for k, b in backends.items()
                                      if training_model and b["name"] == training_model)
    for k in scored_by_training_model:
        notes.append(f"{method.name}: {k} was scored with {training_model}, the identity model "
                     "the method trained with (the score favours it)")
    summary = {
        "run_id": run_id,
        "protocol": pairset.protocol,
        "protocol_version": pairset.version,
        "protocol_settings": dict(pairset.settings),
        "manifest_sha256": pairset.manifest_sha256,
        "gallery_sha256": pairset.gallery_sha256,
        "seed": pairset.seed,
        "num_pairs": len(pairset.pairs),
        "resolution": pairset.resolution,
        "root": str(pairset.root),
        "method": method.name,
        "method_info": method.describe(),
        "method_key": store.method_key,
        "metrics": results,
        "backends": backends,
        "scored_by_training_model": scored_by_training_model,
        "confidence": cfg.confidence,
        "bootstrap_resamples": cfg.bootstrap_resamples,
        "notes": notes,
        "swaps": {"computed": computed, "cached": len(keys) - computed},
        "output_checks": checks,
        "timing_s": {"swap": round(t_swap, 3), "score": round(t_score, 3)},
        "device": cfg.device,
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "environment": environment(),
        "run_dir": str(run_dir),
    }
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=1, default=str) + "\n")
    return summary


def load_summaries(out_dir: Path, unreadable: list[Path] | None = None) -> list[dict[str, Any]]:
    """Every run summary under ``out_dir/runs``, newest last. A summary that cannot be read
    (torn by a crash before writes were atomic, edited by hand) is left out and appended to
    ``unreadable``; re-running that method rewrites it."""
    found = []
    for p in sorted((out_dir / "runs").glob("*/*/summary.json")):
        try:
            s = json.loads(p.read_text())
            if not isinstance(s, dict) or "finished" not in s or "metrics" not in s:
                raise ValueError("not a run summary")
        except (ValueError, OSError, UnicodeDecodeError):
            if unreadable is not None:
                unreadable.append(p)
            continue
        found.append(s)
    return sorted(found, key=lambda s: s["finished"])
