"""Helpers shared by the metric tests: a minimal EvalContext over in-memory images."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from faceeval.api import EvalContext, FacePair, GalleryItem, PairSet
from faceeval.cache import FeatureStore
from faceeval.images import pixel_sha256


def fake_context(pairs: list[FacePair], images: dict[str, np.ndarray], gallery: list[GalleryItem] | None = None,
                 folder: Path | None = None) -> EvalContext:
    """A context whose images come from a dict (relative path -> uint8 image)."""
    folder = Path(folder or tempfile.mkdtemp(prefix="harness-test-"))
    ps = PairSet(protocol="test", version="1", root=folder, resolution=next(iter(images.values())).shape[0], seed=0,
                 pairs=tuple(pairs), gallery=tuple(gallery or ()))
    return EvalContext(pairset=ps, device="cpu", feature_cache=FeatureStore(folder / "features.sqlite"),
                       load_image=lambda rel: images[rel], image_sha=lambda rel: pixel_sha256(images[rel]))
