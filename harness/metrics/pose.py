"""Pose error: mean L2 distance of (yaw, pitch, roll) between the swapped face and the target.

Backends (``backend=``):
* ``pnp`` (offline default): 68 dlib landmarks + a 3D mean face + ``cv2.solvePnP``,
  angles in Hopenet's axis/sign convention (``harness.faces.pose``). Key ``pose_error_pnp``.
* ``hopenet`` (the papers' model): Hopenet ResNet-50 from ``hopenet_robust_alpha1.pkl``,
  fed the whole FFHQ-aligned crop resized to 224 (a loose face crop, as Hopenet's own
  test pipeline uses a box enlarged around the face). Key ``pose_error``.

``unit=`` ``deg`` (default; what MegaFS/FaceDancer report, ~2-4) or ``rad`` (CodeSwap's
Table 1 scale looks like radians); the key's unit is shown in every table.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np

from harness.api import Backend, EvalBatch, EvalContext, Metric, MetricKey
from harness.cache import cached_features
from harness.errors import HarnessError
from harness.weights import DLIB_68, verified



class PoseMetric(Metric):
    name = "pose"

    def __init__(self, device: str = "cpu", backend: str = "pnp", unit: str = "deg", detector: str = "dlib") -> None:
        if backend not in ("pnp", "hopenet"):
            raise HarnessError(f"unknown pose backend {backend!r} (choose pnp or hopenet)")
        if unit not in ("deg", "rad"):
            raise HarnessError(f"unknown pose unit {unit!r} (choose deg or rad)")
        self.device, self.backend_setting, self.unit, self.detector = device, backend, unit, detector
        key = "pose_error" if backend == "hopenet" else "pose_error_pnp"
        label = "Pose error" if backend == "hopenet" else "Pose error [PnP]"
        self.name = "pose" if backend == "pnp" else "pose_hopenet"
        self.keys = (MetricKey(key, label, False, unit),)
        self._landmarks = None
        self._failed: set[str] = set()
        self._no_face: set[str] = set()  # method outputs without a detected face

    def backend(self) -> Backend:
        if self.backend_setting == "hopenet":
            self.model  # noqa: B018
            return Backend("hopenet_robust_alpha1", "Hopenet ResNet-50 (300W-LP, alpha 1), 66-bin expectation",
                           True, self._weights)
        from harness.faces.pose import mean_face_68

        _, sha = mean_face_68()
        lm_w = verified(DLIB_68)
        weights = ((lm_w[0].name, lm_w[1]), ("model_3D_68.txt", sha))
        if self._landmarks is not None:  # an ONNX detector's file, when one finds the faces
            weights += tuple(w for w in self._landmarks.weight_files() if w not in weights)
        return Backend("pnp_dlib68_meanface", "dlib 68 landmarks + 3D mean face + cv2.solvePnP, Hopenet's axes "
                       "(offline; not Hopenet)", False, weights)

    def fingerprint(self) -> dict:
        return {"metric": self.name, "backend": self.backend_setting, "unit": self.unit, "detector": self.detector,
                "version": "1", "weights": list(self.backend().weights)}

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
        from harness.models.hopenet import load_hopenet

        path, sha = verified("hopenet_robust_alpha1.pkl")
        self._weights = ((path.name, sha),)
        return load_hopenet(path).to(self.device)

    def _hopenet(self, images: list[np.ndarray]) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        from harness.constants import IMAGENET_MEAN, IMAGENET_STD
        from harness.models.hopenet import INPUT_SIZE
        from harness.parallel import feature_batch, fixed_batches
        from harness.timing import stage

        mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

        def forward(batch: np.ndarray) -> np.ndarray:  # (B, H, W, 3) uint8 -> (B, 3) degrees
            x = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2).float() / 255.0  # (B, 3, H, W)
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False,
                              antialias=True)
            return self.model((x - mean) / std).float().cpu().numpy()

        with torch.inference_mode(), stage("embed"):
            return fixed_batches(forward, np.stack(images), feature_batch(self.device))  # (N, 3) degrees

    def angles(self, ctx: EvalContext, shas: list[str], images: list[np.ndarray]) -> np.ndarray:
        """(N, 3) (yaw, pitch, roll) in degrees, cached per image content."""
        if self.backend_setting == "hopenet":
            return cached_features(ctx.feature_cache, "hopenet_robust_alpha1:v2", shas, images, self._hopenet,
                                   weights=self.backend().weights)
        from harness.faces.landmarks import shared_landmarks
        from harness.faces.pose import pnp_pose

        self._landmarks = shared_landmarks(ctx, self.detector)
        lm, _, _ = self._landmarks(ctx, shas, images)  # (N, 68, 2)
        h, w = images[0].shape[:2]
        items = [(lm[i], w, h) for i in range(len(shas))]
        return cached_features(ctx.feature_cache, f"pnp_meanface:{self.detector}:v1", shas, items,
                               lambda its: np.stack([pnp_pose(*it) for it in its]), weights=self.backend().weights)

    def update(self, batch: EvalBatch, ctx: EvalContext) -> dict[str, np.ndarray]:
        swapped = self.angles(ctx, batch.swapped_sha, list(batch.swapped))  # (B, 3)
        target = self.angles(ctx, batch.target_sha, list(batch.target))
        for shas, ang in ((batch.swapped_sha, swapped), (batch.target_sha, target)):
            self._failed.update(s for s, a in zip(shas, ang) if not np.all(np.isfinite(a)))
        err = np.linalg.norm(swapped - target, axis=1)  # (B,) degrees
        if self._landmarks is not None:
            # a method output without a detected face has no landmarks to pose: NaN, never the
            # expected box's fallback points (which score a blank image as a frontal face)
            _, _, found = self._landmarks(ctx, batch.swapped_sha, list(batch.swapped))
            err = np.where(found, err, np.nan)
            self._no_face.update(s for s, f in zip(batch.swapped_sha, found) if not f)
        if self.unit == "rad":
            err = np.deg2rad(err)
        return {self.keys[0].key: err.astype(np.float64)}
