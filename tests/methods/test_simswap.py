"""SimSwap adapter: official key layout (written out here from the release's module tree,
independently of methods/simswap_net.py), weights_only loading of the pickled ArcFace, the
identity path, and no watermark."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import methods.simswap_net as S
from faceeval.errors import HarnessError
from faceeval.images import load_rgb, to_tensor
from harness.registry import METHODS
from protocols.demo import DemoProtocol


def official_generator_shapes(base: int = 64, deep: bool = False, n_blocks: int = 9) -> dict[str, tuple]:
    """Key -> shape of neuralchen/SimSwap's Generator_Adain_Upsample state dict
    (models/fs_networks.py; fs_networks_512.py adds down0/up0 with base 32)."""
    shapes: dict[str, tuple] = {}

    def conv(name, cout, cin, k):
        shapes[f"{name}.weight"] = (cout, cin, k, k)
        shapes[f"{name}.bias"] = (cout,)

    def bn(name, c):
        for p in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.{p}"] = (c,)
        shapes[f"{name}.num_batches_tracked"] = ()

    conv("first_layer.1", base, 3, 7)
    bn("first_layer.2", base)
    downs = ([("down0", 64, base)] if base != 64 else []) + [("down1", 128, 64), ("down2", 256, 128),
                                                             ("down3", 512, 256)]
    downs += [("down4", 512, 512)] if deep else []
    for name, cout, cin in downs:
        conv(f"{name}.0", cout, cin, 3)
        bn(f"{name}.1", cout)
    for i in range(n_blocks):
        for j in (1, 2):
            conv(f"BottleNeck.{i}.conv{j}.1", 512, 512, 3)
            shapes[f"BottleNeck.{i}.style{j}.linear.weight"] = (1024, 512)
            shapes[f"BottleNeck.{i}.style{j}.linear.bias"] = (1024,)
    ups = ([("up4", 512, 512)] if deep else []) + [("up3", 256, 512), ("up2", 128, 256), ("up1", 64, 128)]
    ups += [("up0", base, 64)] if base != 64 else []
    for name, cout, cin in ups:
        conv(f"{name}.1", cout, cin, 3)
        bn(f"{name}.2", cout)
    conv("last_layer.1", 3, base, 7)
    return shapes


def official_state_dict(seed=0, **kw) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shp in official_generator_shapes(**kw).items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(0)
        elif k.endswith("running_var"):
            sd[k] = torch.ones(shp)
        elif k.endswith("running_mean"):
            sd[k] = torch.zeros(shp)
        elif ".style" in k and len(shp) > 1:  # AdaIN: a unit identity vector gives O(1) styles
            sd[k] = torch.randn(shp, generator=g)
        elif len(shp) > 1:  # conv / linear weights: unit-variance activations, like a trained net
            fan_in = int(np.prod(shp[1:]))
            sd[k] = torch.randn(shp, generator=g) / fan_in ** 0.5
        else:
            sd[k] = torch.randn(shp, generator=g) * 0.1
    return sd


@pytest.mark.parametrize("kw", [dict(), dict(base=32, deep=False), dict(base=32, deep=True)])
def test_official_generator_keys_load_strictly(tmp_path, kw):
    path = tmp_path / "latest_net_G.pth"
    torch.save(official_state_dict(**kw), path)
    g = S.load_generator(path)
    assert g.cfg.base == kw.get("base", 64) and g.cfg.deep == kw.get("deep", False) and g.cfg.n_blocks == 9
    size = 64
    out = g(torch.rand(1, 3, size, size), F.normalize(torch.randn(1, 512), dim=1))
    assert out.shape == (1, 3, size, size) and 0.0 <= out.min() and out.max() <= 1.0


def test_renamed_key_is_a_clear_error(tmp_path):
    sd = official_state_dict()
    sd["last_layer.1.kernel"] = sd.pop("last_layer.1.weight")
    torch.save(sd, tmp_path / "g.pth")
    with pytest.raises(HarnessError, match="keys do not match the official layout"):
        S.load_generator(tmp_path / "g.pth")


def _official_arcface_pickle(path, model: nn.Module, monkeypatch) -> None:
    """Save ``{'model': DataParallel(ResNet)}`` whose classes pickle as SimSwap's
    ``models.arcface_models.*``, as the official arcface_checkpoint.tar does."""
    mod = types.ModuleType("models.arcface_models")
    monkeypatch.setitem(sys.modules, "models", types.ModuleType("models"))
    monkeypatch.setitem(sys.modules, "models.arcface_models", mod)
    for cls in (S.ResNet, S.IRBlock, S.SEBlock):
        monkeypatch.setattr(cls, "__module__", "models.arcface_models")
        setattr(mod, cls.__name__, cls)
    torch.save({"model": nn.DataParallel(model), "epoch": 7}, path)
    monkeypatch.undo()


def test_pickled_arcface_loads_with_weights_only(tmp_path, monkeypatch):
    torch.manual_seed(0)
    ref = S.ResNet().eval()
    _official_arcface_pickle(tmp_path / "arcface_checkpoint.tar", ref, monkeypatch)
    loaded = S.load_arcface(tmp_path / "arcface_checkpoint.tar")
    x = torch.randn(2, 3, 112, 112)
    torch.testing.assert_close(loaded(x), ref(x))
    # a plain state dict (with DataParallel's 'module.' prefix) works too
    torch.save({f"module.{k}": v for k, v in ref.state_dict().items()}, tmp_path / "sd.pth")
    torch.testing.assert_close(S.load_arcface(tmp_path / "sd.pth")(x), ref(x))


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_arbitrary_pickles_are_refused(tmp_path):
    with open(tmp_path / "evil.tar", "wb") as f:
        torch.save({"model": _Evil()}, f)
    with pytest.raises(HarnessError, match="weights_only=True"):
        S.load_arcface(tmp_path / "evil.tar")


@pytest.fixture
def simswap(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("HARNESS_SHA_MEMO", str(tmp_path / "sha.json"))
    torch.manual_seed(1)
    _official_arcface_pickle(tmp_path / "arcface_checkpoint.tar", S.ResNet().eval(), monkeypatch)
    monkeypatch.setenv("HARNESS_WEIGHTS_DIR", str(tmp_path))  # undo() above reset the environment
    monkeypatch.setenv("HARNESS_SHA_MEMO", str(tmp_path / "sha.json"))
    sd = official_state_dict(seed=3)
    torch.save(sd, tmp_path / "simswap_224_latest_net_G.pth")
    return tmp_path, sd


@pytest.fixture(scope="module")
def pairs():
    demo = DemoProtocol(num_pairs=2).build()
    return (np.stack([load_rgb(demo.path(p.source)) for p in demo.pairs]),
            np.stack([load_rgb(demo.path(p.target)) for p in demo.pairs]))


def test_identity_path(simswap):
    m = METHODS.create("simswap")
    x = torch.rand(2, 3, 224, 224)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    expected = F.normalize(m.arcface(F.interpolate((x - mean) / std, scale_factor=0.5)), dim=1)  # official recipe
    got = m.identity(x)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got.norm(dim=1), torch.ones(2))


def test_swap_uses_source_and_never_watermarks(simswap, pairs):
    folder, sd = simswap
    src, tgt = pairs
    m = METHODS.create("simswap")
    seen = []
    m.generator.register_forward_pre_hook(lambda mod, args: seen.append(args[1].clone()))
    a = m.swap(to_tensor(src), to_tensor(tgt))
    # the generator received the source's identity: ArcFace of the source's aligned crop
    crops = torch.from_numpy(np.stack([m._crop(s)[0] for s in src])).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(seen[0], m.identity(crops))
    b = m.swap(to_tensor(src[::-1].copy()), to_tensor(tgt))
    assert torch.equal(a, m.swap(to_tensor(src), to_tensor(tgt)))  # deterministic
    assert (a - b).abs().max() > 0  # and it changes the output
    # zero last layer: tanh(0) = 0 -> grey 0.5 inside the pasted face, target elsewhere
    sd = dict(sd, **{"last_layer.1.weight": torch.zeros_like(sd["last_layer.1.weight"]),
                     "last_layer.1.bias": torch.zeros(3)})
    torch.save(sd, folder / "simswap_224_latest_net_G.pth")
    out = (METHODS.create("simswap").swap(to_tensor(src), to_tensor(tgt)).permute(0, 2, 3, 1).numpy() * 255).round()
    assert np.abs(out[:, 120:140, 118:138] - 127.5).max() <= 1.0
    # outside the pasted face (where SimSwap's logo would go, bottom right): the target, bit for bit
    from faceeval.faces.paste import paste_back

    for i in range(len(tgt)):
        _, mat = m._crop(tgt[i])
        covered = paste_back(np.zeros_like(tgt[i]), np.full((224, 224, 3), 255, np.uint8), mat).any(-1)
        assert (~covered).sum() > 1000
        np.testing.assert_array_equal(out[i][~covered], tgt[i][~covered])
    assert m.fingerprint()["watermark"] is False
