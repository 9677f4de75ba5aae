"""The insightface SCRFD / RetinaFace detector paths of the shared landmarks, on small
ONNX graphs in the official files' format (det_10g.onnx of buffalo_l).

The real det_10g.onnx: input ``input.1`` of shape (1, 3, '?', '?') (dynamic, square
symbol), 9 outputs of rank 2 -- scores (N, 1) for strides 8/16/32 ('448', '471',
'494'), then box distances (N, 4) ('451', '474', '497'), then keypoint offsets (N, 10)
('454', '477', '500'); N = (H / stride) * (W / stride) * 2 anchors. insightface decodes
(model_zoo/scrfd.py, SCRFD.forward): anchor centres (x * stride, y * stride), row-major
over the feature map with the 2 anchors of a cell consecutive; box = centre -/+ distance *
stride; keypoint = centre + offset * stride; scores >= det_thresh kept, then NMS (0.4).
The image is resized into the 640x640 input (aspect kept, padded right/bottom) and the
results divided by that scale. The graphs here give fixed tensors of those shapes (via the
same pooling / transpose / reshape a real head ends with), with a few chosen anchors, so
the decoded boxes and keypoints are known numbers.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from faceeval import weights
from faceeval.errors import HarnessError

DET_SIZE = 640  # CropLandmarks prepares the detector at 640x640
STRIDES = (8, 16, 32)
OUT_NAMES = (("448", "471", "494"), ("451", "474", "497"), ("454", "477", "500"))  # det_10g's output names
DET_10G_SHA256 = "5838f7fe053675b1c7a08b633df49e7af5495cee0493c7dcf6697200b85b5b91"  # the released file
PINNED = {n: weights.KNOWN[n].sha256 for n in ("det_10g.onnx", "scrfd_10g_bnkps.onnx")}  # before any test unpins


@dataclasses.dataclass(frozen=True)
class Anchor:
    """One anchor that fires, given by the face it decodes to in the 640x640 input."""

    stride: int
    cell: tuple[int, int]  # (x, y) on the stride's feature map
    slot: int  # which of the cell's 2 anchors
    score: float
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in the 640 input
    kps: tuple[tuple[float, float], ...]  # 5 (x, y) in the 640 input

    @property
    def index(self) -> int:
        x, y = self.cell
        return (y * (DET_SIZE // self.stride) + x) * 2 + self.slot

    @property
    def centre(self) -> np.ndarray:
        return np.array(self.cell, np.float64) * self.stride

    def distances(self) -> np.ndarray:
        cx, cy = self.centre
        x0, y0, x1, y1 = self.box
        return np.array([cx - x0, cy - y0, x1 - cx, y1 - cy]) / self.stride

    def offsets(self) -> np.ndarray:
        return ((np.asarray(self.kps, np.float64) - self.centre) / self.stride).reshape(-1)


# the face: an anchor at stride 16, second slot of its cell, decoding to this box and points
FACE = Anchor(16, (20, 20), 1, 0.9, (120.0, 140.0, 500.0, 560.0),
              ((250.0, 300.0), (390.0, 300.0), (320.0, 380.0), (265.0, 460.0), (375.0, 460.0)))
# a smaller, weaker face elsewhere (stride 8): found, but not the largest
SMALL = Anchor(8, (8, 9), 0, 0.7, (40.0, 50.0, 100.0, 120.0),
               ((55.0, 75.0), (85.0, 75.0), (70.0, 90.0), (58.0, 105.0), (82.0, 105.0)))
# a weaker duplicate of FACE (stride 32, IoU > 0.4): removed by NMS
DUPLICATE = Anchor(32, (10, 11), 0, 0.6, (130.0, 150.0, 490.0, 550.0), FACE.kps)


def scrfd_graph(path: Path, anchors: list[Anchor], background: float = 0.01, probe_gain: float = 0.0,
                kps: bool = True) -> Path:
    """det_10g-format graph: the listed anchors fire, every other anchor scores ``background``.

    ``probe_gain`` != 0 adds ``gain * (mean of input channel 0 - mean of channel 2)`` to the
    firing anchors' scores: the score then tells which colour the network saw as channel 0
    (insightface feeds RGB, from the BGR image it is given)."""
    nodes, inits = [], []

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    const("zero", 0.0)
    const("bg", [[background]])
    const("flat", np.zeros((1, 4), np.float32))
    const("flat_kps", np.zeros((1, 10), np.float32))
    inits.append(numpy_helper.from_array(np.array([-1, 1], np.int64), "col_shape"))
    if probe_gain:
        # (1, 3) channel means @ (3, 1) [gain, 0, -gain] -> (1, 1)
        nodes += [helper.make_node("ReduceMean", ["input.1"], ["chan_mean4"], axes=[2, 3], keepdims=0),
                  helper.make_node("MatMul", ["chan_mean4", const("probe_w", [[probe_gain], [0.0], [-probe_gain]])],
                                   ["probe"])]
    for i, s in enumerate(STRIDES):
        # zeros (H/s * W/s * 2, 1) in the head's anchor order: pool, 2 anchor channels, NHWC, flatten
        nodes += [
            helper.make_node("AveragePool", ["input.1"], [f"pool{s}"], kernel_shape=[s, s], strides=[s, s]),
            helper.make_node("ReduceMean", [f"pool{s}"], [f"mean{s}"], axes=[1], keepdims=1),
            helper.make_node("Mul", [f"mean{s}", "zero"], [f"z{s}"]),
            helper.make_node("Concat", [f"z{s}", f"z{s}"], [f"z2_{s}"], axis=1),
            helper.make_node("Transpose", [f"z2_{s}"], [f"nhwc{s}"], perm=[0, 2, 3, 1]),
            helper.make_node("Reshape", [f"nhwc{s}", "col_shape"], [f"col{s}"]),
            helper.make_node("Add", [f"col{s}", "bg"], [f"score_bg{s}"]),
            helper.make_node("Add", [f"col{s}", "flat"], [f"box_bg{s}"]),
            helper.make_node("Add", [f"col{s}", "flat_kps"], [f"kps_bg{s}"]),
        ]
        here = [a for a in anchors if a.stride == s]
        heads = ((f"score_bg{s}", [[a.score] for a in here]), (f"box_bg{s}", [a.distances() for a in here]),
                 (f"kps_bg{s}", [a.offsets() for a in here]))
        for (src, values), name in zip(heads, (g[i] for g in OUT_NAMES)):
            if not here:
                nodes.append(helper.make_node("Identity", [src], [name]))
                continue
            idx = numpy_helper.from_array(np.array([[a.index] for a in here], np.int64), f"idx_{name}")
            inits.append(idx)
            upd = const(f"upd_{name}", np.asarray(values, np.float32))
            if probe_gain and src.startswith("score"):
                nodes.append(helper.make_node("Add", [upd, "probe"], [f"upd_probe_{name}"]))
                upd = f"upd_probe_{name}"
            nodes.append(helper.make_node("ScatterND", [src, idx.name, upd], [name]))
    names = [n for g in OUT_NAMES[: 3 if kps else 2] for n in g]
    widths = {n: w for g, w in zip(OUT_NAMES, (1, 4, 10)) for n in g}
    graph = helper.make_graph(
        nodes, "scrfd_like",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "?", "?"])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [f"n{n}", widths[n]]) for n in names],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _crop_coords(anchor: Anchor, side: int) -> tuple[np.ndarray, np.ndarray]:
    """The anchor's box (4,) and keypoints (5, 2) in a square crop of ``side`` pixels."""
    scale = side / DET_SIZE  # the crop was resized to 640 for the detector
    return np.asarray(anchor.box) * scale, np.asarray(anchor.kps) * scale


