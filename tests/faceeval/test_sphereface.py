"""ReliableSwap's recogniser, CosFace sphere20 (faceeval/models/sphereface.py): a checkpoint in the
official format (key names and shapes of ReliableSwap's modules/third_party/cosface/net.py, random
weights) loads with weights_only, gives what a functional re-computation written here gives on
ReliableSwap's input (torchvision ToTensor + Normalize on RGB, bilinear align_corners=True to 112),
and runs as `identity_cosface_sphere20` and under `--convention reliableswap` without substitution."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from faceeval.errors import HarnessError

FILE = "net_sphere20_data_vggface2_acc_9955.pth"
UNITS = (1, 2, 4, 1)  # net.py line 23: sphere type 20
WIDTHS = (3, 64, 128, 256, 512)  # net.py line 28


def official_shapes() -> dict[str, tuple[int, ...]]:
    """Key -> shape of ReliableSwap's sphere20 state dict, written out from net.py (not from the module)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for i, units in enumerate(UNITS, start=1):
        cin, c = WIDTHS[i - 1], WIDTHS[i]
        shapes[f"layer{i}.0.weight"] = (c, cin, 3, 3)  # Conv2d(inplanes, planes, 3, stride, 1): bias on
        shapes[f"layer{i}.0.bias"] = (c,)
        shapes[f"layer{i}.1.weight"] = (c,)  # PReLU(planes)
        for j in range(2, 2 + units):
            shapes.update({f"layer{i}.{j}.conv1.weight": (c, c, 3, 3), f"layer{i}.{j}.prelu1.weight": (c,),
                           f"layer{i}.{j}.conv2.weight": (c, c, 3, 3), f"layer{i}.{j}.prelu2.weight": (c,)})
    shapes["fc.weight"] = (512, 512 * 7 * 7)  # net.py line 37: "for (112,112) input"
    shapes["fc.bias"] = (512,)
    return shapes


def random_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in official_shapes().items():
        if "prelu" in key or key.endswith(".1.weight"):
            state[key] = torch.rand(shape, generator=g) * 0.3 + 0.05  # slopes of the negative part
        elif key.endswith("bias"):
            state[key] = torch.randn(shape, generator=g) * 0.05
        else:
            fan_in = int(np.prod(shape[1:]))
            state[key] = torch.randn(shape, generator=g) * (0.7 / fan_in**0.5)
    return state


