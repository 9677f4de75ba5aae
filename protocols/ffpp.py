"""The FaceForensics++ protocol of CodeSwap's Table 1, built from the user's own copy.

Expected layout (``--root ROOT``, as FaceForensics++'s download script writes it):

    ROOT/original_sequences/youtube/c23/videos/000.mp4 ... 999.mp4   (or c0, c40: option ``compression``)
    ROOT/splits/train.json, val.json, test.json                      optional; needed for ``pairing=split``

The paper: "we extract 10 random frames from each video, resulting in a dataset of 10,000
images. These images are then combined randomly to generate an additional 10,000 images";
ID retrieval matches "against a single frame from each video instead of all frames".

Frames. Per video, ``frames_per_video`` (10) evaluation frames and ONE gallery frame are
taken, all different frames:

* ``sampling=random`` (default, CodeSwap): frame indices are put in a seeded random
  order (sha256 of seed, video id and frame index); the first 10 frames in that order
  with a detectable face are the evaluation frames, the 11th is the gallery frame. A
  frame without a face is replaced by the next sampled frame.
* ``sampling=even`` (HifiFace): the video is cut into 10 equal parts; evaluation frame
  ``i`` is the first frame of part ``i`` (``floor(i * n / 10)``), or, when it holds no
  face, the next frame of the same part that does. The gallery frame is the first frame
  in the seeded order above that has a face and is not an evaluation frame.

Every frame with no detectable face that a rule passes over is counted and reported.
A video with too few face frames is left out of pairs and gallery, counted and reported.
Evaluation slots are numbered by frame index (slot 0 is the earliest frame).

Gallery. One frame per video: its gallery frame, which is never an evaluation frame,
so it is never the source (nor the target) of any pair.

Pairs. ``pairing=random`` (default): the evaluation frames are paired by
:func:`pair_frames`: every frame is a source once and a target once, never onto a frame
of its own video (10,000 pairs on the full set).
``pairing=split``: for each pair ``[A, B]`` of the official ``splits/<split>.json``
(``split=all`` joins train, val and test in that order), both directions A->B and B->A,
evaluation slot N of A onto slot N of B (MegaFS's protocol; 10,000 pairs on the full set).

Identities. Without ``identity_map`` every video is its own identity. ``identity_map=PATH``
(a CSV ``video,person``, :mod:`protocols.identity_map`; ``harness prepare ffpp
--suggest-identity-map`` proposes one) labels each frame with its video's person: the gallery
stays one frame per video, but a retrieval that lands on another video of the source's person is
a hit, ``pairing=random`` pairs frames of different people (not only of different videos), and
``pairing=split`` keeps the official pairs and counts those of one person. The map is checked with
the tree (every bad row listed, one line each, before any video is decoded) and its sha256 is a protocol
setting (``identity_map_sha256``): it is in every summary, results.json, the MLflow params and the
report, and in the run id, so runs under two maps are never one table.

Crops. Each used frame is detected (dlib HOG + 68 landmarks, largest face; frames with a
longer side above ``detect_max_side`` = 960 are searched downscaled, landmarks and
alignment use full resolution) and FFHQ-aligned to ``resolution`` (256), saved as
``<video>/<frame:06d>.png`` under the harness cache with a ``frames.json`` per video
recording its frame count and each examined frame's result, keyed by a fingerprint of
the video file. A resumed or repeated run (any seed) reuses every examined frame's
result and crop. ``n``, a video's frame count, is counted by decoding (container
metadata can be off by a few frames), so the sampled indices are the same everywhere.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from faceeval.api import FacePair, FaceProtocol, GalleryItem, PairSet
from faceeval.cache import stable_hash
from faceeval.constants import cache_root
from faceeval.errors import HarnessError
from faceeval.images import atomic_write_bytes, save_png
from protocols.base import LayoutError, option_choice, option_int, path_inside_root, seeded_key
from protocols.ffpp_frames import FrameChoice, frames_needed, pair_frames, resolve_frames
from protocols.identity_map import IdentityMap, read_identity_map
from protocols.video import count_frames, read_frames, video_fingerprint

COMPRESSIONS = ("c0", "c23", "c40")
SPLITS = ("train", "val", "test")
SAMPLINGS = ("random", "even")
PAIRINGS = ("random", "split")
FULL_SIZE = 1_000  # original youtube videos in FaceForensics++
DEFAULT_FRAMES = 10
DEFAULT_RESOLUTION = 256
# Frames are searched for faces with their longer side scaled down to this (HOG cost grows
# with the pixels: ~1 s for a 1080p frame, ~0.25 s at 960x540; FF++ faces stay large);
# landmarks and alignment use the full-resolution frame (faceeval.faces.detect).
DEFAULT_DETECT_MAX_SIDE = 960
_VIDEO_ID = re.compile(r"^[A-Za-z0-9_-]+$")
def video_dir(compression: str) -> str:
    return f"original_sequences/youtube/{compression}/videos"


@dataclass(frozen=True)
class FFppVideo:
    video_id: str  # file stem, e.g. "000": the identity label, unless an identity map names its person
    file: str  # relative to the dataset root


@dataclass(frozen=True)
class FFppLayout:
    root: Path
    videos: tuple[FFppVideo, ...]  # sorted by id
    split_pairs: tuple[tuple[str, str], ...]  # official pairs of the chosen split(s); () for random pairing
    identities: IdentityMap | None = None  # video -> person (option identity_map); None: each video its own

    def person(self, video_id: str) -> str:
        """The identity label of a video's frames: its person under the map, else the video id."""
        return self.identities.person(video_id) if self.identities else video_id


