"""The interfaces and records that connect protocols, methods, metrics and reports.

Data flows one way:
    protocol.build() -> PairSet  ->  method.swap(source, target)  ->  metric.update(batch)
    -> per-pair rows + aggregates  ->  reports / MLflow.

Image conventions (everywhere in the harness):
    * a method sees float tensors (B, 3, H, W) in [0, 1], RGB, aligned face crops;
    * a metric sees uint8 arrays (B, H, W, 3), RGB, at the protocol's crop size: the
      swapped image is quantised to uint8 before scoring, exactly as it is cached, so a
      cached re-run scores the same pixels.
"""

from __future__ import annotations

import csv
import hashlib
import io
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from faceeval.summaries import arrow

if TYPE_CHECKING:  # annotations only: listing the interfaces imports no backend
    import torch

    from faceeval.cache import FeatureStore

# ---------------------------------------------------------------------------------------
# Pair sets
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FacePair:
    """One swap to perform: identity from ``source``, everything else from ``target``."""

    pair_id: str
    source: str  # image path relative to PairSet.root, posix separators
    target: str
    source_id: str  # identity labels
    target_id: str


@dataclass(frozen=True)
class GalleryItem:
    """One reference face for identity retrieval."""

    path: str  # relative to PairSet.root
    identity: str


PAIR_COLUMNS = ("pair_id", "source", "target", "source_id", "target_id")
GALLERY_COLUMNS = ("path", "identity")