def reference_forward(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """net.py's forward in functional ops: per stage a stride-2 conv with bias and PReLU, then
    units x + prelu2(conv2(prelu1(conv1(x)))); flatten; fc."""
    for i, units in enumerate(UNITS, start=1):
        x = F.prelu(F.conv2d(x, state[f"layer{i}.0.weight"], state[f"layer{i}.0.bias"], stride=2, padding=1),
                    state[f"layer{i}.1.weight"])
        for j in range(2, 2 + units):
            p = f"layer{i}.{j}."
            y = F.prelu(F.conv2d(x, state[p + "conv1.weight"], padding=1), state[p + "prelu1.weight"])
            x = x + F.prelu(F.conv2d(y, state[p + "conv2.weight"], padding=1), state[p + "prelu2.weight"])
    return F.linear(x.reshape(len(x), -1), state["fc.weight"], state["fc.bias"])


def reliableswap_input(images: list[np.ndarray]) -> torch.Tensor:
    """ReliableSwap's path to the recogniser: PIL RGB -> ToTensor -> Normalize(0.5, 0.5)
    (inference/ffplus/dataloader.py lines 168-172, 195-200), then eval.py line 212."""
    from PIL import Image
    from torchvision import transforms

    t = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    x = torch.stack([t(Image.fromarray(im)) for im in images])  # (N, 3, H, W)
    return F.interpolate(x, size=112, mode="bilinear", align_corners=True)  # (N, 3, 112, 112)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-4) -> bool:
    return bool((a - b).abs().max() <= rel * b.abs().max())


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """(state, path): a random sphere20 saved the way ReliableSwap's net.py saves (torch.save of the state dict)."""
    state = random_state()
    path = tmp_path_factory.mktemp("sphere") / FILE
    torch.save(state, path)
    return state, path


@pytest.fixture(scope="module")
def demo_faces():
    from faceeval.faces.landmarks import CropLandmarks
    from faceeval.images import load_rgb
    from protocols.demo import DEMO_DIR

    imgs = [load_rgb(p) for p in sorted(DEMO_DIR.glob("*.png"))[:3]]  # (256, 256, 3) FFHQ-aligned
    five = CropLandmarks().compute(imgs)[:, 136:146].reshape(len(imgs), 5, 2)
    return imgs, five


@pytest.fixture
def weights_dir(tmp_path, monkeypatch, official):
    import os

    monkeypatch.setenv("HARNESS_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("HARNESS_SHA_MEMO", str(tmp_path / "sha.json"))
    (tmp_path / "weights").mkdir()
    os.link(official[1], tmp_path / "weights" / FILE)  # the file in the weights folder, no second copy
    return tmp_path / "weights"


# --- the network ---------------------------------------------------------------------------------


def test_keys_and_shapes_are_reliableswaps():
    from faceeval.models.sphereface import Sphere20

    own = {k: tuple(v.shape) for k, v in Sphere20().state_dict().items()}
    assert own == official_shapes()


def test_checkpoint_loads_weights_only_and_matches_a_functional_recomputation(official, demo_faces):
    from faceeval.models.sphereface import load_sphere20, sphere20_input

    state, path = official
    model = load_sphere20(path)
    imgs, _ = demo_faces
    x = sphere20_input(torch.from_numpy(np.stack(imgs)))  # (3, 3, 112, 112) from 256 px crops
    ref_x = reliableswap_input(imgs)
    assert x.shape == (3, 3, 112, 112) and (x - ref_x).abs().max() < 1e-5
    with torch.no_grad():
        out, ref = model(x), reference_forward(state, ref_x)
    assert out.shape == (3, 512)
    assert _close(out, ref) and ref.abs().max() > 1e-3  # not a trivially zero network
    assert not _close(out[0], out[1], rel=0.05)  # different faces, different outputs


def test_input_is_rgb_in_minus_one_to_one_and_bilinear_align_corners():
    """Known answers: 0 -> -1, 255 -> 1, channels kept in RGB order; align_corners=True keeps the
    corner pixels of a 256 image exactly (an area or half-pixel resize averages them)."""
    from faceeval.models.sphereface import sphere20_input

    img = np.zeros((1, 256, 256, 3), np.uint8)
    img[..., 0] = 255  # red
    x = sphere20_input(torch.from_numpy(img))
    assert x.shape == (1, 3, 112, 112)
    # bilinear weights of a constant image sum to 1 within float32 rounding (the vectorised
    # kernel's order differs with the thread count), so 1e-6, not ==
    assert torch.allclose(x[0, 0], torch.ones(112, 112), atol=1e-6)
    assert torch.allclose(x[0, 1:], -torch.ones(2, 112, 112), atol=1e-6)
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, (1, 256, 256, 3), dtype=np.uint8)
    y = sphere20_input(torch.from_numpy(noise))[0]
    for (r, c), (rr, cc) in (((0, 0), (0, 0)), ((0, -1), (0, -1)), ((-1, 0), (-1, 0)), ((-1, -1), (-1, -1))):
        assert torch.allclose(y[:, r, c], torch.from_numpy(noise[0, rr, cc] / 127.5 - 1.0).float(), atol=1e-6)
    same = np.full((1, 112, 112, 3), 51, np.uint8)  # already 112: no resampling at all
    assert torch.allclose(sphere20_input(torch.from_numpy(same)), torch.tensor((51 / 255 - 0.5) / 0.5), atol=1e-6)


def test_a_module_prefixed_checkpoint_loads(official, tmp_path):
    from faceeval.models.sphereface import load_sphere20

    state, path = official
    wrapped = tmp_path / "dp.pth"
    torch.save({"module." + k: v for k, v in state.items()}, wrapped)  # nn.DataParallel's state dict
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        assert torch.equal(load_sphere20(wrapped)(x), load_sphere20(path)(x))


def test_files_of_another_layout_are_one_line_errors(official, tmp_path):
    from faceeval.models.iresnet import IRESNETS, IResNet
    from faceeval.models.sphereface import load_sphere20

    state, _ = official

    def error(obj, name: str) -> str:
        path = tmp_path / name
        if isinstance(obj, bytes):
            path.write_bytes(obj)
        else:
            torch.save(obj, path)
        with pytest.raises(HarnessError) as info:
            load_sphere20(path)
        text = str(info.value)
        assert "\n" not in text and name in text, text
        return text

    iresnet = IResNet(IRESNETS["r18"]).state_dict()
    assert "keys do not match a sphere20" in error(iresnet, "backbone.pth")
    narrow = dict(state, **{"fc.weight": torch.zeros(512, 512 * 7 * 6)})  # CosFace_pytorch's 112x96 head
    assert "112x96" in error(narrow, "sphere20_112x96.pth")
    missing = {k: v for k, v in state.items() if k != "layer3.5.prelu2.weight"}
    assert "missing ['layer3.5.prelu2.weight']" in error(missing, "partial.pth")
    assert "not a readable torch" in error(b"\x00garbage" * 10, "garbage.pth")
    assert "expected a sphere20 state dict" in error([1, 2, 3], "list.pth")


def test_pickled_code_never_runs(tmp_path):
    from faceeval.models.sphereface import load_sphere20

    class Evil:
        def __reduce__(self):
            return (print, ("pickled code ran",))

    path = tmp_path / "evil.pth"
    torch.save({"fc.weight": Evil()}, path)
    with pytest.raises(HarnessError, match="not a readable torch"):
        load_sphere20(path)


# --- the identity backend, metric and preset -------------------------------------------------------


def test_embedder_on_demo_faces_equals_the_reference(weights_dir, official, demo_faces):
    """crop=model: ArcFace 5-point crop to 112, then the network; crop=resize (the preset's): the
    metric's feed (IdentityMetric._fed) is ReliableSwap's bilinear align_corners resize of the
    whole 256 px crop, not cv2's INTER_AREA."""
    from faceeval.faces.arcface import ARCFACE_TEMPLATE_112, arcface_crop
    from faceeval.metrics.id_backends import make_embedder
    from faceeval.metrics.identity import IdentityMetric

    state, _ = official
    imgs, five = demo_faces
    emb = make_embedder("cosface_sphere20")(imgs, five)
    with torch.no_grad():
        ref = reference_forward(state, reliableswap_input([arcface_crop(im, f) for im, f in zip(imgs, five)]))
    assert emb.shape == (3, 512)
    assert np.abs(emb - _unit(ref.numpy())).max() < 1e-4

    metric = IdentityMetric(backend="cosface_sphere20", crop="resize")
    fed = metric._fed(imgs)
    assert all(f.shape == (112, 112, 3) for f in fed)
    template = np.repeat(ARCFACE_TEMPLATE_112[None].astype(np.float32), len(imgs), axis=0)
    resized = metric.embedder(fed, template)  # what IdentityMetric._embed computes under crop=resize
    with torch.no_grad():
        ref = _unit(reference_forward(state, reliableswap_input(imgs)).numpy())
    assert np.abs(resized - ref).max() < 1e-4
    with torch.no_grad():  # the harness's other resize gives measurably different vectors
        import cv2

        area = [cv2.resize(im, (112, 112), interpolation=cv2.INTER_AREA) for im in imgs]
        other = _unit(reference_forward(state, reliableswap_input(area)).numpy())
    assert np.abs(other - ref).max() > 1e-3


def test_metric_runs_end_to_end_on_the_demo(weights_dir, tmp_path):
    from harness import evaluate
    from harness.registry import METRICS

    assert "identity_cosface_sphere20" in METRICS.names()
    res = evaluate("demo", ["source", "target"], metrics=["identity_cosface_sphere20:crop=resize"], num_pairs=4,
                   out=tmp_path / "out", device="cpu", mlflow=False, report=False, progress=False, workers=1,
                   log=lambda m: None)
    by_method = {s["method"]: s for s in res.summaries}
    assert by_method["source"]["metrics"]["id_retrieval_top1"]["value"] == 1.0
    assert by_method["source"]["metrics"]["id_similarity"]["value"] == pytest.approx(1.0, abs=1e-5)
    assert by_method["target"]["metrics"]["id_retrieval_top1"]["value"] == 0.0
    backend = by_method["source"]["backends"]["identity_cosface_sphere20"]
    assert backend["name"] == "cosface_sphere20_vggface2" and FILE in str(backend["weights"])


def test_reliableswap_preset_runs_the_network_without_substituting_it(weights_dir, tmp_path):
    from faceeval.presets import resolve
    from harness import evaluate

    r = resolve("reliableswap", allow_substitute=True)
    assert r.metrics["identity_cosface_sphere20"] == {"crop": "resize", "mask": "none", "gallery": "every_frame",
                                                      "score": "cosine"}
    assert "identity_sface" not in r.metrics
    assert not [s for s in r.substitutions if s.startswith("identity")]
    with pytest.raises(HarnessError) as info:  # the other networks are still missing, the recogniser is not
        resolve("reliableswap")
    assert FILE not in str(info.value) and "hopenet_robust_alpha1.pkl" in str(info.value)

    res = evaluate("demo", ["source"], convention="reliableswap", allow_substitute=True, num_pairs=3,
                   out=tmp_path / "out", device="cpu", mlflow=False, report=False, progress=False, workers=1,
                   log=lambda m: None)
    s = res.summaries[0]
    assert "identity_cosface_sphere20" in s["conventions"]
    assert not [x for x in s["substitutions"] if x.startswith("identity")]
    assert s["metrics"]["id_retrieval_top1"]["value"] == 1.0


def test_without_the_file_the_preset_substitutes_sface(monkeypatch, tmp_path):
    from faceeval.presets import resolve

    monkeypatch.setenv("HARNESS_WEIGHTS_DIR", str(tmp_path))
    r = resolve("reliableswap", allow_substitute=True)
    assert "identity_sface" in r.metrics and "identity_cosface_sphere20" not in r.metrics
    assert any(s.startswith("identity") and FILE in s for s in r.substitutions)
