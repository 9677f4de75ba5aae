"""Regional swap and region attention (paper Figures 8 and 9): regions from landmarks on the
latent grid, the study on a tiny model, and photo -> crop + landmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from codeswap.config import TINY
from codeswap.model import CodeSwap, CodeSwapConfig
from codeswap.regions import REGION_POINTS, crop_with_landmarks, region_cells, region_study
from faceeval.errors import HarnessError
from faceeval.images import load_rgb

DEMO = Path(__file__).resolve().parents[2] / "protocols" / "demo_faces"


def _landmarks_at(points: dict[tuple[int, ...], tuple[float, float, float, float]]) -> np.ndarray:
    """(68, 2) landmarks: each index group spread over the given (x0, y0, x1, y1) box."""
    lm = np.full((68, 2), 1.0)
    for idx, (x0, y0, x1, y1) in points.items():
        t = np.linspace(0, 1, len(idx))
        lm[list(idx)] = np.stack([x0 + t * (x1 - x0), y0 + t * (y1 - y0)], 1)
    return lm


def test_region_cells_cover_exactly_the_padded_landmark_box():
    # 64 px image, 8x8 grid: 8 px cells; the eyes span x 20..44, y 24..28
    lm = _landmarks_at({REGION_POINTS["eyes"]: (20, 24, 44, 28)})
    cells = region_cells(lm, 64, 8, "eyes", margin=0.0)
    expected = np.zeros((8, 8), bool)
    expected[3, 2:6] = True  # rows y 24..32 -> 3; columns x 16..48 -> 2..5
    np.testing.assert_array_equal(cells, expected)
    # a margin of 25% of the 24 px side pads 6 px: x 14..50 -> columns 1..6, y 18..34 -> rows 2..4
    padded = region_cells(lm, 64, 8, "eyes", margin=0.25)
    assert padded[2:5, 1:7].all() and padded.sum() == 3 * 6
    # boxes past the border are clipped to the grid, never empty
    edge = region_cells(_landmarks_at({REGION_POINTS["mouth"]: (60, 60, 90, 90)}), 64, 8, "mouth", 0.0)
    assert edge[7, 7] and edge.sum() == 1
    with pytest.raises(HarnessError, match="unknown region 'ears'"):
        region_cells(lm, 64, 8, "ears")


def test_region_study_on_a_tiny_model():
    torch.manual_seed(0)
    model = CodeSwap(CodeSwapConfig.for_autoencoder(TINY, layers=2, heads=4, selector_hidden=64)).eval()
    rng = np.random.default_rng(0)
    src = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
    tgt = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
    lm = _landmarks_at({REGION_POINTS["eyes"]: (30, 50, 98, 58), REGION_POINTS["nose"]: (60, 55, 68, 80),
                        REGION_POINTS["mouth"]: (44, 88, 84, 100)})
    study = region_study(model, src, tgt, lm)
    side = TINY.latent_size
    assert list(study.regions) == ["eyes", "mouth", "nose"]
    for name, cells in study.regions.items():
        # landmarks were given at 128 px: the study maps them to the model's 64 px
        np.testing.assert_array_equal(cells, region_cells(lm * 0.5, 64, side, name))
        att = study.attention[name]
        assert att.shape == (2, side, side) and att.min() >= 0
        assert att.sum() == pytest.approx(1.0, abs=1e-5)
        assert study.swaps[name].shape == (64, 64, 3) and study.swaps[name].dtype == np.uint8
    assert set(study.other_share()) == {"eyes", "mouth", "nose"}
    # "all" is the plain swap's decoder output; a region changes less of the image than all codes
    from faceeval.images import to_tensor

    a, b = (to_tensor(x[None], size=64) * 2 - 1 for x in (src, tgt))
    with torch.no_grad():
        raw = model(a, b).raw_ab
    expected = ((raw.clamp(-1, 1) + 1) * 127.5).round()[0].permute(1, 2, 0).numpy()
    assert np.abs(study.swaps["all"].astype(float) - expected).max() <= 1
    assert not np.array_equal(study.swaps["eyes"], study.swaps["all"])


def test_crop_with_landmarks_on_a_demo_face_and_a_photo_without_one():
    img = load_rgb(DEMO / "insightface_t1_0.png")
    crop, lm, found = crop_with_landmarks(img, 128, aligned=True)
    assert found and crop.shape == (128, 128, 3) and lm.shape == (68, 2)
    # an FFHQ-aligned face: eyes above the nose tip, above the mouth, all inside the crop
    eyes, nose, mouth = (lm[list(REGION_POINTS[r])][:, 1].mean() for r in ("eyes", "nose", "mouth"))
    assert 0.25 * 128 < eyes < nose < mouth < 0.9 * 128
    with pytest.raises(HarnessError, match="must be square"):
        crop_with_landmarks(img[:, :100], 128, aligned=True)
    with pytest.raises(HarnessError, match="no face found"):
        crop_with_landmarks(np.full((200, 200, 3), 127, np.uint8), 128, aligned=False)
