"""ONNX swapper adapters on tiny graphs in each model's official format.

* a swapper that returns its target must come back through alignment and paste-back
  within the round-trip tolerance of tests/faceeval/test_paste.py (same warps, same bound);
* input normalisation, output ranges and the identity paths (emap, converter, raw
  ArcFace, source image) are checked with constructed values.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from faceeval.errors import HarnessError
from faceeval.images import load_rgb, to_tensor
from faceeval.weights import KNOWN
from harness.registry import METHODS
from methods.onnx_swappers import (
    ARCFACE_FILE,
    SWAPPERS,
    ArcFaceOnnx,
    OnnxSwapper,
    emap_latent,
    normalise_input,
    output_to_rgb01,
    unit,
)
from protocols.demo import DemoProtocol

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import onnx_models

RNG = np.random.default_rng(7)
EMAP = RNG.normal(size=(512, 512)).astype(np.float32)
ARC_W = RNG.normal(size=(3, 512)).astype(np.float32)
CONV = RNG.normal(size=(512, 512)).astype(np.float32)


def build_weights(folder: Path, spec) -> None:
    """Write every file ``spec`` needs, in the official format, into ``folder``."""
    if spec.source == "emap":
        onnx_models.inswapper(folder / spec.file, EMAP)
    else:
        if spec.source == "image":
            src_shape = (1, 3, spec.source_size, spec.source_size)
        else:
            src_shape = (1, 512)
        scale = shift = None
        if not spec.denormalise_output and spec.mean != (0.0, 0.0, 0.0):
            scale, shift = spec.std, spec.mean  # output in [0, 1] from a normalised input
        onnx_models.returns_target_swapper(folder / spec.file, spec.size, src_shape, scale, shift)
    if spec.source != "image":
        onnx_models.arcface(folder / ARCFACE_FILE, ARC_W)
    if spec.converter:
        onnx_models.converter(folder / spec.converter, CONV)


@pytest.fixture
def weights_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("HARNESS_SHA_MEMO", str(tmp_path / "sha.json"))
    # The synthetic files cannot have the real files' sha256: drop the expectation here
    # (test_real_checksum_is_enforced shows it is enforced otherwise).
    for name in ("inswapper_128.onnx", ARCFACE_FILE):
        monkeypatch.setitem(KNOWN, name, dataclasses.replace(KNOWN[name], sha256=None))
    return tmp_path


@pytest.fixture(scope="module")
def pairs():
    demo = DemoProtocol(num_pairs=2).build()
    src = np.stack([load_rgb(demo.path(p.source)) for p in demo.pairs])
    tgt = np.stack([load_rgb(demo.path(p.target)) for p in demo.pairs])
    return src, tgt


# Same bounds as the identity round trip in tests/faceeval/test_paste.py (uint8 levels, whole crop).
TOL = {128: (1.5, 14.0), 256: (1.0, 9.0), 512: (1.0, 9.0)}


@pytest.mark.parametrize("model", list(SWAPPERS))
def test_returns_target_round_trip(weights_dir, pairs, model):
    spec = SWAPPERS[model]
    build_weights(weights_dir, spec)
    method = METHODS.create(model)
    assert isinstance(method, OnnxSwapper) and method.spec == spec
    src, tgt = pairs
    out = method.swap(to_tensor(src), to_tensor(tgt))  # (2, 3, 256, 256)
    assert out.shape == (2, 3, 256, 256) and out.dtype == torch.float32
    got = (out.permute(0, 2, 3, 1).numpy() * 255.0).round()
    d = np.abs(got - tgt)
    mean_tol, p99_tol = TOL[spec.size]
    assert d.mean() < mean_tol and np.percentile(d, 99) < p99_tol, (model, d.mean(), np.percentile(d, 99))
    assert set(method.fingerprint()["weights"]) == set(spec.weight_files)


def test_registry_requires_match_the_table():
    for name, spec in SWAPPERS.items():
        entry = METHODS.resolve(name)
        assert set(entry.requires) == set(spec.weight_files) | {"shape_predictor_68_face_landmarks.dat"}
        assert dict(entry.options) == {"model": name}


def test_input_normalisation_and_output_range():
    crop = np.full((4, 4, 3), 0.5, np.float32)
    crop[..., 1] = 0.25
    x = normalise_input(crop, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert x.shape == (1, 3, 4, 4) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, :, 0, 0], [(0.5 - 0.485) / 0.229, (0.25 - 0.456) / 0.224, (0.5 - 0.406) / 0.225],
                               rtol=1e-6)
    np.testing.assert_allclose(normalise_input(crop, (0.5,) * 3, (0.5,) * 3)[0, :, 0, 0], [0.0, -0.5, 0.0])
    # outputs in the normalised space (GHOST, HifiFace, HyperSwap, UniFace) are mapped back
    ghost = SWAPPERS["ghost_1_256"]
    y = np.stack([np.full((2, 2), v, np.float32) for v in (-1.0, 0.0, 2.0)])[None]  # (1, 3, 2, 2)
    np.testing.assert_allclose(output_to_rgb01(y, ghost)[0, 0], [0.0, 0.5, 1.0])  # 2.0 -> 1.5 clipped
    ins = SWAPPERS["inswapper_128"]  # already [0, 1]: only clipped
    np.testing.assert_allclose(output_to_rgb01(y, ins)[0, 0], [0.0, 0.0, 1.0])


def test_arcface_input_convention(weights_dir):
    path = onnx_models.arcface(weights_dir / ARCFACE_FILE, ARC_W)
    crop = np.zeros((112, 112, 3), np.float32)
    crop[..., 0], crop[..., 1], crop[..., 2] = 1.0, 0.5, 0.0
    emb = ArcFaceOnnx(path)(crop)
    expected = np.array([[1.0, (127.5 - 127.5) / 127.5, -1.0]], np.float32) @ ARC_W  # (x*255 - 127.5) / 127.5
    np.testing.assert_allclose(emb, expected, rtol=1e-5, atol=1e-5)
    # 0.5 * 255 = 127.5 exactly: the green channel normalises to 0 (not 0.5 or 127.5)
    assert ArcFaceOnnx(path).model.input_mean == 127.5 and ArcFaceOnnx(path).model.input_std == 127.5


def test_emap_latent_matches_insightface_formula():
    e = RNG.normal(size=(1, 512)).astype(np.float32) * 7.0
    latent = emap_latent(e, EMAP)
    ref = (e / np.linalg.norm(e)) @ EMAP  # INSwapper.get: normed_embedding @ emap, then / norm
    ref /= np.linalg.norm(ref)
    np.testing.assert_allclose(latent, ref, rtol=1e-5, atol=1e-6)
    assert np.linalg.norm(latent) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("model,normalised", [("simswap_256", True), ("ghost_2_256", False),
                                              ("hififace_unofficial_256", True), ("hyperswap_1b_256", True)])
def test_embedding_paths(weights_dir, model, normalised):
    spec = SWAPPERS[model]
    build_weights(weights_dir, spec)
    method = OnnxSwapper(model=model)
    e = RNG.normal(size=(1, 512)).astype(np.float32) * 3.0
    got = method.identity_from_embedding(e)
    if spec.source == "converter":
        expected = e @ CONV  # the converter graph
        expected = unit(expected) if normalised else expected
    else:  # HyperSwap: the unit ArcFace embedding itself
        expected = unit(e)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_inswapper_reads_emap_through_insightface(weights_dir):
    build_weights(weights_dir, SWAPPERS["inswapper_128"])
    method = OnnxSwapper(model="inswapper_128")
    np.testing.assert_array_equal(method._swapper.emap, EMAP)  # the graph's last initializer
    assert method._swapper.input_names == ["target", "source"]


@pytest.mark.parametrize("model", ["blendswap_256", "uniface_256"])
def test_image_source_crop(weights_dir, pairs, model):
    spec = SWAPPERS[model]
    build_weights(weights_dir, spec)
    method = OnnxSwapper(model=model)
    src = pairs[0][0]
    x = method.source_input(src, method.five_points(src))
    assert x.shape == (1, 3, spec.source_size, spec.source_size) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.std() > 0.05  # RGB [0, 1], a real face crop


def test_wrong_input_names_are_rejected(weights_dir):
    spec = SWAPPERS["hyperswap_1a_256"]
    build_weights(weights_dir, spec)
    onnx_models.returns_target_swapper(weights_dir / spec.file, 256, (1, 512), names=("identity", "image"))
    with pytest.raises(HarnessError, match="expected graph inputs 'source' and 'target'"):
        OnnxSwapper(model="hyperswap_1a_256")._swapper  # noqa: B018 - loads and checks the graph


def test_real_checksum_is_enforced(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("HARNESS_SHA_MEMO", str(tmp_path / "sha.json"))
    onnx_models.inswapper(tmp_path / "inswapper_128.onnx", EMAP)
    onnx_models.arcface(tmp_path / ARCFACE_FILE, ARC_W)
    with pytest.raises(HarnessError, match="does not match the expected"):
        OnnxSwapper(model="inswapper_128").fingerprint()
