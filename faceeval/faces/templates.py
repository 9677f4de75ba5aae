"""Five-point alignment templates of the common face models, and the similarity warp to them.

Each template gives the positions of (left eye, right eye, nose tip, left mouth corner,
right mouth corner) as fractions of the crop side: a model trained on crops made with
template T at size S expects a face whose five points sit at ``T * S``. Values are the
ones the public face-swap tools use (insightface's ArcFace crop, FFHQ, MTCNN-style crops:
as listed in facefusion's ``face_helper.py``).
"""

from __future__ import annotations

import cv2
import numpy as np

from faceeval.constants import FFHQ_FACE_BOX

WARP_TEMPLATES: dict[str, np.ndarray] = {
    # insightface ArcFace crop, SimSwap / GHOST convention
    "arcface_112_v1": np.array([
        [0.35473214, 0.45658929], [0.64526786, 0.45658929], [0.50000000, 0.61154464],
        [0.37913393, 0.77687500], [0.62086607, 0.77687500]]),
    # insightface ArcFace crop (arcface_dst / 112): recognition models (w600k_r50)
    "arcface_112_v2": np.array([
        [0.34191607, 0.46157411], [0.65653393, 0.45983393], [0.50022500, 0.64050536],
        [0.37097589, 0.82469196], [0.63151696, 0.82325089]]),
    # inswapper / HyperSwap crop (arcface_dst at 128 with an 8 px shift)
    "arcface_128": np.array([
        [0.36167656, 0.40387734], [0.63696719, 0.40235469], [0.50019687, 0.56044219],
        [0.38710391, 0.72160547], [0.61507734, 0.72034453]]),
    # FFHQ-aligned crop (BlendSwap, UniFace, GFPGAN)
    "ffhq_512": np.array([
        [0.37691676, 0.46864664], [0.62285697, 0.46912813], [0.50123859, 0.61331904],
        [0.39308822, 0.72541100], [0.61150205, 0.72490465]]),
    # MTCNN-style crop (HifiFace)
    "mtcnn_512": np.array([
        [0.36562865, 0.46733799], [0.63305391, 0.46585885], [0.50019127, 0.61942959],
        [0.39032951, 0.77598822], [0.61178945, 0.77476328]]),
}


def similarity_matrix(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) taking ``src`` to
    ``dst`` (both (N, 2)): the Umeyama solution, deterministic (no RANSAC). Returns (2, 3)."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d  # (N, 2)
    cov = d0.T @ s0 / len(src)  # (2, 2)
    u, sig, vt = np.linalg.svd(cov)
    fix = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])  # no reflections
    rot = u @ fix @ vt
    scale = np.trace(np.diag(sig) @ fix) / s0.var(0).sum()
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def template_matrix(points5: np.ndarray, template: str, size: int) -> np.ndarray:
    """(2, 3) affine taking image coordinates to a ``size`` x ``size`` crop on ``template``."""
    if template not in WARP_TEMPLATES:
        raise KeyError(f"unknown warp template {template!r} (known: {', '.join(WARP_TEMPLATES)})")
    return similarity_matrix(points5, WARP_TEMPLATES[template] * size)


def warp_to_template(image: np.ndarray, points5: np.ndarray, template: str, size: int,
                     border: int = cv2.BORDER_REPLICATE) -> tuple[np.ndarray, np.ndarray]:
    """Crop ``image`` (H, W, C) onto ``template`` at ``size``. Returns (crop, matrix (2, 3))."""
    m = template_matrix(points5, template, size)
    crop = cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=border)
    return crop, m



def crop_landmarks(image: np.ndarray, detector, detect: bool = True) -> np.ndarray:
    """68 landmarks (68, 2) of the face in an aligned uint8 crop (H, W, 3).

    The HOG face nearest the crop centre when ``detect`` finds one, else the 68-point
    predictor run inside the fixed FFHQ face box: an aligned crop always has a face there,
    so this never fails. ``detector`` is a ``faceeval.faces.detect.DlibDetector``.
    """
    h, w = image.shape[:2]
    if detect:
        faces = detector.detect(image)
        if faces:
            cx, cy = w / 2, h / 2

            def dist(f) -> float:
                left, top, right, bottom = f.box
                return float(np.hypot((left + right) / 2 - cx, (top + bottom) / 2 - cy))

            return min(faces, key=dist).landmarks
    x0, y0, x1, y1 = FFHQ_FACE_BOX
    return detector.landmarks(image, (x0 * w, y0 * h, x1 * w, y1 * h))
