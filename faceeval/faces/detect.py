"""Face detection and 68-point landmarks with dlib (the offline default detector).

dlib's HOG detector finds frontal faces from about 80 px; ``upsample`` doubles the image
that many times first, so faces down to ~40 px (1) or ~20 px (2) are found.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from faceeval.weights import DLIB_68


@dataclass(frozen=True)
class DetectedFace:
    box: tuple[float, float, float, float]  # left, top, right, bottom (pixels)
    score: float  # detector confidence (HOG SVM margin)
    landmarks: np.ndarray  # (68, 2) float, x then y

    @property
    def area(self) -> float:
        left, top, right, bottom = self.box
        return max(0.0, right - left) * max(0.0, bottom - top)


class DlibDetector:
    """HOG detector + 68-point shape predictor; models load on first use."""

    name = "dlib_hog_68"

    def __init__(self, upsample: int = 1, min_score: float = 0.0, max_side: int = 1280) -> None:
        self.upsample = upsample
        self.min_score = min_score
        self.max_side = max_side  # larger photos are searched at this size, landmarked at full size

    @cached_property
    def _models(self):
        from faceeval.faces.dlib_models import dlib_model, hog_detector

        return hog_detector(), dlib_model(DLIB_68)[0]

    def landmarks(self, image: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
        """68 landmarks inside a given box (never fails: the predictor always answers)."""
        import dlib

        from faceeval.timing import stage

        _, predictor = self._models
        rect = dlib.rectangle(*(int(round(v)) for v in box))
        with stage("landmarks"):
            shape = predictor(np.ascontiguousarray(image), rect)
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)  # (68, 2)

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """All faces in a uint8 (H, W, 3) RGB image, largest first."""
        import cv2

        from faceeval.timing import stage

        detector, _ = self._models
        img = np.ascontiguousarray(image)
        scale = min(1.0, self.max_side / max(img.shape[:2]))
        with stage("detect"):
            small = img if scale == 1.0 else cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            rects, scores, _ = detector.run(small, self.upsample, self.min_score)
        faces = []
        for r, s in zip(rects, scores):
            box = tuple(float(v) / scale for v in (r.left(), r.top(), r.right(), r.bottom()))
            faces.append(DetectedFace(box, float(s), self.landmarks(img, box)))
        return sorted(faces, key=lambda f: -f.area)