def _csv_bytes(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> bytes:
    # Canonical form: '\n' line ends, minimal quoting, UTF-8: the same bytes on any OS.
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


@dataclass(frozen=True)
class PairSet:
    """What a protocol builds: the pairs, the retrieval gallery, and where images live.

    ``manifest_sha256`` covers the pairs, ``gallery_sha256`` the gallery; both are part
    of every result, so a number can always be traced to the exact pairs it scored.
    """

    protocol: str
    version: str
    root: Path  # every relative path resolves inside this folder
    resolution: int  # side of the square aligned crops, pixels
    seed: int
    pairs: tuple[FacePair, ...]
    gallery: tuple[GalleryItem, ...]
    settings: tuple[tuple[str, Any], ...] = ()  # protocol options that shaped the pairs
    notes: tuple[str, ...] = ()  # counted skips and other facts a report must show

    def __post_init__(self) -> None:
        root = self.root.resolve()
        for rel in {p.source for p in self.pairs} | {p.target for p in self.pairs} | {
            g.path for g in self.gallery
        }:
            full = (root / rel).resolve()
            if root not in full.parents:
                raise ValueError(f"manifest path {rel!r} points outside the dataset root {root}")
        ids = [p.pair_id for p in self.pairs]
        if len(set(ids)) != len(ids):
            raise ValueError("pair ids must be unique")

    def manifest_bytes(self) -> bytes:
        return _csv_bytes(PAIR_COLUMNS, [tuple(getattr(p, c) for c in PAIR_COLUMNS) for p in self.pairs])

    def gallery_bytes(self) -> bytes:
        return _csv_bytes(GALLERY_COLUMNS, [(g.path, g.identity) for g in self.gallery])

    @property
    def manifest_sha256(self) -> str:
        return hashlib.sha256(self.manifest_bytes()).hexdigest()

    @property
    def gallery_sha256(self) -> str:
        return hashlib.sha256(self.gallery_bytes()).hexdigest()

    def path(self, rel: str) -> Path:
        return self.root / rel

    def write(self, folder: Path) -> None:
        """Write ``pairs.csv`` and ``gallery.csv`` (the manifest) into ``folder``, atomically."""
        from faceeval.images import atomic_write_bytes

        atomic_write_bytes(folder / "pairs.csv", self.manifest_bytes())
        atomic_write_bytes(folder / "gallery.csv", self.gallery_bytes())


class FaceProtocol(ABC):
    """Builds a PairSet from a dataset root and a seed. Same inputs, same bytes.

    The contract, which the registry and the CLI rely on:

    * the constructor takes ``root``, ``seed``, ``num_pairs`` and ``cache_dir`` (each may
      be left at its default) and, as further keyword parameters, the protocol's
      settings (``--option key=value``). The signature is their declaration: the registry
      checks the keys and converts the text values once, at creation
      (:func:`faceeval.options.bind`);
    * :meth:`validate` checks the dataset before any long work;
    * :meth:`build` returns the pair set.
    """

    name: str
    version: str
    #: constructor parameters every protocol takes; the others are its settings
    COMMON_PARAMETERS = ("root", "seed", "num_pairs", "cache_dir")

    @classmethod
    def settings(cls) -> dict[str, Any]:
        """The protocol's own settings and their defaults (what ``--option`` accepts)."""
        from faceeval.options import declared

        return {k: default for k, (_, default) in declared(cls).items() if k not in cls.COMMON_PARAMETERS}

    def validate(self) -> None:  # noqa: B027 - optional: not every dataset has a layout to check
        """Check the dataset's layout; raise :class:`faceeval.errors.LayoutError` listing
        every problem. Default: nothing to check beyond what :meth:`build` does."""

    @abstractmethod
    def build(self) -> PairSet:
        """Prepare crops if needed and return the pair set (same inputs, same bytes)."""


# ---------------------------------------------------------------------------------------
# Methods
# ---------------------------------------------------------------------------------------


class SwapMethod(ABC):
    """A face-swapping method behind one call.

    Subclasses set ``name`` and ``resolution`` (the crop side they expect; ``None`` means
    any size) and implement :meth:`swap`. ``fingerprint`` must change whenever the
    outputs could change (weights, settings): it keys the swap cache.
    """

    name: str = "unnamed"
    resolution: int | None = None
    #: backend name (``Backend.name``) of the identity model the method trained with, e.g.
    #: "arcface_w600k_r50"; a run scored by that same model is flagged in its report
    identity_model: str | None = None

    def __init__(self, device: str = "cpu") -> None:
        self.device = device

    @abstractmethod
    def swap(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) float [0,1] x2 -> (B,3,H,W) float [0,1]; identity of source on target.

        The contract the runner checks on every output before it is stored or scored
        (``harness.runner.output_problems``): a ``torch.Tensor`` (not numpy, not None) of a
        floating dtype, the input's shape, every finite value within [0, 1] (half a grey
        level of slack, which rounds exactly as in-range values do). A network's [-1, 1]
        output must be mapped with ``(x + 1) / 2``; [0, 255] divided by 255. A breach, or an
        exception, stops the run with one line naming the method and the pair (or, with
        ``--on-error skip``, leaves that pair out, counted). Nothing is clamped. NaN/Inf are
        kept apart: such outputs are flagged ``non_finite`` and left out of the means."""

    # Optional hooks: the runner always calls them; the defaults do nothing special.
    def prepare(self, pairset: PairSet) -> list[str]:
        """Called once with the whole pair set before any swap; returns notes for the report
        (e.g. outputs found in a folder that match no pair). Default: nothing to do."""
        return []

    def swap_batch(self, pairs: list[FacePair], source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """What the runner calls for each batch: :meth:`swap`, also given the batch's pairs
        (ids and file names) for methods that look outputs up by pair. Default: ``swap``."""
        return self.swap(source, target)

    def fingerprint(self) -> dict[str, Any]:
        """Everything that determines the outputs; hashed into the cache key."""
        return {"name": self.name, "resolution": self.resolution}

    def describe(self) -> dict[str, Any]:
        """Provenance recorded with every result (weights paths and sha256, settings)."""
        return self.fingerprint()


# ---------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricKey:
    """One number a metric produces: MLflow-safe key, direction and unit."""

    key: str  # e.g. "id_retrieval_top1": [a-z0-9_] only
    label: str  # column header, e.g. "ID retrieval top-1"
    higher_is_better: bool
    unit: str  # "%", "cosine", "deg", "rad", ""
    per_pair: bool = True  # False for dataset-level numbers (FID)
    scale: float = 1.0  # multiply the stored value by this for display (0.93 -> 93 %)
    lower_bound: float | None = None  # values below it are rounding error: summaries clamp (raw kept)
    feature_dim: int | None = None  # dataset-level statistics over features of this size (FID)
    #: how the per-pair values become the summary value: "mean", or "rms" (per column of ``parts``,
    #: the root of the mean square over pairs, then the mean of the columns; faceeval.conventions.aggregate)
    aggregate: str = "mean"
    parts: tuple[str, ...] = ()  # per-pair columns (Metric.pair_columns) the aggregate runs over; () = the key

    def __post_init__(self) -> None:
        if not self.key or not all(c.islower() or c.isdigit() or c == "_" for c in self.key):
            raise ValueError(f"metric key {self.key!r} must use only [a-z0-9_]")

    @property
    def arrow(self) -> str:
        return arrow(self.higher_is_better)


@dataclass(frozen=True)
class Backend:
    """The model that produced a metric's numbers, as a report must name it."""

    name: str  # e.g. "dlib_resnet_v1"
    description: str  # e.g. "dlib ResNet-29 face descriptor, 128-d (offline stand-in)"
    standard: bool  # True only for the model the papers use for this column
    weights: tuple[tuple[str, str], ...] = ()  # (file name, sha256)


