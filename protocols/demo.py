"""The demo protocol: real faces that ship with the repository.

28 FFHQ-aligned 256x256 crops of real people, cut from photos that ship inside PyPI and
npm packages (see ``demo_faces/ORIGIN.md``; rebuilt by ``scripts/build_demo_faces.py``).
One photo per identity, so every image is a source once and a target once, and the
retrieval gallery is the whole set (as in the paper's CelebA-HQ protocol).
"""

from __future__ import annotations

import json
from pathlib import Path

from faceeval.api import FaceProtocol, GalleryItem, PairSet
from faceeval.constants import DEMO_DIR
from faceeval.errors import HarnessError
from protocols.base import pair_images


class DemoProtocol(FaceProtocol):
    name = "demo"
    version = "1"
    resolution = 256

    def __init__(self, root: Path | None = None, seed: int = 0, num_pairs: int | None = None,
                 cache_dir: Path | None = None) -> None:
        self.root = Path(root) if root else DEMO_DIR
        self.seed = seed
        self.num_pairs = num_pairs  # cache_dir: unused, the crops ship aligned

    def validate(self) -> None:
        """The index and every face it lists are in place."""
        self._gallery()

    def _gallery(self) -> tuple[GalleryItem, ...]:
        index = self.root / "faces.json"
        if not index.is_file():
            raise HarnessError(f"demo faces not found: expected {index} (run scripts/build_demo_faces.py)")
        records = json.loads(index.read_text())
        gallery = tuple(GalleryItem(r["file"], r["identity"]) for r in records)
        missing = [g.path for g in gallery if not (self.root / g.path).is_file()]
        if missing:
            raise HarnessError(f"demo faces missing from {self.root}: {', '.join(missing)}")
        return gallery

    def build(self) -> PairSet:
        gallery = self._gallery()
        return PairSet(
            protocol=self.name, version=self.version, root=self.root, resolution=self.resolution,
            seed=self.seed, pairs=tuple(pair_images(gallery, self.seed, self.num_pairs)), gallery=gallery,
            settings=(("num_pairs", self.num_pairs or len(gallery)),),
        )
