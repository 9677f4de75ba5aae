"""CodeSwap end to end through the CLI: train stages 1, 2, 3 (tiny, CPU), then evaluate it
and its w/o M ablation as harness methods, with Table 3 in the report."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import harness_cli

DEMO = Path(__file__).resolve().parents[2] / "protocols" / "demo_faces"
COMMON = ["--data", str(DEMO), "--batch-size", "4", "--num-workers", "0", "--holdout", "4", "--cache-images",
          "--no-mlflow", "--device", "cpu", "--log-every", "1"]


def test_train_three_stages_then_run_codeswap_and_report_table3(tmp_path):
    harness_cli("train", "stage1", *COMMON, "--out", str(tmp_path / "s1"), "--config", "tiny", "--max-steps", "3",
                "--perceptual", "none", "--disc-start", "1000", check=True)
    s1 = tmp_path / "s1" / "checkpoints" / "last.pt"
    tiny = ["--layers", "1", "--heads", "2", "--selector-hidden", "32", "--identity-net", "none",
            "--perceptual", "none"]
    p2 = harness_cli("train", "stage2", *COMMON, "--out", str(tmp_path / "s2"), "--stage1", str(s1), *tiny,
                     "--max-steps", "2", check=True)
    assert "stage2: step 2" in p2.stdout
    s2 = tmp_path / "s2" / "checkpoints" / "last.pt"
    p3 = harness_cli("train", "stage3", *COMMON, "--out", str(tmp_path / "s3"), "--stage2", str(s2),
                     "--max-steps", "2", "--supervised-steps", "1", "--identity-net", "none", "--perceptual", "none",
                     check=True)
    assert "stage3: step 2" in p3.stdout
    s3 = tmp_path / "s3" / "checkpoints" / "last.pt"
    _figure_regions(s3, tmp_path / "fig")
    out = tmp_path / "out"
    harness_cli("run", "-p", "demo", "-m", "codeswap", "-m", "codeswap_wo_m", "-m", "target", "--out", str(out),
                "--no-mlflow", "--device", "cpu", "--method-option", f"codeswap.checkpoint={s3}",
                "--method-option", f"codeswap_wo_m.checkpoint={s3}", check=True)
    t3 = (out / "report" / "table3.md").read_text()
    assert "| Ours |" in t3 and "| w/o M |" in t3 and "Table 3: ablations of CodeSwap on demo" in t3
    t1 = (out / "report" / "table1.md").read_text()
    assert "| codeswap |" in t1


def _figure_regions(checkpoint: Path, out: Path) -> None:
    """Figures 8 and 9 from a trained checkpoint: PNG, per-region swaps, attention arrays, record."""
    import json

    import numpy as np

    p = harness_cli("figure", "regions", "--checkpoint", str(checkpoint),
                    "--source", str(DEMO / "insightface_t1_0.png"), "--target", str(DEMO / "insightface_t1_1.png"),
                    "--aligned", "--out", str(out), "--device", "cpu", check=True)
    assert "figure:" in p.stdout and "of their attention on the source" in p.stdout
    assert (out / "regions.png").stat().st_size > 10_000
    assert all((out / f"swap_{k}.png").is_file() for k in ("eyes", "mouth", "nose", "all"))
    arrays = np.load(out / "regions.npz")
    record = json.loads((out / "regions.json").read_text())
    for k in ("eyes", "mouth", "nose"):
        att = arrays[f"attention_{k}"]  # (2, m, n): over the source, over the target
        assert att.shape[0] == 2 and abs(att.sum() - 1) < 1e-4
        assert record["attention_share_on_source"][k] == pytest.approx(att[0].sum() / att.sum(), rel=1e-5)
        assert record["cells"][k] == int(arrays[f"cells_{k}"].sum()) > 0
    assert record["checkpoint_sha256"] and record["target_face_found"] is True
