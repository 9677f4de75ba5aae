"""Templates and paste-back: five points land on the template; a crop that comes back
unchanged pastes back to the original image within interpolation error."""

from __future__ import annotations

import numpy as np
import pytest

from faceeval.faces.align import five_points
from faceeval.faces.detect import DlibDetector
from faceeval.faces.paste import FeatherConfig, box_mask, paste_back
from faceeval.faces.templates import WARP_TEMPLATES, crop_landmarks, similarity_matrix, warp_to_template
from faceeval.images import load_rgb
from protocols.demo import DEMO_DIR


def test_similarity_recovers_a_known_transform():
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 100, (5, 2))
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -4.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = src @ rot.T + shift
    m = similarity_matrix(src, dst)
    np.testing.assert_allclose(m[:, :2], rot, atol=1e-9)
    np.testing.assert_allclose(m[:, 2], shift, atol=1e-9)


def test_box_mask_shape():
    m = box_mask(128)
    assert m.shape == (128, 128) and m.dtype == np.float32
    assert m[64, 64] == pytest.approx(1.0, abs=1e-3) and m[0].max() == 0.0 and m[:, -1].max() == 0.0
    with pytest.raises(ValueError):
        box_mask(16, FeatherConfig(margin=0.2, blur=0.2))


@pytest.fixture(scope="module")
def faces():
    det = DlibDetector()
    out = []
    for name in ("tom_hanks.png", "astronaut.png", "faceapi_sample1_0.png"):
        img = load_rgb(DEMO_DIR / name)
        out.append((img, five_points(crop_landmarks(img, det))))
    return out


# Tolerances of the identity round trip (warp with bilinear, warp back with bilinear), in
# uint8 levels over the whole 256 px harness crop. Measured: mean 0.29-0.93 (max 1.13 at
# 128 px), 99th percentile 4-8 (11 at 128 px). A 128 px crop of a 256 px face
# downsamples, so its bound is looser.
TOL = {128: (1.5, 14.0), 256: (1.0, 9.0)}


@pytest.mark.parametrize("template,size", [("arcface_128", 128), ("arcface_112_v1", 256), ("ffhq_512", 256),
                                           ("mtcnn_512", 256), ("arcface_128", 256), ("arcface_112_v2", 112)])
def test_identity_swap_round_trip(faces, template, size):
    mean_tol, p99_tol = TOL.get(size, TOL[128])
    for img, p5 in faces:
        crop, m = warp_to_template(img, p5, template, size)
        # five points land near the template (a similarity cannot fit every face exactly)
        pts = p5 @ m[:, :2].T + m[:, 2]
        assert np.abs(pts - WARP_TEMPLATES[template] * size).mean() < 0.04 * size
        out = paste_back(img, crop, m)  # the synthetic swapper returned its target
        d = np.abs(out.astype(np.float64) - img)
        assert d.mean() < mean_tol and np.percentile(d, 99) < p99_tol, (template, size, d.mean())
        # outside the pasted region the image is untouched, bit for bit
        far = np.ones(img.shape[:2], bool)
        far[64:192, 64:192] = False
        covered = paste_back(np.zeros_like(img), np.full_like(crop, 255), m) > 0
        untouched = far & ~covered.any(-1)
        assert untouched.any() and np.array_equal(out[untouched], img[untouched])


def test_paste_float_and_custom_mask(faces):
    img, p5 = faces[0]
    crop, m = warp_to_template(img, p5, "arcface_128", 128)
    zero_mask = np.zeros((128, 128), np.float32)
    out = paste_back(img.astype(np.float32) / 255, np.ones_like(crop, np.float32), m, mask=zero_mask)
    np.testing.assert_allclose(out, img.astype(np.float32) / 255, atol=1e-6)  # mask 0: nothing pasted
