"""The benchmark scripts keep working (they are what a GPU session runs, with little time to
debug): the FLOP count they report matches the architecture's closed form, and the CPU-sized
recipe benchmark trains and judges (the speed scripts: test_benchmark_speed_scripts.py).
Nothing here times anything."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import HANG_GUARD_S, REPO

DEMO = REPO / "protocols" / "demo_faces"
sys.path.insert(0, str(REPO / "benchmarks"))


def _fusion_flops_closed_form(tokens: int, d: int, layers: int, ffn: int, hidden: int, codes: int) -> float:
    """Multiply-adds x 2 of the fusion forward for one pair (T = 2L tokens)."""
    per_layer = (2 * tokens * d * 3 * d  # qkv
                 + 2 * 2 * tokens * tokens * d  # Q K^T and attention x V, all heads together
                 + 2 * tokens * d * d  # output projection
                 + 2 * 2 * tokens * d * ffn * d)  # FFN, two linears
    selector = 2 * tokens * d * hidden + 2 * tokens * hidden * codes
    soft_quantization = 2 * tokens * codes * d  # softmax(P) Q
    return layers * per_layer + selector + soft_quantization


@pytest.mark.parametrize("config, d", [("paper", 512), ("fast", 256)])
def test_stage2_fusion_flops_match_the_closed_form(config, d):
    from stage2_speed import fusion_flops

    got = fusion_flops(config, 512, "full", layers=6, heads=8, hidden=1024)
    # at 512: 16x16 latent -> 2 x 256 tokens of d (the code dimension), 1,024 codes
    expected = _fusion_flops_closed_form(tokens=512, d=d, layers=6, ffn=4, hidden=1024, codes=1024)
    assert got["fusion_gflops_fwd_per_pair"] * 1e9 == pytest.approx(expected, rel=1e-3)
    # w/o C: no selector or quantization, a d x d linear instead
    wo_c = fusion_flops(config, 512, "wo_c", layers=6, heads=8, hidden=1024)["fusion_gflops_fwd_per_pair"] * 1e9
    head = _fusion_flops_closed_form(tokens=512, d=d, layers=0, ffn=4, hidden=1024, codes=1024)
    assert wo_c == pytest.approx(expected - head + 2 * 512 * d * d, rel=1e-3)


def test_short_training_runs_and_judges_training_and_held_out_pairs(tmp_path):
    """Smoke test of the recipe benchmark: a few steps of every stage, then the judge."""
    data = tmp_path / "faces"
    data.mkdir()
    for f in sorted(DEMO.glob("*.png"))[:8]:
        shutil.copy(f, data / f.name)
    out = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "benchmarks" / "codeswap_short_training.py"), "--data", str(data),
           "--out", str(out), "--holdout", "3", "--batch-size", "2", "--stage2-batch-size", "2",
           "--stage1-steps", "2", "--stage2-steps", "2",
           "--stage3-steps", "2", "--stage3-supervised", "1", "--layers", "1", "--heads", "2",
           "--selector-hidden", "32", "--channels", "16,16,32", "--norm-groups", "8", "--num-codes", "32",
           "--code-dim", "16", "--variants", "full,wo_m", "--identity-net", "none"]
    proc = subprocess.run([*cmd, "--readouts"], capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_faces"] == 5 and summary["heldout_faces"] == 3
    assert 0.0 <= summary["prior_train"]["dlib/top1"] <= 1.0 and summary["prior_train"]["psnr"] > 0
    for part, n_ids in (("full/train_pairs", 5), ("full/heldout_pairs", 3), ("wo_m/train_pairs", 5)):
        res = summary[part]
        assert res["pairs"] == n_ids * (n_ids - 1) and res["chance_top1"] == 1 / n_ids  # every ordered pair
        for backend in ("dlib", "facenet_trained_with"):
            assert 0.0 <= res[f"{backend}/top1"] <= 1.0 and 0.0 <= res[f"{backend}/nearest_is_target"] <= 1.0
            mean, lo, hi = res[f"{backend}/cos_to_source"]
            assert -1.0 <= lo <= mean <= hi <= 1.0
        assert res["pixel_change_when_source_changes"] >= 0.0
    readouts = summary["full/train_pairs_readouts"]  # the diagnosis: one retrieval per read-out
    assert sorted(readouts) == ["hard", "hull", "raw"] and "wo_m/train_pairs_readouts" not in summary
    assert all(0.0 <= r["dlib/top1"] <= 1.0 for r in readouts.values())
    # the target-to-source similarity does not depend on the model
    assert (summary["full/train_pairs"]["dlib/target_cos_to_source"]
            == summary["wo_m/train_pairs"]["dlib/target_cos_to_source"])
    assert (out / "grid_full_heldout.png").is_file()
    # finished stages are kept: a second run only judges, with the same figures
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert again.returncode == 0, again.stderr
    assert "training stage" not in again.stdout
    assert json.loads((out / "summary.json").read_text())["full/heldout_pairs"] == summary["full/heldout_pairs"]
    # the harness's demo-protocol judge (run by the script on the demo faces themselves)
    from codeswap_short_training import ATTRIBUTE_KEYS, judge_demo_protocol

    full = out / "stage3-full" / "checkpoints" / "last.pt"
    demo = judge_demo_protocol({"full": full}, out, "cpu")
    means, ratios = demo["means"], demo["attribute_error_x_classical"]
    assert sorted(means) == ["classical", "codeswap", "codeswap_wo_m", "source", "target"]
    assert means["target"]["pose_error_whenet"] == 0 and means["source"]["id_retrieval_top1_sface"] == 1
    assert {"id_retrieval_top1_dlib", "fid", *ATTRIBUTE_KEYS} <= set(means["classical"])  # stand-ins beside
    for method in ("codeswap", "codeswap_wo_m"):
        assert set(ratios[method]) == set(ATTRIBUTE_KEYS)
        for key in ATTRIBUTE_KEYS:
            assert ratios[method][key] == pytest.approx(means[method][key] / means["classical"][key], nan_ok=True)
    assert (Path(demo["report"]) / "table1.md").is_file()


def test_teacher_oracle_similarity_fit_recovers_a_known_transform():
    from codeswap_teacher_oracle import similarity_onto

    rng = np.random.default_rng(0)
    src = rng.uniform(20, 230, size=(68, 2))  # (68, 2) landmark-like points
    a = np.deg2rad(12.0)
    rot = 1.1 * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    dst = src @ rot.T + np.array([7.0, -4.0])
    assert np.abs(similarity_onto(src, dst) - dst).max() < 1e-3


def test_teacher_oracle_warp_puts_a_moved_face_back_on_the_target_geometry():
    """A source that is the target moved by (6, -4) px, warped onto the target's landmarks
    (shape 0), lands back on the target inside the face; kept in its own shape (shape 1, its
    landmarks similarity-aligned onto the target's) it lands there too; the unwarped paste does not."""
    import cv2
    from codeswap_teacher_oracle import hull_mask, warped_answer

    from faceeval.images import load_rgb
    from methods.classical import ClassicalSwap

    target = load_rgb(DEMO / "astronaut.png")  # (256, 256, 3)
    lm_t = ClassicalSwap().landmarks(target).astype(np.float64)  # (68, 2)
    shift = np.array([6.0, -4.0])
    source = cv2.warpAffine(target, np.float32([[1, 0, shift[0]], [0, 1, shift[1]]]), (256, 256),
                            borderMode=cv2.BORDER_REFLECT)
    inner = hull_mask(lm_t, 256, 1.0) > 0.99  # well inside the face

    def err(img):
        return np.abs(img.astype(np.float32) - target.astype(np.float32))[inner].mean()

    for shape in (0.0, 1.0):
        assert err(warped_answer(source, target, lm_t + shift, lm_t, shape, colour=False)) < 2.0
    assert err(source) > 4 * err(warped_answer(source, target, lm_t + shift, lm_t, 0.0, colour=False))
