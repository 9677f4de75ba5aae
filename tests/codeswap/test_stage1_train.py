"""Stage-1 training on CPU: data folders, a short training that learns, exact resume, the CLI
with MLflow, and two gloo processes under torchrun."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from codeswap.checkpoints import load_stage1, plain
from codeswap.config import FAST, TINY, LossConfig, TrainConfig
from codeswap.data import FaceFolder, ResumableSampler, list_images
from codeswap.perceptual import PerceptualLoss
from codeswap.train.dist import DistInfo
from codeswap.train.stage1 import Stage1Trainer
from codeswap.vqgan import VQAutoencoder
from faceeval.errors import HarnessError
from helpers import HANG_GUARD_S, REPO, harness_cli

DEMO = REPO / "protocols" / "demo_faces"
ONE_PROC = DistInfo(0, 1, 0, torch.device("cpu"))
# oneDNN threads spin on a shared 2-core machine: one thread is several times faster
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
#: only against a hung subprocess, never a speed limit: a busy machine may take many minutes


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    """Eight demo faces in a nested folder (FFHQ-like), plus a hidden file that must be ignored."""
    root = tmp_path_factory.mktemp("faces")
    for i, p in enumerate(sorted(DEMO.glob("*.png"))[:8]):
        sub = root / f"{i // 4:05d}"
        sub.mkdir(exist_ok=True)
        shutil.copy(p, sub / p.name)
    (root / ".cache").mkdir()
    (root / ".cache" / "x.png").write_bytes(b"ignored")
    return root


def _cfg(faces: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data=str(faces), out=str(out), batch_size=4, max_steps=12, lr=1e-3, num_workers=0,
                cache_images=True, log_every=2, image_every=1000, ckpt_every=1000, mlflow=False,
                progress=False, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def _rows(out: Path, prefix: str = "train/") -> dict[int, dict[str, float]]:
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: {k: v for k, v in r.items() if k.startswith(prefix)} for r in rows
            if any(k.startswith(prefix) for k in r)}


def test_folders_listing_and_errors(faces, tmp_path):
    files = list_images(faces)
    assert len(files) == 8 and all(".cache" not in str(f) for f in files)
    ds = FaceFolder(files, 32)
    x = ds[(0, 1)]
    assert x.shape == (3, 32, 32) and -1 <= x.min() and x.max() <= 1
    with pytest.raises(HarnessError, match="no images"):
        list_images(tmp_path)
    with pytest.raises(HarnessError, match="not found"):
        list_images(tmp_path / "missing")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(HarnessError, match="broken.png"):
        FaceFolder(list_images(tmp_path), 32).load(0)


def test_sampler_shards_and_resumes():
    s0, s1 = (ResumableSampler(10, 2, seed=3, rank=0, world_size=2),
              ResumableSampler(10, 2, seed=3, rank=1, world_size=2))
    a, b = [i for i, _ in s0], [i for i, _ in s1]
    assert len(a) == len(b) == 4 and not set(a) & set(b)  # 10 cut to 2 ranks x 2 batches x 2
    full = list(s0)
    s0.set_position(0, 1)
    assert list(s0) == full[2:]
    s0.set_position(1, 0)
    assert [i for i, _ in s0] != a  # a new epoch is a new permutation


def test_short_training_lowers_reconstruction_l1(faces, tmp_path):
    torch.manual_seed(0)
    loss_cfg = LossConfig(perceptual_net="none", perceptual_weight=0.0, disc_start=10_000)
    trainer = Stage1Trainer(_cfg(faces, tmp_path, max_steps=60, log_every=20, image_every=60), TINY, loss_cfg,
                            dist_info=ONE_PROC)
    trainer.run()
    val = _rows(tmp_path, "val/")
    before, after = val[0]["val/rec_l1"], val[60]["val/rec_l1"]
    # measured on CPU: 0.576 -> 0.321 (x1.8), PSNR 9.6 -> 14.2 dB; the bounds leave room for
    # other BLAS builds
    assert after < before / 1.5, (before, after)
    assert val[60]["val/psnr"] > val[0]["val/psnr"] + 3.0
    assert (tmp_path / "images" / "recon_00000060.png").is_file()


def _full_run_config(faces: Path, out: Path, **kw) -> tuple[TrainConfig, LossConfig]:
    # everything on: perceptual net (official layout, random weights), GAN from step 4,
    # EMA, dead-code restarts every 3 steps
    cfg = _cfg(faces, out, ema_decay=0.9, restart_dead_every=3, **kw)
    return cfg, LossConfig(perceptual_net="mobilenet_v2", disc_start=4)


def _perceptual() -> PerceptualLoss:
    import torchvision

    torch.manual_seed(123)
    return PerceptualLoss("mobilenet_v2", torchvision.models.mobilenet_v2().state_dict())


def test_stop_and_resume_matches_an_uninterrupted_run(faces, tmp_path):
    tiny = replace(TINY, resolution=32)
    perc = _perceptual()
    cfg, loss_cfg = _full_run_config(faces, tmp_path / "straight", ckpt_every=6)
    straight = Stage1Trainer(cfg, tiny, loss_cfg, dist_info=ONE_PROC, perceptual=perc)
    straight.run()

    cfg, loss_cfg = _full_run_config(faces, tmp_path / "split", ckpt_every=6, max_steps=6)
    Stage1Trainer(cfg, tiny, loss_cfg, dist_info=ONE_PROC, perceptual=perc).run()
    with pytest.raises(HarnessError, match="--resume"):  # never overwrite a run by accident
        Stage1Trainer(cfg, tiny, loss_cfg, dist_info=ONE_PROC, perceptual=perc).run()
    torch.manual_seed(999)  # a fresh process would start from other RNG states: resume must restore them
    resumed = Stage1Trainer(replace(cfg, max_steps=12), tiny, loss_cfg, dist_info=ONE_PROC, perceptual=perc)
    resumed.run(resume=True)

    a, b = _rows(tmp_path / "straight"), _rows(tmp_path / "split")
    assert sorted(a) == sorted(b) == [2, 4, 6, 8, 10, 12]
    assert "train/d_loss" in a[12] and "codebook/restarted" not in a[2]
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=1e-6, abs=1e-7), step
    for name, m in straight.trained_modules().items():
        other = resumed.trained_modules()[name].state_dict()
        for k, v in m.state_dict().items():
            torch.testing.assert_close(v, other[k], rtol=1e-6, atol=1e-7, msg=f"{name}.{k}")


# fields AutoencoderConfig gained when `paper` became the paper's VQGAN structure: a config
# stored before that lacks them
NEW_KEYS = ("attn_every_block", "asymmetric_downsample")


def _as_stored_before(cfg) -> dict:
    return {k: v for k, v in plain(cfg).items() if k not in NEW_KEYS}


def test_an_old_paper_checkpoint_loads_as_fast_with_a_note(tmp_path, caplog):
    """A stage-1 file written when the narrow schedule was called `paper` rebuilds the same
    network and says, in one line, that it is now `fast`; a `fast` file written today does
    not repeat the note."""
    torch.manual_seed(7)
    old_cfg = replace(FAST, resolution=32)
    model = VQAutoencoder(old_cfg).eval()
    path = tmp_path / "old.pt"
    torch.save({"stage": "stage1", "model": model.state_dict(), "ema": None,
                "model_config": _as_stored_before(old_cfg)}, path)
    with caplog.at_level("WARNING", logger="codeswap.checkpoints"):
        loaded, _ = load_stage1(path)
    notes = [r.getMessage() for r in caplog.records]
    assert len(notes) == 1 and "now called `fast`" in notes[0] and "\n" not in notes[0]
    assert loaded.cfg == old_cfg
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[0], model(x)[0])

    caplog.clear()
    torch.save({"stage": "stage1", "model": model.state_dict(), "ema": None, "model_config": plain(old_cfg)},
               path)
    with caplog.at_level("WARNING", logger="codeswap.checkpoints"):
        load_stage1(path)
    assert not caplog.records


def test_resume_reads_configs_stored_before_the_new_fields(faces, tmp_path, caplog):
    loss_cfg = LossConfig(perceptual_net="none", perceptual_weight=0.0, disc_start=10_000)
    cfg = _cfg(faces, tmp_path, max_steps=2)
    Stage1Trainer(cfg, TINY, loss_cfg, dist_info=ONE_PROC).run()
    ckpt = tmp_path / "checkpoints" / "last.pt"
    state = torch.load(ckpt, weights_only=True)
    state["model_config"] = _as_stored_before(TINY)  # as written before the fields existed
    torch.save(state, ckpt)
    resumed = Stage1Trainer(replace(cfg, max_steps=4), TINY, loss_cfg, dist_info=ONE_PROC)
    resumed.run(resume=True)
    assert resumed.step == 4 and not caplog.records

    state["model_config"] = _as_stored_before(replace(FAST, resolution=64))  # an old `paper` run
    torch.save(state, ckpt)
    with pytest.raises(HarnessError, match="now called `fast`: resume with --config fast"):
        Stage1Trainer(replace(cfg, max_steps=6), TINY, loss_cfg, dist_info=ONE_PROC).run(resume=True)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return harness_cli("train", "stage1", *args, env=ENV, cwd=REPO)


def test_cli_trains_resumes_and_logs_to_mlflow(faces, tmp_path):
    out = tmp_path / "run"
    common = ["--data", str(faces), "--out", str(out), "--config", "tiny", "--resolution", "32",
              "--batch-size", "4", "--perceptual", "none", "--log-every", "2", "--image-every", "4",
              "--ckpt-every", "2", "--num-workers", "0", "--device", "cpu", "--disc-start", "2"]
    r = _cli(*common, "--max-steps", "4")
    assert r.returncode == 0, r.stderr
    assert "stage1: step 4" in r.stdout and (out / "checkpoints" / "last.pt").is_file()
    r = _cli(*common, "--max-steps", "6", "--resume")
    assert r.returncode == 0, r.stderr
    assert "stage1: step 6" in r.stdout

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["codeswap-harness"], output_format="list")
    assert len(runs) == 1  # the resumed run continues the same MLflow run
    run = runs[0]
    assert run.data.params["perceptual_net"] == "none" and run.data.params["stage"] == "stage1"
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "train/rec_l1")
    assert [m.step for m in history] == [2, 4, 6]
    assert ({"codebook/dead_codes", "train/lr_g", "perf/images_per_s", "val/psnr", "train/d_loss"}
            <= set(run.data.metrics))
    arts = [a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "reconstructions")]
    assert any(p.endswith("recon_00000004.png") for p in arts)

    bad = _cli("--data", str(tmp_path / "nothing"), "--out", str(out), "--config", "tiny")
    assert bad.returncode == 1 and bad.stderr.strip().startswith("error: training data folder not found")


def test_two_gloo_processes_under_torchrun_agree(faces, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "harness.cli", "train", "stage1", "--data", str(faces), "--out", str(out), "--config", "tiny",
           "--resolution", "32", "--batch-size", "2", "--max-steps", "6", "--perceptual", "none",
           "--disc-start", "2", "--restart-dead-every", "3", "--ema-decay", "0.9", "--log-every", "2",
           "--ckpt-every", "3", "--num-workers", "0", "--device", "cpu", "--no-mlflow"]
    r = subprocess.run(cmd, env=ENV, cwd=REPO, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = json.loads((out / "ranks.json").read_text())
    assert ranks["world_size"] == 2 and ranks["step"] == 6
    assert ranks["sha256"][0] == ranks["sha256"][1] and set(ranks["sha256"][0]) == {"model", "disc", "ema"}
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2 and state["step"] == 6
    assert "train/d_loss" in _rows(out)[6]
