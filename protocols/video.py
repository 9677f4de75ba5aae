"""Reading videos: a cheap file fingerprint, the decodable frame count, and chosen frames
decoded in one sequential pass (OpenCV). No policy here: which frames to read is decided
by the protocol (``protocols.ffpp_frames``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from faceeval.timing import stage

# The video fingerprint reads this many bytes from each end (plus the size): enough to
# notice a replaced file without hashing gigabytes of c0 video on every run.
_FINGERPRINT_BYTES = 1 << 18


def video_fingerprint(path: Path) -> str:
    """sha256 of (size, first 256 KiB, last 256 KiB) of a video file."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(_FINGERPRINT_BYTES))
        if size > _FINGERPRINT_BYTES:
            f.seek(max(_FINGERPRINT_BYTES, size - _FINGERPRINT_BYTES))
            h.update(f.read(_FINGERPRINT_BYTES))
    return h.hexdigest()


def count_frames(path: Path) -> int:
    """Frames that actually decode (container metadata can be off by a few)."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return 0
        n = 0
        with stage("decode"):
            while cap.grab():
                n += 1
        return n
    finally:
        cap.release()


def read_frames(path: Path, wanted: set[int]) -> dict[int, np.ndarray]:
    """Decode the video front to back once and keep the ``wanted`` frames as uint8 RGB
    (H, W, 3). Sequential decoding, not seeking: seeks in mp4 land on keyframes."""
    import cv2

    out: dict[int, np.ndarray] = {}
    if not wanted:
        return out
    last = max(wanted)
    cap = cv2.VideoCapture(str(path))
    try:
        with stage("decode"):
            index = 0
            while index <= last and cap.grab():
                if index in wanted:
                    ok, bgr = cap.retrieve()
                    if ok and bgr is not None:
                        out[index] = np.ascontiguousarray(bgr[:, :, ::-1])  # BGR -> RGB, (H, W, 3)
                index += 1
    finally:
        cap.release()
    return out
