"""Photo -> aligned crop, the one path used by the demo builder and the folder protocol."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from faceeval.faces.align import AlignedFace, align_ffhq
from faceeval.faces.detect import DetectedFace, DlibDetector


@dataclass(frozen=True)
class CropResult:
    face: DetectedFace
    aligned: AlignedFace
    num_faces: int  # faces found in the photo (the largest is cropped)


def crop_faces(image: np.ndarray, detector: DlibDetector, size: int) -> list[CropResult]:
    """Every detected face in ``image`` (largest first), aligned to ``size`` x ``size``."""
    faces = detector.detect(image)
    return [CropResult(f, align_ffhq(image, f.landmarks, size), len(faces)) for f in faces]


def crop_largest(image: np.ndarray, detector: DlibDetector, size: int) -> CropResult | None:
    """The largest face in ``image`` aligned, or None when no face is found."""
    from faceeval.timing import stage

    faces = detector.detect(image)
    if not faces:
        return None
    with stage("align"):
        aligned = align_ffhq(image, faces[0].landmarks, size)
    return CropResult(faces[0], aligned, len(faces))
