"""FID between the swapped faces and the protocol's real faces, through torch-fidelity.

Real set: the protocol's *target* images (each distinct target once). A swap keeps the
target's pose, lighting and background, so the targets are the real distribution the
swapped set should match; with this choice the ``target`` reference method scores 0.

Backends (``backend=``):
* ``inception`` (the papers' FID, key ``fid``): torch-fidelity's Inception-v3 (pool3,
  2048-d) built from the user's local ``weights-inception-2015-12-05-6726825d.pth``
  (torch-fidelity's own format), loaded with ``weights_only=True``.
* ``facenet`` (offline, key ``fid_facenet``): a torch-fidelity feature extractor
  registered as ``facenet-casia-512`` (FaceNet Inception-ResNet-v1 bottleneck, 512-d,
  whole crop resized to 160). A Fréchet distance in a face-recognition feature space: it
  is NOT comparable with Inception FID, hence its own name.

Dataset-level (``per_pair=False``): features are accumulated batch by batch (cached per
image content) and the distance is computed once in :meth:`compute` by torch-fidelity's
``fid_features_to_statistics`` / ``fid_statistics_to_metric``.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

from harness.api import Backend, EvalBatch, EvalContext, Metric, MetricKey
from harness.cache import cached_features
from harness.errors import HarnessError
from harness.weights import verified

INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"
FACENET_EXTRACTOR = "facenet-casia-512"


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """FID between two feature sets (N, D) and (M, D) with torch-fidelity's own statistics."""
    import torch
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric

    if len(a) < 2 or len(b) < 2:
        raise HarnessError(f"FID needs at least 2 images per set (got {len(a)} and {len(b)})")
    sa = fid_features_to_statistics(torch.from_numpy(np.asarray(a, np.float64)))
    sb = fid_features_to_statistics(torch.from_numpy(np.asarray(b, np.float64)))
    return float(fid_statistics_to_metric(sa, sb, verbose=False)[KEY_METRIC_FID])


def _facenet_extractor_class():
    """The FaceNet torch-fidelity feature extractor class (registered once)."""
    import torch
    import torch.nn.functional as F
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    if FACENET_EXTRACTOR in FEATURE_EXTRACTORS_REGISTRY:
        return FEATURE_EXTRACTORS_REGISTRY[FACENET_EXTRACTOR]

    class FeatureExtractorFaceNet(FeatureExtractorBase):
        """uint8 (B, 3, H, W) -> ('512',): FaceNet bottleneck features before L2 norm."""

        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__(name, features_list)
            from pathlib import Path

            from harness.models.facenet import INPUT_SIZE, load_from_graph, shared_facenet
            from harness.weights import sha256_of

            if feature_extractor_weights_path is None:  # never downloads: the file is local
                feature_extractor_weights_path, _ = verified("graph_final.pb")
            path = Path(feature_extractor_weights_path)
            # kwargs carry torch-fidelity's settings; the harness passes its device to share one copy
            device = kwargs.get("harness_device")
            self.net = shared_facenet(path, sha256_of(path), device) if device else load_from_graph(path)
            self.size = INPUT_SIZE
            self.requires_grad_(False)
            self.eval()

        @staticmethod
        def get_provided_features_list():
            return ("512",)

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return "512"

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return None

        def forward(self, x):
            from harness.models.facenet import prewhiten

            if x.dtype != torch.uint8 or x.dim() != 4:
                raise HarnessError("FaceNet extractor expects uint8 (B, 3, H, W)")
            x = F.interpolate(x.float(), size=(self.size, self.size), mode="bilinear", align_corners=False,
                              antialias=True)  # (B, 3, 160, 160) in [0, 255]
            return (self.net(prewhiten(x), normalize=False),)

    register_feature_extractor(FACENET_EXTRACTOR, FeatureExtractorFaceNet)
    return FeatureExtractorFaceNet


def _build_extractor(backend: str, device: str, path: Path, sha: str):
    import torch

    if backend == "inception":
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        state = torch.load(path, map_location="cpu", weights_only=True)  # no pickle code runs
        # torch-fidelity loads its file itself with weights_only=False; hand it the
        # already-safely-loaded dict instead of letting it unpickle the file.
        with mock.patch.object(torch, "load", lambda *a, **k: state):
            ext = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))
    else:
        cls = _facenet_extractor_class()
        ext = cls(FACENET_EXTRACTOR, ["512"], feature_extractor_weights_path=path, harness_device=device)
    return ext.to(device).eval()


_EXTRACTORS: dict[tuple[str, str, str, str], Any] = {}  # one per backend, device and weight file, per process


def load_extractor(backend: str, device: str) -> tuple[Any, tuple[tuple[str, str], ...]]:
    """The torch-fidelity feature extractor of a FID ``backend`` on ``device`` (built once per
    process and weight file) and its weights ((file name, sha256),)."""
    path, sha = verified(INCEPTION_WEIGHTS if backend == "inception" else "graph_final.pb")
    key = (backend, str(device), str(path), sha)
    if key not in _EXTRACTORS:
        _EXTRACTORS[key] = _build_extractor(backend, device, path, sha)
    return _EXTRACTORS[key], ((path.name, sha),)


