"""The folder protocol: any directory of face photos, on the demo's code path.

Layouts:
    ROOT/<identity>/<photo>.jpg   one subfolder per identity (several photos each)
    ROOT/<photo>.jpg              a flat folder: each photo is its own identity
Both may be mixed. Every photo is detected, landmarked and FFHQ-aligned (largest face)
once; crops are cached under the harness cache, keyed by the photo's bytes, so a second
run (or a resumed one) re-detects nothing. Photos that cannot be read or hold no face,
dangling symlinks and symlinks that lead out of ROOT are counted, listed in
``skipped.csv`` beside the crops, and shown in the report. Names starting with a dot
*inside* ROOT are ignored (ROOT itself may sit below a dot-folder). Photos of one folder
that share a stem (``alex.jpg``, ``alex.png``) get crops named by their whole file name.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

from tqdm import tqdm

from faceeval.api import FaceProtocol, GalleryItem, PairSet
from faceeval.cache import stable_hash
from faceeval.constants import cache_root
from faceeval.errors import HarnessError
from faceeval.images import atomic_write_bytes, file_sha256, load_rgb, save_png
from protocols.base import IMAGE_SUFFIXES, option_int, pair_images

PART_FLUSH = 20  # photos between writes of a process's index part


class PhotoCrop:
    """Picklable task: (photo, crop name, its index entry or None) -> its index entry,
    detecting and aligning only when the photo changed or its crop is gone."""

    def __init__(self, source_root: Path, crop_root: Path, resolution: int) -> None:
        self.source_root, self.crop_root, self.resolution = source_root, crop_root, resolution

    def __call__(self, item: tuple[str, str, dict | None]) -> dict:
        from faceeval.faces.crops import crop_largest
        from faceeval.faces.detect import DlibDetector

        rel, crop_rel, entry = item
        src = self.source_root / rel
        sha = file_sha256(src)
        if (entry is not None and entry["sha256"] == sha and entry.get("crop", crop_rel) == crop_rel
                and (entry["status"] != "ok" or (self.crop_root / crop_rel).is_file())):
            return entry
        try:
            image = load_rgb(src)
        except HarnessError as exc:
            return {"sha256": sha, "status": "unreadable", "detail": str(exc)}
        result = crop_largest(image, DlibDetector(upsample=1), self.resolution)
        if result is None:
            return {"sha256": sha, "status": "no_face", "detail": "no face detected"}
        save_png(self.crop_root / crop_rel, result.aligned.crop)
        return {"sha256": sha, "status": "ok", "faces": result.num_faces, "crop": crop_rel}


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
        self.num_pairs = option_int(num_pairs, "num_pairs", minimum=1, allow_none=True)
        self.resolution = resolution
        base = Path(cache_dir) if cache_dir else cache_root()
        self.crop_root = base / "crops" / f"folder-{stable_hash([str(self.source_root), resolution])}"

    def validate(self) -> None:
        """The folder exists and holds photos (faces are found while building)."""
        self._photos()

    def _photos(self) -> tuple[list[tuple[str, str]], list[tuple[str, str, str]]]:
        """(relative path, identity) of every photo, sorted for stable order, and the
        (path, reason, detail) of image-named links that are skipped."""
        if not self.source_root.is_dir():
            raise HarnessError(f"folder not found: {self.source_root} (expected ROOT/<identity>/*.jpg or ROOT/*.jpg)")
        photos, links = [], []
        for p in sorted(self.source_root.rglob("*")):
            rel = p.relative_to(self.source_root)
            if p.suffix.lower() not in IMAGE_SUFFIXES or any(s.startswith(".") for s in rel.parts):
                continue  # only dot-names inside ROOT are hidden: ROOT may sit below a dot-folder
            if p.is_symlink():
                target = p.resolve()
                if not target.exists():
                    links.append((rel.as_posix(), "dangling_symlink", f"points to missing {target}"))
                    continue
                if not target.is_relative_to(self.source_root):
                    links.append((rel.as_posix(), "outside_root", f"symlink to {target}, outside {self.source_root}"))
                    continue
            if not p.is_file():
                continue
            if len(rel.parts) > 2:
                raise HarnessError(f"{p}: photos may sit at most one folder deep (ROOT/<identity>/photo)")
            identity = rel.parts[0] if len(rel.parts) == 2 else rel.stem
            photos.append((rel.as_posix(), identity))
        if not photos:
            extra = f" ({len(links)} symlinks skipped: {links[0][1]})" if links else ""
            raise HarnessError(f"no photos ({', '.join(IMAGE_SUFFIXES)}) found under {self.source_root}{extra}")
        return photos, links

    @staticmethod
    def _crop_names(photos: list[tuple[str, str]]) -> dict[str, str]:
        """Crop file of each photo: ``<stem>.png``, or ``<name>.png`` (``alex.jpg.png``) when
        photos of one folder share a stem, so two photos never share a crop."""
        stems: dict[str, int] = {}
        for rel, _ in photos:
            key = str(Path(rel).with_suffix(""))
            stems[key] = stems.get(key, 0) + 1
        return {rel: (f"{Path(rel).with_suffix('')}.png" if stems[str(Path(rel).with_suffix(""))] == 1
                      else f"{rel}.png")
                for rel, _ in photos}

    def _read_index(self) -> dict[str, dict]:
        """The crop index: ``index.json`` plus the parts of runs that were killed before
        merging theirs (``index.part-*.json``). A damaged file is ignored: its photos are
        detected again, never trusted."""
        index: dict[str, dict] = {}
        for path in [self.crop_root / "index.json", *sorted(self.crop_root.glob("index.part-*.json"))]:
            try:
                index.update(json.loads(path.read_text()) if path.is_file() else {})
            except (ValueError, OSError):
                continue
        return index

    def _prepare(self, photos: list[tuple[str, str]], crop_names: dict[str, str]) -> dict[str, dict]:
        """Every photo's index entry, detecting and aligning those not done yet: shared
        out by rank and worker (``faceeval.parallel.distribute``). Each process keeps its
        new entries in its own ``index.part-*.json`` (a kill loses nothing); rank 0 merges
        them into ``index.json``."""
        import os
        import socket

        from faceeval.parallel import barrier, distribute, world

        index = self._read_index()
        part = self.crop_root / f"index.part-{socket.gethostname()}-{os.getpid()}.json"
        mine: dict[str, dict] = {}

        def keep(item: tuple[str, str, dict | None], entry: dict) -> None:
            if entry != item[2]:  # new: make it resumable
                mine[item[0]] = entry
                if len(mine) % PART_FLUSH == 0:
                    atomic_write_bytes(part, json.dumps(mine, sort_keys=True).encode())
            bar.update()

        task = PhotoCrop(self.source_root, self.crop_root, self.resolution)
        items = [(rel, crop_names[rel], index.get(rel)) for rel, _ in photos]
        with tqdm(total=len(range(world().rank, len(items), world().size)), desc="detect + align", unit="photo",
                  leave=False, disable=not (sys.stderr.isatty() and world().is_main)) as bar:
            # every photo indexed before: (almost) nothing to detect, so no worker pool is started for it
            entries = distribute(task, items, on_result=keep, light=all(entry is not None for _, _, entry in items))
        if mine:
            atomic_write_bytes(part, json.dumps(mine, sort_keys=True).encode())
        barrier()  # every process's part is on disk
        if world().is_main:
            merged = {**index, **{rel: e for (rel, _, _), e in zip(items, entries)}}
            atomic_write_bytes(self.crop_root / "index.json", json.dumps(merged, indent=1, sort_keys=True).encode())
            for stale in self.crop_root.glob("index.part-*.json"):
                stale.unlink(missing_ok=True)
        return {rel: e for (rel, _, _), e in zip(items, entries)}

    def build(self) -> PairSet:
        photos, skipped = self._photos()
        crop_names = self._crop_names(photos)
        entries = self._prepare(photos, crop_names)
        gallery, multi = [], 0
        for rel, identity in photos:
            entry = entries[rel]
            if entry["status"] == "ok":
                gallery.append(GalleryItem(crop_names[rel], identity))
                multi += entry.get("faces", 1) > 1
            else:
                skipped.append((rel, entry["status"], entry.get("detail", "")))
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")  # quoted: names may hold commas or quotes
        writer.writerow(("path", "reason", "detail"))
        writer.writerows(skipped)
        atomic_write_bytes(self.crop_root / "skipped.csv", buf.getvalue().encode())
        total = len(photos) + sum(1 for _, reason, _ in skipped if reason in ("dangling_symlink", "outside_root"))
        notes = [f"{total} photos: {len(gallery)} aligned, {len(skipped)} skipped "
                 f"(listed in {self.crop_root / 'skipped.csv'})"]
        if multi:
            notes.append(f"{multi} photos held several faces: the largest was used")
        if len({g.identity for g in gallery}) < 2:
            raise HarnessError(f"{self.source_root}: fewer than 2 identities with a detectable face "
                               f"({len(skipped)} photos skipped; see {self.crop_root / 'skipped.csv'})")
        if self.num_pairs is not None and self.num_pairs > len(gallery):
            # pairing cycles through the photos: more pairs than photos would repeat pairs
            # and narrow the confidence intervals with copies
            raise HarnessError(f"--num-pairs {self.num_pairs} is more than the {len(gallery)} distinct pairs "
                               f"{self.source_root} gives (one per aligned photo); use at most {len(gallery)}")
        return PairSet(
            protocol=self.name, version=self.version, root=self.crop_root, resolution=self.resolution,
            seed=self.seed, pairs=tuple(pair_images(gallery, self.seed, self.num_pairs)), gallery=tuple(gallery),
            settings=(("num_pairs", self.num_pairs or len(gallery)), ("source_root_name", self.source_root.name)),
            notes=tuple(notes),
        )
