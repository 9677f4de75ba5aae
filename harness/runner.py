"""The runner: pairs -> swaps (cached) -> metric rows -> aggregates with bootstrap CIs.

Everything expensive is content-addressed (see ``faceeval.cache``), so the same command
after a kill recomputes only what had not finished, and a fully cached re-run reads
swaps and features back and gives identical numbers.

Output folder layout (``--out``, default ``./harness-out``):
    cache/swaps/<method>-<fp>/..png   swapped crops, by content
    cache/features.sqlite             metric features, by (backend, pixels)
    cache/crops/                      aligned crops of prepared photo folders
    runs/<protocol>/<method>-<id>/    summary.json (format: faceeval.summaries), pairs.parquet, pairs.csv, gallery.csv
    report/                           tables and grids (``harness report``)
    mlflow.db, mlartifacts/           the MLflow store
"""

from __future__ import annotations

import datetime as _dt
import os
import time
import warnings
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from faceeval import stops, timing
from faceeval.api import EvalBatch, EvalContext, FacePair, Metric, PairSet, SwapMethod
from faceeval.cache import DamagedSwaps, FeatureStore, SwapStore, stable_hash
from faceeval.checks import check_name, resolve_device
from faceeval.conventions import aggregate
from faceeval.errors import HarnessError
from faceeval.images import atomic_write_bytes, load_rgb, pixel_sha256, save_png, to_tensor, to_uint8
from faceeval.parallel import map_chunks, pool_map, pool_workers, shard, shard_batches, world
from faceeval.provenance import environment
from faceeval.summaries import BackendRecord, MetricEntry, RunSummary, write_summary
from faceeval.timing import stage
from harness.settings import RunSettings

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


#: what a method's failure on a pair does (``--on-error``): stop the run with one line
#: naming method, pair and error, or skip the pair (counted, listed, left out of every number)
ON_ERROR = ("stop", "skip")
#: how far outside [0, 1] an output value may be: half a grey level, which rounds to 0 or
#: 255 exactly as an in-range value would (so nothing is clamped); anything further is an error
RANGE_SLACK = 0.5 / 255.0


@dataclass(frozen=True)
class RunConfig:
    out_dir: Path
    # the defaults are harness run's (harness.settings.RunSettings); "auto" is resolved here
    device: str = RunSettings.device
    batch_size: int = RunSettings.batch_size
    save_images: bool = RunSettings.save_images  # also copy swapped crops to the run folder, named by pair id
    bootstrap_resamples: int = 1000
    confidence: float = 0.95
    progress: bool = RunSettings.progress
    on_error: str = RunSettings.on_error  # one of ON_ERROR
    #: the preset the run's settings came from (faceeval.presets; "" when none) and what it substituted
    convention: str = ""
    substitutions: tuple[str, ...] = ()
    #: swap nothing: a pair whose swap is not cached is an error (``harness report --conventions``)
    cached_swaps_only: bool = RunSettings.cached_swaps_only

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", resolve_device(self.device))
        if self.on_error not in ON_ERROR:
            raise HarnessError(f"--on-error must be {' or '.join(ON_ERROR)}, got {self.on_error!r}")


@dataclass(frozen=True)
class SwapFailure:
    """A pair the method could not swap: it raised, or broke the output contract
    (:class:`faceeval.api.SwapMethod`: a float tensor (B, 3, H, W) in [0, 1])."""

    pair_id: str
    source: str
    target: str
    error: str  # one line: the exception type and message, or what was wrong with the output
    exc: BaseException | None = field(default=None, compare=False, repr=False)  # for HARNESS_DEBUG's traceback

    def line(self, method: str) -> str:
        return f"method {method} failed on pair {self.pair_id} ({self.source} -> {self.target}): {self.error}"


def _decode(path: Path) -> tuple[np.ndarray, str]:
    """An image file -> (uint8 pixels, their sha256): a pool task."""
    img = load_rgb(path)
    return img, pixel_sha256(img)


def _decoded_sha(path: Path) -> tuple[tuple[int, ...], str]:
    """An image file -> (its shape, its pixels' sha256), without shipping the pixels back: a pool task."""
    img = load_rgb(path)
    return img.shape, pixel_sha256(img)


