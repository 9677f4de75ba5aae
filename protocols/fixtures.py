"""Miniature CelebA-HQ and FaceForensics++ trees in the official layouts, for tests and demos.

Both are built from real faces that ship with the repository (``protocols/demo_faces``,
see its ORIGIN.md) and one real video (``fixture_media/carphone_pristine.mp4``, see
``fixture_media/ORIGIN.md``); they are small enough for both protocols to run end to
end through the CLI in seconds. They are not benchmarks.

    python -m protocols.fixtures celebahq DIR [--size 1024] [--png]
    python -m protocols.fixtures ffpp DIR [--compression c23]

CelebA-HQ tree: ``CelebA-HQ-img/<idx>.jpg`` (512 or 1024, or .png), the mapping file
and ``identity_CelebA.txt`` in CelebA's formats. Each demo face is one CelebA identity;
the first ``multi_identities`` faces also get variants (mirror, a slight zoom, a
brightness change) as further images of the same identity, so that choosing one image
per identity is exercised. ``identity_CelebA.txt`` also holds lines for CelebA files
outside CelebA-HQ, as the real file does.

FF++ tree: ``original_sequences/youtube/<compression>/videos/000.mp4 ...`` encoded with
OpenCV (MPEG-4 Part 2): a demo face moving and zooming over a textured background; the
video ``GAP_VIDEO`` shows no face in frames 0, 3, 6, ... (the even-sampling frames too),
so both no-face rules are exercised.
The last video is the real talking-head clip. ``splits/{train,val,test}.json`` pair the
videos two by two, as the official split files do.
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from faceeval.constants import DEMO_DIR
from protocols.base import seeded_order

HERE = Path(__file__).resolve().parent
CARPHONE = HERE / "fixture_media" / "carphone_pristine.mp4"

# Demo faces used for the synthetic FF++ videos: frontal faces that dlib finds at video size.
VIDEO_FACES = ("astronaut.png", "grace_hopper.png", "insightface_t1_0.png", "faceapi_sample2.png",
               "faceapi_sample4_0.png", "insightface_t1_3.png", "faceapi_sample6_0.png", "faceapi_sample5_0.png")
GAP_VIDEO = "001"  # the synthetic video whose frames 0, 3, 6, ... show no face
GAP_EVERY = 3


def _demo_faces() -> list[tuple[str, Image.Image]]:
    records = json.loads((DEMO_DIR / "faces.json").read_text())
    return [(r["file"], Image.open(DEMO_DIR / r["file"]).convert("RGB")) for r in records]


# ---------------------------------------------------------------------------------------
# CelebA-HQ
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CelebAHQFixture:
    root: Path
    identity_of: dict[int, str] = field(default_factory=dict)  # CelebA-HQ idx -> CelebA identity
    files: dict[int, str] = field(default_factory=dict)  # idx -> path relative to root

    @property
    def num_identities(self) -> int:
        return len(set(self.identity_of.values()))


def _variants(face: Image.Image) -> list[Image.Image]:
    """Further photos of the same person: mirrored, zoomed 8 %, brighter."""
    side = face.width
    cut = round(side * 0.04)
    zoom = face.crop((cut, cut, side - cut, side - cut)).resize((side, side), Image.Resampling.LANCZOS)
    return [ImageOps.mirror(face), zoom, ImageEnhance.Brightness(face).enhance(1.15)]


def write_celebahq(root: Path, *, size: int = 512, suffix: str = ".jpg", multi_identities: int = 6,
                   extra_identity_lines: int = 20) -> CelebAHQFixture:
    """Write a miniature CelebA-HQ tree under ``root`` and return what it holds."""
    root = Path(root)
    img_dir = root / "CelebA-HQ-img"
    img_dir.mkdir(parents=True, exist_ok=True)
    photos: list[tuple[str, Image.Image, str]] = []  # (key, image, identity)
    for k, (name, face) in enumerate(_demo_faces()):
        identity = str(101 + 37 * k)  # CelebA identity numbers run 1..10177
        photos.append((name, face, identity))
        if k < multi_identities:
            photos += [(f"{name}#v{j}", v, identity) for j, v in enumerate(_variants(face)[: 1 + k % 3])]
    # CelebA-HQ indices are not grouped by identity: spread the photos in a fixed shuffle.
    order = seeded_order([key for key, _, _ in photos], 0, "fixture-celebahq")
    by_key = {key: (img, ident) for key, img, ident in photos}
    identity_of, files, rows, id_lines = {}, {}, [], {}
    for idx, key in enumerate(order):
        img, ident = by_key[key]
        rel = f"CelebA-HQ-img/{idx}{suffix}"
        big = img.resize((size, size), Image.Resampling.LANCZOS)
        big.save(root / rel, quality=95) if suffix == ".jpg" else big.save(root / rel)
        orig_idx = (idx * 4973 + 1187) % 202_599  # distinct CelebA indices for this many images
        orig_file = f"{orig_idx + 1:06d}.jpg"
        rows.append((idx, orig_idx, orig_file))
        id_lines[orig_file] = ident
        identity_of[idx], files[idx] = ident, rel
    for j in range(extra_identity_lines):  # CelebA images outside CelebA-HQ
        orig_file = f"{(j * 9973 + 55) % 202_599 + 1:06d}.jpg"
        id_lines.setdefault(orig_file, str(5000 + j))
    # The real mapping file pads each column to 12 characters, header included.
    text = "".join(f"{a:<12}{b:<12}{c:<12}\n" for a, b, c in [("idx", "orig_idx", "orig_file")] + rows)
    (root / "CelebA-HQ-to-CelebA-mapping.txt").write_text(text)
    (root / "identity_CelebA.txt").write_text("".join(f"{f} {i}\n" for f, i in sorted(id_lines.items())))
    return CelebAHQFixture(root, identity_of, files)


# ---------------------------------------------------------------------------------------
# FaceForensics++
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FFppFixture:
    root: Path
    videos: tuple[str, ...]  # ids
    frames: dict[str, int] = field(default_factory=dict)  # id -> frame count
    no_face_frames: dict[str, tuple[int, ...]] = field(default_factory=dict)  # frames drawn without a face
    compression: str = "c23"


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth coloured gradient with soft blobs: texture, but nothing face-like."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)  # (H, W) each
    c0, c1 = rng.uniform(40, 200, 3), rng.uniform(40, 200, 3)
    t = (x / width * 0.7 + y / height * 0.3)[..., None]  # (H, W, 1)
    bg = c0 * (1 - t) + c1 * t  # (H, W, 3)
    for _ in range(6):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(15, 50)
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))[..., None]  # (H, W, 1)
        bg = bg * (1 - 0.3 * blob) + rng.uniform(0, 255, 3) * 0.3 * blob
    return bg.clip(0, 255).astype(np.uint8)


def _feather(side: int) -> np.ndarray:
    """An elliptical alpha mask with a soft edge, (side, side, 1) in [0, 1]."""
    y, x = np.mgrid[0:side, 0:side].astype(np.float32)
    r = np.sqrt(((x - side / 2) / (side * 0.46)) ** 2 + ((y - side / 2) / (side * 0.5)) ** 2)
    return np.clip((1.0 - r) / 0.12, 0.0, 1.0)[..., None]


def _synthetic_video(path: Path, face: Image.Image, seed: int, frames: int, gap_every: int | None,
                     width: int = 320, height: int = 240, fps: float = 25.0) -> tuple[int, ...]:
    """Encode one moving, zooming face; returns the frames drawn without a face."""
    import cv2

    rng = np.random.default_rng(seed)
    bg = _background(rng, height, width)
    start, end = rng.uniform([20, 10], [60, 30]), rng.uniform([width - 200, 30], [width - 160, 60])
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot encode mp4v video to {path}")
    blank = []
    try:
        for i in range(frames):
            frame = bg.astype(np.float32)
            if gap_every and i % gap_every == 0:
                blank.append(i)
            else:
                t = i / max(1, frames - 1)
                side = int(round(150 * (1.0 + 0.12 * np.sin(2 * np.pi * t))))  # zoom in and out
                x0, y0 = (start * (1 - t) + end * t).round().astype(int)
                x0, y0 = min(max(0, x0), width - side), min(max(0, y0), height - side)
                patch = np.asarray(face.resize((side, side), Image.Resampling.BILINEAR), np.float32)  # (s, s, 3)
                alpha = _feather(side)
                region = frame[y0 : y0 + side, x0 : x0 + side]
                frame[y0 : y0 + side, x0 : x0 + side] = region * (1 - alpha) + patch * alpha
            writer.write(np.ascontiguousarray(frame.clip(0, 255).astype(np.uint8)[:, :, ::-1]))  # RGB -> BGR
    finally:
        writer.release()
    return tuple(blank)


def write_ffpp(root: Path, *, compression: str = "c23", num_synthetic: int = 5, frames: int = 30,
               carphone: bool = True, splits: bool = True) -> FFppFixture:
    """Write a miniature FF++ tree under ``root`` and return what it holds."""
    import cv2

    root = Path(root)
    vdir = root / "original_sequences" / "youtube" / compression / "videos"
    vdir.mkdir(parents=True, exist_ok=True)
    if num_synthetic > len(VIDEO_FACES):
        raise ValueError(f"at most {len(VIDEO_FACES)} synthetic videos")
    ids, counts, blank = [], {}, {}
    for k in range(num_synthetic):
        vid = f"{k:03d}"
        face = Image.open(DEMO_DIR / VIDEO_FACES[k]).convert("RGB")
        gap = GAP_EVERY if vid == GAP_VIDEO else None
        blank[vid] = _synthetic_video(vdir / f"{vid}.mp4", face, seed=k, frames=frames, gap_every=gap)
        ids.append(vid)
        counts[vid] = frames
    if carphone:
        vid = f"{num_synthetic:03d}"
        shutil.copyfile(CARPHONE, vdir / f"{vid}.mp4")
        cap = cv2.VideoCapture(str(vdir / f"{vid}.mp4"))
        counts[vid] = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        cap.release()
        ids.append(vid)
        blank[vid] = ()
    if splits:
        pairs = [[ids[i], ids[i + 1]] for i in range(0, len(ids) - 1, 2)]
        parts = {"train": pairs[: max(1, len(pairs) - 2)], "val": pairs[max(1, len(pairs) - 2) : len(pairs) - 1],
                 "test": pairs[len(pairs) - 1 :] if len(pairs) > 1 else []}
        (root / "splits").mkdir(parents=True, exist_ok=True)
        for name, content in parts.items():
            (root / "splits" / f"{name}.json").write_text(json.dumps(content, indent=2))
    return FFppFixture(root, tuple(ids), counts, blank, compression)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", choices=("celebahq", "ffpp"))
    parser.add_argument("folder", type=Path)
    parser.add_argument("--size", type=int, default=512, help="CelebA-HQ image side (512 or 1024)")
    parser.add_argument("--png", action="store_true", help="CelebA-HQ images as .png instead of .jpg")
    parser.add_argument("--compression", default="c23", choices=("c0", "c23", "c40"))
    args = parser.parse_args()
    if args.dataset == "celebahq":
        fx = write_celebahq(args.folder, size=args.size, suffix=".png" if args.png else ".jpg")
        print(f"{fx.root}: {len(fx.files)} images, {fx.num_identities} identities")
    else:
        fv = write_ffpp(args.folder, compression=args.compression)
        print(f"{fv.root}: {len(fv.videos)} videos")


if __name__ == "__main__":
    main()
