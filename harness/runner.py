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
from harness.images import load_rgb, pixel_sha256, save_png, to_tensor, to_uint8
from harness.provenance import environment


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
    if not enabled:
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
            for p, img in zip(batch, to_uint8(out, size)):  # (S,S,3) uint8 at the protocol size
                store.put(keys[p.pair_id], img)
    return keys, store, len(todo)


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
                             "swap_sha256": [], "swap_file": []}
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
    for key, parts in values.items():
        frame[key] = np.concatenate(parts)
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
    run_dir.mkdir(parents=True, exist_ok=True)
    pairset.write(run_dir)
    frame.to_parquet(run_dir / "pairs.parquet", index=False)
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
                entry.update(value=float(np.nanmean(v)), ci_low=lo, ci_high=hi, n=int(np.isfinite(v).sum()))
            else:
                raw = float(dataset_level[k.key])
                value = raw if k.lower_bound is None or not np.isfinite(raw) else max(raw, k.lower_bound)
                entry.update(value=value, raw_value=raw, ci_low=None, ci_high=None, n=len(frame),
                             lower_bound=k.lower_bound, feature_dim=k.feature_dim)
            results[k.key] = entry
    notes = (list(pairset.notes) + [f"{method.name}: {n}" for n in method_notes]
             + [f"{method.name}: {n}" for m in metrics for n in m.notes()])
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
        "timing_s": {"swap": round(t_swap, 3), "score": round(t_score, 3)},
        "device": cfg.device,
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "environment": environment(),
        "run_dir": str(run_dir),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    return summary


def load_summaries(out_dir: Path) -> list[dict[str, Any]]:
    """Every run summary under ``out_dir/runs``, newest last."""
    found = [json.loads(p.read_text()) for p in sorted((out_dir / "runs").glob("*/*/summary.json"))]
    return sorted(found, key=lambda s: s["finished"])
