"""Identity: retrieval on constructed embeddings, the ArcFace alignment, the FaceNet port
against the original runtime, and loaders for the standard backends' file formats."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from faceeval import weights
from faceeval.errors import HarnessError
from faceeval.faces.arcface import ARCFACE_TEMPLATE_112, arcface_crop, arcface_matrix
from faceeval.metrics.identity import retrieval_hits


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_retrieval_known_answers():
    gallery = np.eye(4)[[0, 1, 2, 3, 3]]  # identities a, b, c, d, d (d twice)
    ids = ["a", "b", "c", "d", "d"]
    q = _unit(np.array([
        [1.0, 0.1, 0.0, 0.0],  # nearest a
        [0.0, 0.2, 1.0, 0.9],  # nearest c, then d, then b
        [0.0, 1.0, 0.0, 0.0],  # exactly b
    ]))
    hits = retrieval_hits(q, gallery, ids, ["a", "d", "c"], ks=(1, 2, 5))
    assert hits[1].tolist() == [True, False, False]
    assert hits[2].tolist() == [True, True, False]  # rank 2 of query 1 is d
    assert hits[5].tolist() == [True, True, True]  # c is among the top 5 of query 2
    # ties break by gallery order, whatever the batch composition
    tie = _unit(np.array([[1.0, 1.0, 0.0, 0.0]]))
    assert retrieval_hits(tie, gallery, ids, ["a"], ks=(1,))[1].tolist() == [True]
    both = retrieval_hits(np.concatenate([q, tie]), gallery, ids, ["a", "d", "c", "a"], ks=(1,))[1]
    assert both.tolist() == [True, False, False, True]


def test_arcface_alignment_maps_points_to_template():
    rng = np.random.default_rng(0)
    # five points of a face rotated by 20 degrees, scaled 1.7x and shifted
    ang = np.deg2rad(20)
    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    five = (ARCFACE_TEMPLATE_112 - 56) @ rot.T * 1.7 + [130, 120]
    m = arcface_matrix(five)
    mapped = np.c_[five, np.ones(5)] @ m.T
    assert np.abs(mapped - ARCFACE_TEMPLATE_112).max() < 1e-3
    img = rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)
    assert arcface_crop(img, five).shape == (112, 112, 3)


@pytest.fixture
def weights_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("HARNESS_SHA_MEMO", str(tmp_path / "sha.json"))
    return tmp_path


def _unpin(monkeypatch, name):
    # test models are not the released files: drop the pinned checksum for this test only
    monkeypatch.setitem(weights.KNOWN, name, dataclasses.replace(weights.KNOWN[name], sha256=None))


def _demo_crops_and_landmarks(n=4):
    from faceeval.faces.landmarks import CropLandmarks
    from faceeval.images import load_rgb
    from protocols.demo import DEMO_DIR

    imgs = [load_rgb(p) for p in sorted(DEMO_DIR.glob("*.png"))[:n]]
    five = CropLandmarks().compute(imgs)[:, 136:146].reshape(n, 5, 2)  # the stored alignment points
    return imgs, five


def test_arcface_onnx_loader_through_insightface(weights_dir, monkeypatch):
    """A small ONNX graph with buffalo_l's input/output names and shapes goes through
    insightface.model_zoo and gives the embeddings of the graph on the ArcFace crop."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from faceeval.metrics.id_backends import make_embedder

    rng = np.random.default_rng(0)
    w_conv = rng.normal(0, 0.05, (16, 3, 8, 8)).astype(np.float32)
    w_fc = rng.normal(0, 0.05, (16 * 14 * 14, 512)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input.1", "w_conv"], ["c"], strides=[8, 8], kernel_shape=[8, 8]),
         helper.make_node("Flatten", ["c"], ["f"], axis=1),
         helper.make_node("MatMul", ["f", "w_fc"], ["683"])],
        "arcface_like",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [None, 3, 112, 112])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, [None, 512])],
        [numpy_helper.from_array(w_conv, "w_conv"), numpy_helper.from_array(w_fc, "w_fc")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    path = weights_dir / "w600k_r50.onnx"
    onnx.save(model, str(path))
    _unpin(monkeypatch, "w600k_r50.onnx")

    imgs, five = _demo_crops_and_landmarks()
    emb = make_embedder("arcface")(imgs, five)
    assert emb.shape == (4, 512)
    # reference: RGB ArcFace crop, (x - 127.5) / 127.5, NCHW, the graph, L2 norm
    crops = np.stack([arcface_crop(im, f) for im, f in zip(imgs, five)]).astype(np.float32)
    x = ((crops - 127.5) / 127.5).transpose(0, 3, 1, 2)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input.1": x})[0]
    ref = _unit(ref)
    assert np.abs(emb - ref).max() < 1e-4


def test_iresnet_checkpoint_loader(weights_dir, monkeypatch):
    from faceeval.metrics.id_backends import make_embedder
    from faceeval.models.iresnet import IRESNETS, IResNet, load_iresnet

    # official key names and shapes of the r50 / r100 backbones
    r50 = IResNet(IRESNETS["r50"]).state_dict()
    assert r50["fc.weight"].shape == (512, 512 * 7 * 7)
    assert "layer3.13.bn3.running_var" in r50 and "layer3.14.conv1.weight" not in r50
    assert r50["layer1.0.downsample.0.weight"].shape == (64, 64, 1, 1)
    assert r50["prelu.weight"].shape == (64,) and r50["features.weight"].shape == (512,)
    assert "layer3.29.prelu.weight" in IResNet(IRESNETS["r100"]).state_dict()
    # a checkpoint saved the way arcface_torch saves backbone.pth loads with identical outputs
    torch.manual_seed(0)
    net = IResNet(IRESNETS["r50"]).eval()
    for m in net.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = weights_dir / "cosface_r50_glint360k.pth"
    torch.save(net.state_dict(), path)
    loaded = load_iresnet(path, "r50")
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        assert torch.allclose(loaded(x), net(x), atol=1e-5)
    with pytest.raises(HarnessError, match="keys do not match"):
        load_iresnet(path, "r100")  # wrong depth: a clear error, not a silent partial load
    imgs, five = _demo_crops_and_landmarks(2)
    emb = make_embedder("cosface_r50")(imgs, five)
    assert emb.shape == (2, 512) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)