class FFppProtocol(FaceProtocol):
    """CodeSwap's FF++ pair set; see the module docstring for every rule."""

    name = "ffpp"
    version = "1"
    def __init__(self, root: Path | None = None, seed: int = 0, num_pairs: int | None = None,
                 cache_dir: Path | None = None, compression: str = "c23", sampling: str = "random",
                 pairing: str = "random", split: str = "all", frames_per_video: int = DEFAULT_FRAMES,
                 resolution: int = DEFAULT_RESOLUTION, upsample: int = 1,
                 detect_max_side: int = DEFAULT_DETECT_MAX_SIDE, splits_dir: str | None = None,
                 identity_map: str | None = None) -> None:
        if root is None:
            raise HarnessError("protocol 'ffpp' needs --root: the FaceForensics++ folder holding "
                               "original_sequences/youtube/<c0|c23|c40>/videos/")
        self.root = Path(root).expanduser().resolve()
        self.seed = int(seed)
        self.num_pairs = option_int(num_pairs, "num_pairs", minimum=1, allow_none=True)
        self.compression = option_choice(compression, "compression", COMPRESSIONS)
        self.sampling = option_choice(sampling, "sampling", SAMPLINGS)
        self.pairing = option_choice(pairing, "pairing", PAIRINGS)
        self.split = option_choice(split, "split", ("all",) + SPLITS)
        self.frames_per_video = option_int(frames_per_video, "frames_per_video", minimum=1)
        self.resolution = option_int(resolution, "resolution", minimum=16)
        self.upsample = option_int(upsample, "upsample", minimum=0)
        self.detect_max_side = option_int(detect_max_side, "detect_max_side", minimum=64)
        self.splits_dir = splits_dir
        #: the user's own confirmed file (not part of the dataset, which may be read-only): read where it is
        self.identity_map = None if identity_map in (None, "", "none") else Path(str(identity_map)).expanduser()
        base = Path(cache_dir) if cache_dir else cache_root()
        key = stable_hash([str(self.root), self.compression, self.resolution, "dlib_hog_68", self.upsample,
                           self.detect_max_side])
        self.crop_root = base / "crops" / f"ffpp-{key}"
        self._detector = None
        self._layout: FFppLayout | None = None

    @property
    def frames_needed(self) -> int:
        """Face frames a video must give: the evaluation frames and one gallery frame."""
        return frames_needed(self.frames_per_video)

    # -- layout ------------------------------------------------------------------------

    def _splits_path(self) -> Path:
        if self.splits_dir:
            return path_inside_root(self.root, self.splits_dir, "splits_dir")
        return self.root / "splits"

    def _read_splits(self, ids: set[str], problems: list[str]) -> list[tuple[str, str]]:
        folder = self._splits_path()
        shown = folder.relative_to(self.root).as_posix() if self.root in folder.parents else str(folder)
        names = SPLITS if self.split == "all" else (self.split,)
        missing = [f"{shown}/{n}.json" for n in names if not (folder / f"{n}.json").is_file()]
        if missing:
            problems.extend(f"missing file {m} (needed by pairing=split)" for m in missing)
            return []
        pairs: list[tuple[str, str]] = []
        seen: dict[str, str] = {}
        for n in names:
            rel = f"{shown}/{n}.json"
            try:
                data = json.loads((folder / f"{n}.json").read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                problems.append(f"{rel}: not valid JSON ({exc})")
                continue
            if not isinstance(data, list):
                problems.append(f"{rel}: expected a list of [video, video] pairs")
                continue
            for i, entry in enumerate(data):
                if (not isinstance(entry, list) or len(entry) != 2
                        or not all(isinstance(v, str) and _VIDEO_ID.match(v) for v in entry) or entry[0] == entry[1]):
                    problems.append(f"{rel} entry {i}: expected a pair of two different video ids, got {entry!r}")
                    continue
                bad = [v for v in entry if v in seen]
                if bad:
                    problems.append(f"{rel} entry {i}: video {bad[0]} already paired in {seen[bad[0]]}")
                    continue
                absent = [v for v in entry if v not in ids]
                if absent:
                    problems.append(f"{rel} entry {i}: video {', '.join(absent)} not found in "
                                    f"{video_dir(self.compression)}/")
                    continue
                for v in entry:
                    seen[v] = f"{rel} entry {i}"
                pairs.append((entry[0], entry[1]))
        return pairs

    def validate(self) -> FFppLayout:
        """Check the tree before any long work: folders, video names, that every video
        opens and decodes a first frame with enough frames, and the split files when
        they are used. Raises a LayoutError listing every problem."""
        import cv2

        if not self.root.is_dir():
            raise LayoutError(self.name, self.root, [f"dataset root not found: {self.root}"])
        folder = self.root / video_dir(self.compression)
        if not folder.is_dir():
            present = [c for c in COMPRESSIONS if (self.root / video_dir(c)).is_dir()]
            hint = (f" (present: {', '.join(video_dir(c) for c in present)}; choose with --option compression=...)"
                    if present else "")
            raise LayoutError(self.name, self.root, [f"missing folder {video_dir(self.compression)}/{hint}"])
        problems: list[str] = []
        videos = []
        for p in sorted(folder.iterdir()):
            if p.name.startswith(".") or p.suffix.lower() != ".mp4":
                continue
            rel = f"{video_dir(self.compression)}/{p.name}"
            if not _VIDEO_ID.match(p.stem):
                problems.append(f"{rel}: video names must use only letters, digits, '_' and '-'")
                continue
            videos.append(FFppVideo(p.stem, rel))
        if not videos:
            problems.append(f"{video_dir(self.compression)}/ holds no .mp4 videos")
        identities = None
        if self.identity_map is not None:  # checked against the file names, before any video is decoded
            identities, bad = read_identity_map(self.identity_map, [v.video_id for v in videos],
                                                f"{video_dir(self.compression)}/")
            problems.extend(bad)
        for v in tqdm(videos, desc="check FF++ videos", unit="video", leave=False, disable=None):
            path = self.root / v.file
            cap = cv2.VideoCapture(str(path))
            try:
                if not cap.isOpened():
                    problems.append(f"{v.file}: cannot be opened as a video (corrupt or not an mp4)")
                    continue
                ok, frame = cap.read()
                if not ok or frame is None:
                    problems.append(f"{v.file}: no frame can be decoded (corrupt video)")
                    continue
                declared = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            finally:
                cap.release()
            if 0 < declared < self.frames_needed:
                problems.append(f"{v.file}: {declared} frames, needs at least {self.frames_needed} "
                                f"({self.frames_per_video} sampled + 1 gallery)")
        if 0 < len(videos) < 2:
            problems.append(f"{video_dir(self.compression)}/ holds 1 video; pairs across videos need at least 2")
        split_pairs: list[tuple[str, str]] = []
        if self.pairing == "split":
            split_pairs = self._read_splits({v.video_id for v in videos}, problems)
            if not split_pairs and not problems:
                problems.append("the split files list no pairs")
        if problems:
            raise LayoutError(self.name, self.root, problems)
        self._layout = FFppLayout(self.root, tuple(videos), tuple(split_pairs), identities)
        return self._layout

    # -- frame choice ------------------------------------------------------------------

    def _resolve(self, video_id: str, n: int, faces: dict[int, str]) -> tuple[FrameChoice | None, list[int]]:
        return resolve_frames(video_id, n, faces, seed=self.seed, sampling=self.sampling,
                              frames_per_video=self.frames_per_video)

    # -- crops -------------------------------------------------------------------------

    def crop_name(self, video_id: str, frame: int) -> str:
        return f"{video_id}/{frame:06d}.png"

    def _detector_instance(self):
        if self._detector is None:
            from faceeval.faces.detect import DlibDetector

            self._detector = DlibDetector(upsample=self.upsample, max_side=self.detect_max_side)
        return self._detector

    def prepare_video(self, video: FFppVideo) -> FrameChoice:
        """Decode, detect and align what the sampling rule needs for one video (resumable)."""
        from faceeval.faces.crops import crop_largest

        path = self.root / video.file
        record_path = self.crop_root / video.video_id / "frames.json"
        fingerprint = video_fingerprint(path)
        record = json.loads(record_path.read_text()) if record_path.is_file() else {}
        if record.get("fingerprint") != fingerprint:
            record = {"fingerprint": fingerprint, "file": video.file}
        if "frames" not in record:
            record["frames"] = count_frames(path)
            atomic_write_bytes(record_path, json.dumps(record, indent=1, sort_keys=True).encode())
        n = record["frames"]
        faces: dict[int, str] = {int(k): v for k, v in record.get("faces", {}).items()}
        multi: dict[int, int] = {int(k): v for k, v in record.get("multi", {}).items()}
        # A crop deleted from the cache is made again.
        for f, status in list(faces.items()):
            if status == "ok" and not (self.crop_root / self.crop_name(video.video_id, f)).is_file():
                del faces[f]
        if n < self.frames_needed:
            why = f"{n} decodable frames, needs {self.frames_needed}"
            return FrameChoice(video.video_id, (), None, 0, 0, problem=f"video {video.video_id}: {why}; left out")
        while True:
            choice, want = self._resolve(video.video_id, n, faces)
            if choice is not None:
                used = (*choice.evaluation, choice.gallery) if choice.gallery is not None else choice.evaluation
                return FrameChoice(choice.video_id, choice.evaluation, choice.gallery, choice.passed_over,
                                   sum(multi.get(f, 1) > 1 for f in used), choice.problem)
            frames = read_frames(path, set(want))
            for f in want:
                if f not in frames:
                    faces[f] = "undecodable"
                    continue
                result = crop_largest(frames[f], self._detector_instance(), self.resolution)
                if result is None:
                    faces[f] = "no_face"
                else:
                    save_png(self.crop_root / self.crop_name(video.video_id, f), result.aligned.crop)
                    faces[f] = "ok"
                    multi[f] = result.num_faces
            record["faces"] = {str(k): faces[k] for k in sorted(faces)}
            record["multi"] = {str(k): multi[k] for k in sorted(multi)}
            atomic_write_bytes(record_path, json.dumps(record, indent=1, sort_keys=True).encode())

    def prepare(self, videos: list[FFppVideo]) -> list[FrameChoice]:
        """:meth:`prepare_video` for every video: under torchrun each rank takes every
        N-th video, in its worker pool (``faceeval.parallel.distribute``); every rank gets
        every video's frame choice. Videos write only their own folder: no two processes
        write one file."""
        from faceeval.parallel import distribute, world

        mine = len(range(world().rank, len(videos), world().size))
        with tqdm(total=mine, desc="FF++ frames: decode + detect + align", unit="video", leave=False,
                  disable=None if world().is_main else True) as bar:
            return distribute(self.prepare_video, videos, on_result=lambda video, choice: bar.update())

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_detector": None}  # worker processes make their own (models load once there)

    # -- pairs -------------------------------------------------------------------------

    def _split_pairs(self, layout: FFppLayout, usable: dict[str, FrameChoice]) -> tuple[list[FacePair], int]:
        directed = []
        for a, b in layout.split_pairs:
            directed += [(a, b), (b, a)]
        pairs, dropped = [], 0
        width = max(5, len(str(len(directed) * self.frames_per_video - 1)))
        for a, b in directed:
            if a not in usable or b not in usable:
                dropped += self.frames_per_video
                continue
            for slot in range(self.frames_per_video):
                pid = f"{len(pairs):0{width}d}"
                pairs.append(FacePair(pid, self.crop_name(a, usable[a].evaluation[slot]),
                                      self.crop_name(b, usable[b].evaluation[slot]), layout.person(a),
                                      layout.person(b)))
        if self.num_pairs is not None:
            if self.num_pairs > len(pairs):
                raise HarnessError(f"ffpp: num_pairs={self.num_pairs} but the split gives only {len(pairs)} pairs")
            keep = set(sorted(range(len(pairs)), key=lambda i: seeded_key(self.seed, "ffpp-split-subset", str(i)))
                       [: self.num_pairs])
            pairs = [p for i, p in enumerate(pairs) if i in keep]
        return pairs, dropped

    def build(self) -> PairSet:
        layout = self._layout or self.validate()  # `harness prepare` validated already
        videos = list(layout.videos)
        if self.pairing == "split":
            needed = {v for pair in layout.split_pairs for v in pair}
            videos = [v for v in videos if v.video_id in needed]
        choices = self.prepare(videos)
        usable = {c.video_id: c for c in choices if not c.problem}
        notes = []
        if len(layout.videos) != FULL_SIZE:
            notes.append(f"partial FF++ tree: {len(layout.videos)} videos of {FULL_SIZE:,} in "
                         f"{video_dir(self.compression)}/")
        passed = sum(c.passed_over for c in choices)
        rule = "the next sampled frame" if self.sampling == "random" else "the next frame of the same part"
        notes.append(f"{len(usable)} videos x {self.frames_per_video} frames ({self.sampling} sampling) + 1 gallery "
                     f"frame each; {passed} examined frames had no detectable face and were replaced by {rule}")
        left_out = [c.problem for c in choices if c.problem]
        if left_out:
            notes.append(f"{len(left_out)} videos left out: " + "; ".join(left_out))
        multi = sum(c.multi_face for c in choices)
        if multi:
            notes.append(f"{multi} used frames held several faces: the largest was used")
        if len(usable) < 2:
            raise HarnessError(f"ffpp: fewer than 2 videos give {self.frames_needed} frames with a face "
                               f"({'; '.join(left_out)})")
        if self.pairing == "random":
            frames = [GalleryItem(self.crop_name(v, f), layout.person(v)) for v in sorted(usable)
                      for f in usable[v].evaluation]
            pairs = pair_frames(frames, self.seed, self.num_pairs or len(frames))
        else:
            pairs, dropped = self._split_pairs(layout, usable)
            if dropped:
                notes.append(f"{dropped} split pairs dropped because a video was left out")
            if not pairs:
                raise HarnessError("ffpp: no split pair has both videos usable")
            same = sum(p.source_id == p.target_id for p in pairs)
            if same:
                notes.append(f"{same} of {len(pairs)} split pairs join two videos of one person (identity map): "
                             "kept, as the official splits list them")
        gallery = tuple(GalleryItem(self.crop_name(v, usable[v].gallery), layout.person(v)) for v in sorted(usable))
        settings = (("compression", self.compression), ("sampling", self.sampling), ("pairing", self.pairing),
                    ("frames_per_video", self.frames_per_video), ("num_pairs", len(pairs)),
                    ("resolution", self.resolution))
        if self.pairing == "split":
            settings += (("split", self.split),)
        if layout.identities is not None:
            settings += (("identity_map_sha256", layout.identities.sha256),)
            notes.append(layout.identities.describe(sorted(usable)))
        return PairSet(
            protocol=self.name, version=self.version, root=self.crop_root, resolution=self.resolution,
            seed=self.seed, pairs=tuple(pairs), gallery=gallery, settings=settings, notes=tuple(notes),
        )
