"""`harness train`'s options come from the config dataclasses: the same option names and
defaults as the hand-written commands had, and the configs the trainers receive."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import typer.main
from typer.testing import CliRunner

from codeswap.config import STAGE_TRAIN, MaskTrainConfig, SwapLossWeights, SwapTrainConfig, TrainConfig
from faceeval.errors import HarnessError
from harness.cli import app

# The options of each command and their defaults, as harness/cli.py declared them by hand
# before they were generated (a required option: ...). A default changes here deliberately.
LOOP = {"--batch-size": 16, "--lr": 1e-4, "--precision": "auto", "--num-workers": 4, "--cache-images": False,
        "--log-every": 50, "--image-every": 1000, "--seed": 0, "--device": "auto", "--resume": False,
        "--mlflow": True, "--tracking-uri": None, "--progress": True, "--data": ...}
NETS = {"--identity-net": "facenet", "--expression-net": "none", "--expression-checkpoint": None,
        "--perceptual": "vgg16", "--w-id": 1.5, "--w-per": 2e-3, "--w-exp": 0.5, "--w-cycle": 1.0,
        "--w-teacher": 0.0}  # issue 17
BEFORE = {
    "stage1": {**LOOP, "--out": Path("runs/stage1"), "--config": "paper", "--resolution": None,
               "--max-steps": 1_000_000, "--disc-start": 30_000, "--disc-weight": 0.8, "--perceptual": "vgg16",
               "--perceptual-weight": 1.0, "--ema-decay": 0.0, "--compile": False, "--channels-last": True,
               "--checkpoint-levels": 0, "--holdout": 0, "--ckpt-every": 5000, "--keep-every": 0,
               "--restart-dead-every": 0, "--fused-adam": True, "--fused-attention": True},  # issue 18
    "stage2": {**LOOP, **NETS, "--out": Path("runs/stage2"), "--stage1": ..., "--init": None, "--variant": "full",
               "--layers": 6, "--heads": 8, "--selector-hidden": 1024, "--same-rate": 0.2, "--max-steps": 600_000,
               "--ema-decay": 0.0, "--compile": False, "--holdout": 8, "--ckpt-every": 5000,
               # added with the stage-2 recipe study (issue 17)
               "--position": "relative", "--pos-std": 0.02, "--mask-level": None, "--identity-augment": 0.0,
               # issue 27's study: the teacher's warm-up, answers given per pair, no mirroring
               "--teacher-decay-steps": 0, "--teacher-answers": None, "--hflip": True},
    "stage3": {**LOOP, **NETS, "--out": Path("runs/stage3"), "--stage2": ..., "--supervised-steps": 5000,
               "--mask-source": "landmarks", "--max-steps": 10_000, "--holdout": 8, "--ckpt-every": 2000},
}


@pytest.mark.parametrize("stage", ["stage1", "stage2", "stage3"])
def test_each_train_command_keeps_its_option_names_and_defaults(stage):
    cmd = typer.main.get_command(app).commands["train"].commands[stage]
    got = {p.opts[0]: (... if p.required else p.default) for p in cmd.params}
    assert got == BEFORE[stage]


class Recorder:
    """Stands in for a stage trainer: keeps the configs the command built."""

    made: list[tuple] = []

    def __init__(self, *configs) -> None:
        Recorder.made.append(configs)
        self.cfg = configs[0]
        self.stage, self.step, self.ckpt_dir = "stageN", 0, Path("ckpt")
        self.dist = SimpleNamespace(is_main=True)

    def run(self, resume: bool = False) -> dict[str, float]:
        return {}


@pytest.fixture
def record(monkeypatch):
    import codeswap.train.stage1
    import codeswap.train.stage2
    import codeswap.train.stage3

    for module, name in ((codeswap.train.stage1, "Stage1Trainer"), (codeswap.train.stage2, "Stage2Trainer"),
                         (codeswap.train.stage3, "Stage3Trainer")):
        monkeypatch.setattr(module, name, Recorder)
    Recorder.made = []
    return Recorder.made


def _invoke(*args: str):
    return CliRunner().invoke(app, ["train", *args, "--no-mlflow"])


def test_stage2_defaults_reach_the_trainer_as_the_dataclasses_declare_them(record):
    assert _invoke("stage2", "--data", "faces/", "--stage1", "s1.pt").exit_code == 0
    [(train, swap)] = record
    assert train == replace(STAGE_TRAIN["stage2"], data="faces", mlflow=False, progress=False)
    assert (train.holdout, train.max_steps, train.out) == (8, 600_000, "runs/stage2")
    assert swap == SwapTrainConfig(stage1="s1.pt") and swap.perceptual_net == "vgg16"


def test_given_values_land_in_their_fields(record):
    result = _invoke("stage3", "--data", "d", "--stage2", "s2.pt", "--w-id", "0.25", "--perceptual", "none",
                     "--expression-net", "deep3d", "--expression-checkpoint", "e.pth", "--supervised-steps", "7",
                     "--holdout", "3", "-o", "out3")
    assert result.exit_code == 0, result.output
    [(train, swap, mask)] = record
    assert (train.holdout, train.out, train.ckpt_every) == (3, "out3", 2000)
    assert swap.stage1 == "s2.pt" and swap.weights == SwapLossWeights(identity=0.25)
    assert (swap.perceptual_net, swap.expression_net, swap.expression_checkpoint) == ("none", "deep3d", "e.pth")
    assert mask == MaskTrainConfig(supervised_steps=7)


def test_stage2_study_options_land_in_their_fields(record):
    result = _invoke("stage2", "--data", "d", "--stage1", "s1.pt", "--w-teacher", "1", "--teacher-decay-steps", "100",
                     "--teacher-answers", "answers.pt", "--no-hflip")
    assert result.exit_code == 0, result.output
    [(train, swap)] = record
    assert train.hflip is False and swap.weights.teacher == 1.0
    assert (swap.teacher_decay_steps, swap.teacher_answers) == (100, "answers.pt")


def test_stage1_builds_the_named_model_with_its_settings(record):
    assert _invoke("stage1", "--data", "d", "--config", "tiny", "--checkpoint-levels", "2",
                   "--perceptual", "mobilenet_v2").exit_code == 0
    [(train, model, loss)] = record
    assert train == replace(TrainConfig(), data="d", mlflow=False, progress=False)
    assert model.resolution == 64 and model.checkpoint_levels == 2 and loss.perceptual_net == "mobilenet_v2"


@pytest.mark.parametrize("args, message", [
    (("stage2", "--data", "d", "--stage1", "s", "--precision", "fp64"),
     "unknown --precision 'fp64'; choose auto, bf16, fp16 or fp32"),
    (("stage1", "--data", "d", "--perceptual", "vgg19"),
     "unknown --perceptual 'vgg19'; choose vgg16, mobilenet_v2 or none"),
    (("stage2", "--data", "d", "--stage1", "s", "--same-rate", "2"), "same_rate must be in [0, 1], got 2.0"),
    (("stage3", "--data", "d", "--stage2", "s", "--mask-source", "segformer"), "mask source 'segformer'"),
])
def test_bad_values_are_one_line_errors_before_any_training(record, args, message):
    result = _invoke(*args)
    assert isinstance(result.exception, HarnessError) and message in str(result.exception)
    assert record == []


def test_only_declared_settings_can_become_options():
    from codeswap.cli import Offer, with_settings

    with pytest.raises(TypeError, match="TrainConfig.betas"):
        with_settings(train=Offer(TrainConfig(), ("betas",)))(lambda train: None)