def test_pickled_code_is_refused(tmp_path):
    from faceeval.models.iresnet import load_iresnet

    class Evil:
        def __reduce__(self):
            return (print, ("pickle code ran",))

    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": Evil()}, path)
    with pytest.raises(HarnessError, match="not a readable torch state dict"):
        load_iresnet(path, "r50")


def test_facenet_port_matches_cv2_runtime():
    """The PyTorch FaceNet gives the original runtime's (cv2.dnn on the frozen graph)
    embeddings on the demo faces: cosine >= 0.999 for every face."""
    weights.locate("graph_final.pb")  # a pinned dependency ships it: missing means a broken install
    from faceeval.faces.landmarks import CropLandmarks
    from faceeval.images import load_rgb
    from faceeval.metrics.id_backends import FaceNetCv2Embedder, FaceNetTorchEmbedder
    from protocols.demo import DEMO_DIR

    imgs = [load_rgb(p) for p in sorted(DEMO_DIR.glob("*.png"))]
    five = CropLandmarks().compute(imgs)[:, 136:146].reshape(len(imgs), 5, 2)
    ported = FaceNetTorchEmbedder()(imgs, five)
    original = FaceNetCv2Embedder()(imgs, five)
    cos = np.sum(ported * original, axis=1)
    assert cos.min() >= 0.999, cos.min()
    # and it is differentiable: an identity loss can back-propagate through it
    from faceeval.models.facenet import load_from_graph, prewhiten

    model = load_from_graph(weights.locate("graph_final.pb"))
    x = torch.rand(1, 3, 160, 160, requires_grad=True)
    model(prewhiten(x * 255)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_batched_device_alignment_matches_norm_crop():
    """The batched torch alignment (for GPU runs) gives insightface's transform and crop."""
    import cv2

    from faceeval.faces.arcface import similarity_matrices, warp_affine

    rng = np.random.default_rng(3)
    fives = np.stack([(ARCFACE_TEMPLATE_112 - 56) * s + c + rng.normal(0, 3, (5, 2))
                      for s, c in ((1.7, (128, 120)), (1.2, (100, 140)))])  # (2, 5, 2)
    m = similarity_matrices(torch.tensor(fives), torch.tensor(ARCFACE_TEMPLATE_112, dtype=torch.float64))
    img = cv2.GaussianBlur(rng.integers(0, 255, (256, 256, 3)).astype(np.uint8), (9, 9), 3)
    crops = warp_affine(torch.from_numpy(img).permute(2, 0, 1)[None].double().expand(2, -1, -1, -1), m, 112)
    for i in range(2):
        assert np.abs(m[i].numpy() - arcface_matrix(fives[i])).max() < 1e-3
        ref = arcface_crop(img, fives[i]).astype(np.float64)
        got = crops[i].permute(1, 2, 0).numpy()
        assert np.abs(ref - got)[4:-4, 4:-4].max() <= 1.0  # uint8 rounding of cv2's output
