"""BiSeNet face parsing (stage-3 mask targets): the state dict matches the release's keys
and shapes, the loader, the parsing masks, and stage 3 trained against them (CPU)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from faceeval.errors import HarnessError
from faceeval.models.bisenet import WEIGHTS, BiSeNet, load_bisenet
from test_codeswap_training import MeanColourId, _swap_cfg, _train_cfg, stage1_ckpt  # noqa: F401 (a fixture)

# The structure of face-parsing.PyTorch's BiSeNet(n_classes=19), as its model.py / resnet.py
# define it: (conv, weight shape, the BatchNorm after it or None). Every BatchNorm holds
# weight, bias, running_mean, running_var (C,) and num_batches_tracked ().
_RESNET_STAGES = (("layer1", 64, 64, 1), ("layer2", 64, 128, 2), ("layer3", 128, 256, 2), ("layer4", 256, 512, 2))


def _reference_convs() -> list[tuple[str, tuple[int, ...], str | None]]:
    convs = [("cp.resnet.conv1", (64, 3, 7, 7), "cp.resnet.bn1")]
    for layer, cin, cout, stride in _RESNET_STAGES:  # create_layer_basic(cin, cout, bnum=2, stride)
        for i, c_in in enumerate((cin, cout)):
            p = f"cp.resnet.{layer}.{i}"
            convs += [(f"{p}.conv1", (cout, c_in, 3, 3), f"{p}.bn1"), (f"{p}.conv2", (cout, cout, 3, 3), f"{p}.bn2")]
            if i == 0 and (cin != cout or stride != 1):
                convs.append((f"{p}.downsample.0", (cout, cin, 1, 1), f"{p}.downsample.1"))
    for arm, cin in (("cp.arm16", 256), ("cp.arm32", 512)):  # AttentionRefinementModule(cin, 128)
        convs += [(f"{arm}.conv.conv", (128, cin, 3, 3), f"{arm}.conv.bn"),
                  (f"{arm}.conv_atten", (128, 128, 1, 1), f"{arm}.bn_atten")]
    convs += [("cp.conv_head32.conv", (128, 128, 3, 3), "cp.conv_head32.bn"),
              ("cp.conv_head16.conv", (128, 128, 3, 3), "cp.conv_head16.bn"),
              ("cp.conv_avg.conv", (128, 512, 1, 1), "cp.conv_avg.bn"),
              ("ffm.convblk.conv", (256, 256, 1, 1), "ffm.convblk.bn"),  # FeatureFusionModule(256, 256)
              ("ffm.conv1", (64, 256, 1, 1), None), ("ffm.conv2", (256, 64, 1, 1), None)]
    for head, cin, mid in (("conv_out", 256, 256), ("conv_out16", 128, 64), ("conv_out32", 128, 64)):
        convs += [(f"{head}.conv.conv", (mid, cin, 3, 3), f"{head}.conv.bn"),  # BiSeNetOutput(cin, mid, 19)
                  (f"{head}.conv_out", (19, mid, 1, 1), None)]
    return convs


def _reference_state_shapes() -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for conv, shape, bn in _reference_convs():
        shapes[f"{conv}.weight"] = shape  # every conv is bias-free
        if bn:
            for name in ("weight", "bias", "running_mean", "running_var"):
                shapes[f"{bn}.{name}"] = (shape[0],)
            shapes[f"{bn}.num_batches_tracked"] = ()
    return shapes


# a few tensors spelled out, as read off the reference (not derived from the table above)
_SPOT_CHECKS = {
    "cp.resnet.conv1.weight": (64, 3, 7, 7),
    "cp.resnet.bn1.running_var": (64,),
    "cp.resnet.layer1.0.conv1.weight": (64, 64, 3, 3),
    "cp.resnet.layer2.0.conv1.weight": (128, 64, 3, 3),
    "cp.resnet.layer2.0.downsample.0.weight": (128, 64, 1, 1),
    "cp.resnet.layer3.1.conv2.weight": (256, 256, 3, 3),
    "cp.resnet.layer4.0.downsample.1.weight": (512,),
    "cp.resnet.layer4.1.conv2.weight": (512, 512, 3, 3),
    "cp.arm16.conv.conv.weight": (128, 256, 3, 3),
    "cp.arm32.conv.conv.weight": (128, 512, 3, 3),
    "cp.arm32.conv_atten.weight": (128, 128, 1, 1),
    "cp.arm32.bn_atten.bias": (128,),
    "cp.conv_avg.conv.weight": (128, 512, 1, 1),
    "cp.conv_head32.conv.weight": (128, 128, 3, 3),
    "cp.conv_head16.bn.weight": (128,),
    "ffm.convblk.conv.weight": (256, 256, 1, 1),
    "ffm.conv1.weight": (64, 256, 1, 1),
    "ffm.conv2.weight": (256, 64, 1, 1),
    "conv_out.conv.conv.weight": (256, 256, 3, 3),
    "conv_out.conv_out.weight": (19, 256, 1, 1),
    "conv_out16.conv.conv.weight": (64, 128, 3, 3),
    "conv_out16.conv_out.weight": (19, 64, 1, 1),
    "conv_out32.conv_out.weight": (19, 64, 1, 1),
}
_PREFIXES = {"cp.resnet", "cp.arm16", "cp.arm32", "cp.conv_head32", "cp.conv_head16", "cp.conv_avg", "ffm",
             "conv_out", "conv_out16", "conv_out32"}


def _randomised(seed: int = 0) -> BiSeNet:
    """A BiSeNet with random weights and BatchNorm statistics, in eval mode."""
    g = torch.Generator().manual_seed(seed)
    model = BiSeNet()
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
    return model.eval()


def _winner(cls: int) -> BiSeNet:
    """Weights under which class ``cls`` wins at every pixel: all convolutions zero, so every
    feature is 0, except the main head's BatchNorm bias (1, so its ReLU gives 1 everywhere)
    and its 1x1 classifier row for ``cls``. The classifier has no bias in the release."""
    model = BiSeNet()
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_var"):
                t.fill_(1.0)
            elif t.is_floating_point():
                t.zero_()
        model.conv_out.conv.bn.bias.fill_(1.0)
        model.conv_out.conv_out.weight[cls].fill_(1.0)
    return model.eval()


@pytest.fixture
def weights_dir(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "weights"
    d.mkdir()
    monkeypatch.setenv("HARNESS_WEIGHTS_DIR", str(d))
    return d


def test_state_dict_has_exactly_the_release_keys_and_shapes(tmp_path):
    ref = _reference_state_shapes()
    path = tmp_path / WEIGHTS
    torch.save(BiSeNet().state_dict(), path)
    saved = torch.load(path, weights_only=True)
    assert sorted(saved) == sorted(ref)
    mismatched = {k: (tuple(v.shape), ref[k]) for k, v in saved.items() if tuple(v.shape) != ref[k]}
    assert not mismatched
    for k, shape in _SPOT_CHECKS.items():
        assert tuple(saved[k].shape) == shape, k
    assert len(saved) == 191 and sum(not k.endswith("num_batches_tracked") for k in saved) == 160
    assert not any(k.startswith("cp.resnet.fc") for k in saved)  # the release's ResNet has no classifier
    tops = {k.split(".")[0] if not k.startswith("cp.") else ".".join(k.split(".")[:2]) for k in saved}
    assert tops == _PREFIXES
    assert sum(v.numel() for k, v in saved.items() if not k.endswith("num_batches_tracked")) > 13_000_000


def test_forward_gives_three_logit_maps_at_the_input_size():
    model = _randomised()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 512, 512))
        assert len(out) == 3 and all(o.shape == (1, 19, 512, 512) for o in out)
        x = torch.randn(2, 3, 96, 64)
        assert torch.equal(model.logits(x), model(x)[0]) and model.logits(x).shape == (2, 19, 96, 64)


def test_loader_reads_the_weights_folder_and_matches_the_model(weights_dir):
    from faceeval.weights import KNOWN, verified

    model = _randomised(1)
    torch.save(model.state_dict(), weights_dir / WEIGHTS)
    path, sha = verified(WEIGHTS)
    assert path == weights_dir / WEIGHTS and len(sha) == 64
    assert KNOWN[WEIGHTS].sha256 is None and "CelebAMask-HQ" in KNOWN[WEIGHTS].licence
    loaded = load_bisenet(path)
    assert not loaded.training
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        for a, b in zip(model(x), loaded(x)):
            assert torch.equal(a, b)


def test_loader_strips_a_module_prefix(tmp_path):
    model = _randomised(2)
    path = tmp_path / WEIGHTS
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(load_bisenet(path).logits(x), model.logits(x))
        # the release dates from 2019: PyTorch's legacy (non-zip) format; older files lack num_batches_tracked
        old = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
        torch.save(old, path, _use_new_zipfile_serialization=False)
        assert torch.equal(load_bisenet(path).logits(x), model.logits(x))


def test_loader_names_wrong_keys_in_one_line(tmp_path):
    state = BiSeNet().state_dict()
    state["ffm.conv3.weight"] = state.pop("ffm.conv2.weight")
    path = tmp_path / WEIGHTS
    torch.save(state, path)
    with pytest.raises(HarnessError) as e:
        load_bisenet(path)
    msg = str(e.value)
    assert "\n" not in msg and "ffm.conv2.weight" in msg and "ffm.conv3.weight" in msg and WEIGHTS in msg
    state = BiSeNet(n_classes=11).state_dict()  # right keys, wrong class count
    torch.save(state, path)
    with pytest.raises(HarnessError, match=r"conv_out\.conv_out\.weight \(11, 256, 1, 1\) != \(19, 256, 1, 1\)"):
        load_bisenet(path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(HarnessError, match="not a readable torch state dict"):
        load_bisenet(path)


def test_parsing_masks_keep_the_face_classes():
    from faceeval.models.bisenet import parsing_masks

    images = torch.rand(1, 3, 80, 80) * 2 - 1
    skin = parsing_masks(images, _winner(1))
    assert skin.shape == (1, 1, 80, 80) and skin.dtype == torch.float32 and torch.all(skin == 1)
    hair = parsing_masks(images, _winner(17))
    assert hair.shape == (1, 1, 80, 80) and torch.all(hair == 0)
    assert torch.all(parsing_masks(images, _winner(17), face_classes=(17,)) == 1)  # the class set is a setting


def test_parsing_masks_feed_the_release_input_and_resize_labels_back():
    from faceeval.constants import IMAGENET_MEAN, IMAGENET_STD
    from faceeval.models.bisenet import parsing_masks

    class Stub(torch.nn.Module):
        """Class 1 (skin) on the left half, 17 (hair) on the right; records its input."""

        def logits(self, x):
            self.seen = x
            out = torch.zeros(x.shape[0], 19, *x.shape[2:])
            out[:, 1, :, : x.shape[3] // 2] = 1
            out[:, 17, :, x.shape[3] // 2 :] = 1
            return out

    stub = Stub()
    black = -torch.ones(1, 3, 96, 96)
    mask = parsing_masks(black, stub)
    assert stub.seen.shape == (1, 3, 512, 512)
    expected = torch.tensor([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]).view(1, 3, 1, 1)
    assert torch.allclose(stub.seen, expected.expand_as(stub.seen), atol=1e-6)
    assert mask.shape == (1, 1, 96, 96)
    assert torch.all(mask[..., :48] == 1) and torch.all(mask[..., 48:] == 0)


def test_mask_config_checks_its_settings():
    from codeswap.config import FACE_CLASSES, MaskTrainConfig

    assert MaskTrainConfig().mask_source == "landmarks"
    assert FACE_CLASSES == (1, 2, 3, 4, 5, 6, 10, 11, 12, 13)
    with pytest.raises(HarnessError, match="landmarks, parsing"):
        MaskTrainConfig(mask_source="segformer")
    with pytest.raises(HarnessError, match="0..18"):
        MaskTrainConfig(mask_source="parsing", face_classes=(1, 19))


# --- stage 3 against parsing masks (the tiny CodeSwap of test_codeswap_training) ---------
def test_stage3_with_parsing_masks_trains_and_names_its_source(stage1_ckpt, weights_dir, tmp_path):  # noqa: F811
    from codeswap.swap_losses import SwapLossWeights
    from codeswap.train.stage2 import Stage2Trainer
    from codeswap.train.stage3 import MaskTrainConfig, Stage3Trainer
    from faceeval.images import file_sha256

    torch.save(_winner(1).state_dict(), weights_dir / WEIGHTS)  # every target: the whole crop is face
    Stage2Trainer(_train_cfg(tmp_path / "s2", 1, batch_size=2), _swap_cfg(stage1_ckpt),
                  nets={"identity": MeanColourId()}).run()
    cfg3 = replace(_swap_cfg(tmp_path / "s2" / "checkpoints" / "last.pt"), weights=SwapLossWeights())
    s3 = Stage3Trainer(_train_cfg(tmp_path / "s3", 2, batch_size=2), cfg3,
                       MaskTrainConfig(supervised_steps=2, mask_source="parsing"),
                       nets={"identity": MeanColourId()}).setup()
    params = s3.run_params()
    assert params["mask.source"] == f"BiSeNet face parsing ({WEIGHTS}, sha256 {file_sha256(weights_dir / WEIGHTS)})"
    assert params["mask.face_classes"] == "1,2,3,4,5,6,10,11,12,13"
    targets = []
    inner = s3.mask_fn
    s3.mask_fn = lambda images: targets.append(inner(images)) or targets[-1]
    mask_before = {k: v.clone() for k, v in s3.model.mask.state_dict().items()}
    s3.run()
    assert len(targets) == 2 and all(t.shape == (4, 1, 64, 64) and torch.all(t == 1) for t in targets)
    assert "train/mask_l1" in (tmp_path / "s3" / "metrics.jsonl").read_text()
    assert any(not torch.equal(v, mask_before[k]) for k, v in s3.model.mask.state_dict().items())


def test_stage3_without_the_parsing_file_fails_first_in_one_line(weights_dir, tmp_path):
    from codeswap.train.stage3 import MaskTrainConfig, Stage3Trainer

    with pytest.raises(HarnessError) as e:  # before the stage-2 checkpoint is even read
        Stage3Trainer(_train_cfg(tmp_path / "s3", 1), _swap_cfg(tmp_path / "absent.pt"),
                      MaskTrainConfig(mask_source="parsing"))
    msg = str(e.value)
    assert "\n" not in msg and WEIGHTS in msg and str(weights_dir / WEIGHTS) in msg and "face-parsing.PyTorch" in msg


def test_cli_mask_source_parsing_without_the_file(weights_dir, tmp_path):
    ckpt = tmp_path / "stage2.pt"
    ckpt.write_bytes(b"")  # only its existence is checked before the weights are
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "train", "stage3", "--data", str(tmp_path), "--stage2", str(ckpt),
         "--mask-source", "parsing", "--no-mlflow", "--device", "cpu"],
        capture_output=True, text=True, env={**os.environ, "HARNESS_DEBUG": ""})
    assert proc.returncode == 1
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: weight file 79999_iter.pth not found")
    assert str(weights_dir / WEIGHTS) in err


def test_cli_stage3_offers_the_mask_source():
    from typer.testing import CliRunner

    from harness.cli import app

    result = CliRunner().invoke(app, ["train", "stage3", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "--mask-source" in result.output and "79999_iter.pth" in result.output
