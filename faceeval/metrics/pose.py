"""Pose error: mean L2 distance of (yaw, pitch, roll) between the swapped face and the target.

Backends (``backend=``):
* ``pnp`` (offline default): 68 dlib landmarks + a 3D mean face + ``cv2.solvePnP``,
  angles in Hopenet's axis/sign convention (``faceeval.faces.pose``). Key ``pose_error_pnp``.
* ``hopenet`` (the papers' model): Hopenet ResNet-50 from ``hopenet_robust_alpha1.pkl``,
  fed the whole FFHQ-aligned crop resized to 224 (a loose face crop, as Hopenet's own
  test pipeline uses a box enlarged around the face). Key ``pose_error``.

* ``whenet`` (the default suite, key ``pose_error_whenet``): WHENet (EfficientNet-B0 on timm's
  ``tf_efficientnet_b0`` + Hopenet-style bins: yaw 120 x 3 deg, pitch and roll 66 x 3 deg),
  fed RetinaFace's face box padded as WHENet's own code pads it (:mod:`faceeval.models.whenet`).
  The per-pair data also holds each angle's absolute error (``pose_yaw_error_whenet``, ...).

``unit=`` ``deg`` (default; what MegaFS/FaceDancer report, ~2-4) or ``rad`` (CodeSwap's
Table 1 scale looks like radians); the key's unit is shown in every table.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np

from faceeval.api import Backend, EvalBatch, EvalContext, Metric, MetricKey
from faceeval.cache import cached_features
from faceeval.conventions import PoseConvention, angle_error, bin_errors
from faceeval.errors import HarnessError
from faceeval.models.shared import NetworkTask
from faceeval.weights import DLIB_68, verified

ANGLES = ("yaw", "pitch", "roll")
#: the papers' pose network's release file (Hopenet ResNet-50, 300W-LP, alpha 1; faceeval.weights)
HOPENET_FILE = "hopenet_robust_alpha1.pkl"
#: backend setting -> (key, label, metric name)
BACKENDS = {
    "pnp": ("pose_error_pnp", "Pose error [PnP]", "pose"),
    "hopenet": ("pose_error", "Pose error", "pose_hopenet"),
    "whenet": ("pose_error_whenet", "Pose error [WHENet]", "pose_whenet"),
}


class WhenetAngles(NetworkTask):
    """(image, face box) items -> (N, 3) (yaw, pitch, roll) degrees by WHENet (a worker-pool task)."""

    loader = "faceeval.models.whenet:load_whenet"

    def rows(self, items: list) -> np.ndarray:
        from faceeval.models.whenet import whenet_crop

        return np.stack([whenet_crop(img, box) for img, box in items])  # (N, 224, 224, 3) uint8

    def forward(self, model, batch: np.ndarray) -> np.ndarray:  # (B, 224, 224, 3) uint8 -> (B, 3) degrees
        import torch

        from faceeval.models.whenet import whenet_input

        return model(whenet_input(torch.from_numpy(batch).to(self.device))).float().cpu().numpy()


class WhenetLogits(WhenetAngles):
    """(image, face box) items -> (N, 252) WHENet's raw bin logits: yaw 120, pitch 66, roll 66."""

    def forward(self, model, batch: np.ndarray) -> np.ndarray:  # (B, 224, 224, 3) uint8 -> (B, 252)
        import torch

        from faceeval.models.whenet import whenet_input

        return torch.cat(model.logits(whenet_input(torch.from_numpy(batch).to(self.device))), 1).float().cpu().numpy()


#: backend -> bins of its yaw, pitch and roll heads (the ``hopenet_bins`` formula needs raw logits)
LOGIT_BINS = {"hopenet": (66, 66, 66), "whenet": (120, 66, 66)}


