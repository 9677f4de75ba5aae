"""Paste a processed face crop back into the image it was cut from.

Shared by the swappers (crop on a model's template -> swap -> back to the harness crop)
and by the metric suite (anything computed on a template crop, shown on the image). The
crop is warped back with the inverse of the affine that cut it and blended through a
feathered mask, so the seam falls off smoothly and pixels the crop never covered keep
the original values exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class FeatherConfig:
    """Shape of the default box mask, in fractions of the crop side."""

    margin: float = 0.02  # zeroed border: warped crop edges carry interpolated border pixels
    blur: float = 0.04  # Gaussian sigma of the feather


def box_mask(size: int, config: FeatherConfig = FeatherConfig()) -> np.ndarray:
    """(size, size) float32 mask: 1 inside, 0 on a ``margin`` border, Gaussian-feathered."""
    mask = np.zeros((size, size), np.float32)
    m = max(1, int(round(config.margin * size)))
    sigma = config.blur * size
    # the plateau is shrunk by ~2 sigma so the blurred ramp reaches 0 before the margin
    inner = m + int(np.ceil(2 * sigma))
    if inner * 2 >= size:
        raise ValueError(f"feather too wide for a {size} px crop: margin {config.margin}, blur {config.blur}")
    mask[inner:size - inner, inner:size - inner] = 1.0
    if sigma > 0:
        mask = cv2.GaussianBlur(mask, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_CONSTANT)
    mask[:m, :] = 0.0
    mask[-m:, :] = 0.0
    mask[:, :m] = 0.0
    mask[:, -m:] = 0.0
    return mask


def paste_back(image: np.ndarray, crop: np.ndarray, matrix: np.ndarray, mask: np.ndarray | None = None,
               feather: FeatherConfig = FeatherConfig()) -> np.ndarray:
    """Blend ``crop`` back into ``image``.

    image:  (H, W, C) uint8 or float: the picture the crop was cut from.
    crop:   (S, S, C) same dtype family: the processed crop.
    matrix: (2, 3) affine, image coordinates -> crop coordinates (what cut the crop).
    mask:   (S, S) float in [0, 1] in crop coordinates (e.g. a face-parsing mask); the
            default is :func:`box_mask`. It is multiplied by the box mask, so seams stay soft.
    Returns an array like ``image``: ``mask * warped_crop + (1 - mask) * image``.
    """
    h, w = image.shape[:2]
    s = crop.shape[0]
    if crop.shape[1] != s:
        raise ValueError(f"crop must be square, got {crop.shape[1]}x{crop.shape[0]}")
    weight = box_mask(s, feather)
    if mask is not None:
        weight = weight * np.clip(np.asarray(mask, np.float32), 0.0, 1.0)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP  # matrix maps image -> crop: invert it
    back = cv2.warpAffine(crop.astype(np.float32), np.asarray(matrix, np.float64), (w, h), flags=flags,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    alpha = cv2.warpAffine(weight, np.asarray(matrix, np.float64), (w, h), flags=flags,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if back.ndim == 3:
        alpha = alpha[..., None]  # (H, W, 1)
    out = alpha * back + (1.0 - alpha) * image.astype(np.float32)
    if image.dtype == np.uint8:
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)
    return out.astype(image.dtype)