@pytest.fixture
def weights_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("HARNESS_SHA_MEMO", str(tmp_path / "sha.json"))
    for name in ("det_10g.onnx", "scrfd_10g_bnkps.onnx"):
        # test graphs are not the released file: drop its pinned checksum for this test only
        monkeypatch.setitem(weights.KNOWN, name, dataclasses.replace(weights.KNOWN[name], sha256=None))
    return tmp_path


@pytest.fixture(scope="module")
def face256():
    from faceeval.images import load_rgb
    from protocols.demo import DEMO_DIR

    return load_rgb(sorted(DEMO_DIR.glob("*.png"))[0])


def _sha(path):
    from faceeval.images import file_sha256

    return file_sha256(path)


def test_graph_matches_det10g_contract(weights_dir):
    """The test graph is routed to SCRFD by insightface's model zoo and has det_10g's
    input, output names, output shapes at 640 and decoding settings."""
    import onnxruntime as ort
    from insightface.model_zoo import SCRFD, get_model

    path = scrfd_graph(weights_dir / "det_10g.onnx", [FACE])
    model = get_model(str(path), providers=["CPUExecutionProvider"])
    assert isinstance(model, SCRFD)
    assert model.input_name == "input.1" and model.input_shape == [1, 3, "?", "?"]
    assert model.output_names == [n for g in OUT_NAMES for n in g]
    assert (model.fmc, model._feat_stride_fpn, model._num_anchors, model.use_kps) == (3, [8, 16, 32], 2, True)
    assert (model.input_mean, model.input_std, model.batched) == (127.5, 128.0, False)
    outs = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"input.1": np.zeros((1, 3, 640, 640), np.float32)})
    n = [(640 // s) ** 2 * 2 for s in STRIDES]
    assert [o.shape for o in outs] == [(n[0], 1), (n[1], 1), (n[2], 1), (n[0], 4), (n[1], 4), (n[2], 4),
                                       (n[0], 10), (n[1], 10), (n[2], 10)]


@pytest.mark.parametrize("side", [256, 512])
def test_scrfd_box_and_keypoints_in_crop_pixels(weights_dir, face256, side):
    import cv2

    from faceeval.faces.landmarks import CropLandmarks

    scrfd_graph(weights_dir / "det_10g.onnx", [FACE, SMALL, DUPLICATE])
    img = face256 if side == 256 else cv2.resize(face256, (side, side), interpolation=cv2.INTER_CUBIC)
    lm = CropLandmarks(detector="scrfd")
    faces = lm._faces(img)
    assert len(faces) == 2  # the duplicate is suppressed (NMS 0.4); FACE and SMALL remain, by score
    det = lm._onnx_detector  # insightface ran the graph rewritten to a static 640x640 session
    assert det.resolution_session_input_sizes == ((640, 640),)
    assert det.resolution_sessions[(640, 640)] is not det.session
    for (box, five), anchor in zip(faces, (FACE, SMALL)):
        want_box, want_kps = _crop_coords(anchor, side)
        assert np.abs(np.asarray(box) - want_box).max() < 1.0, (box, want_box)
        assert five.shape == (5, 2) and np.abs(five - want_kps).max() < 1.0

    vec = lm.compute([img])[0]
    want_box, want_kps = _crop_coords(FACE, side)  # the largest face is used
    assert vec[-1] == 1.0
    assert np.abs(vec[136:146].reshape(5, 2) - want_kps).max() < 1.0  # the detector's own 5 points
    pts = vec[:136].reshape(68, 2)  # dlib's 68 inside the detector's box
    x0, y0, x1, y1 = want_box
    centre = pts.mean(0)
    assert x0 < centre[0] < x1 and y0 < centre[1] < y1


def test_detection_threshold_and_not_found_fallback(weights_dir, face256):
    """det_thresh is 0.5: an anchor at 0.51 is a face, at 0.49 none is; with no face the
    68 points come from inside the expected FFHQ box, the 5 from those 68, and the image
    is counted as not found."""
    import dlib

    from faceeval.faces.align import five_points
    from faceeval.faces.landmarks import FFHQ_FACE_BOX, CropLandmarks
    from faceeval.images import pixel_sha256
    from metrics_helpers import fake_context

    path = weights_dir / "det_10g.onnx"
    scrfd_graph(path, [dataclasses.replace(FACE, score=0.51)], background=0.49)
    assert len(CropLandmarks(detector="scrfd")._faces(face256)) == 1

    scrfd_graph(path, [dataclasses.replace(FACE, score=0.49)], background=0.3)
    lm = CropLandmarks(detector="scrfd")
    assert lm._faces(face256) == []
    other = face256[:, ::-1].copy()  # a second image, also without a face for this detector
    ctx = fake_context([], {"a.png": face256, "b.png": other})
    shas = [pixel_sha256(face256), pixel_sha256(other)]
    lm68, five, found = lm(ctx, shas, [face256, other])
    assert not found.any()
    assert lm.stats.seen == set(shas) and lm.stats.not_found == set(shas)
    assert "found no face in 2 of 2 images" in lm.stats.note("identity (scrfd)")

    _, predictor = lm._dlib
    x0, y0, x1, y1 = FFHQ_FACE_BOX
    rect = dlib.rectangle(*(int(round(v * 256)) for v in (x0, y0, x1, y1)))
    want68 = np.array([[p.x, p.y] for p in predictor(face256, rect).parts()], np.float32)
    assert np.array_equal(lm68[0], want68)
    assert np.allclose(five[0], five_points(want68), atol=1e-4)


def test_scrfd_without_keypoints(weights_dir, face256):
    """A 6-output SCRFD (no keypoint head): the box is the detector's, the 5 points come
    from the 68 dlib finds inside it."""
    from faceeval.faces.align import five_points
    from faceeval.faces.landmarks import CropLandmarks

    scrfd_graph(weights_dir / "det_10g.onnx", [FACE], kps=False)
    lm = CropLandmarks(detector="scrfd")
    [(box, five)] = lm._faces(face256)
    assert five is None and np.abs(np.asarray(box) - _crop_coords(FACE, 256)[0]).max() < 1.0
    vec = lm.compute([face256])[0]
    assert vec[-1] == 1.0
    assert np.allclose(vec[136:146].reshape(5, 2), five_points(vec[:136].reshape(68, 2)), atol=1e-4)


def test_scrfd_sees_rgb(weights_dir):
    """insightface expects cv2's BGR image and swaps it to RGB; the harness's crops are RGB.
    A graph whose score is the mean of input channel 0 minus channel 2 finds a red crop
    and not a blue one only if the network gets RGB."""
    from faceeval.faces.landmarks import CropLandmarks

    scrfd_graph(weights_dir / "det_10g.onnx", [dataclasses.replace(FACE, score=0.5)], probe_gain=0.25)
    lm = CropLandmarks(detector="scrfd")
    red = np.zeros((256, 256, 3), np.uint8)
    red[..., 0] = 255
    blue = red[..., ::-1].copy()
    assert len(lm._faces(red)) == 1
    assert lm._faces(blue) == []


def test_scrfd_weight_file_names_and_record(weights_dir):
    from faceeval.faces.landmarks import CropLandmarks

    predictor = weights.verified("shape_predictor_68_face_landmarks.dat")
    fallback = scrfd_graph(weights_dir / "scrfd_10g_bnkps.onnx", [SMALL])  # antelopev2's name only
    lm = CropLandmarks(detector="scrfd")
    assert lm.weight_files() == ((predictor[0].name, predictor[1]), ("scrfd_10g_bnkps.onnx", _sha(fallback)))
    assert len(lm._faces(np.zeros((256, 256, 3), np.uint8))) == 1

    preferred = scrfd_graph(weights_dir / "det_10g.onnx", [FACE, SMALL])  # both names: buffalo_l's is used
    lm = CropLandmarks(detector="scrfd")
    assert lm.weight_files()[-1] == ("det_10g.onnx", _sha(preferred))
    assert len(lm._faces(np.zeros((256, 256, 3), np.uint8))) == 2


def test_scrfd_missing_or_wrong_file_is_a_clear_error(weights_dir, monkeypatch):
    from faceeval.faces.landmarks import CropLandmarks

    with pytest.raises(HarnessError, match="det_10g.onnx.*scrfd_10g_bnkps.onnx|scrfd_10g_bnkps.onnx.*det_10g.onnx"):
        CropLandmarks(detector="scrfd").weight_files()
    # the released file's checksum is pinned: a different det_10g.onnx is refused by name,
    # not silently replaced by the fallback name (nor reported as a missing fallback)
    assert PINNED["det_10g.onnx"] == PINNED["scrfd_10g_bnkps.onnx"] == DET_10G_SHA256
    monkeypatch.setitem(weights.KNOWN, "det_10g.onnx",
                        dataclasses.replace(weights.KNOWN["det_10g.onnx"], sha256=PINNED["det_10g.onnx"]))
    scrfd_graph(weights_dir / "det_10g.onnx", [FACE])
    scrfd_graph(weights_dir / "scrfd_10g_bnkps.onnx", [SMALL])
    with pytest.raises(HarnessError, match="det_10g.onnx"):
        CropLandmarks(detector="scrfd").weight_files()


def test_retinaface_class_on_the_same_format(weights_dir, face256):
    """insightface's RetinaFace class (model_zoo/retinaface.py) decodes the SCRFD output
    convention (same anchor centres, distances and keypoint offsets), without the static
    640 session SCRFD builds; the harness loads retinaface_r50_v1.onnx through it."""
    from faceeval.faces.landmarks import CropLandmarks

    path = scrfd_graph(weights_dir / "retinaface_r50_v1.onnx", [FACE, SMALL, DUPLICATE])
    lm = CropLandmarks(detector="retinaface")
    faces = lm._faces(face256)
    assert len(faces) == 2
    for (box, five), anchor in zip(faces, (FACE, SMALL)):
        want_box, want_kps = _crop_coords(anchor, 256)
        assert np.abs(np.asarray(box) - want_box).max() < 1.0
        assert np.abs(five - want_kps).max() < 1.0
    vec = lm.compute([face256])[0]
    assert vec[-1] == 1.0 and np.abs(vec[136:146].reshape(5, 2) - _crop_coords(FACE, 256)[1]).max() < 1.0
    assert lm.weight_files()[-1] == ("retinaface_r50_v1.onnx", _sha(path))


def test_identity_metric_uses_the_detectors_points(weights_dir, face256):
    """``--metric identity_facenet:detector=scrfd``: the metric aligns each face on the
    detector's 5 keypoints, and its backend record names the detector file."""
    from faceeval.api import EvalBatch, FacePair, GalleryItem
    from faceeval.images import pixel_sha256
    from harness.registry import METRICS
    from metrics_helpers import fake_context

    path = scrfd_graph(weights_dir / "det_10g.onnx", [FACE])
    metric = METRICS.create("identity_facenet", device="cpu", detector="scrfd")
    ctx = fake_context([FacePair("p0", "a.png", "a.png", "A", "A")], {"a.png": face256},
                       gallery=[GalleryItem("a.png", "A")])
    metric.prepare(ctx)
    sha = pixel_sha256(face256)
    batch = EvalBatch(["p0"], face256[None], face256[None], face256[None], [sha], [sha], [sha])
    values = metric.update(batch, ctx)
    assert values[metric.keys[2].key][0] == pytest.approx(1.0, abs=1e-5)

    want = metric.embedder([face256], _crop_coords(FACE, 256)[1][None].astype(np.float32))
    assert np.abs(metric._gallery - want).max() < 1e-4  # aligned on the designed keypoints
    assert ("det_10g.onnx", _sha(path)) in metric.backend().weights
    assert metric.fingerprint()["detector"] == "scrfd"
    assert ctx.extras["landmarks:scrfd"].stats.not_found == set()


def test_classic_retinaface_layout_is_refused(weights_dir):
    """A RetinaFace export in the original mxnet layout (per stride: class-probability,
    box-delta and landmark maps, NCHW) is not what insightface's class decodes (it fails
    deep in numpy, or worse): the harness says so when it loads the file."""
    from faceeval.faces.landmarks import CropLandmarks

    nodes = []
    outs = []
    for s in (32, 16, 8):
        for kind, c in (("cls_prob_reshape", 4), ("bbox_pred", 8), ("landmark_pred", 20)):
            n = f"face_rpn_{kind}_stride{s}"
            nodes += [helper.make_node("AveragePool", ["data"], [f"{n}_p"], kernel_shape=[s, s], strides=[s, s]),
                      helper.make_node("ReduceMean", [f"{n}_p"], [f"{n}_m"], axes=[1], keepdims=1),
                      helper.make_node("Mul", [f"{n}_m", "zero"], [f"{n}_z"]),
                      helper.make_node("Concat", [f"{n}_z"] * c, [n], axis=1)]
            outs.append(helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, c, "h", "w"]))
    graph = helper.make_graph(nodes, "retinaface_mxnet_like",
                              [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, "?", "?"])], outs,
                              [numpy_helper.from_array(np.zeros((), np.float32), "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(weights_dir / "retinaface_r50_v1.onnx"))
    with pytest.raises(HarnessError, match="not insightface's SCRFD layout"):
        CropLandmarks(detector="retinaface")._faces(np.zeros((256, 256, 3), np.uint8))


@pytest.mark.parametrize("name", ["pose", "expression"])
def test_landmark_metrics_record_the_detector_file_and_key_their_cache_by_it(weights_dir, face256, name):
    """Pose and expression on SCRFD landmarks: the backend record names the detector file,
    and a different detector file is a different feature namespace (no stale features)."""
    from faceeval.api import EvalBatch, FacePair
    from faceeval.images import pixel_sha256
    from harness.registry import METRICS
    from metrics_helpers import fake_context

    path = scrfd_graph(weights_dir / "det_10g.onnx", [FACE])
    metric = METRICS.create(name, device="cpu", detector="scrfd")
    ctx = fake_context([FacePair("p0", "a.png", "a.png", "A", "A")], {"a.png": face256})
    metric.prepare(ctx)
    sha = pixel_sha256(face256)
    batch = EvalBatch(["p0"], face256[None], face256[None], face256[None], [sha], [sha], [sha])
    values = metric.update(batch, ctx)
    assert values[metric.keys[0].key][0] == pytest.approx(0.0, abs=1e-6)  # swap == target
    assert ("det_10g.onnx", _sha(path)) in metric.backend().weights
    spaces = {ns for (ns,) in ctx.feature_cache._db.execute("SELECT DISTINCT ns FROM features")}
    assert any(ns.startswith("landmarks68:scrfd") for ns in spaces)

    # another detector file (a second face makes the graph differ): new namespaces, nothing reused
    scrfd_graph(weights_dir / "det_10g.onnx", [FACE, SMALL])
    metric2 = METRICS.create(name, device="cpu", detector="scrfd")
    ctx2 = fake_context([FacePair("p0", "a.png", "a.png", "A", "A")], {"a.png": face256}, folder=ctx.pairset.root)
    metric2.prepare(ctx2)
    metric2.update(batch, ctx2)
    spaces2 = {ns for (ns,) in ctx.feature_cache._db.execute("SELECT DISTINCT ns FROM features")}
    assert len(spaces2) == 2 * len(spaces)
