"""CodeSwap as a harness method: the demo model trains once, swaps both ways, is cached."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from codeswap.demo import DemoRecipe
from methods.codeswap import CodeSwapMethod

RECIPE = DemoRecipe(stage1_steps=3, stage2_steps=2, stage3_steps=3, stage3_supervised=2, batch_size=4,
                    layers=1, heads=2, selector_hidden=32, identity_net="none")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One demo-model cache for the module: the first test trains RECIPE into it, the next
    ones reuse that checkpoint (the first test asserts that it trained)."""
    return tmp_path_factory.mktemp("codeswap-cache")


@pytest.fixture(autouse=True)
def _module_cache(cache, monkeypatch):
    # after conftest's per-worker HARNESS_CACHE_DIR: this module's folder wins
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(cache))


@pytest.fixture(scope="module")
def trained(cache):
    """RECIPE trained once into the module's cache by the method, as a run would: the training
    log it printed and the folder it trained in (stage1/, stage2-full/, stage3-full/)."""
    import contextlib
    import io

    from codeswap.demo import cache_root, recipe_key

    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        mp.setenv("HARNESS_CACHE_DIR", str(cache))
        method = CodeSwapMethod(demo_recipe=RECIPE)
        method.swap(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64))  # trains on first use
        root = cache_root() / "codeswap-demo" / recipe_key(RECIPE)
    return out.getvalue(), root


def test_demo_model_trains_once_and_swaps_both_directions(trained, capsys):
    log, _ = trained
    assert "training stage 1" in log and "training stage 3" in log
    m = CodeSwapMethod(demo_recipe=RECIPE)
    a, b = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    ab, ba = m.swap_both_ways(a, b)
    assert ab.shape == a.shape and 0 <= ab.min() and ab.max() <= 1
    torch.testing.assert_close(m.swap(a, b), ab)
    ba2, ab2 = m.swap_both_ways(b, a)  # symmetric: swapping inputs swaps outputs
    torch.testing.assert_close(ab, ab2, atol=1e-5, rtol=0)
    again = CodeSwapMethod(demo_recipe=RECIPE)
    assert again.fingerprint() == m.fingerprint()  # cached checkpoint, same key
    assert "training" not in capsys.readouterr().out  # trained once, by the fixture's first swap
    assert m.describe()["stage"] == "stage3" and m.resolution == 64


def test_wo_m_shares_the_full_checkpoint_without_the_mask(trained):
    full = CodeSwapMethod(demo_recipe=RECIPE)
    wo_m = CodeSwapMethod(variant="wo_m", demo_recipe=RECIPE)
    assert wo_m.name == "codeswap_wo_m" and wo_m._checkpoint_path == full._checkpoint_path
    assert wo_m.fingerprint() != full.fingerprint()
    a, b = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    assert not torch.allclose(wo_m.swap(a, b), full.swap(a, b))


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    from faceeval.errors import HarnessError

    with pytest.raises(HarnessError, match="codeswap checkpoint not found"):
        CodeSwapMethod(checkpoint=str(tmp_path / "nope.pt"))


def test_shipped_bundle_unpacks_to_the_trained_model(trained, tmp_path, monkeypatch):
    """pack -> unpack round trip: the unpacked checkpoint swaps exactly like the trained one,
    and demo_checkpoint takes a bundle of its recipe instead of training."""
    import codeswap.demo as demo

    _, root = trained  # the module's trained folder is packed; it is unpacked into an empty cache
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))

    recipe = RECIPE
    assert recipe.variants == ("full",)
    trained_ckpt = root / "stage3-full" / "checkpoints" / "last.pt"
    bundle_path = tmp_path / "bundle.pt"
    demo.pack(recipe, root, bundle_path, {"faces": 28, "resolution": 64}, {"dlib_top1": 0.9, "facenet_top1": 0.8,
                                                                            "psnr": 25.0})
    monkeypatch.setattr(demo, "BUNDLE", bundle_path)
    logs = []
    ckpt = demo.demo_checkpoint("full", recipe, log=logs.append)
    assert logs == [] and "unpacked" in (ckpt.parents[1] / "DONE").read_text()  # nothing trained
    from codeswap.checkpoints import load_codeswap

    a, b = torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        want = load_codeswap(trained_ckpt)[0](a, b).ab
        got = load_codeswap(ckpt)[0](a, b).ab
    torch.testing.assert_close(got, want)
    m = CodeSwapMethod(demo_recipe=recipe)
    notes = m.prepare(None)
    assert any("TRAINING-SET" in n for n in notes) and any("90 % (dlib)" in n for n in notes)
    # a recipe that differs only after stage 1 starts from the bundle's prior instead of training one
    from dataclasses import replace

    from codeswap.checkpoints import load_stage1

    demo.pack(recipe, root, bundle_path, {"faces": 28, "resolution": 64, "faces_json_sha256": demo._faces_sha256()},
              {"dlib_top1": 0.9, "facenet_top1": 0.8, "psnr": 25.0})
    logs = []
    demo.train_recipe(tmp_path / "later", "full", replace(recipe, stage2_steps=recipe.stage2_steps + 1),
                      log=logs.append)
    assert not any("stage 1" in m for m in logs) and any("stage 2" in m for m in logs)
    prior, _ = load_stage1(tmp_path / "later" / "stage1" / "checkpoints" / "last.pt")
    shipped = demo.load_bundle(bundle_path)["autoencoder"]
    for k, t in prior.state_dict().items():
        torch.testing.assert_close(t, shipped[k].float())
    assert demo.stage1_from_bundle(replace(recipe, stage1_steps=4), tmp_path / "other") is None  # another prior
    with pytest.raises(Exception, match="another stage-1 model|not a codeswap-demo"):
        bad = tmp_path / "bad.pt"
        torch.save({"format": "something else"}, bad)
        demo.load_bundle(bad)


