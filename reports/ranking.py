"""Honest ranking: which method is better, on the same pairs, beyond chance.

Methods are ordered by their mean. Walking down that order, each method is compared with
the one just above it by a paired two-sided sign-flip permutation test over the pairs both
scored (the mean of the per-pair differences, each difference's sign flipped at random,
``resamples`` times, seeded). A method whose difference to the one above is not
significant at ``alpha`` shares that method's rank; otherwise it starts the next rank.
The best rank is marked (bold) and the second (underlined) only where the group is
significantly separated from the next one, so a table of ties marks nothing.

Adjacent comparisons are not corrected for multiplicity; the chain is conservative (A~B
and B~C make one group even when A and C differ).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from faceeval.summaries import RunSummary

TEST_NAME = "paired sign-flip permutation test"


@dataclass(frozen=True)
class RankRule:
    resamples: int = 2000
    alpha: float = 0.05
    seed: int = 0

    def describe(self) -> str:
        return (f"bold = best, underline = second, only where the difference to the next-ranked method is "
                f"significant on the same pairs ({TEST_NAME} of the mean per-pair difference, two-sided, "
                f"{self.resamples} resamples, seed {self.seed}, alpha {self.alpha:g}); methods not significantly "
                f"different share a rank; dataset-level metrics (FID) have no pair-level values and are not marked")


def paired_pvalue(a: np.ndarray, b: np.ndarray, resamples: int, seed: int) -> float:
    """Two-sided p-value that mean(a - b) != 0, from paired sign flips; 1.0 with < 2 pairs.
    ``a`` and ``b`` are aligned per pair; pairs where either is not finite are left out."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    d = a[ok] - b[ok]  # (n,)
    if d.size < 2 or not np.any(d):
        return 1.0
    observed = abs(d.mean())
    total = d.sum()
    rng = np.random.default_rng(seed)
    nbytes = (d.size + 7) // 8
    hits, done, chunk = 0, 0, max(1, min(resamples, 2_000_000 // d.size))
    while done < resamples:
        k = min(chunk, resamples - done)
        raw = np.frombuffer(rng.bytes(k * nbytes), np.uint8).reshape(k, nbytes)
        keep = np.unpackbits(raw, axis=1, count=d.size)  # (k, n) of 0/1: 1 keeps a sign, 0 flips it
        flipped = (2.0 * (keep @ d) - total) / d.size  # (k,) mean of the sign-flipped differences
        hits += int(np.count_nonzero(np.abs(flipped) >= observed - 1e-12 * max(observed, 1.0)))
        done += k
    return (hits + 1) / (resamples + 1)


@dataclass(frozen=True)
class Ranking:
    order: list[str]  # best first
    rank: dict[str, int]  # shared ranks: 1 = best group
    mark: dict[str, int]  # 1 = bold, 2 = underline (only significant groups)
    pvalue_to_next: dict[str, float]  # method -> p-value against the next method in order


def rank_methods(means: dict[str, float], values: dict[str, np.ndarray] | None, higher_is_better: bool,
                 rule: RankRule) -> Ranking:
    """Rank methods by ``means``; ``values`` holds each method's per-pair values, aligned
    on the same pairs (None: dataset-level, ranked by value but never marked)."""
    finite = {m: v for m, v in means.items() if v is not None and math.isfinite(v)}
    order = sorted(finite, key=lambda m: finite[m], reverse=higher_is_better)
    rank, pvals, separated = {}, {}, {}
    current = 1
    for i, m in enumerate(order):
        if i > 0:
            prev = order[i - 1]
            p = 1.0 if values is None else paired_pvalue(values[prev], values[m], rule.resamples, rule.seed)
            pvals[prev] = p
            if p < rule.alpha:
                separated[rank[prev]] = True
                current += 1
        rank[m] = current
    mark = {m: r for m, r in rank.items() if r <= 2 and separated.get(r, False)}
    return Ranking(order, rank, mark, pvals)


def load_pair_frames(runs: list[RunSummary]) -> dict[tuple[str, str], Any]:
    """(protocol, method) -> its pairs.parquet as a DataFrame, for runs whose folder has one."""
    import pandas as pd

    frames = {}
    for s in runs:
        path = Path(s.run_dir) / "pairs.parquet"
        if s.run_dir and path.is_file():
            frames[(s.protocol, s.method)] = pd.read_parquet(path)
    return frames


def aligned_values(frames: dict[str, Any], key: str) -> dict[str, np.ndarray] | None:
    """Per method, the column ``key`` on the pairs every method scored (pair-id order);
    None when a method has no per-pair column for it."""
    if not frames or any(key not in f.columns for f in frames.values()):
        return None
    common = None
    for f in frames.values():
        ids = set(f["pair_id"])
        common = ids if common is None else common & ids
    ids = sorted(common or ())
    return {m: f.set_index("pair_id").loc[ids, key].to_numpy(np.float64) for m, f in frames.items()}
