"""The CelebA-HQ protocol of CodeSwap's Table 1, built from the user's own copy.

Expected layout (``--root ROOT``; file and folder names as the datasets ship them):

    ROOT/CelebA-HQ-img/0.jpg ... 29999.jpg    1024x1024 (or a square resize, e.g. 512; .jpg or .png;
                                              zero-padded names such as 00012.png are read too)
    ROOT/CelebA-HQ-to-CelebA-mapping.txt      header ``idx orig_idx orig_file``, then one row per image
    ROOT/identity_CelebA.txt                  CelebA's ``000001.jpg 2880`` lines (or ROOT/Anno/identity_CelebA.txt)

The paper: "we select a subset of 1,000 images featuring unique identities and craft
1,000 testing pairs through random selection"; ID retrieval matches "within the selected
subset". Here, from a seed:

1. identities (CelebA identity numbers reached through the mapping) are put in a seeded
   order and the first ``num_identities`` (default 1,000) are taken: every identity is
   equally likely, however many images it has;
2. for each, its image with the smallest seeded key is taken (one image per identity);
3. the selected images are the retrieval gallery, and ``protocols.base.pair_images``
   pairs them: with ``num_pairs == num_identities`` each image is a source once and a
   target once, never with its own identity.

CelebA-HQ images are already aligned faces, so preparation only resizes them (Lanczos)
to ``resolution`` (default 256) PNG crops in the harness cache, keyed by each file's
sha256: a re-run or a resumed run re-reads nothing it has done. Ordering comes from
sha256 of (seed, purpose, key), so the manifest bytes are the same on every machine.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from faceeval.api import FaceProtocol, GalleryItem, PairSet
from faceeval.cache import stable_hash
from faceeval.constants import cache_root
from faceeval.errors import HarnessError
from faceeval.images import atomic_write_bytes, file_sha256, load_rgb, save_png
from faceeval.options import parse_bool
from protocols.base import (
    LayoutError,
    option_int,
    pair_images,
    path_inside_root,
    seeded_key,
    seeded_order,
)

IMAGE_DIR = "CelebA-HQ-img"
MAPPING_FILE = "CelebA-HQ-to-CelebA-mapping.txt"
IDENTITY_FILE = "identity_CelebA.txt"
IDENTITY_LOCATIONS = (IDENTITY_FILE, f"Anno/{IDENTITY_FILE}")
MAPPING_HEADER = ("idx", "orig_idx", "orig_file")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")  # compared lower-case
FULL_SIZE = 30_000  # images in CelebA-HQ
PAPER_NUM_IDENTITIES = 1_000
DEFAULT_RESOLUTION = 256
_INDEX_NAME = re.compile(r"^[0-9]+$")  # "12", or zero-padded "00012" as some resized copies name them
# Write the crop index every this many new crops, so a killed run loses little work.
_INDEX_FLUSH_EVERY = 50


@dataclass(frozen=True)
class CelebAHQImage:
    """One CelebA-HQ image and the CelebA identity its mapping row leads to."""

    idx: int  # CelebA-HQ index: the file name's number
    file: str  # relative to the dataset root, posix, e.g. "CelebA-HQ-img/12.jpg"
    orig_file: str  # the CelebA file it was made from, e.g. "119614.jpg"
    identity: str  # CelebA identity number, as written in identity_CelebA.txt


@dataclass(frozen=True)
class CelebAHQLayout:
    """A validated tree: every image has a mapping row and an identity."""

    root: Path
    images: tuple[CelebAHQImage, ...]  # sorted by idx
    mapping_path: Path
    identity_path: Path

    @property
    def num_identities(self) -> int:
        return len({im.identity for im in self.images})


def _parse_mapping(path: Path, problems: list[str]) -> dict[int, tuple[str, int]]:
    """idx -> (orig_file, line number). Malformed lines are added to ``problems``."""
    rows: dict[int, tuple[str, int]] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{MAPPING_FILE}: unreadable ({exc})")
        return rows
    header_seen = False
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if not header_seen:
            header_seen = True
            if tuple(fields) != MAPPING_HEADER:
                problems.append(f"{MAPPING_FILE} line {number}: expected the header "
                                f"'{' '.join(MAPPING_HEADER)}', got {line.strip()!r}")
                if not fields[0].isdigit():
                    continue  # a wrong header: the rows below may still be fine
            else:
                continue
        if len(fields) != 3 or not fields[0].isdigit() or not fields[1].isdigit():
            problems.append(f"{MAPPING_FILE} line {number}: expected 'idx orig_idx orig_file', got {line.strip()!r}")
            continue
        idx = int(fields[0])
        if idx in rows:
            problems.append(f"{MAPPING_FILE} line {number}: idx {idx} listed twice (first on line {rows[idx][1]})")
            continue
        rows[idx] = (fields[2], number)
    if not header_seen:
        problems.append(f"{MAPPING_FILE}: empty file")
    return rows


def _parse_identities(path: Path, problems: list[str]) -> dict[str, str]:
    """CelebA file name -> identity number. Malformed lines are added to ``problems``."""
    out: dict[str, str] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{IDENTITY_FILE}: unreadable ({exc})")
        return out
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not fields[1].isdigit():
            problems.append(f"{IDENTITY_FILE} line {number}: expected '<file>.jpg <identity>', got {line.strip()!r}")
            continue
        name, identity = fields
        if name in out and out[name] != identity:
            problems.append(f"{IDENTITY_FILE} line {number}: {name} given identity {identity} and {out[name]}")
            continue
        out[name] = identity
    if not out and not problems:
        problems.append(f"{IDENTITY_FILE}: empty file")
    return out


class CelebAHQProtocol(FaceProtocol):
    """CodeSwap's CelebA-HQ pair set: ``num_identities`` images of distinct identities,
    ``num_pairs`` (source, target) pairs of different identities, gallery = the images."""

    name = "celebahq"
    version = "1"
    def __init__(self, root: Path | None = None, seed: int = 0, num_pairs: int | None = None,
                 cache_dir: Path | None = None, num_identities: int | None = None,
                 resolution: int = DEFAULT_RESOLUTION, image_dir: str = IMAGE_DIR,
                 identity_file: str | None = None, strict: bool = False) -> None:
        #: strict: a mapping row whose image is absent is an error; otherwise the images that
        #: are present are used (a partial copy) and the absent ones are counted in the report
        self.strict = parse_bool(strict, "strict")
        self.absent: list[str] = []
        if root is None:
            raise HarnessError("protocol 'celebahq' needs --root: the folder holding CelebA-HQ-img/, "
                               f"{MAPPING_FILE} and {IDENTITY_FILE}")
        self.root = Path(root).expanduser().resolve()
        self.seed = int(seed)
        self.num_pairs = option_int(num_pairs, "num_pairs", minimum=1, allow_none=True)
        #: None means the paper's 1,000, or every identity of a smaller tree (noted in the report)
        self.num_identities = option_int(num_identities, "num_identities", minimum=2, allow_none=True)
        self.resolution = option_int(resolution, "resolution", minimum=16)
        if not image_dir or Path(image_dir).is_absolute() or ".." in Path(image_dir).parts:
            raise HarnessError(f"option image_dir must be a folder name inside the root, got {image_dir!r}")
        self.image_dir = str(image_dir)
        self.identity_file = identity_file
        base = Path(cache_dir) if cache_dir else cache_root()
        self._layout: CelebAHQLayout | None = None
        self.crop_root = base / "crops" / f"celebahq-{stable_hash([str(self.root), self.image_dir, self.resolution])}"

    # -- layout ------------------------------------------------------------------------

    def _identity_path(self) -> Path | None:
        if self.identity_file:
            path = path_inside_root(self.root, self.identity_file, "identity_file")
            return path if path.is_file() else None
        for rel in IDENTITY_LOCATIONS:
            if (self.root / rel).is_file():
                return self.root / rel
        return None

    def validate(self) -> CelebAHQLayout:
        """Check the whole tree before any long work; raise a LayoutError that lists every
        missing or malformed item (files, mapping rows, identity lines, image headers)."""
        if not self.root.is_dir():
            raise LayoutError(self.name, self.root, [f"dataset root not found: {self.root}"])
        image_dir = self.root / self.image_dir
        mapping_path = self.root / MAPPING_FILE
        identity_path = self._identity_path()
        problems = self._missing_files(image_dir, mapping_path, identity_path)
        if problems:
            raise LayoutError(self.name, self.root, problems)
        assert identity_path is not None

        files = self._image_files(image_dir, problems)
        mapping = _parse_mapping(mapping_path, problems)
        identities = _parse_identities(identity_path, problems)
        inside = self.root in identity_path.parents
        id_name = identity_path.relative_to(self.root).as_posix() if inside else str(identity_path)
        images = self._mapped_images(files, mapping, identities, id_name, problems)
        self._check_image_headers(images, problems)
        if problems:
            raise LayoutError(self.name, self.root, problems)
        self._layout = CelebAHQLayout(self.root, tuple(images), mapping_path, identity_path)
        return self._layout

    def _missing_files(self, image_dir: Path, mapping_path: Path, identity_path: Path | None) -> list[str]:
        """One problem for each of the image folder, the mapping file and the identity file that
        is missing."""
        problems: list[str] = []
        if not image_dir.is_dir():
            problems.append(f"missing folder {self.image_dir}/ (expected {self.image_dir}/0.jpg ... 29999.jpg)")
        if not mapping_path.is_file():
            problems.append(f"missing file {MAPPING_FILE}")
        if identity_path is None:
            where = self.identity_file or " or ".join(IDENTITY_LOCATIONS)
            problems.append(f"missing file {IDENTITY_FILE} (looked for {where})")
        return problems

    def _image_files(self, image_dir: Path, problems: list[str]) -> dict[int, str]:
        """idx -> file (relative to the root) of the images in ``image_dir``. Badly named and
        duplicated indices are added to ``problems``."""
        files: dict[int, str] = {}
        for p in sorted(image_dir.iterdir()):
            if p.name.startswith(".") or p.suffix.lower() not in IMAGE_SUFFIXES:
                continue  # not an image: thumbnail caches, notes
            rel = f"{self.image_dir}/{p.name}"
            if not _INDEX_NAME.match(p.stem):
                problems.append(f"{rel}: name is not <index>.jpg or <index>.png")
                continue
            idx = int(p.stem)
            if idx in files:
                problems.append(f"{rel}: index {idx} also present as {files[idx]}")
                continue
            files[idx] = rel
        if not files:
            problems.append(f"{self.image_dir}/ holds no <index>.jpg or <index>.png images")
        return files

    def _mapped_images(self, files: dict[int, str], mapping: dict[int, tuple[str, int]], identities: dict[str, str],
                       id_name: str, problems: list[str]) -> list[CelebAHQImage]:
        """The images with a mapping row and an identity, sorted by idx (the others are added to
        ``problems``); the mapping rows without an image become ``self.absent`` (and problems
        when ``strict``)."""
        images = []
        for idx in sorted(files):
            if idx not in mapping:
                problems.append(f"{files[idx]}: no row for idx {idx} in {MAPPING_FILE}")
                continue
            orig_file, line = mapping[idx]
            if orig_file not in identities:
                problems.append(f"{MAPPING_FILE} line {line} (idx {idx}): {orig_file} has no identity in {id_name}")
                continue
            images.append(CelebAHQImage(idx, files[idx], orig_file, identities[orig_file]))
        absent = [f"{MAPPING_FILE} line {mapping[idx][1]} (idx {idx}): image {self.image_dir}/{idx}.jpg (or .png) "
                  "is missing" for idx in sorted(set(mapping) - set(files))]
        if self.strict:
            problems.extend(absent)
        self.absent = absent
        return images

    def _check_image_headers(self, images: list[CelebAHQImage], problems: list[str]) -> None:
        """Add to ``problems`` each image that does not open or is not square (its header only)."""
        for im in tqdm(images, desc="check CelebA-HQ images", unit="image", leave=False, disable=None):
            try:
                with Image.open(self.root / im.file) as handle:
                    width, height = handle.size
            except OSError as exc:
                problems.append(f"{im.file}: unreadable ({exc})")
                continue
            if width != height:
                problems.append(f"{im.file}: {width}x{height}, expected a square aligned face")

    # -- selection and crops -----------------------------------------------------------

    def select(self, layout: CelebAHQLayout) -> tuple[list[CelebAHQImage], list[str]]:
        """One image for each of ``num_identities`` seeded identities, sorted by idx."""
        by_identity: dict[str, list[CelebAHQImage]] = {}
        for im in layout.images:
            by_identity.setdefault(im.identity, []).append(im)
        available = len(by_identity)
        notes = []
        if len(layout.images) != FULL_SIZE:
            notes.append(f"partial CelebA-HQ tree: {len(layout.images)} images of {FULL_SIZE:,}, "
                         f"{available} identities")
        if self.num_identities is None:
            count = min(PAPER_NUM_IDENTITIES, available)
            if count < PAPER_NUM_IDENTITIES:
                notes.append(f"only {available} distinct identities: all used (the paper's protocol takes "
                             f"{PAPER_NUM_IDENTITIES:,}); this is not the paper's pair set")
        elif self.num_identities > available:
            raise HarnessError(f"celebahq: num_identities={self.num_identities} but {self.root} holds only "
                               f"{available} distinct identities")
        else:
            count = self.num_identities
        chosen = seeded_order(list(by_identity), self.seed, "celebahq-identities")[:count]
        picked = [min(by_identity[i], key=lambda im: seeded_key(self.seed, "celebahq-image", str(im.idx)))
                  for i in chosen]
        return sorted(picked, key=lambda im: im.idx), notes

    def crop_name(self, image: CelebAHQImage) -> str:
        return f"{image.idx}.png"

    def prepare(self, images: list[CelebAHQImage]) -> int:
        """Resize each image to a ``resolution`` PNG crop in the cache; returns how many
        were made now (the rest were cached). Unreadable images are listed together."""
        index_path = self.crop_root / "index.json"
        index: dict[str, dict] = json.loads(index_path.read_text()) if index_path.is_file() else {}
        made, failed, since_flush = 0, [], 0
        for im in tqdm(images, desc="resize CelebA-HQ", unit="image", leave=False, disable=None):
            src = self.root / im.file
            crop = self.crop_root / self.crop_name(im)
            sha = file_sha256(src)
            entry = index.get(im.file)
            if entry is not None and entry["sha256"] == sha and crop.is_file():
                continue
            try:
                pixels = load_rgb(src)
            except HarnessError as exc:
                failed.append(f"{im.file}: unreadable ({exc})")
                continue
            if pixels.shape[:2] != (self.resolution, self.resolution):
                pixels = np.asarray(Image.fromarray(pixels).resize((self.resolution, self.resolution),
                                                                   Image.Resampling.LANCZOS))
            save_png(crop, pixels)
            index[im.file] = {"sha256": sha, "crop": self.crop_name(im)}
            made += 1
            since_flush += 1
            if since_flush >= _INDEX_FLUSH_EVERY:
                atomic_write_bytes(index_path, json.dumps(index, indent=1, sort_keys=True).encode())
                since_flush = 0
        if since_flush:
            atomic_write_bytes(index_path, json.dumps(index, indent=1, sort_keys=True).encode())
        if failed:
            raise LayoutError(self.name, self.root, failed)
        return made

    def build(self) -> PairSet:
        layout = self._layout or self.validate()  # `harness prepare` validated already
        selected, notes = self.select(layout)
        self.prepare(selected)
        gallery = tuple(GalleryItem(self.crop_name(im), im.identity) for im in selected)
        num_pairs = self.num_pairs or len(gallery)
        if self.absent:
            notes.append(f"{len(self.absent):,} images listed in {MAPPING_FILE} are absent; the {len(layout.images):,} "
                         f"present were used (first absent: {self.absent[0].split(': ', 1)[1].split(' (or')[0]}; "
                         "--option strict=true makes this an error)")
        notes.append(f"{len(selected)} images of {len(selected)} distinct identities, resized to {self.resolution}px")
        return PairSet(
            protocol=self.name, version=self.version, root=self.crop_root, resolution=self.resolution,
            seed=self.seed, pairs=tuple(pair_images(gallery, self.seed, num_pairs)), gallery=gallery,
            settings=(("num_identities", len(selected)), ("num_pairs", num_pairs), ("resolution", self.resolution)),
            notes=tuple(notes),
        )
