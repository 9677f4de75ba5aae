"""What a person sees: the end-of-run table, the "method k of N" lines, and the training
progress (a bar on a terminal, plain lines in a log)."""

from __future__ import annotations

import io
import re
from pathlib import Path

from typer.testing import CliRunner

from codeswap.train.progress import StepProgress
from faceeval.summaries import RunSummary
from harness.console import main_keys, print_summary
from harness.results import Results


def _entry(value, lo, hi, label, unit="%", scale=100.0, up=True):
    return {"value": value, "ci_low": lo, "ci_high": hi, "label": label, "unit": unit, "scale": scale,
            "higher_is_better": up, "n": 28}


def _results(tmp_path: Path) -> Results:
    metrics = {
        "src": {"id_retrieval_top1_dlib": _entry(0.9, 0.8, 1.0, "ID retrieval top-1 [dlib]"),
                "id_retrieval_top5_dlib": _entry(1.0, 1.0, 1.0, "ID retrieval top-5 [dlib]"),
                "pose_error_pnp": _entry(1.25, 1.0, 1.5, "Pose error [PnP]", "deg", 1.0, False),
                "fid_facenet": {**_entry(12.345, None, None, "FID [FaceNet features]", "", 1.0, False), "n": 28}},
        "tgt": {"id_retrieval_top1_dlib": _entry(0.0, 0.0, 0.0, "ID retrieval top-1 [dlib]"),
                "id_retrieval_top5_dlib": _entry(0.15, 0.1, 0.2, "ID retrieval top-5 [dlib]"),
                "pose_error_pnp": _entry(float("nan"), float("nan"), float("nan"),
                                         "Pose error [PnP]", "deg", 1.0, False)},
    }
    res = Results("demo", "ab" * 32, tmp_path, path=tmp_path / "results" / "demo-x.json")
    res.runs = [RunSummary.from_dict({"method": m, "protocol": "demo", "metrics": e, "finished": "",
                                      "run_dir": str(tmp_path / "runs" / m)}) for m, e in metrics.items()]
    return res


def test_table_has_a_row_per_method_and_main_metrics_with_cis(tmp_path):
    res = _results(tmp_path)
    assert main_keys(res.runs) == ["id_retrieval_top1_dlib", "pose_error_pnp", "fid_facenet"]
    buf = io.StringIO()
    print_summary(res, file=buf, width=200)
    text = buf.getvalue()
    assert "ID retrieval top-1 [dlib] ↑ (%)" in text and "Pose error [PnP] ↓ (deg)" in text
    assert "top-5" not in text  # secondary: in results.json and the report only
    src = next(ln for ln in text.splitlines() if ln.strip("│ ").startswith("src "))
    assert re.search(r"90\.0 ± 10\.0 .*1\.250 ± 0\.250 .*12\.35", src), src  # FID: no CI
    tgt = next(ln for ln in text.splitlines() if ln.strip("│ ").startswith("tgt "))
    assert "0.0 ± 0.0" in tgt and tgt.count("–") == 2, tgt  # NaN pose, no FID row entry
    lines = text.splitlines()
    assert f"run:    {tmp_path / 'runs' / 'src'}" in lines
    assert lines[-1].startswith(f"results: {tmp_path / 'results' / 'demo-x.json'}")
    assert not any(ln.startswith(("report:", "mlflow:")) for ln in lines)  # neither was made


def test_cli_run_prints_k_of_n_then_the_table(tmp_path):
    from harness.cli import app

    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["run", "-p", "demo", "-m", "source", "-m", "target", "--metric", "identity",
                                   "--num-pairs", "6", "--out", str(out), "--device", "cpu", "--no-mlflow",
                                   "--no-report"])
    assert res.exit_code == 0, res.output
    err = res.stderr.splitlines()
    assert err.index("method 1 of 2: source") < err.index("method 2 of 2: target")
    table = res.stdout
    assert "demo: 2 methods, 95 % CI shown as ±" in table and "ID retrieval top-1 [dlib] ↑ (%)" in table
    rows = {ln.strip("│ ").split()[0]: ln for ln in table.splitlines()
            if ln.strip("│ ").startswith(("source ", "target "))}
    assert "100.0 ± 0.0" in rows["source"] and "0.0 ± 0.0" in rows["target"]
    assert table.splitlines()[-1].startswith(f"results: {out.resolve() / 'results'}")


def test_plain_progress_lines_off_a_terminal():
    buf = io.StringIO()  # not a terminal
    p = StepProgress("stage2", total=4, enabled=True, bar=True, stream=buf, every_s=0)
    for _ in range(3):
        p.update(1)
    p.set_postfix(loss="0.5000")
    p.update(1)
    p.close()
    lines = buf.getvalue().splitlines()
    assert [ln.split(",")[0] for ln in lines] == [f"stage2: step {i}/4 ({25 * i}%)" for i in (1, 2, 3, 4, 4)]
    assert "eta" in lines[0] and lines[-2].endswith("loss 0.5000") and "\r" not in buf.getvalue()


def test_plain_lines_wait_for_their_interval_and_other_ranks_stay_quiet():
    buf = io.StringIO()
    p = StepProgress("stage1", total=100, stream=buf, every_s=3600)
    for _ in range(50):
        p.update(1)
    assert buf.getvalue() == ""  # nothing before the interval ...
    p.close()
    assert buf.getvalue().startswith("stage1: step 50/100 (50%)") and buf.getvalue().rstrip().endswith("(stopped)")
    quiet = io.StringIO()
    q = StepProgress("stage1", total=5, enabled=False, stream=quiet, every_s=0)
    q.update(5)
    q.close()
    assert quiet.getvalue() == ""


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_on_a_terminal_and_none_when_turned_off():
    term = _Terminal()
    p = StepProgress("stage3", total=4, stream=term, every_s=0)
    p.update(4)
    p.close()
    assert "stage3" in term.getvalue() and "4/4" in term.getvalue() and "\r" in term.getvalue()
    off = _Terminal()
    q = StepProgress("stage3", total=4, bar=False, stream=off, every_s=0)
    q.update(4)
    q.close()
    assert off.getvalue() == ""


def test_a_training_stage_reports_progress_in_a_log(tmp_path, capsys, monkeypatch):
    import torch

    from codeswap.config import TINY, LossConfig, TrainConfig
    from codeswap.train import progress
    from codeswap.train.dist import DistInfo
    from codeswap.train.stage1 import Stage1Trainer

    monkeypatch.setattr(progress, "PLAIN_EVERY_S", 0.0)
    faces = sorted((Path(__file__).resolve().parents[2] / "protocols" / "demo_faces").glob("*.png"))[:4]
    data = tmp_path / "faces"
    data.mkdir()
    for f in faces:
        (data / f.name).write_bytes(f.read_bytes())
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "s1"), batch_size=2, max_steps=3, num_workers=0,
                      log_every=1, image_every=1000, ckpt_every=1000, mlflow=False, progress=True, device="cpu")
    Stage1Trainer(cfg, TINY, LossConfig(perceptual_net="none", disc_start=10**9),
                  dist_info=DistInfo(0, 1, 0, torch.device("cpu"))).run()
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("stage1: step")]
    assert [ln.split(",")[0] for ln in err] == ["stage1: step 1/3 (33%)", "stage1: step 2/3 (67%)",
                                                "stage1: step 3/3 (100%)", "stage1: step 3/3 (100%)"]
    assert "loss " in err[-1]
