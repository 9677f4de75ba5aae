"""Evaluation conventions: every choice that moves a published number, as named, typed settings.

Face-swap papers report "ID retrieval", "pose" and "expression" on the same datasets, but each
evaluation codebase computes them its own way. Each such choice is a setting of the metric (or
protocol) it belongs to, held in a frozen dataclass below, checked when it is made (an unknown
value is a one-line error with a did-you-mean), recorded in ``summary.json``, ``results.json``,
the MLflow params and the report, and part of the metric's fingerprint (so a cached run under one
convention is never read back under another). Today's behaviour is every default.

| setting (metric)                 | values                                              | default            |
|----------------------------------|-----------------------------------------------------|--------------------|
| ``crop`` (identity)              | ``model`` (the recogniser's own 5-point alignment), ``resize`` (the whole aligned crop resized to 112), ``psp`` (resize to 256, rows 35:223, cols 32:220, resize to 112) | ``model`` |
| ``mask`` (identity)              | ``none``, ``parsing`` (BiSeNet face classes kept, the rest black, before the crop) | ``none`` |
| ``gallery`` (identity)           | ``one_per_identity`` (the protocol's gallery), ``identity_mean`` (one mean vector per identity), ``every_frame`` (the gallery and every source and target image of the pairs) | ``one_per_identity`` |
| ``score`` (identity)             | ``cosine``, ``dot`` (unnormalised dot product: differs from cosine for mean vectors) | ``cosine`` |
| ``formula`` (pose)               | ``l2_3angles`` (degrees, L2 over yaw, pitch, roll), ``l2_2angles`` (yaw, pitch), ``hopenet_bins`` (per angle ‖Δ logits‖/2, i.e. √(MSE·dim)/2, root-mean-square over the pairs, then the mean of the three angles, as ReliableSwap) | ``l2_3angles`` |
| ``formula`` (expression)         | ``l2`` (mean over pairs of the L2 distance), ``sqrt_mse_dim`` (√(MSE·dim) over the whole set: the root-mean-square of the per-pair L2) | ``l2`` |
| ``reference`` (fid)              | ``targets``, ``sources``                             | ``targets``        |

Frame sampling and the FF++ compression folder are the ffpp protocol's ``sampling`` and
``compression`` settings. Presets that set them all at once: :mod:`faceeval.presets`.

Example:
    >>> IdentityConvention(score="dot").score
    'dot'
"""  # noqa: E501

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from faceeval.errors import HarnessError

CROPS = ("model", "resize", "psp")
MASKS = ("none", "parsing")
GALLERIES = ("one_per_identity", "identity_mean", "every_frame")
SCORES = ("cosine", "dot")
POSE_FORMULAS = ("l2_3angles", "l2_2angles", "hopenet_bins")
EXPRESSION_FORMULAS = ("l2", "sqrt_mse_dim")
FID_REFERENCES = ("targets", "sources")
#: REFace's crop of a 256 px aligned face (eval_tool/ID_retrieval/ID_retrieval.py line 130): rows, cols
PSP_ROWS, PSP_COLS = (35, 223), (32, 220)
ID_INPUT = 112  # the recognisers' input side


def choice(value: object, name: str, choices: Sequence[str], owner: str = "") -> str:
    """``value`` as one of ``choices`` (case-insensitive), else a one-line error with a did-you-mean."""
    from faceeval.options import suggest

    text = str(value).strip().lower()
    if text not in choices:
        where = f" for {owner}" if owner else ""
        raise HarnessError(f"setting {name}={value!r}{where} is not one of {', '.join(choices)}"
                           f"{suggest(text, choices)}")
    return text


class _Convention:
    """Shared behaviour of the convention dataclasses: checked fields, a plain dict, a label."""

    CHOICES: dict[str, tuple[str, ...]] = {}

    def __post_init__(self) -> None:
        for name, allowed in self.CHOICES.items():
            object.__setattr__(self, name, choice(getattr(self, name), name, allowed, type(self).__name__))

    def as_dict(self) -> dict[str, str]:
        return asdict(self)  # type: ignore[call-overload]

    def is_default(self) -> bool:
        return self == type(self)()

    def describe(self) -> str:
        """``crop=model, gallery=...``: every field, for table footers."""
        return ", ".join(f"{k}={v}" for k, v in self.as_dict().items())


