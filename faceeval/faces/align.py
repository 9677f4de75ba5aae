"""Face alignment: FFHQ-style crops for generation, from 68 landmarks.

The FFHQ recipe (Karras et al., ``ffhq-dataset``): an oriented square ("quad") is set
from the eye centres and mouth corners, then warped to the output square. Here the warp
is one affine transform with reflected borders, after an integer pre-shrink when the
quad is much larger than the output (so downscaling does not alias).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# 68-point (iBUG 300-W) index groups
EYE_LEFT = slice(36, 42)  # the subject's right eye, on the image's left
EYE_RIGHT = slice(42, 48)
MOUTH_OUTER = slice(48, 60)
NOSE_TIP = 30


def five_points(landmarks68: np.ndarray) -> np.ndarray:
    """(68, 2) -> (5, 2): left eye, right eye, nose tip, left and right mouth corners
    (the order and meaning of the 5 points ArcFace-style detectors return)."""
    lm = np.asarray(landmarks68, dtype=np.float64)
    return np.stack([
        lm[EYE_LEFT].mean(0), lm[EYE_RIGHT].mean(0), lm[NOSE_TIP], lm[48], lm[54],
    ])


def ffhq_quad(landmarks68: np.ndarray) -> np.ndarray:
    """(68, 2) -> (4, 2) corners: top-left, bottom-left, bottom-right, top-right."""
    lm = np.asarray(landmarks68, dtype=np.float64)
    eye_left, eye_right = lm[EYE_LEFT].mean(0), lm[EYE_RIGHT].mean(0)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (lm[48] + lm[54]) * 0.5
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


@dataclass(frozen=True)
class AlignedFace:
    crop: np.ndarray  # uint8 (S, S, 3)
    matrix: np.ndarray  # (2, 3) affine: original image coordinates -> crop coordinates
    quad: np.ndarray  # (4, 2) in original image coordinates


def align_ffhq(image: np.ndarray, landmarks68: np.ndarray, size: int = 256) -> AlignedFace:
    """Warp ``image`` (H, W, 3) uint8 to an FFHQ-aligned (size, size, 3) crop."""
    quad = ffhq_quad(landmarks68)
    src = image
    scale = 1.0
    quad_side = np.hypot(*(quad[3] - quad[0]))
    shrink = int(np.floor(quad_side / size * 0.5))
    if shrink > 1:  # pre-shrink by an integer factor with area averaging
        h, w = image.shape[:2]
        src = cv2.resize(image, (max(1, round(w / shrink)), max(1, round(h / shrink))), interpolation=cv2.INTER_AREA)
        scale = src.shape[1] / w
    dst = np.array([[0, 0], [0, size], [size, size]], dtype=np.float32)
    m_small = cv2.getAffineTransform((quad[:3] * scale).astype(np.float32), dst)
    crop = cv2.warpAffine(src, m_small, (size, size), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT_101)
    matrix = m_small.astype(np.float64) @ np.diag([scale, scale, 1.0])  # compose with the pre-shrink
    return AlignedFace(crop=crop, matrix=matrix, quad=quad)
