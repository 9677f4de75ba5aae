"""Stages 1 -> 2 -> 3 on a few demo faces (tiny config, CPU), and checkpoints that load."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from codeswap.config import TINY, LossConfig, TrainConfig
from codeswap.swap_losses import SwapLossWeights
from codeswap.train.stage2 import Stage2Trainer, SwapTrainConfig, make_pairs

DEMO = Path(__file__).resolve().parents[2] / "protocols" / "demo_faces"


class MeanColourId(nn.Module):
    """A cheap differentiable stand-in for the identity network."""

    def forward(self, x):
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)  # (B, 6)


def _train_cfg(out: Path, steps: int, **kw) -> TrainConfig:
    base = dict(data=str(DEMO), out=str(out), batch_size=4, max_steps=steps, device="cpu", num_workers=0,
                holdout=4, cache_images=True, log_every=2, image_every=1000, ckpt_every=steps, mlflow=False,
                progress=False, seed=0)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def stage1_ckpt(tmp_path_factory) -> Path:
    from codeswap.train.stage1 import Stage1Trainer

    out = tmp_path_factory.mktemp("s1")
    trainer = Stage1Trainer(_train_cfg(out, 4), TINY, LossConfig(perceptual_net="none", disc_start=10_000))
    trainer.run()
    return out / "checkpoints" / "last.pt"


@pytest.fixture(scope="module")
def stage2_ckpt(stage1_ckpt, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("s2")
    Stage2Trainer(_train_cfg(out, 2), _swap_cfg(stage1_ckpt), nets={"identity": MeanColourId()}).run()
    return out / "checkpoints" / "last.pt"


def _swap_cfg(stage1: Path, variant="full") -> SwapTrainConfig:
    return SwapTrainConfig(stage1=str(stage1), variant=variant, layers=1, heads=2, selector_hidden=32,
                           identity_net="none", perceptual_net="none", same_rate=0.5)


def test_pairs_mix_same_and_different_images_reproducibly():
    x = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 3, 2, 2)
    a, b, same = make_pairs(x, 0.5, step=3, seed=0)
    a2, b2, same2 = make_pairs(x, 0.5, step=3, seed=0)
    assert torch.equal(b, b2) and torch.equal(same, same2)
    assert 0 < same.sum() < 8
    assert torch.equal(b[same], a[same])
    assert torch.equal(b[~same], torch.roll(x, 1, 0)[~same])


@pytest.mark.parametrize("variant", ["full", "wo_c", "wo_s", "wo_q1", "wo_q2", "wo_m"])
def test_each_variant_trains_a_few_steps_and_only_the_fusion_moves(stage1_ckpt, tmp_path, variant):
    trainer = Stage2Trainer(_train_cfg(tmp_path, 3), _swap_cfg(stage1_ckpt, variant),
                            nets={"identity": MeanColourId()}).setup()
    before_ae = {k: v.clone() for k, v in trainer.model.autoencoder.state_dict().items()}
    before_fusion = {k: v.clone() for k, v in trainer.model.fusion.state_dict().items()}
    last = trainer.run()
    assert torch.isfinite(torch.tensor(last["train/g_total"]))
    for k, v in trainer.model.autoencoder.state_dict().items():
        assert torch.equal(v, before_ae[k]), f"stage-1 weight {k} changed in stage 2"
    assert any(not torch.equal(v, before_fusion[k]) for k, v in trainer.model.fusion.state_dict().items())
    assert (tmp_path / "checkpoints" / "last.pt").is_file()


def test_stage3_trains_only_the_mask_and_the_result_loads(stage2_ckpt, tmp_path):
    from codeswap.checkpoints import load_codeswap
    from codeswap.train.stage3 import MaskTrainConfig, Stage3Trainer

    cfg3 = replace(_swap_cfg(stage2_ckpt), weights=SwapLossWeights())
    # phase 2 with L_per and L_exp weighted but no network for either: the trainer says what that does
    with pytest.warns(UserWarning, match="only L_id acts on the mask"):
        s3 = Stage3Trainer(_train_cfg(tmp_path / "s3", 4), cfg3, MaskTrainConfig(supervised_steps=2),
                           nets={"identity": MeanColourId()}).setup()
    assert s3.trained_modules() == {"codeswap": s3.model}  # what the ranks must agree on (with DDP)
    fusion_before = {k: v.clone() for k, v in s3.model.fusion.state_dict().items()}
    mask_before = {k: v.clone() for k, v in s3.model.mask.state_dict().items()}
    last = s3.run()
    assert "train/mask_l1" in open(tmp_path / "s3" / "metrics.jsonl").read()
    assert all(torch.equal(v, fusion_before[k]) for k, v in s3.model.fusion.state_dict().items())
    assert any(not torch.equal(v, mask_before[k]) for k, v in s3.model.mask.state_dict().items())
    model, meta = load_codeswap(tmp_path / "s3" / "checkpoints" / "last.pt")
    assert meta["stage"] == "stage3" and meta["step"] == 4 and last
    with torch.no_grad():
        x = torch.rand(2, 3, 64, 64) * 2 - 1
        out = model(x, x.flip(0))
    assert out.ab.shape == (2, 3, 64, 64) and out.mask_ab is not None


def test_stage3_is_silent_when_phase_2_is_off_or_a_term_keeps_the_targets_attributes(stage2_ckpt, tmp_path):
    """The warning above (phase 2 with only L_id acting on the mask) is for that case alone."""
    import warnings

    from codeswap.train.stage3 import MaskTrainConfig, Stage3Trainer

    cfg3 = replace(_swap_cfg(stage2_ckpt), weights=SwapLossWeights())
    nets = {"identity": MeanColourId()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Stage3Trainer(_train_cfg(tmp_path / "a", 2), cfg3, MaskTrainConfig(supervised_steps=2),
                      nets=nets).setup()  # supervised only
        Stage3Trainer(_train_cfg(tmp_path / "b", 4), cfg3, MaskTrainConfig(supervised_steps=2),
                      nets={**nets, "perceptual": MeanColourId()}).setup()  # L_per runs in phase 2


def test_stage2_resume_continues_exactly(stage1_ckpt, tmp_path):
    import json

    full = Stage2Trainer(_train_cfg(tmp_path / "full", 4, ckpt_every=2), _swap_cfg(stage1_ckpt),
                         nets={"identity": MeanColourId()})
    full.run()
    part = Stage2Trainer(_train_cfg(tmp_path / "part", 2, ckpt_every=2), _swap_cfg(stage1_ckpt),
                         nets={"identity": MeanColourId()})
    part.run()
    cont = Stage2Trainer(_train_cfg(tmp_path / "part", 4, ckpt_every=2), _swap_cfg(stage1_ckpt),
                         nets={"identity": MeanColourId()})
    cont.run(resume=True)
    rows = lambda p: [json.loads(r) for r in (p / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    a = [r["train/g_total"] for r in rows(tmp_path / "full") if "train/g_total" in r]
    b = [r["train/g_total"] for r in rows(tmp_path / "part") if "train/g_total" in r]
    assert a == pytest.approx(b, rel=1e-6, abs=1e-7)


def test_face_pasted_pairs_keep_the_frame_and_take_the_face():
    from codeswap.train.stage2 import face_region, paste_loss, paste_pairs

    a, b = torch.rand(4, 3, 64, 64), torch.rand(4, 3, 64, 64)
    same = torch.tensor([True, False, False, False])
    b2, paste = paste_pairs(a, b, same, 1.0, step=0, seed=0)
    assert paste.tolist() == [False, True, True, True]  # never the reconstruction pairs
    m = face_region(64)[0, 0]
    assert m[40, 32] > 0.99 and m[2, 2] < 1e-3  # the face centre is pasted, the corners are not
    torch.testing.assert_close(b2[0], b[0])
    torch.testing.assert_close(b2[1][:, 2, 2], a[1][:, 2, 2], atol=1e-4, rtol=0)  # frame from a
    torch.testing.assert_close(b2[1][:, 40, 32], b[1][:, 40, 32], atol=2e-2, rtol=0)  # face from b
    # the known answers score zero, returning the target does not
    assert paste_loss(a, b2, a, b2, paste) == 0
    assert paste_loss(a, b2, b2, a, paste) > 0


def test_position_parameters_get_their_own_learning_rate():
    from codeswap.fusion import FusionConfig, GlobalFusion
    from codeswap.train.stage2 import param_groups

    groups = param_groups(GlobalFusion(FusionConfig(dim=16, grid=4, num_codes=8, layers=2, heads=2)), 1e-3, 30.0)
    assert len(groups[1]["params"]) == 3 and groups[1]["lr"] == pytest.approx(3e-2)  # pos + 2 relative biases
    assert all(p.ndim != 3 or p.shape[0] != 2 for p in groups[0]["params"])


def test_identity_augmentation_is_random_and_differentiable_in_training_only():
    from codeswap.train.nets import AugmentedIdentity

    seen = []

    class Probe(torch.nn.Module):  # records what the identity network is shown
        def forward(self, x):
            seen.append(x.detach().clone())
            return x.flatten(1)[:, :8]

    aug = AugmentedIdentity(Probe(), strength=1.0)
    x = (torch.rand(2, 3, 64, 64) * 2 - 1).requires_grad_(True)
    aug.eval()
    aug(x)
    torch.testing.assert_close(seen[-1], x.detach())  # eval: the plain network
    aug.train()
    torch.manual_seed(0)
    aug(x).sum().backward()
    torch.manual_seed(1)
    aug(x)
    assert not torch.allclose(seen[-2], x.detach()) and not torch.allclose(seen[-2], seen[-1])
    assert x.grad is not None and x.grad.abs().sum() > 0  # L_id's gradient still reaches the swap
    assert AugmentedIdentity(Probe(), 0.0).train()(x).shape == (2, 8)


def test_warm_start_copies_the_fusion_and_refuses_another_prior_or_shape(stage1_ckpt, stage2_ckpt, tmp_path):
    """--init starts stage 2 from another checkpoint's fusion weights (step 0, a fresh
    optimiser); a checkpoint of another prior or another fusion shape is a one-line error."""
    from codeswap.checkpoints import load_codeswap
    from codeswap.train.stage3 import MaskTrainConfig, Stage3Trainer
    from faceeval.errors import HarnessError

    init, _ = load_codeswap(stage2_ckpt)
    cold = Stage2Trainer(_train_cfg(tmp_path / "cold", 1), _swap_cfg(stage1_ckpt), nets={}).setup()
    warm = Stage2Trainer(_train_cfg(tmp_path / "warm", 1), replace(_swap_cfg(stage1_ckpt), init=str(stage2_ckpt)),
                         nets={}).setup()
    for k, v in warm.model.fusion.state_dict().items():
        assert torch.equal(v, init.fusion.state_dict()[k]), k
    assert any(not torch.equal(v, cold.model.fusion.state_dict()[k]) for k, v in warm.model.fusion.state_dict().items())
    assert warm.step == 0 and not warm.opt.state  # only the weights carry over

    wide = replace(_swap_cfg(stage1_ckpt), selector_hidden=48, init=str(stage2_ckpt))
    with pytest.raises(HarnessError, match="another fusion"):
        Stage2Trainer(_train_cfg(tmp_path / "wide", 1), wide, nets={}).setup()
    other = tmp_path / "other_prior.pt"
    state = torch.load(stage2_ckpt, map_location="cpu", weights_only=True)
    key = next(k for k in state["codeswap"] if k.startswith("autoencoder."))
    state["codeswap"][key] = state["codeswap"][key] + 1.0
    torch.save(state, other)
    with pytest.raises(HarnessError, match="another stage-1 prior"):
        Stage2Trainer(_train_cfg(tmp_path / "other", 1), replace(_swap_cfg(stage1_ckpt), init=str(other)),
                      nets={}).setup()
    with pytest.raises(HarnessError, match="stage-2 warm start"):
        Stage3Trainer(_train_cfg(tmp_path / "s3", 1), replace(_swap_cfg(stage2_ckpt), init=str(stage2_ckpt)),
                      MaskTrainConfig(supervised_steps=1)).setup()


def _answers_file(path: Path, trainer: Stage2Trainer, source_of: bool = True) -> torch.Tensor:
    """A teacher-answers file for the trainer's training images whose answer for I_st is s
    itself (not the paste of the default teacher); returns the images (N, 3, R, R) in [-1, 1]."""
    from codeswap.swap_losses import TEACHER_ANSWERS_FORMAT

    own = torch.stack([trainer.dataset.load(i) for i in range(len(trainer.dataset))])  # (N, 3, R, R)
    u8 = ((own + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    n = len(own)
    images = u8[:, None].expand(n, n, *u8.shape[1:]).contiguous()  # [s, t] = s
    files = [f.relative_to(DEMO).as_posix() for f in trainer.dataset.files]
    torch.save({"format": TEACHER_ANSWERS_FORMAT, "files": files, "answer": "source", "images": images}, path)
    return u8.float().div(127.5).sub(1)


def test_given_teacher_answers_are_encoded_by_the_prior_and_looked_up_per_pair(stage1_ckpt, tmp_path):
    from codeswap.swap_losses import TeacherAnswers

    plain_cfg = _train_cfg(tmp_path / "a", 1, hflip=False)
    trainer = Stage2Trainer(plain_cfg, _swap_cfg(stage1_ckpt), nets={"identity": None}).setup()
    sources = _answers_file(tmp_path / "answers.pt", trainer)
    files = [f.relative_to(DEMO).as_posix() for f in trainer.dataset.files]
    own = torch.stack([trainer.dataset.load(i) for i in range(len(files))])
    ae = trainer.model.autoencoder
    bank = TeacherAnswers.load(tmp_path / "answers.pt", files, own, ae)
    n = len(files)
    with torch.no_grad():
        src_codes = ae.encode(sources).indices.flatten(1)  # (N, L)
        own_codes = ae.encode(own).indices.flatten(1)
    assert bank.answer == "source" and bank.indices.shape == (n, n, src_codes.shape[1])
    for s, t in ((0, 1), (3, 2), (5, 0)):
        assert torch.equal(bank.indices[s, t], src_codes[s])
    assert torch.equal(bank.indices[4, 4], own_codes[4])  # one image twice: its own codes
    ia, ib = torch.tensor([0, 1, 2]), torch.tensor([3, 1, 0])
    teacher = bank.teacher(ia, ib)  # (3, 2L): [I_ba; I_ab]
    assert torch.equal(teacher[0], torch.cat([src_codes[3], src_codes[0]]))
    assert torch.equal(teacher[1], torch.cat([own_codes[1], own_codes[1]]))

    from faceeval.errors import HarnessError

    with pytest.raises(HarnessError, match="other training images"):
        TeacherAnswers.load(tmp_path / "answers.pt", files[:-1], own[:-1], ae)
    with pytest.raises(HarnessError, match="this training needs"):
        TeacherAnswers.read(tmp_path / "answers.pt", files, 32)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(HarnessError, match="cannot read teacher answers"):
        TeacherAnswers.read(tmp_path / "junk.pt", files, 64)


def test_code_teacher_uses_given_answers_instead_of_the_paste():
    from types import SimpleNamespace

    from codeswap.swap_losses import code_teacher_loss

    answers = torch.tensor([[1, 2, 3, 0], [0, 0, 1, 1]])  # (B, 2L), L = 2
    logits = torch.nn.functional.one_hot(answers, 4).float() * 50  # (B, 2L, N): certain of the answers
    out = SimpleNamespace(fusion=SimpleNamespace(logits=logits))
    loss, logs = code_teacher_loss(SimpleNamespace(codebook=torch.zeros(4, 2)), out, (0, 0, 1, 1), answers)
    assert loss.item() < 1e-6 and logs["train/teacher_acc"].item() == 1.0
    loss, logs = code_teacher_loss(SimpleNamespace(codebook=torch.zeros(4, 2)), out, (0, 0, 1, 1),
                                   torch.roll(answers, 1, 1))
    assert loss.item() > 10 and logs["train/teacher_acc"].item() < 1.0


def test_stage2_trains_on_given_teacher_answers_and_refuses_mirroring(stage1_ckpt, tmp_path):
    from faceeval.errors import HarnessError

    probe = Stage2Trainer(_train_cfg(tmp_path / "p", 1, hflip=False), _swap_cfg(stage1_ckpt),
                          nets={"identity": None}).setup()
    _answers_file(tmp_path / "answers.pt", probe)
    teach = replace(_swap_cfg(stage1_ckpt), teacher_answers=str(tmp_path / "answers.pt"),
                    weights=SwapLossWeights(teacher=1.0))
    trainer = Stage2Trainer(_train_cfg(tmp_path / "t", 3, hflip=False), teach, nets={"identity": None})
    last = trainer.run()
    assert torch.isfinite(torch.tensor(last["train/teacher"])) and "train/teacher_acc" in last
    with pytest.raises(HarnessError, match="--no-hflip"):
        Stage2Trainer(_train_cfg(tmp_path / "m", 3), teach, nets={"identity": None}).setup()