@dataclass(frozen=True)
class IdentityConvention(_Convention):
    crop: str = "model"
    mask: str = "none"
    gallery: str = "one_per_identity"
    score: str = "cosine"
    CHOICES = {"crop": CROPS, "mask": MASKS, "gallery": GALLERIES, "score": SCORES}


@dataclass(frozen=True)
class PoseConvention(_Convention):
    formula: str = "l2_3angles"
    CHOICES = {"formula": POSE_FORMULAS}


@dataclass(frozen=True)
class ExpressionConvention(_Convention):
    formula: str = "l2"
    CHOICES = {"formula": EXPRESSION_FORMULAS}


@dataclass(frozen=True)
class FIDConvention(_Convention):
    reference: str = "targets"
    CHOICES = {"reference": FID_REFERENCES}


# --- the formulas -------------------------------------------------------------------------


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (rows already of length 1 are returned unchanged, bit for bit)."""
    x = np.asarray(x, np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)  # (N, 1)
    if np.all(np.abs(norms - 1.0) < 1e-6):
        return x
    return x / norms.clip(1e-12)


def gallery_vectors(vectors: np.ndarray, ids: Sequence[str], gallery: str) -> tuple[np.ndarray, list[str]]:
    """The retrieval gallery from embeddings (M, D) and their identities: as given, or
    (``identity_mean``) one mean vector per identity, in order of first appearance (not
    re-normalised: ``score=dot`` then sees their length, ``cosine`` does not)."""
    ids = list(ids)
    if gallery != "identity_mean":
        return np.asarray(vectors), ids
    order = list(dict.fromkeys(ids))
    where = {i: k for k, i in enumerate(order)}
    index = np.array([where[i] for i in ids])  # (M,)
    sums = np.zeros((len(order), vectors.shape[1]), np.float64)
    np.add.at(sums, index, vectors)
    counts = np.bincount(index, minlength=len(order))[:, None]  # (K, 1)
    return (sums / counts).astype(np.float32), order


def retrieval_scores(query: np.ndarray, gallery: np.ndarray, score: str = "cosine") -> np.ndarray:
    """(N, D) x (M, D) -> (N, M): cosine (both sides unit length) or the raw dot product."""
    if score == "cosine":
        return unit_rows(query) @ unit_rows(gallery).T
    return np.asarray(query, np.float32) @ np.asarray(gallery, np.float32).T


def angle_error(a: np.ndarray, b: np.ndarray, formula: str) -> np.ndarray:
    """(N, 3) (yaw, pitch, roll) degrees x2 -> (N,) L2 over the three angles or over yaw and pitch."""
    diff = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))  # (N, 3)
    return np.linalg.norm(diff[:, :2] if formula == "l2_2angles" else diff, axis=1)


def bin_errors(a: np.ndarray, b: np.ndarray, bins: Sequence[int]) -> np.ndarray:
    """Raw bin logits of yaw, pitch, roll concatenated, (N, sum(bins)) x2 -> (N, 3): per angle
    √(MSE·dim)/2 of one pair, which is ‖Δ logits‖/2 (ReliableSwap's ``_calc_mse_l2``)."""
    diff = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    edges = np.cumsum([0, *bins])
    return np.stack([np.linalg.norm(diff[:, lo:hi], axis=1) / 2.0 for lo, hi in zip(edges[:-1], edges[1:])], axis=1)


def aggregate(parts: np.ndarray, how: str) -> float:
    """One number from per-pair values (N,) or (N, P): ``mean`` (of the finite values), or
    ``rms``: per column the root of the mean square over pairs, then the mean of the columns."""
    x = np.asarray(parts, np.float64)
    x = x[:, None] if x.ndim == 1 else x
    x = x[np.all(np.isfinite(x), axis=1)]
    if not len(x):
        return float("nan")
    if how == "mean":
        return float(x.mean(axis=0).mean())
    if how == "rms":
        return float(np.sqrt((x**2).mean(axis=0)).mean())
    raise HarnessError(f"unknown aggregate {how!r} (mean or rms)")


def plain(conventions: dict[str, Any]) -> dict[str, Any]:
    """``{metric: dataclass}`` -> ``{metric: {setting: value}}`` (for summaries)."""
    return {k: v.as_dict() if isinstance(v, _Convention) else v for k, v in conventions.items()}
