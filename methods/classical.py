"""The classical (pre-GAN) face swap: landmarks, triangle warp, colour transfer, Poisson blend.

The recipe every face-swap survey starts from, needing no learned weights beyond the
landmark predictor:

1. 68 dlib landmarks on both aligned crops;
2. a Delaunay triangulation of the target's landmarks; each triangle of the source is
   mapped affinely onto the matching target triangle (a piecewise-affine warp), so the
   source's face takes the target's geometry (pose, expression);
3. Reinhard colour transfer in Lab: the warped face's mean/std per channel are matched
   to the target's inside the face mask;
4. seamless (Poisson) cloning of the warped face into the target over the convex hull
   of the target's landmarks (OpenCV ``seamlessClone``).

Deterministic: no randomness anywhere, the same pixels in give the same pixels out.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import cv2
import numpy as np

from faceeval.api import SwapMethod
from faceeval.faces.templates import crop_landmarks
from faceeval.images import to_uint8
from faceeval.options import bind

JAW_AND_BROWS = slice(0, 27)  # 68-point indices of the face outline (jaw line + eyebrows)


@dataclass(frozen=True)
class ClassicalConfig:
    """Settings of the classical swap (all in crop pixels at the working resolution)."""

    erode_px: int = 3  # shrink the hull so Poisson boundary values come from target skin
    colour_transfer: bool = True
    clone_mode: str = "normal"  # "normal" (cv2.NORMAL_CLONE) or "mixed" (cv2.MIXED_CLONE)
    detect: bool = True  # run the HOG detector first; fall back to the fixed FFHQ box


def piecewise_affine_map(src_pts: np.ndarray, dst_pts: np.ndarray,
                         size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Backward map of a piecewise-affine warp taking ``src_pts`` onto ``dst_pts``.

    Triangulates ``dst_pts`` (Delaunay); for every
    output pixel inside a triangle, its barycentric coordinates there are applied to the
    matching source triangle. Returns ``(map_x, map_y, inside)``, each (H, W), for
    ``cv2.remap``; ``inside`` is False outside the triangulation.
    """
    from scipy.spatial import Delaunay

    h, w = size
    dst_pts = np.asarray(dst_pts, dtype=np.float64)  # (N, 2)
    src_pts = np.asarray(src_pts, dtype=np.float64)  # (N, 2)
    tri = Delaunay(dst_pts)
    simplices = tri.simplices  # (T, 3) point indices
    ys, xs = np.mgrid[0:h, 0:w]
    pix = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)  # (H*W, 2)
    which = tri.find_simplex(pix)  # (H*W,), -1 outside
    trans = tri.transform  # (T, 3, 2): inverse barycentric matrices and offsets
    inside = which >= 0
    map_xy = np.zeros_like(pix)
    t = which[inside]
    rel = pix[inside] - trans[t, 2]  # (K, 2)
    bary2 = np.einsum("kij,kj->ki", trans[t, :2], rel)  # (K, 2) first two barycentric coords
    bary = np.concatenate([bary2, 1.0 - bary2.sum(1, keepdims=True)], axis=1)  # (K, 3)
    corners = src_pts[simplices[t]]  # (K, 3, 2) matching source triangle corners
    map_xy[inside] = np.einsum("ki,kij->kj", bary, corners)  # (K, 2)
    map_x = map_xy[:, 0].reshape(h, w).astype(np.float32)  # (H, W)
    map_y = map_xy[:, 1].reshape(h, w).astype(np.float32)
    return map_x, map_y, inside.reshape(h, w)