@dataclass
class ImageSource:
    """Loads a pair set's images, memoising pixels' sha256 (the cache keys) and keeping
    the most recently used decoded images (``keep`` of them) in memory. :meth:`prefetch`
    decodes many at once in the worker pool."""

    pairset: PairSet
    keep: int = 1024
    _sha: dict[str, str] = field(default_factory=dict)
    _pixels: OrderedDict[str, np.ndarray] = field(default_factory=OrderedDict)

    def _check(self, rel: str, shape: tuple[int, ...]) -> None:
        size = self.pairset.resolution
        if shape[:2] != (size, size):
            raise HarnessError(f"{rel}: expected a {size}x{size} aligned crop, got {shape[1]}x{shape[0]}")

    def _keep(self, rel: str, img: np.ndarray, sha: str) -> None:
        self._check(rel, img.shape)
        img.setflags(write=False)  # shared between callers: nobody may change it in place
        self._sha.setdefault(rel, sha)
        self._pixels[rel] = img
        if len(self._pixels) > self.keep:
            self._pixels.popitem(last=False)

    def load(self, rel: str) -> np.ndarray:
        if rel in self._pixels:
            self._pixels.move_to_end(rel)
            return self._pixels[rel]
        self._keep(rel, *_decode(self.pairset.path(rel)))
        return self._pixels[rel]

    def sha(self, rel: str) -> str:
        if rel not in self._sha:
            self.load(rel)
        return self._sha[rel]

    def prefetch(self, rels: list[str], pixels: bool = True) -> None:
        """Decode ``rels`` not in memory (``pixels``) or without a known sha256 (not
        ``pixels``) together, in the worker pool when there is one."""
        rels = list(dict.fromkeys(r for r in rels if (r not in self._pixels if pixels else r not in self._sha)))
        if not rels:
            return
        if pixels:
            for rel, (img, sha) in zip(rels, pool_map(_decode, [self.pairset.path(r) for r in rels], light=True)):
                self._keep(rel, img, sha)
            return
        for rel, (shape, sha) in zip(rels, pool_map(_decoded_sha, [self.pairset.path(r) for r in rels], light=True)):
            self._check(rel, shape)
            self._sha[rel] = sha


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


def _one_line(exc: BaseException) -> str:
    """``TypeName: message`` on one line (a plugin's exception, for the error or the skip list)."""
    text = " ".join(str(exc).split()) or "(no message)"
    return f"{type(exc).__name__}: {text[:300]}"


def output_problems(out: Any, expected: tuple[int, ...]) -> str | list[str | None]:
    """What is wrong with a method's output for a batch of shape ``expected`` (B, 3, S, S).

    Returns one string when the whole output is unusable (None, a numpy array, a tensor of
    another dtype or shape), else one entry per row: None when the row keeps the contract
    (float, every finite value within [0, 1] up to :data:`RANGE_SLACK`), else what is wrong,
    with the likely convention ([-1, 1], [0, 255]). Non-finite values are not a contract
    breach here: they are flagged per output and kept out of the means (``non_finite``).
    Nothing is ever clamped: an out-of-range output is an error, not a darker face."""
    import torch

    if out is None:
        return "returned None instead of a float tensor (B, 3, H, W) in [0, 1]"
    if not isinstance(out, torch.Tensor):
        return (f"returned a {type(out).__module__}.{type(out).__name__} instead of a torch float tensor "
                "(B, 3, H, W) in [0, 1] (convert with torch.from_numpy(...).float())")
    if not out.is_floating_point():
        hint = " (looks like 0..255: divide by 255)" if out.numel() and int(out.max()) > 1 else ""
        return f"returned dtype {out.dtype}, expected a float tensor in [0, 1]{hint}"
    if tuple(out.shape) != tuple(expected):
        return f"returned shape {tuple(out.shape)}, expected {tuple(expected)}"
    x = out.detach().float()
    finite = torch.isfinite(x)
    big = torch.where(finite, x, torch.zeros_like(x)).flatten(1)  # (B, 3*H*W) non-finite -> 0
    lo, hi = big.min(1).values.tolist(), big.max(1).values.tolist()
    rows: list[str | None] = []
    for a, b in zip(lo, hi):
        if a >= -RANGE_SLACK and b <= 1.0 + RANGE_SLACK:
            rows.append(None)
            continue
        hint = ""
        if b > 2.0:
            hint = " (looks like 0..255: divide by 255)"
        elif a < -RANGE_SLACK and a >= -1.0 - RANGE_SLACK and b <= 1.0 + RANGE_SLACK:
            hint = " (looks like [-1, 1]: map with (x + 1) / 2)"
        rows.append(f"output values from {a:.4g} to {b:.4g}, outside [0, 1]{hint}; never clamped: fix the method")
    return rows


def _swap_checked(method: SwapMethod, batch: list, src, tgt) -> tuple[list, list[SwapFailure]]:
    """Swap one batch and check every row against the output contract.

    Returns (outputs, failures): ``outputs[i]`` is row i's (3, S, S) tensor, or None when
    pair i failed. When the batch call raises or returns something unusable as a whole,
    each pair is swapped alone, so the failure is pinned on its pair(s) and the others'
    work is kept."""
    def attempt(pairs, s, t):
        try:
            with stage("swap"):
                out = method.swap_batch(pairs, s, t)  # (B,3,S,S) float [0,1]
        except Exception as exc:  # noqa: BLE001 - a method's (plugin's) error, named with its pair below
            return _one_line(exc), exc
        return output_problems(out, tuple(s.shape)), out

    problems, out = attempt(batch, src, tgt)
    if isinstance(problems, list):
        rows = [None if pr else out[i] for i, pr in enumerate(problems)]
        return rows, [SwapFailure(p.pair_id, p.source, p.target, pr) for p, pr in zip(batch, problems) if pr]
    if len(batch) == 1:
        p = batch[0]
        return [None], [SwapFailure(p.pair_id, p.source, p.target, problems,
                                    out if isinstance(out, BaseException) else None)]
    rows, failures = [], []
    for i, p in enumerate(batch):
        r, f = _swap_checked(method, [p], src[i : i + 1], tgt[i : i + 1])
        rows.extend(r)
        failures.extend(f)
    return rows, failures


