"""The folder protocol: any directory of face photos, on the demo's code path.

Layouts:
    ROOT/<identity>/<photo>.jpg   one subfolder per identity (several photos each)
    ROOT/<photo>.jpg              a flat folder: each photo is its own identity
Both may be mixed. Every photo is detected, landmarked and FFHQ-aligned (largest face)
once; crops are cached under the harness cache, keyed by the photo's bytes, so a second
run (or a resumed one) re-detects nothing. Photos that cannot be read or hold no face
are counted, listed in ``skipped.csv`` beside the crops, and shown in the report.
"""

from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm

from harness.api import FaceProtocol, GalleryItem, PairSet
from harness.cache import stable_hash
from harness.constants import cache_root
from harness.errors import HarnessError
from harness.images import atomic_write_bytes, file_sha256, load_rgb, save_png
from protocols.base import IMAGE_SUFFIXES, pair_images


class FolderProtocol(FaceProtocol):
    name = "folder"
    version = "1"

    def __init__(self, root: Path | None = None, seed: int = 0, num_pairs: int | None = None,
                 cache_dir: Path | None = None, resolution: int = 256) -> None:
        if root is None:
            raise HarnessError("protocol 'folder' needs --root: a folder of face photos "
                               "(ROOT/<identity>/*.jpg, or a flat ROOT/*.jpg with one identity per photo)")
        self.source_root = Path(root).expanduser().resolve()
        self.seed = seed
        self.num_pairs = num_pairs
        self.resolution = resolution
        base = Path(cache_dir) if cache_dir else cache_root()
        self.crop_root = base / "crops" / f"folder-{stable_hash([str(self.source_root), resolution])}"

    def validate(self) -> None:
        """The folder exists and holds photos (faces are found while building)."""
        self._photos()

    def _photos(self) -> list[tuple[str, str]]:
        """(relative path, identity) of every photo, sorted for stable order."""
        if not self.source_root.is_dir():
            raise HarnessError(f"folder not found: {self.source_root} (expected ROOT/<identity>/*.jpg or ROOT/*.jpg)")
        photos = []
        for p in sorted(self.source_root.rglob("*")):
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not any(s.startswith(".") for s in p.parts):
                rel = p.relative_to(self.source_root)
                if len(rel.parts) > 2:
                    raise HarnessError(f"{p}: photos may sit at most one folder deep (ROOT/<identity>/photo)")
                identity = rel.parts[0] if len(rel.parts) == 2 else rel.stem
                photos.append((rel.as_posix(), identity))
        if not photos:
            raise HarnessError(f"no photos ({', '.join(IMAGE_SUFFIXES)}) found under {self.source_root}")
        return photos

    def build(self) -> PairSet:
        from harness.faces.crops import crop_largest
        from harness.faces.detect import DlibDetector

        photos = self._photos()
        index_path = self.crop_root / "index.json"
        index: dict[str, dict] = json.loads(index_path.read_text()) if index_path.is_file() else {}
        detector = DlibDetector(upsample=1)
        gallery, skipped, multi = [], [], 0
        for rel, identity in tqdm(photos, desc="detect + align", unit="photo", leave=False):
            src = self.source_root / rel
            sha = file_sha256(src)
            crop_rel = f"{Path(rel).with_suffix('')}.png"
            entry = index.get(rel)
            if entry is None or entry["sha256"] != sha or (entry["status"] == "ok" and not (self.crop_root / crop_rel).is_file()):
                try:
                    image = load_rgb(src)
                except HarnessError as exc:
                    entry = {"sha256": sha, "status": "unreadable", "detail": str(exc)}
                else:
                    result = crop_largest(image, detector, self.resolution)
                    if result is None:
                        entry = {"sha256": sha, "status": "no_face", "detail": "no face detected"}
                    else:
                        save_png(self.crop_root / crop_rel, result.aligned.crop)
                        entry = {"sha256": sha, "status": "ok", "faces": result.num_faces}
                index[rel] = entry
                atomic_write_bytes(index_path, json.dumps(index, indent=1, sort_keys=True).encode())
            if entry["status"] == "ok":
                gallery.append(GalleryItem(crop_rel, identity))
                multi += entry.get("faces", 1) > 1
            else:
                skipped.append((rel, entry["status"], entry.get("detail", "")))
        lines = "path,reason,detail\n" + "".join(f"{r},{s},{d}\n" for r, s, d in skipped)
        atomic_write_bytes(self.crop_root / "skipped.csv", lines.encode())
        notes = [f"{len(photos)} photos: {len(gallery)} aligned, {len(skipped)} skipped "
                 f"(listed in {self.crop_root / 'skipped.csv'})"]
        if multi:
            notes.append(f"{multi} photos held several faces: the largest was used")
        if len({g.identity for g in gallery}) < 2:
            raise HarnessError(f"{self.source_root}: fewer than 2 identities with a detectable face "
                               f"({len(skipped)} photos skipped; see {self.crop_root / 'skipped.csv'})")
        return PairSet(
            protocol=self.name, version=self.version, root=self.crop_root, resolution=self.resolution,
            seed=self.seed, pairs=tuple(pair_images(gallery, self.seed, self.num_pairs)), gallery=tuple(gallery),
            settings=(("num_pairs", self.num_pairs or len(gallery)), ("source_root_name", self.source_root.name)),
            notes=tuple(notes),
        )