def extractor_features(extractor, images: np.ndarray, device: str) -> np.ndarray:
    """uint8 (N, H, W, 3) -> (N, D) float64 features, in fixed batches."""
    import torch

    from harness.parallel import feature_batch, fixed_batches
    from harness.timing import stage

    def forward(batch: np.ndarray) -> np.ndarray:  # (B, H, W, 3) uint8 -> (B, D)
        x = torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()  # (B, 3, H, W) uint8
        return extractor(x.to(device))[0].double().cpu().numpy()

    with torch.inference_mode(), stage("embed"):
        return fixed_batches(forward, images, feature_batch(device))


class ExtractorForward:
    """Picklable task for the worker pool: images -> features with this process's extractor."""

    def __init__(self, backend: str, device: str) -> None:
        self.backend, self.device = backend, device

    def __call__(self, images: list[np.ndarray]) -> np.ndarray:
        return extractor_features(load_extractor(self.backend, self.device)[0], np.stack(images), self.device)


class FIDMetric(Metric):
    def __init__(self, device: str = "cpu", backend: str = "facenet") -> None:
        if backend not in ("inception", "facenet"):
            raise HarnessError(f"unknown FID backend {backend!r} (choose inception or facenet)")
        self.device, self.backend_setting = device, backend
        if backend == "inception":
            self.name = "fid"
            self.keys = (MetricKey("fid", "FID", False, "", per_pair=False, lower_bound=0.0, feature_dim=2048),)
        else:
            self.name = "fid_facenet"
            self.keys = (MetricKey("fid_facenet", "FID [FaceNet features]", False, "", per_pair=False,
                                  lower_bound=0.0, feature_dim=512),)
        self._swapped: dict[str, np.ndarray] = {}
        self._weights: tuple[tuple[str, str], ...] = ()  # set when the extractor loads

    @cached_property
    def extractor(self):
        ext, self._weights = load_extractor(self.backend_setting, self.device)
        return ext

    def _weight_files(self) -> tuple[tuple[str, str], ...]:
        """((file name, sha256),) of the extractor's weights, without building the network
        (a run whose features are all cached never loads it)."""
        if not self._weights:
            path, sha = verified(INCEPTION_WEIGHTS if self.backend_setting == "inception" else "graph_final.pb")
            self._weights = ((path.name, sha),)
        return self._weights

    def backend(self) -> Backend:
        self._weight_files()
        if self.backend_setting == "inception":
            return Backend("inception_v3_tf2015", "Inception-v3 pool3 2048-d (torch-fidelity), real set = targets",
                           True, self._weights)
        return Backend("facenet_casia_512", "FaceNet CASIA bottleneck 512-d via torch-fidelity extractor "
                       "(offline; not Inception FID), real set = targets", False, self._weights)

    def fingerprint(self) -> dict:
        return {"metric": self.name, "backend": self.backend_setting, "real_set": "targets", "version": "2",
                "weights": list(self.backend().weights)}

    def features(self, images: list[np.ndarray]) -> np.ndarray:
        """uint8 (H, W, 3) images -> (N, D) features, in fixed batches on the device; on the
        CPU with a worker pool, in the workers (each loads the extractor once)."""
        from harness.parallel import map_rows, pool_workers

        self.extractor  # noqa: B018 - loads and checks the weights here
        if pool_workers() > 1 and not str(self.device).startswith("cuda"):
            return np.stack(map_rows(ExtractorForward(self.backend_setting, self.device), images, self.device))
        return extractor_features(self.extractor, np.stack(images), self.device)

    def _ns(self) -> str:
        return f"fid:{self.backend_setting}:v2"  # v2: fixed batches (harness.parallel)

    def prepare(self, ctx: EvalContext) -> None:
        self._swapped = {}

    def update(self, batch: EvalBatch, ctx: EvalContext) -> dict[str, np.ndarray]:
        feats = cached_features(ctx.feature_cache, self._ns(), batch.swapped_sha, list(batch.swapped), self.features,
                                weights=self.backend().weights)
        for pid, f in zip(batch.pair_ids, feats):
            self._swapped[pid] = f
        return {}

    def real_features(self, ctx: EvalContext) -> np.ndarray:
        paths = list(dict.fromkeys(p.target for p in ctx.pairset.pairs))
        shas = [ctx.image_sha(p) for p in paths]
        return cached_features(ctx.feature_cache, self._ns(), shas, None, self.features,
                               load=lambda i: ctx.load_image(paths[i]), weights=self.backend().weights)

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        fake = np.stack([self._swapped[p.pair_id] for p in ctx.pairset.pairs if p.pair_id in self._swapped])
        return {self.keys[0].key: fid_from_features(fake, self.real_features(ctx))}