def run_swaps(method: SwapMethod, pairset: PairSet, images: ImageSource, cfg: RunConfig
              ) -> tuple[dict[str, str], SwapStore, int, list[SwapFailure]]:
    """Swap every pair not already cached. Returns ({pair_id: swap key}, store, #computed,
    failures). Every output is checked before it is stored (:func:`output_problems`); a
    pair the method fails on stops the run with one line naming method, pair and error
    (``cfg.on_error == "stop"``; the swaps finished before it stay cached), or is left out
    and returned in ``failures`` (``"skip"``; not cached, so a re-run tries it again)."""
    store = SwapStore(cfg.out_dir / "cache", method.fingerprint())
    size = pairset.resolution
    images.prefetch([rel for p in pairset.pairs for rel in (p.source, p.target)], pixels=False)
    keys = {p.pair_id: SwapStore.pair_key(images.sha(p.source), images.sha(p.target), size) for p in pairset.pairs}
    todo = [p for p in pairset.pairs if not store.has(keys[p.pair_id])]
    if not todo:
        return keys, store, 0, []
    if cfg.cached_swaps_only:
        raise HarnessError(f"method {method.name}: {len(todo)} of {len(pairset.pairs)} swaps are not in the cache "
                           f"(first: pair {todo[0].pair_id}); rescoring never swaps: run `harness run` for it first")
    import torch  # only when there is work: a fully cached run never needs it here

    in_size = method.resolution or size
    batches = list(_batches(todo, cfg.batch_size))
    computed, failures = 0, []
    with torch.inference_mode():
        for batch in _progress(batches, cfg.progress, desc=f"swap {method.name}", unit="batch"):
            stops.check()
            images.prefetch([rel for p in batch for rel in (p.source, p.target)])
            src = to_tensor(np.stack([images.load(p.source) for p in batch]), in_size, cfg.device)  # (B,3,S,S)
            tgt = to_tensor(np.stack([images.load(p.target) for p in batch]), in_size, cfg.device)
            rows, failed = _swap_checked(method, batch, src, tgt)
            good = [(p, r) for p, r in zip(batch, rows) if r is not None]
            if good:
                out = torch.stack([r for _, r in good])  # (G,3,S,S)
                finite = torch.isfinite(out).flatten(1).all(1).tolist()  # (G,) per-pair check before any rounding
                out = torch.nan_to_num(out.float(), nan=0.0, posinf=1.0, neginf=0.0)
                # (S,S,3) uint8 at the protocol size, PNG-encoded in the worker pool
                store.put_many([(keys[p.pair_id], img, None if ok else "non_finite")
                                for (p, _), img, ok in zip(good, to_uint8(out, size), finite)])
                computed += len(good)
            if failed and cfg.on_error == "stop":
                raise HarnessError(
                    f"{failed[0].line(method.name)}"
                    + (f" (and {len(failed) - 1} more pairs of its batch)" if len(failed) > 1 else "")
                    + f"; the {computed} swaps finished so far are cached (the same command resumes); "
                    "pass --on-error skip to score the other pairs without the failing ones") from failed[0].exc
            failures.extend(failed)
    return keys, store, computed, failures


def _faces_found(images: list[np.ndarray]) -> np.ndarray:
    """(N, 1) float32: 1.0 where dlib's HOG detector finds a face in the crop. Crops under
    200 px are upsampled once (the detector's smallest face is about 80 px)."""
    from faceeval.faces.dlib_models import hog_detector

    det = hog_detector()
    out = np.zeros((len(images), 1), np.float32)
    for i, img in enumerate(images):
        with stage("detect"):
            rects = det(np.ascontiguousarray(img), 1 if img.shape[0] < 200 else 0)
        out[i, 0] = float(len(rects) > 0)
    return out


def output_flags(swapped: np.ndarray, shas: list[str], stored: list[str | None], features: FeatureStore) -> list[str]:
    """Per output: "" when it is a face, else the first of OUTPUT_FLAGS that applies.
    swapped: (B, S, S, 3) uint8; stored: flags kept with the swaps (non_finite)."""
    from faceeval.cache import cached_features

    grey = swapped.astype(np.float32).mean(axis=3)  # (B, S, S)
    blank = grey.reshape(len(swapped), -1).std(axis=1) < BLANK_STD  # (B,)
    def check(images: list[np.ndarray]) -> np.ndarray:  # (N, 1), in the worker pool if any
        return np.stack(map_chunks(_faces_found, images)) if images else np.zeros((0, 1), np.float32)

    found = cached_features(features, FACE_CHECK_NS, shas, list(swapped), check)[:, 0] > 0.5  # (B,)
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


