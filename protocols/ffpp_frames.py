"""The FF++ frame-sampling policy, pure: which frames of a video are evaluated and which
one goes to the gallery (given what detection found so far), and how frames are paired.
Same inputs, same frames, on every machine; no video is read here (``protocols.video``)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from faceeval.api import FacePair, GalleryItem
from faceeval.errors import HarnessError
from protocols.base import seeded_order


def frames_needed(frames_per_video: int) -> int:
    """Face frames a video must give: the evaluation frames and one gallery frame."""
    return frames_per_video + 1


@dataclass(frozen=True)
class FrameChoice:
    """The frames a video contributes, or why it contributes none."""

    video_id: str
    evaluation: tuple[int, ...]  # frame indices, ascending: slot N is evaluation[N]
    gallery: int | None
    passed_over: int  # sampled frames with no detectable face that a rule replaced
    multi_face: int  # used frames holding several faces (the largest was used)
    problem: str = ""  # non-empty: the video is left out


def pair_frames(frames: list[GalleryItem], seed: int, num_pairs: int) -> list[FacePair]:
    """Random (source, target) pairs of frames of different identities (``identity``: the video,
    or its person under an identity map).

    Each round of ``len(frames)`` pairs uses every frame once as a source and once as a
    target: sources and targets are two seeded orders of the frames, and a position whose
    source and target share a video swaps its target with the first later position
    (cyclically) where the exchange leaves both positions across videos. Further rounds,
    when more pairs than frames are asked for, use fresh orders.
    """
    videos = Counter(f.identity for f in frames)
    if len(videos) < 2 or max(videos.values()) * 2 > len(frames):
        raise HarnessError(f"ffpp: cannot pair {len(frames)} frames across identities "
                           f"(one identity holds {max(videos.values(), default=0)} of them)")
    by_path = {f.path: f for f in frames}
    width = max(5, len(str(num_pairs - 1)))
    pairs: list[FacePair] = []
    for rnd in range(math.ceil(num_pairs / len(frames))):
        src = [by_path[p] for p in seeded_order(list(by_path), seed, f"ffpp-sources/{rnd}")]
        tgt = [by_path[p] for p in seeded_order(list(by_path), seed, f"ffpp-targets/{rnd}")]
        n = len(src)
        for i in range(n):
            if src[i].identity != tgt[i].identity:
                continue
            for step in range(1, n):
                j = (i + step) % n
                if tgt[j].identity != src[i].identity and tgt[i].identity != src[j].identity:
                    tgt[i], tgt[j] = tgt[j], tgt[i]
                    break
            else:  # cannot happen while no video holds more than half the frames
                raise HarnessError(f"ffpp: no cross-identity target for {src[i].path}")
        for a, b in zip(src, tgt):
            if len(pairs) == num_pairs:
                break
            pairs.append(FacePair(f"{len(pairs):0{width}d}", a.path, b.path, a.identity, b.identity))
    return pairs


def frame_order(video_id: str, n: int, seed: int) -> list[int]:
    """Frame indices of one video in the seeded random order."""
    return [int(k) for k in seeded_order([str(i) for i in range(n)], seed, f"ffpp-frames/{video_id}")]


def resolve_frames(video_id: str, n: int, faces: dict[int, str], *, seed: int, sampling: str,
                   frames_per_video: int) -> tuple[FrameChoice | None, list[int]]:
    """Apply the sampling rule to what is known about a video of ``n`` frames (``faces``:
    frame -> "ok" or why it has no usable face). Returns (choice, []) when every slot is
    settled, or (None, frames to examine next). Pure: no decoding, no detection."""
    needed = frames_needed(frames_per_video)
    want: list[int] = []
    passed = 0
    evaluation: list[int] = []
    if sampling == "random":
        order = frame_order(video_id, n, seed)
        chosen: list[int] = []
        for f in order:
            if len(chosen) + len(want) >= needed:
                break
            status = faces.get(f)
            if status is None:
                want.append(f)
            elif status == "ok":
                chosen.append(f)
            else:
                passed += 1
        if want:
            return None, want
        if len(chosen) < needed:
            return _short(video_id, n, faces, frames_per_video, passed), []
        evaluation, gallery = chosen[: frames_per_video], chosen[frames_per_video]
    else:
        k = frames_per_video
        bounds = [math.floor(i * n / k) for i in range(k + 1)]  # part i is [bounds[i], bounds[i+1])
        for i in range(k):
            for f in range(bounds[i], bounds[i + 1]):
                status = faces.get(f)
                if status is None:
                    want.append(f)
                    break
                if status == "ok":
                    evaluation.append(f)
                    break
                passed += 1
            else:
                return _short(video_id, n, faces, frames_per_video, passed, part=i), []
        if want:
            return None, want
        gallery = None
        for f in frame_order(video_id, n, seed):
            if f in evaluation:
                continue
            status = faces.get(f)
            if status is None:
                return None, [f]
            if status == "ok":
                gallery = f
                break
            passed += 1
        if gallery is None:
            return _short(video_id, n, faces, frames_per_video, passed), []
    return FrameChoice(video_id, tuple(sorted(evaluation)), gallery, passed, 0), []


def _short(video_id: str, n: int, faces: dict[int, str], frames_per_video: int, passed: int,
           part: int | None = None) -> FrameChoice:
    found = sum(s == "ok" for s in faces.values())
    if part is not None:
        why = f"no frame with a detectable face in part {part + 1} of {frames_per_video}"
    else:
        why = f"{found} of {n} frames hold a detectable face, needs {frames_needed(frames_per_video)}"
    return FrameChoice(video_id, (), None, passed, 0, problem=f"video {video_id}: {why}; left out")