class PoseMetric(Metric):
    name = "pose"

    def __init__(self, device: str = "cpu", backend: str = "pnp", unit: str = "deg", detector: str = "dlib",
                 formula: str = "l2_3angles") -> None:
        if backend not in BACKENDS:
            raise HarnessError(f"unknown pose backend {backend!r} (choose {', '.join(BACKENDS)})")
        if unit not in ("deg", "rad"):
            raise HarnessError(f"unknown pose unit {unit!r} (choose deg or rad)")
        self.conv = PoseConvention(formula=formula)
        if self.conv.formula == "hopenet_bins" and backend not in LOGIT_BINS:
            raise HarnessError(f"pose formula hopenet_bins needs a bin classifier's logits: backend hopenet or "
                               f"whenet, not {backend!r}")
        self.device, self.backend_setting, self.unit, self.detector = device, backend, unit, detector
        if backend == "whenet":
            self.detector = "retinaface_mnet025"  # WHENet's box (faceeval.faces.retina)
        key, label, self.name = BACKENDS[backend]
        if self.conv.formula == "hopenet_bins":  # not degrees: its own key, never a column of angles
            tag = f"_{backend}" if backend == "whenet" else ""
            key, label = f"pose_error_bins{tag}", f"{label} (Hopenet bins, √(MSE·dim)/2)"
            self.pair_columns = tuple(f"pose_{a}_bins{tag}" for a in ANGLES)
            self.keys = (MetricKey(key, label, False, "logits", aggregate="rms", parts=self.pair_columns),)
        else:
            if self.conv.formula == "l2_2angles":
                label = f"{label} (yaw, pitch)"
            self.keys = (MetricKey(key, label, False, unit),)
            #: per-pair columns beside the key (pairs.parquet), not summarised: each angle's |error|
            self.pair_columns = tuple(f"pose_{a}_error_whenet" for a in ANGLES) if backend == "whenet" else ()
        self._landmarks = None
        self._failed: set[str] = set()
        self._no_face: set[str] = set()  # method outputs without a detected face

    def backend(self) -> Backend:
        if self.backend_setting == "whenet":
            from faceeval.fetch import ASSETS

            weights = tuple((ASSETS[n].source_file, ASSETS[n].sha256) for n in ("whenet", "retinaface"))
            return Backend("whenet_effnetb0", "WHENet EfficientNet-B0 (timm tf_efficientnet_b0) + Hopenet-style "
                           "bins, RetinaFace box; L2 of (yaw, pitch, roll) in degrees (not the papers' Hopenet "
                           "ResNet-50 weights)", False, weights)
        if self.backend_setting == "hopenet":
            self.model  # noqa: B018
            return Backend("hopenet_robust_alpha1", "Hopenet ResNet-50 (300W-LP, alpha 1), 66-bin expectation",
                           True, self._weights)
        from faceeval.faces.pose import MEAN_FACE_FILE, mean_face_68

        _, sha = mean_face_68()
        lm_w = verified(DLIB_68)
        weights = ((lm_w[0].name, lm_w[1]), (MEAN_FACE_FILE, sha))
        if self._landmarks is not None:  # an ONNX detector's file, when one finds the faces
            weights += tuple(w for w in self._landmarks.weight_files() if w not in weights)
        return Backend("pnp_dlib68_meanface", "dlib 68 landmarks + 3D mean face + cv2.solvePnP, Hopenet's axes "
                       "(offline; not Hopenet)", False, weights)

    def fingerprint(self) -> dict:
        fp = {"metric": self.name, "backend": self.backend_setting, "unit": self.unit, "detector": self.detector,
              "version": "1", "weights": list(self.backend().weights)}
        if not self.conv.is_default():  # today's runs keep their fingerprint
            fp["convention"] = self.conv.as_dict()
        return fp

    def notes(self) -> list[str]:
        notes = [self._landmarks.stats.note(f"{self.name} ({self.detector})")] if self._landmarks else []
        if self._no_face:
            notes.append(f"{self.name}: no face detected in {len(self._no_face)} distinct method outputs; "
                         "their pairs score NaN (no fallback landmarks for outputs)")
        if self._failed:
            notes.append(f"{self.name}: no pose solution for {len(self._failed)} images; their pairs score NaN "
                         "and are left out of the mean (n in the table counts the rest)")
        return [n for n in notes if n]

    @cached_property
    def model(self):
        from faceeval.models.hopenet import load_hopenet

        path, sha = verified(HOPENET_FILE)
        self._weights = ((path.name, sha),)
        return load_hopenet(path).to(self.device)

    def _hopenet(self, images: list[np.ndarray], logits: bool = False) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        from faceeval.constants import IMAGENET_MEAN, IMAGENET_STD
        from faceeval.models.hopenet import INPUT_SIZE
        from faceeval.parallel import feature_batch, fixed_batches
        from faceeval.timing import stage

        mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

        def forward(batch: np.ndarray) -> np.ndarray:  # (B, H, W, 3) uint8 -> (B, 3) degrees
            x = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2).float() / 255.0  # (B, 3, H, W)
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False,
                              antialias=True)
            x = (x - mean) / std
            if logits:  # (B, 198): yaw, pitch, roll bins
                return torch.cat(self.model.logits(x), 1).float().cpu().numpy()
            return self.model(x).float().cpu().numpy()

        with torch.inference_mode(), stage("embed"):
            return fixed_batches(forward, np.stack(images), feature_batch(self.device))  # (N, 3) degrees

    def _whenet(self, ctx: EvalContext, shas: list[str], images: list[np.ndarray], logits: bool = False) -> np.ndarray:
        from faceeval.faces.retina import shared_faces
        from faceeval.fetch import ensure
        from faceeval.parallel import map_rows
        from faceeval.weights import sha256_of

        self._landmarks = shared_faces(ctx, self.device)
        boxes, _, _ = self._landmarks(ctx, shas, images)  # (N, 4), cached

        task = WhenetLogits if logits else WhenetAngles

        def compute(items):
            path = ensure("whenet")
            return np.stack(map_rows(task(path, sha256_of(path), self.device), items, self.device))

        ns = f"whenet{'_logits' if logits else ''}:{self._landmarks.namespace}:v1"
        return cached_features(ctx.feature_cache, ns, shas, list(zip(images, boxes)), compute,
                               weights=self.backend().weights)

    def logits(self, ctx: EvalContext, shas: list[str], images: list[np.ndarray]) -> np.ndarray:
        """(N, yaw + pitch + roll bins) raw logits of the bin classifier, cached per image content."""
        if self.backend_setting == "whenet":
            return self._whenet(ctx, shas, images, logits=True)
        return cached_features(ctx.feature_cache, "hopenet_robust_alpha1_logits:v1", shas, images,
                               lambda imgs: self._hopenet(imgs, logits=True), weights=self.backend().weights)

    def angles(self, ctx: EvalContext, shas: list[str], images: list[np.ndarray]) -> np.ndarray:
        """(N, 3) (yaw, pitch, roll) in degrees, cached per image content."""
        if self.backend_setting == "whenet":
            return self._whenet(ctx, shas, images)
        if self.backend_setting == "hopenet":
            return cached_features(ctx.feature_cache, "hopenet_robust_alpha1:v2", shas, images, self._hopenet,
                                   weights=self.backend().weights)
        from faceeval.faces.landmarks import shared_landmarks
        from faceeval.faces.pose import pnp_pose

        self._landmarks = shared_landmarks(ctx, self.detector)
        lm, _, _ = self._landmarks(ctx, shas, images)  # (N, 68, 2)
        h, w = images[0].shape[:2]
        items = [(lm[i], w, h) for i in range(len(shas))]
        return cached_features(ctx.feature_cache, f"pnp_meanface:{self.detector}:v1", shas, items,
                               lambda its: np.stack([pnp_pose(*it) for it in its]), weights=self.backend().weights)

    def update(self, batch: EvalBatch, ctx: EvalContext) -> dict[str, np.ndarray]:
        if self.conv.formula == "hopenet_bins":
            return self._update_bins(batch, ctx)
        swapped = self.angles(ctx, batch.swapped_sha, list(batch.swapped))  # (B, 3)
        target = self.angles(ctx, batch.target_sha, list(batch.target))
        for shas, ang in ((batch.swapped_sha, swapped), (batch.target_sha, target)):
            self._failed.update(s for s, a in zip(shas, ang) if not np.all(np.isfinite(a)))
        diff = np.abs(swapped - target)  # (B, 3) degrees
        err = angle_error(swapped, target, self.conv.formula)  # (B,) degrees
        if self._landmarks is not None:
            # a method output without a detected face has no landmarks to pose: NaN, never the
            # expected box's fallback points (which score a blank image as a frontal face)
            _, _, found = self._landmarks(ctx, batch.swapped_sha, list(batch.swapped))
            err = np.where(found, err, np.nan)
            self._no_face.update(s for s, f in zip(batch.swapped_sha, found) if not f)
        if self.unit == "rad":
            err, diff = np.deg2rad(err), np.deg2rad(diff)
        out = {self.keys[0].key: err.astype(np.float64)}
        for j, col in enumerate(self.pair_columns):
            out[col] = np.where(np.isfinite(err), diff[:, j], np.nan).astype(np.float64)
        return out

    def _update_bins(self, batch: EvalBatch, ctx: EvalContext) -> dict[str, np.ndarray]:
        """ReliableSwap's pose: per angle ‖Δ logits‖/2 (√(MSE·dim)/2 of one pair); the key is their
        mean for the pair browser, the summary the rms aggregate over the three angle columns."""
        swapped = self.logits(ctx, batch.swapped_sha, list(batch.swapped))  # (B, bins)
        target = self.logits(ctx, batch.target_sha, list(batch.target))
        per_angle = bin_errors(swapped, target, LOGIT_BINS[self.backend_setting])  # (B, 3)
        if self._landmarks is not None:  # an output without a face: NaN, as for the angles
            _, _, found = self._landmarks(ctx, batch.swapped_sha, list(batch.swapped))
            per_angle = np.where(np.asarray(found)[:, None], per_angle, np.nan)
            self._no_face.update(s for s, f in zip(batch.swapped_sha, found) if not f)
        out = {self.keys[0].key: per_angle.mean(axis=1)}
        out.update({col: per_angle[:, j] for j, col in enumerate(self.pair_columns)})
        return out