def test_the_shipped_bundle_holds_the_default_recipe(tmp_path):
    """A change to DemoRecipe must come with a rebuilt bundle (scripts/build_demo_model.py):
    otherwise the demo silently trains for an hour on first use instead of unpacking it."""
    import json

    from codeswap.demo import BUNDLE, DemoRecipe, demo_info, recipe_key
    from faceeval.images import file_sha256

    listing = json.loads(BUNDLE.with_suffix(".json").read_text())
    assert listing["recipe_key"] == recipe_key(DemoRecipe()), "rebuild: python scripts/build_demo_model.py --from <run>"
    from dataclasses import replace

    from codeswap.demo import LATER_FIELDS  # added later: in the key only when set
    (tmp_path / "answers.pt").write_bytes(b"answers")
    changed = {"expression_net": "whenet", "finetune_steps": 5, "finetune_weights": (1.0,) * 6,
               "finetune_teacher_decay": 3, "finetune_identity_net": "sface", "prior_data": str(tmp_path),
               "teacher_answers": str(tmp_path / "answers.pt"), "hflip": False}
    assert set(changed) == set(LATER_FIELDS)
    assert all(recipe_key(replace(DemoRecipe(), **{f: v})) != listing["recipe_key"] for f, v in changed.items())
    assert listing["sha256"] == file_sha256(BUNDLE)  # the listing describes the file that ships
    assert demo_info() is not None and demo_info()["ceiling"]["dlib_top1"] >= 0.9


def test_a_recipe_keys_its_prior_folder_and_answers_file_by_content(tmp_path):
    """Two copies of one folder give one key wherever they are; a changed byte another key. A
    prior folder is not split, so it cannot be combined with held-out faces."""
    import shutil

    from codeswap.demo import DemoRecipe, recipe_key, train_recipe
    from faceeval.errors import HarnessError

    (tmp_path / "a" / "sub").mkdir(parents=True)
    (tmp_path / "a" / "sub" / "x.png").write_bytes(b"one")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    keys = [recipe_key(DemoRecipe(prior_data=str(tmp_path / d))) for d in ("a", "b")]
    assert keys[0] == keys[1]
    (tmp_path / "b" / "sub" / "x.png").write_bytes(b"two")
    assert recipe_key(DemoRecipe(prior_data=str(tmp_path / "b"))) != keys[0]
    with pytest.raises(HarnessError, match="not found"):
        recipe_key(DemoRecipe(teacher_answers=str(tmp_path / "missing.pt")))
    with pytest.raises(HarnessError, match="cannot hold faces out"):
        train_recipe(tmp_path / "run", "full", DemoRecipe(prior_data=str(tmp_path / "a"), holdout=6))
    assert not (tmp_path / "run" / "stage1").exists()


def test_a_second_stage2_phase_starts_from_the_shipped_model_only_when_the_first_is_its_recipe(tmp_path):
    """A recipe that adds a fine-tuning phase to the shipped recipe starts it from the shipped
    model (unpacked); one whose first phase differs gets nothing and trains it itself."""
    from codeswap.checkpoints import load_codeswap
    from codeswap.demo import DemoRecipe, shipped_stage2

    later = DemoRecipe(finetune_steps=5, expression_net="whenet", stage3_steps=10, stage3_supervised=10)
    path = shipped_stage2(later, "full", tmp_path / "shipped-full")
    model, meta = load_codeswap(path)
    assert meta["step"] > 0 and model.fusion is not None
    assert shipped_stage2(replace(later, stage2_steps=599), "full", tmp_path / "other") is None
    assert shipped_stage2(replace(later, stage2_lr=2e-3), "full", tmp_path / "other") is None
    assert not (tmp_path / "other").exists()


def test_the_mask_learns_with_the_second_phase_losses_and_no_teacher():
    """With a second stage-2 phase, stage 3's unsupervised phase uses its weights (L_exp on),
    the code teacher off; the shipped recipe keeps its own weights."""
    from codeswap.demo import DemoRecipe, _stage3_settings, _swap_settings

    shipped = DemoRecipe()
    assert _stage3_settings(shipped, _swap_settings(shipped)) == _swap_settings(shipped)
    later = DemoRecipe(finetune_steps=5, expression_net="whenet", finetune_weights=(1.0, 1.5, 0.0, 0.5, 1.0, 1.0))
    w = _stage3_settings(later, _swap_settings(later))["weights"]
    assert (w.expression, w.identity, w.teacher) == (0.5, 1.5, 0.0)