def reinhard_transfer(image: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Match per-channel Lab mean and std of ``image`` to ``reference`` inside ``mask``.

    ``image``, ``reference``: uint8 (H, W, 3) RGB; ``mask``: bool (H, W). Returns uint8.
    """
    lab_i = cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)  # (H, W, 3)
    lab_r = cv2.cvtColor(reference.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
    mi, si = lab_i[mask].mean(0), lab_i[mask].std(0)  # (3,)
    mr, sr = lab_r[mask].mean(0), lab_r[mask].std(0)
    out = (lab_i - mi) * (sr / np.maximum(si, 1e-6)) + mr
    rgb = cv2.cvtColor(out.astype(np.float32), cv2.COLOR_Lab2RGB)
    return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)


class ClassicalSwap(SwapMethod):
    """Landmark triangle warp + colour transfer + Poisson blending (no learned swapper)."""

    name = "classical"
    resolution = None  # works at any crop size
    OPTIONS = ClassicalConfig  # its settings (--method-option classical.KEY=VALUE)

    def __init__(self, device: str = "cpu", config: ClassicalConfig | None = None, **options: Any) -> None:
        super().__init__(device)
        if config is None:
            config = ClassicalConfig(**bind(ClassicalConfig, options, "method 'classical'"))
        elif options:
            raise TypeError("give either config or keyword options, not both")
        self.config = config

    @cached_property
    def _detector(self):
        from faceeval.faces.detect import DlibDetector

        return DlibDetector(upsample=1)

    def landmarks(self, image: np.ndarray) -> np.ndarray:
        """68 landmarks (68, 2) of the face in an aligned uint8 crop (see ``crop_landmarks``)."""
        return crop_landmarks(image, self._detector, detect=self.config.detect)

    def swap_one(self, source: np.ndarray, target: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) RGB x2 -> uint8 (H, W, 3): source's face on the target."""
        h, w = target.shape[:2]
        lm_s = self.landmarks(source)  # (68, 2)
        lm_t = self.landmarks(target)
        # The predictor may put points slightly outside the crop; keep the warp inside.
        lm_s = np.clip(lm_s, 0, [w - 1, h - 1])
        lm_t = np.clip(lm_t, 0, [w - 1, h - 1])
        map_x, map_y, inside = piecewise_affine_map(lm_s, lm_t, (h, w))
        warped = cv2.remap(source, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)

        hull = cv2.convexHull(lm_t[JAW_AND_BROWS].round().astype(np.int32))
        mask = np.zeros((h, w), np.uint8)
        cv2.fillConvexPoly(mask, hull, 255)
        mask &= inside.astype(np.uint8) * 255
        if self.config.erode_px > 0:
            k = 2 * self.config.erode_px + 1
            mask = cv2.erode(mask, np.ones((k, k), np.uint8))
        # seamlessClone needs the mask strictly inside the image.
        mask[:1, :] = 0
        mask[-1:, :] = 0
        mask[:, :1] = 0
        mask[:, -1:] = 0
        if mask.sum() == 0:
            return target.copy()  # degenerate landmarks: nothing to blend; the swap is a no-op
        if self.config.colour_transfer:
            warped = reinhard_transfer(warped, target, mask > 0)
        x, y, bw, bh = cv2.boundingRect(mask)
        centre = (x + bw // 2, y + bh // 2)  # seamlessClone places the mask's bounding-box centre here
        mode = cv2.MIXED_CLONE if self.config.clone_mode == "mixed" else cv2.NORMAL_CLONE
        out = cv2.seamlessClone(np.ascontiguousarray(warped), np.ascontiguousarray(target), mask, centre, mode)
        return out

    def swap(self, source, target):
        import torch

        from faceeval.parallel import pool_map

        src = to_uint8(source)  # (B, H, W, 3)
        tgt = to_uint8(target)
        out = np.stack(pool_map(SwapPair(self.config), list(zip(src, tgt))))  # (B, H, W, 3) uint8
        x = torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, H, W)
        return x.to(source.device)

    def fingerprint(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {"name": self.name, "version": 1, "config": asdict(self.config),
                "landmarks": "dlib_68 shape_predictor_68_face_landmarks.dat"}


_SWAPPERS: dict[ClassicalConfig, ClassicalSwap] = {}  # one per settings and process


class SwapPair:
    """Picklable task for the worker pool: (source, target) uint8 crops -> the swap, by one
    ``ClassicalSwap`` per process and settings (its detector loads once)."""

    def __init__(self, config: ClassicalConfig) -> None:
        self.config = config

    def __call__(self, pair: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        from faceeval.timing import stage

        if self.config not in _SWAPPERS:
            _SWAPPERS[self.config] = ClassicalSwap(config=self.config)
        with stage("swap"):
            return _SWAPPERS[self.config].swap_one(*pair)

