"""Faces in aligned crops by RetinaFace (mobilenet0.25, torch): a box and 5 points per image,
found once per image content and shared by the default suite's identity (5-point ArcFace
alignment), pose (WHENet's padded box) and expression (MediaPipe's landmark ROI).

Stored row per image (float32, :data:`ROW` values): box x0, y0, x1, y1 (pixels); the 5
points in ArcFace order (eye on the image's left, eye on the image's right, nose tip, mouth
corner left, mouth corner right); the detector's score; 1.0 / 0.0 face found; which detector
found it (:data:`BY_RETINAFACE`, :data:`BY_DLIB`, 0 for none).

dlib is the fallback detector: where RetinaFace finds no face above its threshold, dlib's HOG
detector (upsampled once: faces from ~40 px) looks again, and its largest face gives the box
and the 5 points (eye centres, nose tip and mouth corners of dlib's 68 landmarks); its score
is the HOG SVM margin, not a probability. Such images are counted and named in the run's
notes. ``FaceFinder(fallback=False)`` turns this off.

Faces not found by either: the crops are FFHQ-aligned, so a face sits at a known place. For
*input* crops without a detection the row holds the expected FFHQ face box and the FFHQ
template's 5 points, and the image is counted (:class:`LandmarkStats`, shown in the run's
notes); metrics score a *method output* without a face as NaN, never with the template.

On the CPU the detector runs in the worker pool (each worker builds it once); on a GPU in
the main process, batched, with decoding and NMS on the device.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from faceeval.constants import FFHQ_FACE_BOX
from faceeval.faces.align import five_points
from faceeval.faces.landmarks import LandmarkStats
from faceeval.faces.templates import WARP_TEMPLATES
from faceeval.weights import DLIB_68

ASSET = "retinaface"  # faceeval.fetch
LOADER = "faceeval.models.retinaface:load_retinaface"
VERSION = "2"  # 2: the detector column and dlib's fallback
SCORE_THRESHOLD = 0.5  # RetinaFace's usual confidence threshold
ROW = 4 + 10 + 1 + 1 + 1  # box, 5 points, score, found, detector
FOUND, BY = 15, 16  # columns: found flag, which detector
BY_RETINAFACE, BY_DLIB = 1.0, 2.0
FALLBACK_UPSAMPLE = 1  # dlib HOG finds faces from ~80 px, upsampled once from ~40 px


def fallback_row(h: int, w: int) -> np.ndarray:
    """The row of an aligned crop without a detection: expected box and template points, found 0."""
    x0, y0, x1, y1 = FFHQ_FACE_BOX
    row = np.zeros(ROW, np.float32)
    row[:4] = (x0 * w, y0 * h, x1 * w, y1 * h)
    row[4:14] = (WARP_TEMPLATES["ffhq_512"] * np.array([w, h])).reshape(-1)
    return row


def dlib_row(image: np.ndarray) -> np.ndarray | None:
    """The row of dlib's largest HOG face in a uint8 (H, W, 3) RGB image, or None: box, the 5
    points of its 68 landmarks, HOG margin as score (models load once per process)."""

    from faceeval.faces.dlib_models import dlib_model, hog_detector
    from faceeval.timing import stage

    img = np.ascontiguousarray(image)
    with stage("detect"):
        rects, scores, _ = hog_detector().run(img, FALLBACK_UPSAMPLE, 0.0)
    if not rects:
        return None
    k = max(range(len(rects)), key=lambda i: rects[i].width() * rects[i].height())
    r = rects[k]
    with stage("landmarks"):
        shape = dlib_model(DLIB_68)[0](img, r)
    pts = np.array([[p.x, p.y] for p in shape.parts()], np.float64)  # (68, 2)
    row = np.zeros(ROW, np.float32)
    row[:4] = (r.left(), r.top(), r.right(), r.bottom())
    row[4:14] = five_points(pts).reshape(-1)
    row[14], row[FOUND], row[BY] = float(scores[k]), 1.0, BY_DLIB
    return row


class RetinaRows:
    """Picklable task: uint8 (H, W, 3) RGB crops -> (N, ROW) rows, the largest face of each
    (dlib's HOG detector where RetinaFace finds none and ``fallback`` is on)."""

    def __init__(self, path: Path, sha256: str, device: str, threshold: float = SCORE_THRESHOLD,
                 fallback: bool = True) -> None:
        self.path, self.sha256, self.device, self.threshold = path, sha256, device, threshold
        self.fallback = fallback

    def __call__(self, images: list[np.ndarray]) -> np.ndarray:
        import torch

        from faceeval.models.retinaface import detect
        from faceeval.models.shared import shared_model
        from faceeval.parallel import feature_batch, fixed_batches
        from faceeval.timing import stage

        model = shared_model(LOADER, self.path, self.sha256, self.device)
        out = np.zeros((len(images), ROW), np.float32)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, img in enumerate(images):
            by_shape.setdefault(img.shape, []).append(i)

        def forward(batch: np.ndarray) -> np.ndarray:  # (B, H, W, 3) uint8 -> (B, ROW)
            x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
            rows = np.zeros((len(batch), ROW), np.float32)
            for j, (boxes, scores, five) in enumerate(detect(model, x, score_threshold=self.threshold)):
                if len(boxes) == 0:
                    by_dlib = dlib_row(batch[j]) if self.fallback else None
                    rows[j] = fallback_row(*batch.shape[1:3]) if by_dlib is None else by_dlib
                    continue
                areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
                k = int(torch.argmax(areas))  # crops hold one main face: the largest
                rows[j, :4] = boxes[k].float().cpu().numpy()
                rows[j, 4:14] = five[k].float().cpu().numpy().reshape(-1)
                rows[j, 14] = float(scores[k])
                rows[j, FOUND], rows[j, BY] = 1.0, BY_RETINAFACE
            return rows

        with torch.inference_mode(), stage("detect"):
            for idx in by_shape.values():
                out[idx] = fixed_batches(forward, np.stack([images[i] for i in idx]), feature_batch(self.device))
        return out


class FaceFinder:
    """Cached RetinaFace rows of images, by content sha256, in the run's feature store."""

    def __init__(self, device: str = "cpu", threshold: float = SCORE_THRESHOLD, fallback: bool = True) -> None:
        self.device, self.threshold, self.fallback = device, threshold, fallback
        self.stats = LandmarkStats(fallback_name="dlib's HOG detector" if fallback else None)

    @property
    def namespace(self) -> str:
        return f"retinaface_mnet025:t{self.threshold:g}:fb{'dlib' if self.fallback else 'none'}:v{VERSION}"

    def weight_files(self) -> tuple[tuple[str, str], ...]:
        """(file, sha256) of the detectors' weights (RetinaFace as shipped; dlib's 68-point
        predictor with the fallback, checked once per process); loads nothing."""
        from faceeval.fetch import ASSETS
        from faceeval.weights import verified

        a = ASSETS[ASSET]
        files = ((a.source_file, a.sha256),)
        if self.fallback:
            if not hasattr(self, "_dlib_sha"):
                self._dlib_sha = verified(DLIB_68)[1]
            files += ((DLIB_68, self._dlib_sha),)
        return files

    def compute(self, images: list[np.ndarray]) -> np.ndarray:
        from faceeval.fetch import ensure
        from faceeval.parallel import map_rows
        from faceeval.weights import sha256_of

        if not images:
            return np.zeros((0, ROW), np.float32)
        path = ensure(ASSET)
        task = RetinaRows(path, sha256_of(path), self.device, self.threshold, self.fallback)
        return np.stack(map_rows(task, images, self.device))

    def __call__(self, ctx, shas: list[str], images: list[np.ndarray] | None = None, load=None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """((N, 4) boxes, (N, 5, 2) points, (N,) bool found), computed only for new contents."""
        from faceeval.cache import cached_features

        rows = cached_features(ctx.feature_cache, self.namespace, shas, images, self.compute, load,
                               weights=self.weight_files())
        found = rows[:, FOUND] > 0.5
        self.stats.seen.update(shas)
        self.stats.not_found.update(s for s, f in zip(shas, found) if not f)
        self.stats.by_fallback.update(s for s, by in zip(shas, rows[:, BY]) if by == BY_DLIB)
        return rows[:, :4], rows[:, 4:14].reshape(len(shas), 5, 2), found


def shared_faces(ctx, device: str) -> FaceFinder:
    """One face finder per run, kept in ``ctx.extras`` so the metrics share it (and its counts)."""
    key = "faces:retinaface_mnet025"
    if key not in ctx.extras:
        ctx.extras[key] = FaceFinder(device)
    return ctx.extras[key]
