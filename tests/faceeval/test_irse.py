"""ArcFace IR-SE-50 (pSp's / REFace's ``model_ir_se50.pth``): the official key set, a file saved
in that format loaded with weights_only and checked against a forward pass written here with
torch's functional ops, wrong files as one-line errors, the identity metric end to end on the
demo faces, and the ``reface`` preset running it instead of a substitute."""

from __future__ import annotations

import builtins
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from faceeval.errors import HarnessError
from faceeval.faces.arcface import arcface_crop
from faceeval.models.irse import IRSE50, IRSEBackbone, load_irse50
from test_metrics_identity import _demo_crops_and_landmarks

# pSp models/encoders/helpers.py get_blocks(50), lines 31-36: (in_channel, depth, num_units);
# the first unit of each stage has stride 2 (get_block's default), the others stride 1
OFFICIAL_STAGES = ((64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3))


def official_shapes() -> dict[str, tuple[int, ...]]:
    """Every key of ``Backbone(112, 50, mode='ir_se').state_dict()`` and its shape, written from
    pSp's model_irse.py (lines 20-42) and helpers.py (lines 56-119), not from harness code."""
    out: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, c: int) -> None:
        out.update({f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
                    f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()})

    out["input_layer.0.weight"] = (64, 3, 3, 3)
    bn("input_layer.1", 64)
    out["input_layer.2.weight"] = (64,)  # PReLU(64)
    unit = 0
    for cin, depth, n in OFFICIAL_STAGES:
        for j in range(n):
            c = cin if j == 0 else depth
            p = f"body.{unit}"
            if c != depth:  # else MaxPool2d(1, stride): no parameters
                out[f"{p}.shortcut_layer.0.weight"] = (depth, c, 1, 1)
                bn(f"{p}.shortcut_layer.1", depth)
            bn(f"{p}.res_layer.0", c)
            out[f"{p}.res_layer.1.weight"] = (depth, c, 3, 3)
            out[f"{p}.res_layer.2.weight"] = (depth,)
            out[f"{p}.res_layer.3.weight"] = (depth, depth, 3, 3)
            bn(f"{p}.res_layer.4", depth)
            out[f"{p}.res_layer.5.fc1.weight"] = (depth // 16, depth, 1, 1)
            out[f"{p}.res_layer.5.fc2.weight"] = (depth, depth // 16, 1, 1)
            unit += 1
    bn("output_layer.0", 512)
    out["output_layer.3.weight"] = (512, 512 * 7 * 7)
    out["output_layer.3.bias"] = (512,)
    bn("output_layer.4", 512)  # BatchNorm1d(512, affine=True): pSp's and REFace's callers keep the default
    return out


def reference_embedding(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """(B, 3, 112, 112) in [-1, 1] -> (B, 512) unit vectors, straight from the state dict with
    functional ops in float64 (the stride-2 units are the first of each stage: 0, 3, 7, 21)."""
    sd = {k: v.double() for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    x = x.double()

    def bn(prefix, t):
        return F.batch_norm(t, sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"], sd[f"{prefix}.weight"],
                            sd[f"{prefix}.bias"], training=False, eps=1e-5)

    x = F.prelu(bn("input_layer.1", F.conv2d(x, sd["input_layer.0.weight"], padding=1)), sd["input_layer.2.weight"])
    firsts = set(np.cumsum([0] + [n for _, _, n in OFFICIAL_STAGES])[:-1].tolist())
    unit = 0
    while f"body.{unit}.res_layer.1.weight" in sd:
        p, s = f"body.{unit}", 2 if unit in firsts else 1
        if f"{p}.shortcut_layer.0.weight" in sd:
            short = bn(f"{p}.shortcut_layer.1", F.conv2d(x, sd[f"{p}.shortcut_layer.0.weight"], stride=s))
        else:
            short = x[:, :, ::s, ::s]  # MaxPool2d(kernel 1, stride s) keeps every s-th pixel
        r = F.conv2d(bn(f"{p}.res_layer.0", x), sd[f"{p}.res_layer.1.weight"], padding=1)
        r = F.conv2d(F.prelu(r, sd[f"{p}.res_layer.2.weight"]), sd[f"{p}.res_layer.3.weight"], stride=s, padding=1)
        r = bn(f"{p}.res_layer.4", r)
        squeezed = F.relu(F.conv2d(r.mean(dim=(2, 3), keepdim=True),
                                   sd[f"{p}.res_layer.5.fc1.weight"]))  # (B, C/16, 1, 1)
        gate = torch.sigmoid(F.conv2d(squeezed, sd[f"{p}.res_layer.5.fc2.weight"]))  # (B, C, 1, 1)
        x = r * gate + short
        unit += 1
    assert unit == 24 and x.shape[1:] == (512, 7, 7)
    x = bn("output_layer.0", x).reshape(len(x), -1)
    x = bn("output_layer.4", F.linear(x, sd["output_layer.3.weight"], sd["output_layer.3.bias"]))
    return x / x.norm(dim=1, keepdim=True)


def random_official_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict of the official layout with random weights and non-trivial BN statistics
    (residual branches damped so 24 units stay in a sane range)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in official_shapes().items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(0)
        elif k.endswith("running_var"):
            sd[k] = torch.rand(shape, generator=g) + 0.5
        elif k.endswith("running_mean") or k.endswith(".bias"):
            sd[k] = (torch.rand(shape, generator=g) - 0.5) * 0.2
        elif len(shape) == 1:  # BN scale, PReLU slope
            sd[k] = torch.rand(shape, generator=g) * 0.5 + (0.1 if "res_layer.4" in k else 0.75)
        else:
            fan_in = math.prod(shape[1:])
            sd[k] = torch.randn(shape, generator=g) * math.sqrt(2.0 / fan_in)
    return sd


@pytest.fixture(scope="module")
def irse_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("irse_weights")
    sd = random_official_state()
    torch.save(sd, folder / "model_ir_se50.pth")  # how pSp's file is stored: a plain state dict
    return folder, sd


@pytest.fixture
def irse_weights(irse_folder, monkeypatch):
    folder, sd = irse_folder
    monkeypatch.setenv("HARNESS_WEIGHTS_DIR", str(folder))
    return folder, sd


def test_the_module_has_the_official_50_layer_keys_and_shapes():
    own = {k: tuple(v.shape) for k, v in IRSEBackbone(IRSE50).state_dict().items()}
    expected = official_shapes()
    assert sorted(set(expected) - set(own)) == [] and sorted(set(own) - set(expected)) == []
    assert own == expected
    assert len(expected) == 1 + 5 + 1 + 24 * 15 + 3 * 6 + 5 + 2 + 5  # 24 units of 15 keys, 3 conv shortcuts
    assert "body.23.res_layer.5.fc2.weight" in own and "body.24.res_layer.0.weight" not in own
    assert [i for i in range(24) if f"body.{i}.shortcut_layer.0.weight" in own] == [3, 7, 21]


def test_saved_official_file_loads_with_weights_only_and_matches_the_reference(irse_folder, monkeypatch):
    folder, sd = irse_folder
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k.get("weights_only")) or real_load(*a, **k))
    model = load_irse50(folder / "model_ir_se50.pth")
    assert calls == [True]
    assert not model.training
    x = torch.rand(3, 3, 112, 112, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        out = model(x)
    ref = reference_embedding(sd, x)
    assert out.shape == (3, 512) and out.dtype == torch.float32
    assert torch.allclose(out.double(), ref, atol=2e-5), (out.double() - ref).abs().max()
    assert (out @ out.T).diagonal().sub(1).abs().max() < 1e-5  # unit length, as the official forward
    assert (ref @ ref.T)[0, 1] < 0.999  # different inputs, different embeddings: the comparison is not vacuous


def test_a_file_without_batch_counters_loads(tmp_path):
    sd = {k: v for k, v in random_official_state(2).items() if not k.endswith("num_batches_tracked")}
    torch.save(sd, tmp_path / "old.pth")  # pre-0.4.1 PyTorch wrote no num_batches_tracked
    model = load_irse50(tmp_path / "old.pth")
    x = torch.zeros(1, 3, 112, 112)
    with torch.no_grad():
        assert torch.allclose(model(x).double(), reference_embedding(sd, x), atol=2e-5)


def _one_line_error(path) -> str:
    with pytest.raises(HarnessError) as info:
        load_irse50(path)
    text = str(info.value)
    assert "\n" not in text and path.name in text
    return text


def test_files_of_another_layout_are_one_line_errors(tmp_path):
    from faceeval.models.iresnet import IRESNETS, IResNet

    torch.save(IResNet(IRESNETS["r50"]).state_dict(), tmp_path / "iresnet.pth")  # arcface_torch backbone.pth
    text = _one_line_error(tmp_path / "iresnet.pth")
    assert "IR-SE-50" in text and "missing" in text and "unexpected" in text
    sd = random_official_state()
    no_affine = {k: v for k, v in sd.items() if k not in ("output_layer.4.weight", "output_layer.4.bias")}
    torch.save(no_affine, tmp_path / "ir_se_50_affine_false.pth")  # IR_SE_50() builds BatchNorm1d(affine=False)
    assert "output_layer.4.bias" in _one_line_error(tmp_path / "ir_se_50_affine_false.pth")
    no_se = {k: v for k, v in sd.items() if ".res_layer.5." not in k}
    torch.save(no_se, tmp_path / "ir_50.pth")  # mode='ir': no SE modules
    assert "res_layer.5.fc" in _one_line_error(tmp_path / "ir_50.pth")
    size224 = dict(sd, **{"output_layer.3.weight": torch.zeros(512, 512 * 14 * 14)})
    torch.save(size224, tmp_path / "ir_se50_224.pth")  # Backbone(224, ...)
    assert "shape mismatch" in _one_line_error(tmp_path / "ir_se50_224.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a torch file")
    assert "not a readable torch state dict" in _one_line_error(tmp_path / "garbage.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    assert "expected a pSp IR-SE-50 state dict" in _one_line_error(tmp_path / "list.pth")


class _RunsCode:
    def __reduce__(self):
        return (exec, ("import builtins; builtins._irse_pickle_ran = True",))


def test_pickled_code_never_runs(tmp_path):
    torch.save({"input_layer.0.weight": _RunsCode()}, tmp_path / "evil.pth")
    _one_line_error(tmp_path / "evil.pth")
    assert not hasattr(builtins, "_irse_pickle_ran")


def test_embedder_feeds_arcface_crops_in_minus_one_to_one(irse_weights):
    from faceeval.metrics.id_backends import IRSEEmbedder, make_embedder

    _, sd = irse_weights
    imgs, five = _demo_crops_and_landmarks(3)
    embedder = make_embedder("arcface_irse50")
    assert isinstance(embedder, IRSEEmbedder) and embedder.standard
    emb = embedder(imgs, five)  # (3, 512)
    assert [n for n, _ in embedder.weight_files()] == ["model_ir_se50.pth"]
    crops = np.stack([arcface_crop(im, f) for im, f in zip(imgs, five)]).astype(np.float64)  # RGB, 112
    x = torch.from_numpy(crops / 127.5 - 1.0).permute(0, 3, 1, 2)
    ref = reference_embedding(sd, x).numpy()
    assert emb.shape == (3, 512) and np.abs(emb - ref).max() < 1e-4
    # the channel order matters: BGR crops give other embeddings, so the comparison can fail
    bgr = reference_embedding(sd, x.flip(1)).numpy()
    assert np.abs(emb - bgr).max() > 1e-3


def test_the_metric_runs_end_to_end_on_the_demo_faces(irse_weights, tmp_path):
    from harness.evaluation import evaluate
    from harness.registry import METRICS

    assert METRICS.resolve("identity_arcface_irse50").requires == ("model_ir_se50.pth",)
    out = tmp_path / "out"
    res = evaluate("demo", ["source"], metrics=["identity_arcface_irse50:crop=psp,score=dot"], num_pairs=6, out=out,
                   mlflow=False, report=False, progress=False, workers=1, log=lambda m: None)
    s = res.summaries[0]
    backend = s["backends"]["identity_arcface_irse50"]
    assert backend["name"] == "arcface_irse50_psp" and backend["standard"] is True
    assert backend["weights"][0][0] == "model_ir_se50.pth"  # then the landmark files of the alignment
    assert s["conventions"]["identity_arcface_irse50"]["crop"] == "psp"
    m = s["metrics"]
    assert m["id_retrieval_top1"]["value"] == 1.0  # the source is its own nearest gallery face
    assert abs(m["id_similarity"]["value"] - 1.0) < 1e-5


def test_reface_preset_runs_the_irse50_instead_of_a_substitute(irse_weights, monkeypatch):
    from faceeval.presets import resolve

    monkeypatch.setenv("HARNESS_WEIGHTS_SEARCH", "")
    folder, _ = irse_weights
    r = resolve("reface", allow_substitute=True)
    assert r.metrics["identity_arcface_irse50"] == {"crop": "psp", "mask": "none", "gallery": "one_per_identity",
                                                    "score": "dot"}  # no face parser here: the mask is dropped
    assert "identity_sface" not in r.metrics
    assert not any(s.startswith("identity: ArcFace") for s in r.substitutions)
    (folder / "79999_iter.pth").write_bytes(b"")  # presence is all resolve() checks; never loaded here
    try:
        r = resolve("reface", allow_substitute=True)
    finally:
        (folder / "79999_iter.pth").unlink()
    assert r.metrics["identity_arcface_irse50"]["mask"] == "parsing"
    assert not any(s.startswith("identity") for s in r.substitutions)
    # without the file the network is substituted, and named
    monkeypatch.setenv("HARNESS_WEIGHTS_DIR", str(folder / "elsewhere"))
    r = resolve("reface", allow_substitute=True)
    assert "identity_sface" in r.metrics and "identity_arcface_irse50" not in r.metrics
    assert any("model_ir_se50.pth" in s and "substituted by identity_sface" in s for s in r.substitutions)
    with pytest.raises(HarnessError, match=r"model_ir_se50.pth; from pSp's README") as info:
        resolve("reface")
    assert "\n" not in str(info.value)