def bootstrap_aggregate_ci(parts: np.ndarray, how: str, resamples: int, confidence: float,
                           seed: int) -> tuple[float, float]:
    """Percentile bootstrap CI of :func:`faceeval.conventions.aggregate` over pairs (rows of
    ``parts`` (N, P) resampled together); NaN when fewer than 2 rows are finite."""
    from scipy.stats import bootstrap

    x = np.asarray(parts, np.float64)
    x = x[np.all(np.isfinite(x), axis=1)]
    if len(x) < 2:
        return float("nan"), float("nan")
    if np.all(x == x[0]):
        value = aggregate(x, how)
        return value, value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = bootstrap((np.arange(len(x)),), lambda idx: aggregate(x[idx.astype(int)], how), vectorized=False,
                        confidence_level=confidence, n_resamples=resamples, method="percentile",
                        rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def score(method_name: str, pairset: PairSet, keys: dict[str, str], store: SwapStore, metrics: list[Metric],
          images: ImageSource, features: FeatureStore, cfg: RunConfig, shard_only: bool = False):
    """Per-pair metric rows (a DataFrame) and dataset-level values. ``shard_only``: a
    rank's share of the pairs under torchrun, scored for the caches it fills (dataset-level
    values that a share is too small for are skipped: rank 0 computes them on the whole)."""
    ctx = EvalContext(pairset=pairset, device=cfg.device, feature_cache=features, load_image=images.load,
                      image_sha=images.sha)
    _check_distinct_keys(metrics)
    for m in metrics:
        m.prepare(ctx)
    rows: dict[str, list] = {"pair_id": [], "source": [], "target": [], "source_id": [], "target_id": [],
                             "swap_sha256": [], "swap_file": [], "output_flag": []}
    values: dict[str, list[np.ndarray]] = {}
    pairs = list(pairset.pairs)
    for batch in _progress(list(_batches(pairs, cfg.batch_size)), cfg.progress, desc=f"score {method_name}",
                           unit="batch"):
        stops.check()
        eb = _eval_batch(batch, keys, store, images)
        _add_pair_rows(rows, batch, eb, keys, store, features, cfg)
        _update_metrics(metrics, eb, ctx, values)
        if shard_only:
            _exit_hook(len(batch))
    frame = _pair_frame(rows, values)
    return frame, _dataset_values(metrics, ctx, features, images, pairset, pairs, frame, shard_only)


def _check_distinct_keys(metrics: list[Metric]) -> None:
    """Refuse two metrics that produce the same key (their values would overwrite each other)."""
    owners: dict[str, str] = {}
    for m in metrics:
        for k in m.keys:
            if k.key in owners:
                raise HarnessError(f"metrics {owners[k.key]} and {m.name} both produce {k.key}: "
                                   "score them in separate runs")
            owners[k.key] = m.name


def _eval_batch(batch: list[FacePair], keys: dict[str, str], store: SwapStore, images: ImageSource) -> EvalBatch:
    """A batch of pairs with their cached swaps, as the metrics see it."""
    swapped = np.stack(store.get_many([keys[p.pair_id] for p in batch]))  # (B,S,S,3) uint8
    images.prefetch([rel for p in batch for rel in (p.source, p.target)])
    return EvalBatch(
        pair_ids=[p.pair_id for p in batch],
        source=np.stack([images.load(p.source) for p in batch]),
        target=np.stack([images.load(p.target) for p in batch]),
        swapped=swapped,
        source_sha=[images.sha(p.source) for p in batch],
        target_sha=[images.sha(p.target) for p in batch],
        swapped_sha=[pixel_sha256(s) for s in swapped],
    )


def _add_pair_rows(rows: dict[str, list], batch: list[FacePair], eb: EvalBatch, keys: dict[str, str],
                   store: SwapStore, features: FeatureStore, cfg: RunConfig) -> None:
    """Append a batch's pair columns, swap hashes and files, and output flags to ``rows``."""
    flags = output_flags(eb.swapped, eb.swapped_sha, [store.flag(keys[p.pair_id]) for p in batch], features)
    rows["output_flag"].extend(flags)
    for p, sha in zip(batch, eb.swapped_sha):
        for col in ("pair_id", "source", "target", "source_id", "target_id"):
            rows[col].append(getattr(p, col))
        rows["swap_sha256"].append(sha)
        rows["swap_file"].append(store.path(keys[p.pair_id]).relative_to(cfg.out_dir).as_posix())


def _update_metrics(metrics: list[Metric], eb: EvalBatch, ctx: EvalContext,
                    values: dict[str, list[np.ndarray]]) -> None:
    """Run every metric on a batch and append its per-pair values (checked: one per pair) to ``values``."""
    n = len(eb.pair_ids)
    for m in metrics:
        out = m.update(eb, ctx)
        for k in m.keys:
            if k.per_pair:
                v = np.asarray(out[k.key], dtype=np.float64)
                if v.shape != (n,):
                    raise HarnessError(f"metric {m.name} returned shape {v.shape} for {k.key}, "
                                       f"expected ({n},)")
                values.setdefault(k.key, []).append(v)
        for col in m.pair_columns:  # per-pair data only (e.g. each angle's error)
            values.setdefault(col, []).append(np.asarray(out[col], dtype=np.float64))


def _pair_frame(rows: dict[str, list], values: dict[str, list[np.ndarray]]) -> pd.DataFrame:
    """The per-pair table: ``rows`` and one column per per-pair value, NaN for flagged outputs."""
    frame = pd.DataFrame(rows)
    flagged = (frame["output_flag"] != "").to_numpy()  # (N,) outputs that are not faces
    for key, parts in values.items():
        v = np.concatenate(parts)
        v[flagged] = np.nan  # never scored as if they were faces: out of the means and of n
        frame[key] = v
    return frame


def _dataset_values(metrics: list[Metric], ctx: EvalContext, features: FeatureStore, images: ImageSource,
                    pairset: PairSet, pairs: list[FacePair], frame: pd.DataFrame,
                    shard_only: bool) -> dict[str, float]:
    """Each metric's dataset-level values (:func:`_dataset_level`). ``shard_only``: computed
    only for the features they cache, and dropped."""
    dataset_level: dict[str, float] = {}
    # what dataset-level values are a function of: every pair's three images and the gallery
    inputs = [[images.sha(p.source), images.sha(p.target), sha] for p, sha in zip(pairs, frame["swap_sha256"])]
    gallery = ([images.sha(g.path) for g in pairset.gallery]
               if any(not k.per_pair for m in metrics for k in m.keys) else [])
    for m in metrics:
        if not shard_only:
            dataset_level.update(_dataset_level(m, ctx, features, inputs, gallery))
            continue
        try:  # for the features it caches (FID: the share's real images); the values are dropped
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                m.compute(ctx)
        except HarnessError:
            pass  # e.g. FID on fewer than 2 images: rank 0's pass over every pair computes it
    return dataset_level


DATASET_LEVEL_NS = "dataset_level:v1"


def _dataset_level(m: Metric, ctx: EvalContext, features: FeatureStore, inputs: list,
                   gallery: list) -> dict[str, float]:
    """``m.compute(ctx)``, cached: the values depend only on the metric (its fingerprint: backend,
    weights, settings) and the images scored, so a re-run over cached swaps and features
    needs neither the computation nor its libraries (FID: torch-fidelity)."""
    keys = [k.key for k in m.keys if not k.per_pair]
    if not keys:
        return m.compute(ctx)
    sha = stable_hash({"metric": m.fingerprint(), "keys": keys, "pairs": inputs, "gallery": gallery}, n=64)
    found = features.get_many(DATASET_LEVEL_NS, [sha])
    if sha in found and found[sha].shape == (len(keys),):
        return {k: float(v) for k, v in zip(keys, found[sha])}
    values = m.compute(ctx)
    if all(k in values for k in keys):
        features.put_many(DATASET_LEVEL_NS, {sha: np.array([values[k] for k in keys], np.float64)})
    return values


def metric_entries(frame: pd.DataFrame, dataset_level: dict[str, float], metrics: list[Metric], cfg: RunConfig,
                   seed: int) -> dict[str, MetricEntry]:
    """Each metric key's summary entry: the mean over pairs with its bootstrap CI, or the
    dataset-level value (clamped at its lower bound, the raw value kept)."""
    results: dict[str, MetricEntry] = {}
    for m in metrics:
        backend = m.backend()
        for k in m.keys:
            head = {"key": k.key, "label": k.label, "higher_is_better": k.higher_is_better, "unit": k.unit,
                    "scale": k.scale, "metric": m.name, "backend": backend.name}
            if k.per_pair and k.aggregate != "mean":
                parts = frame[list(k.parts or (k.key,))].to_numpy(dtype=np.float64, copy=True)  # (N, P)
                parts[~np.isfinite(frame[k.key].to_numpy())] = np.nan  # flagged outputs: out, as for the key
                lo, hi = bootstrap_aggregate_ci(parts, k.aggregate, cfg.bootstrap_resamples, cfg.confidence, seed)
                n = int(np.all(np.isfinite(parts), axis=1).sum())
                entry = MetricEntry(**head, value=aggregate(parts, k.aggregate), ci_low=lo, ci_high=hi, n=n,
                                    aggregate=k.aggregate)
            elif k.per_pair:
                v = frame[k.key].to_numpy()
                lo, hi = bootstrap_ci(v, cfg.bootstrap_resamples, cfg.confidence, seed)
                n = int(np.isfinite(v).sum())  # every pair flagged or failed: no mean, n = 0
                entry = MetricEntry(**head, value=float(np.nanmean(v)) if n else float("nan"), ci_low=lo, ci_high=hi,
                                    n=n)
            else:
                raw = float(dataset_level[k.key])
                value = raw if k.lower_bound is None or not np.isfinite(raw) else max(raw, k.lower_bound)
                entry = MetricEntry(**head, value=value, raw_value=raw, ci_low=None, ci_high=None, n=len(frame),
                                    lower_bound=k.lower_bound, feature_dim=k.feature_dim)
            results[k.key] = entry
    return results


def _write_run(run_dir: Path, pairset: PairSet, frame: pd.DataFrame, keys: dict[str, str], store: SwapStore,
               cfg: RunConfig) -> None:
    """The run folder's manifest, per-pair parquet and (``save_images``) swapped crops."""
    import io

    if run_dir.exists() and not run_dir.is_dir():
        raise HarnessError(f"{run_dir} exists and is not a folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    pairset.write(run_dir)
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    atomic_write_bytes(run_dir / "pairs.parquet", buf.getvalue())
    if cfg.save_images:
        for pid, key in keys.items():
            if not store.has(key):
                continue  # a pair skipped by --on-error skip: listed in the summary
            save_png(run_dir / "images" / f"{pid}.png", store.get(key))


def shard_pairset(pairset: PairSet, batch_size: int) -> PairSet:
    """This rank's share: the pair batches ``k`` with ``k mod ranks == rank`` (each batch as
    the one-process run forms it) and every ``ranks``-th gallery face (at least one)."""
    w = world()
    gallery = shard(pairset.gallery, w) or list(pairset.gallery[w.rank % max(1, len(pairset.gallery)):][:1])
    return replace(pairset, pairs=tuple(shard_batches(pairset.pairs, batch_size, w)), gallery=tuple(gallery))


def compute_shard(method: SwapMethod, pairset: PairSet, metrics: list[Metric], cfg: RunConfig,
                  features: FeatureStore) -> dict[str, Any]:
    """This rank's share of one method under torchrun: its batches swapped and scored, its
    gallery faces embedded, all into the shared caches (the values are dropped). Rank 0
    then runs :func:`run_method` on the whole pair set, which finds everything cached.
    Returns what the summary counts: swaps computed, seconds, seconds per stage."""
    t0, before, misses = time.perf_counter(), timing.snapshot(), features.counts["misses"]
    method.prepare(pairset)
    part = shard_pairset(pairset, cfg.batch_size)
    computed, t_swap = 0, 0.0
    if part.pairs:
        images = ImageSource(part)
        keys, store, computed, _ = run_swaps(method, part, images, cfg)  # failures: rank 0's pass meets them again
        t_swap = time.perf_counter() - t0
        score(method.name, part, keys, store, metrics, images, features, cfg, shard_only=True)
    return {"rank": world().rank, "swaps_computed": computed, "features_computed": features.counts["misses"] - misses,
            "swap_s": t_swap, "score_s": time.perf_counter() - t0 - t_swap, "stages": timing.since(before)}


_scored_in_shards = [0]  # pairs this process scored in its shares (for the test hook below)


def _exit_hook(pairs_done: int) -> None:
    """Test hook: ``HARNESS_TEST_EXIT_AFTER=RANK:PAIRS`` makes rank RANK exit (code 17) once
    it has scored PAIRS pairs of its shares (all methods), as a crashed machine would."""
    spec = os.environ.get("HARNESS_TEST_EXIT_AFTER", "")
    if not spec:
        return
    rank, _, pairs = spec.partition(":")
    _scored_in_shards[0] += pairs_done
    if int(rank) == world().rank and _scored_in_shards[0] >= int(pairs):
        os._exit(17)


@dataclass
class _Scored:
    """One method's swaps and scores on a pair set (:func:`_swap_and_score`)."""

    keys: dict[str, str]
    store: SwapStore
    computed: int  # swaps computed by this pass
    t_swap: float
    failures: list
    frame: pd.DataFrame
    dataset_level: dict[str, float]
    repaired: list[str]  # swaps the cache found damaged, made again


def _swap_and_score(method: SwapMethod, pairset: PairSet, metrics: list[Metric], cfg: RunConfig,
                    features: FeatureStore) -> _Scored:
    """Swap every pair (skipping failures under --on-error skip), then score; swaps the store
    finds damaged while scoring are made again (twice at most)."""
    images = ImageSource(pairset)
    computed, t_swap, repaired = 0, 0.0, []
    for attempt in range(3):
        t1 = time.perf_counter()
        keys, store, done, failures = run_swaps(method, pairset, images, cfg)
        computed, t_swap = computed + done, t_swap + time.perf_counter() - t1
        failed_ids = {f.pair_id for f in failures}
        scored = replace(pairset, pairs=tuple(p for p in pairset.pairs if p.pair_id not in failed_ids))
        if not scored.pairs:
            raise HarnessError(f"method {method.name} failed on every one of the {len(pairset.pairs)} pairs; first: "
                               f"{failures[0].line(method.name)}")
        try:
            frame, dataset_level = score(method.name, scored, keys, store, metrics, images, features, cfg)
            return _Scored(keys, store, computed, t_swap, failures, frame, dataset_level, repaired)
        except DamagedSwaps as exc:  # deleted by the store: swap those pairs again, score again
            if attempt == 2:
                raise
            repaired.append(str(exc))
    raise AssertionError("unreachable")


def _run_id(method: SwapMethod, pairset: PairSet, metrics: list[Metric], cfg: RunConfig) -> str:
    """The run folder's id: the pair set, the method and the metrics as they score."""
    metric_fps = {m.name: m.fingerprint() for m in metrics}
    return stable_hash([pairset.protocol, pairset.version, pairset.manifest_sha256, pairset.gallery_sha256,
                        method.fingerprint(), metric_fps]
                       + ([cfg.convention] if cfg.convention else [])  # a preset's runs stay apart
                       # and so do runs under two identity maps (protocols.identity_map)
                       + [f"{k}={v}" for k, v in pairset.settings if k == "identity_map_sha256"])


def _output_checks(frame: pd.DataFrame) -> dict[str, Any]:
    """Outputs flagged per kind, their total and up to five example pairs."""
    checks: dict[str, Any] = {f: int((frame["output_flag"] == f).sum()) for f in OUTPUT_FLAGS}
    checks["flagged"] = sum(checks.values())
    checks["examples"] = frame.loc[frame["output_flag"] != "", "pair_id"].head(5).tolist()
    return checks


def _run_notes(method: SwapMethod, pairset: PairSet, metrics: list[Metric], method_notes: list[str], run: _Scored,
               checks: dict[str, Any], backends: dict[str, BackendRecord]) -> tuple[list[str], list[str]]:
    """The summary's notes (the pair set's, the method's, the cache's, the metrics', failed
    swaps, flagged outputs, the identity model the method trained with) and the metrics
    scored by that model."""
    notes = (list(pairset.notes) + [f"{method.name}: {n}" for n in method_notes]
             + [f"{method.name}: cache: {n}" for n in run.repaired]
             + [f"{method.name}: {n}" for m in metrics for n in m.notes()])
    failures = run.failures
    if failures:
        shown = "; ".join(f"{f.pair_id} ({f.error})" for f in failures[:3])
        more = f"; ... and {len(failures) - 3} more (summary.json: swap_errors)" if len(failures) > 3 else ""
        notes.append(f"{method.name}: {len(failures)} of {len(pairset.pairs)} pairs failed to swap and were "
                     f"skipped (--on-error skip), left out of every number including FID: {shown}{more}")
    if checks["flagged"]:
        kinds = ", ".join(f"{checks[f]} {f.replace('_', ' ')}" for f in OUTPUT_FLAGS if checks[f])
        notes.append(f"{method.name}: {checks['flagged']} of {len(run.frame)} outputs flagged ({kinds}; e.g. pairs "
                     f"{', '.join(checks['examples'])}): left out of the per-pair means")
    # The evaluator should not be the model the method optimised: flag it when it is.
    training_model = method.identity_model
    scored_by_training_model = sorted(k for k, b in backends.items() if training_model and b.name == training_model)
    for k in scored_by_training_model:
        notes.append(f"{method.name}: {k} was scored with {training_model}, the identity model "
                     "the method trained with (the score favours it)")
    identity_backends = sorted({b.name for k, b in backends.items() if k.startswith("identity")})
    if training_model and identity_backends and not scored_by_training_model:
        notes.append(f"{method.name}: identity scored with {', '.join(identity_backends)}, not with "
                     f"{training_model}, the identity model the method trained with")
    return notes, scored_by_training_model


def _pairset_fields(pairset: PairSet) -> dict[str, Any]:
    """The summary's description of the pair set."""
    return {"protocol": pairset.protocol, "protocol_version": pairset.version,
            "protocol_settings": dict(pairset.settings), "manifest_sha256": pairset.manifest_sha256,
            "gallery_sha256": pairset.gallery_sha256, "seed": pairset.seed, "num_pairs": len(pairset.pairs),
            "resolution": pairset.resolution, "root": str(pairset.root)}


def _work_fields(run: _Scored, shards: list[dict[str, Any]], hits: int, misses: int, t_score: float,
                 checks: dict[str, Any], t1: float, before: dict) -> dict[str, Any]:
    """The summary's account of the work: swaps, features, output checks, seconds, processes;
    with ``shards`` (torchrun), every rank's share counted."""
    computed = run.computed + sum(s["swaps_computed"] for s in shards)
    # ranks work side by side: their slowest share, then this pass
    t_swap = run.t_swap + max((s["swap_s"] for s in shards), default=0.0)
    t_score += max((s["score_s"] for s in shards), default=0.0)
    return {
        "swaps": {"computed": computed, "cached": len(run.keys) - computed - len(run.failures),
                  **({"failed": len(run.failures)} if run.failures else {})},
        # pairs the method failed on, skipped under --on-error skip (not cached: a re-run tries them again)
        "swap_errors": [{"pair_id": f.pair_id, "source": f.source, "target": f.target, "error": f.error}
                        for f in run.failures],
        # feature vectors computed by the job (every rank), and lookups this pass found cached
        "features": {"computed": misses + sum(s["features_computed"] for s in shards), "cached": hits},
        "output_checks": checks,
        "timing_s": {"swap": round(t_swap, 3), "score": round(t_score, 3),
                     "aggregate": round(time.perf_counter() - t1, 3)},
        # process-seconds per stage, summed over ranks and worker processes (faceeval.timing)
        "stage_s": timing.merged(*(s["stages"] for s in shards), timing.since(before)),
        "processes": {"ranks": max(1, len(shards)), "workers_per_rank": pool_workers()},
    }


def run_method(method: SwapMethod, pairset: PairSet, metrics: list[Metric], cfg: RunConfig,
               features: FeatureStore, shards: list[dict[str, Any]] | None = None) -> RunSummary:
    """Swap, score and aggregate one method on one pair set; writes its run folder and
    returns its summary as stored.

    ``shards``: what :func:`compute_shard` returned on every rank (torchrun). This pass then
    reads every swap and feature from the caches, and the summary counts the ranks' work."""
    if not isinstance(method, SwapMethod):
        raise HarnessError(f"{type(method).__name__} is not a faceeval.api.SwapMethod: subclass it (its hooks "
                           "prepare, swap_batch, fingerprint and describe have defaults)")
    check_name("method", method.name)  # it names the run folder and the swap cache
    check_name("protocol", pairset.protocol)
    t0, before, counts = time.perf_counter(), timing.snapshot(), dict(features.counts)
    try:
        method_notes = [str(n) for n in (method.prepare(pairset) or [])]
    except HarnessError:
        raise
    except Exception as exc:  # a plugin's bug: one line naming it
        raise HarnessError(f"method {method.name} failed in prepare(pair set): {_one_line(exc)}") from exc
    run = _swap_and_score(method, pairset, metrics, cfg, features)
    t_score = time.perf_counter() - t0 - run.t_swap
    hits, misses = (features.counts[k] - counts[k] for k in ("hits", "misses"))

    t1 = time.perf_counter()
    with stage("aggregate"):
        run_id = _run_id(method, pairset, metrics, cfg)
        run_dir = cfg.out_dir / "runs" / pairset.protocol / f"{method.name}-{run_id}"
        _write_run(run_dir, pairset, run.frame, run.keys, run.store, cfg)
        results = metric_entries(run.frame, run.dataset_level, metrics, cfg, pairset.seed)
        checks = _output_checks(run.frame)
        backends = {m.name: BackendRecord.from_dict(asdict(m.backend())) for m in metrics}
        notes, scored_by_training_model = _run_notes(method, pairset, metrics, method_notes, run, checks, backends)
    summary = RunSummary(
        run_id=run_id, **_pairset_fields(pairset),
        method=method.name, method_info=method.describe(), method_key=run.store.method_key,
        metrics=results, backends=backends,
        # every choice that moves a number (faceeval.conventions): the preset, each metric's settings,
        # the protocol's (protocol_settings) and what a preset substituted
        convention=cfg.convention,
        conventions={m.name: m.convention() for m in metrics if m.convention()},
        substitutions=list(cfg.substitutions),
        scored_by_training_model=scored_by_training_model,
        confidence=cfg.confidence, bootstrap_resamples=cfg.bootstrap_resamples,
        notes=notes,
        **_work_fields(run, shards or [], hits, misses, t_score, checks, t1, before),
        device=cfg.device,
        finished=_dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds"),  # orders runs of one second
        environment=environment(),
        run_dir=str(run_dir),
    )
    return write_summary(summary, cfg.out_dir)






def group_notes(notes: list[str], metric_names: list[str]) -> list[str]:
    """One line per fact per method: notes that say the same thing for several metrics
    (``codeswap: pose (dlib): detector found no face in 6 of 56 images``, the same for
    identity_facenet and expression) become one line naming the metrics in brackets, in
    the order first seen. The full list stays in the summary and the report."""
    grouped: dict[tuple[str, str], list[str]] = {}
    for note in notes:
        method, sep, rest = note.partition(": ")
        fact, who = note, ""
        if sep:
            for name in sorted(metric_names, key=len, reverse=True):  # identity_facenet before identity
                for head in (f"{name}: ", f"{name} ("):
                    if rest.startswith(head):
                        backend, _, tail = (rest[len(name):].partition(": ") if head.endswith("(")
                                            else ("", "", rest[len(head):]))
                        if tail:
                            fact, who = f"{method}: {backend.strip() + ' ' if backend.strip() else ''}{tail}", name
                        break
                if who:
                    break
        grouped.setdefault((fact, ""), []).extend([who] if who else [])
    return [fact if not whos else f"{fact} [{', '.join(dict.fromkeys(whos))}]" for (fact, _), whos in grouped.items()]