@dataclass
class EvalBatch:
    """A batch of scored pairs, uint8 (B, H, W, 3) RGB, with pixel hashes for caches."""

    pair_ids: list[str]
    source: np.ndarray
    target: np.ndarray
    swapped: np.ndarray
    source_sha: list[str]
    target_sha: list[str]
    swapped_sha: list[str]


@dataclass
class EvalContext:
    """What a metric may use besides the batch: the pair set, caches, the device."""

    pairset: PairSet
    device: str
    feature_cache: FeatureStore
    load_image: Callable[[str], np.ndarray]  # relative path -> uint8 (H, W, 3)
    image_sha: Callable[[str], str]  # relative path -> pixel sha256
    extras: dict[str, Any] = field(default_factory=dict)


class Metric(ABC):
    """Scores swapped faces. Per-pair values feed bootstrap CIs; dataset-level values
    (FID) come from :meth:`compute` after every batch has been seen."""

    name: str
    keys: tuple[MetricKey, ...]
    #: extra per-pair columns that :meth:`update` also returns: written to ``pairs.parquet``
    #: beside the keys, never summarised or ranked (e.g. each pose angle's error)
    pair_columns: tuple[str, ...] = ()

    @abstractmethod
    def backend(self) -> Backend:
        """The model behind the numbers (named in every table). Must not load the network
        (hash its weight files instead): a run whose features are all cached loads none."""

    def fingerprint(self) -> dict[str, Any]:
        b = self.backend()
        return {"metric": self.name, "backend": b.name, "weights": list(b.weights)}

    def prepare(self, ctx: EvalContext) -> None:  # noqa: B027 - optional hook
        """Called once before the batches (e.g. embed the retrieval gallery)."""

    @abstractmethod
    def update(self, batch: EvalBatch, ctx: EvalContext) -> dict[str, np.ndarray]:
        """Per-pair values for every per-pair key, each an array of shape (B,)."""

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        """Dataset-level values for keys with ``per_pair=False``."""
        return {}

    def convention(self) -> dict[str, str]:
        """The evaluation convention the numbers were computed under (:mod:`faceeval.conventions`):
        recorded in every summary and MLflow run; empty for a metric without such settings."""
        conv = getattr(self, "conv", None)
        return conv.as_dict() if conv is not None else {}

    def notes(self) -> list[str]:
        """Counted facts a report must show (e.g. faces the detector did not find)."""
        return []
