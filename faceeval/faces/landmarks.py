"""68-point landmarks of aligned face crops, computed once per image and shared.

Identity (5-point ArcFace alignment), pose (PnP) and expression (landmark shape) all
start from the same 68 landmarks, so they are computed once per image content and kept
in the run's FeatureStore under one namespace.

Faces not found: the crops are FFHQ-aligned, so the face sits at a known place. When
the detector finds no face, the landmarks are predicted inside the expected box
(:data:`FFHQ_FACE_BOX`) and the image is *counted* as "not found"; every metric that uses
landmarks reports the count (``Metric.notes``), nothing is dropped silently. The fallback
is for *input* crops only: metrics score a method output without a face as NaN (and the
runner's output checks leave such pairs out of the means).

Detectors: dlib HOG (offline default) or an insightface SCRFD/RetinaFace ONNX file
(``detector="scrfd"``, through ``insightface.model_zoo``) when the user has it. With
SCRFD/RetinaFace the box and the 5 alignment points are the detector's own (as in
insightface's pipeline) and the 68 points come from dlib's predictor inside that box;
with dlib the 5 points are derived from the 68.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from faceeval.cache import cached_features
from faceeval.constants import FFHQ_FACE_BOX
from faceeval.errors import HarnessError
from faceeval.faces.align import five_points
from faceeval.timing import stage
from faceeval.weights import DLIB_68, KNOWN, WeightNotFound, locate, verified, weights_dir

NUM_POINTS = 68


@dataclass
class LandmarkStats:
    """Counts a report must show: images seen and faces the detector did not find."""

    seen: set[str] = field(default_factory=set)
    not_found: set[str] = field(default_factory=set)
    by_fallback: set[str] = field(default_factory=set)  # found only by the fallback detector
    fallback_name: str | None = None  # the fallback detector, where there is one

    def note(self, who: str) -> str | None:
        facts = []
        if self.by_fallback:
            facts.append(f"the main detector found no face in {len(self.by_fallback)} of {len(self.seen)} images "
                         f"(distinct contents), {self.fallback_name} did (its box and points used)")
        if self.not_found:
            facts.append(f"{'no detector' if self.fallback_name else 'detector'} found "
                         f"{'a face' if self.fallback_name else 'no face'} in {len(self.not_found)} "
                         f"of {len(self.seen)} "
                         "images (distinct contents); for input crops the landmarks were predicted inside the "
                         "expected box of the aligned crop (method outputs without a face are not scored)")
        return f"{who}: {'; '.join(facts)}" if facts else None


class CropLandmarks:
    """uint8 aligned crops -> (N, 68, 2) landmarks in crop pixels, plus a found flag.

    Stored vector per image (float32): 68*2 coordinates, 5*2 alignment points, then
    1.0/0.0 (face found).
    """

    version = "2"

    def __init__(self, detector: str = "dlib", upsample: int = 0) -> None:
        if detector not in ("dlib", "scrfd", "retinaface"):
            raise HarnessError(f"unknown detector {detector!r} (choose dlib, scrfd or retinaface)")
        self.detector = detector
        self.upsample = upsample
        self.stats = LandmarkStats()

    @property
    def namespace(self) -> str:
        return f"landmarks68:{self.detector}:u{self.upsample}:v{self.version}"

    @cached_property
    def _dlib(self):
        from faceeval.faces.dlib_models import dlib_model, hog_detector

        predictor, sha = dlib_model(DLIB_68)
        self._weights = [(DLIB_68, sha)]
        return hog_detector(), predictor

    @cached_property
    def _onnx_detector(self):
        from insightface.model_zoo import get_model
        from insightface.model_zoo.retinaface import RetinaFace

        path, sha = self._onnx_file()
        if self.detector == "retinaface":
            model = RetinaFace(model_file=str(path))  # the model zoo's router only picks SCRFD
        else:
            model = get_model(str(path), providers=["CPUExecutionProvider"])
        outs = [] if model is None else model.session.get_outputs()
        if len(outs) not in (6, 9, 10, 15) or any(len(o.shape) not in (2, 3) for o in outs):
            # e.g. a classic RetinaFace export (NCHW anchor-delta maps): insightface would misdecode it
            raise HarnessError(f"{path}: outputs {[o.shape for o in outs]} are not insightface's SCRFD layout "
                               "(6/9/10/15 outputs of (N, 1|4|10) per stride), the only one its detectors decode")
        model.prepare(ctx_id=-1, input_size=(640, 640), det_thresh=0.5)
        self._weights_onnx = [(path.name, sha)]
        return model

    def _onnx_file(self) -> tuple[Path, str]:
        """The SCRFD/RetinaFace detector's file and sha256 (checked; nothing loaded)."""
        if self.detector == "retinaface":
            return verified("retinaface_r50_v1.onnx")
        # buffalo_l's name for SCRFD-10GF, else antelopev2's name for the same file; only
        # a missing file falls back (a wrong checksum is an error about that file)
        names = ("det_10g.onnx", "scrfd_10g_bnkps.onnx")
        for name in names:
            try:
                locate(name)
                break
            except WeightNotFound:
                continue
        else:
            raise HarnessError(f"SCRFD detector not found: put {' or '.join(names)} in {weights_dir()} "
                               f"(from {KNOWN[names[0]].source})")
        return verified(name)

    def weight_files(self) -> tuple[tuple[str, str], ...]:
        """The files the landmarks come from, resolved and checked without loading any model
        (a run whose landmarks are all cached loads none)."""
        if not hasattr(self, "_weights"):
            self._weights = [(DLIB_68, verified(DLIB_68)[1])]
        extra = []
        if self.detector != "dlib":
            if not hasattr(self, "_weights_onnx"):
                path, sha = self._onnx_file()
                self._weights_onnx = [(path.name, sha)]
            extra = self._weights_onnx
        return tuple(self._weights + extra)

    def _faces(self, img: np.ndarray) -> list[tuple[tuple[float, float, float, float], np.ndarray | None]]:
        """[(box, 5 points)] for every face SCRFD/RetinaFace finds (dlib's HOG runs in DlibLandmarkRows)."""
        import cv2

        bboxes, kpss = self._onnx_detector.detect(cv2.cvtColor(img, cv2.COLOR_RGB2BGR), max_num=0)
        return [(tuple(float(v) for v in b[:4]), None if kpss is None else np.asarray(k, np.float32).reshape(5, 2))
                for b, k in zip(bboxes, kpss if kpss is not None else [None] * len(bboxes))]

    def compute(self, images: list[np.ndarray]) -> np.ndarray:
        """Landmarks for a list of crops: (N, 68*2 + 5*2 + 1) float32. With dlib's detector
        the crops are shared out to the worker pool (:mod:`faceeval.parallel`)."""
        from faceeval.parallel import map_chunks

        if not images:
            return np.zeros((0, ROW), np.float32)
        if self.detector == "dlib":
            self._dlib  # noqa: B018 - checks the weight file here, with a clear error
            return np.stack(map_chunks(DlibLandmarkRows(self.upsample), images))
        _, predictor = self._dlib
        rows = []
        for image in images:
            img = np.ascontiguousarray(image)
            with stage("detect"):
                faces = self._faces(img)
            rows.append(landmark_row(img, faces, predictor))
        return np.stack(rows)

    def __call__(self, ctx, shas: list[str], images: list[np.ndarray] | None = None, load=None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cached landmarks: ((N, 68, 2), (N, 5, 2) alignment points, (N,) bool found)."""
        vec = cached_features(ctx.feature_cache, self.namespace, shas, images, self.compute, load,
                              weights=self.weight_files())
        lm = vec[:, : NUM_POINTS * 2].reshape(len(shas), NUM_POINTS, 2)  # (N, 68, 2)
        five = vec[:, NUM_POINTS * 2 : NUM_POINTS * 2 + 10].reshape(len(shas), 5, 2)  # (N, 5, 2)
        found = vec[:, -1] > 0.5
        self.stats.seen.update(shas)
        self.stats.not_found.update(s for s, f in zip(shas, found) if not f)
        return lm, five, found


ROW = NUM_POINTS * 2 + 10 + 1  # stored floats per image: 68 points, 5 points, found flag


def landmark_row(img: np.ndarray, faces: list, predictor) -> np.ndarray:
    """One crop's stored vector (ROW,) float32 from the detector's faces [(box, 5 points or
    None)]: the largest face's 68 points, its 5 alignment points, 1.0; with no face the
    points predicted inside the expected box of an aligned crop, and 0.0."""
    import dlib

    h, w = img.shape[:2]
    found = bool(faces)
    if found:  # the largest face: crops hold one main face
        box, five = max(faces, key=lambda f: (f[0][2] - f[0][0]) * (f[0][3] - f[0][1]))
    else:
        x0, y0, x1, y1 = FFHQ_FACE_BOX
        box, five = (x0 * w, y0 * h, x1 * w, y1 * h), None
    with stage("landmarks"):
        shape = predictor(img, dlib.rectangle(*(int(round(v)) for v in box)))
    pts = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)  # (68, 2)
    if five is None:
        five = five_points(pts)
    row = np.zeros(ROW, np.float32)
    row[: NUM_POINTS * 2] = pts.reshape(-1)
    row[NUM_POINTS * 2 : NUM_POINTS * 2 + 10] = np.asarray(five, np.float32).reshape(-1)
    row[-1] = 1.0 if found else 0.0
    return row


class DlibLandmarkRows:
    """Picklable task for the worker pool: crops -> [landmark_row] with dlib's HOG detector
    (the models load once per process, ``faceeval.faces.dlib_models``)."""

    def __init__(self, upsample: int) -> None:
        self.upsample = upsample

    def __call__(self, images: list[np.ndarray]) -> list[np.ndarray]:
        from faceeval.faces.dlib_models import dlib_model, hog_detector

        det, predictor = hog_detector(), dlib_model(DLIB_68)[0]
        rows = []
        for image in images:
            img = np.ascontiguousarray(image)
            with stage("detect"):
                rects, _, _ = det.run(img, self.upsample, 0.0)
            faces = [((r.left(), r.top(), r.right(), r.bottom()), None) for r in rects]
            rows.append(landmark_row(img, faces, predictor))
        return rows


def five_from_68(lm68: np.ndarray) -> np.ndarray:
    """(N, 68, 2) -> (N, 5, 2) ArcFace-order points (eyes, nose tip, mouth corners)."""
    return np.stack([five_points(p) for p in lm68]).astype(np.float32)


def shared_landmarks(ctx, detector: str = "dlib") -> CropLandmarks:
    """One landmark extractor per run and detector, kept in ``ctx.extras`` so metrics share it
    (and its not-found counts)."""
    key = f"landmarks:{detector}"
    if key not in ctx.extras:
        ctx.extras[key] = CropLandmarks(detector)
    return ctx.extras[key]
