"""Weight files are found where users already keep them (insightface, torch hub, facefusion,
a face-parsing.PyTorch checkout, extra search roots), in a fixed order, and a file whose
sha256 does not fit is refused, never used."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from faceeval import weights
from harness.cli import app


@pytest.fixture
def places(tmp_path, monkeypatch) -> Path:
    """A home with nothing in it, and every lookup variable pointing inside tmp_path."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("HARNESS_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("HARNESS_SHA_MEMO", str(tmp_path / "sha.json"))
    for var in ("INSIGHTFACE_HOME", "TORCH_HOME", "XDG_CACHE_HOME", "FACEFUSION_HOME", "HARNESS_WEIGHTS_SEARCH"):
        monkeypatch.setenv(var, "")  # empty: unset, and restored after the test (the CLI sets some)
    return tmp_path


def put(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def pin(monkeypatch, name: str, content: bytes) -> None:
    """Pin ``name``'s expected sha256 to that of ``content`` (the real files are not here)."""
    sha = hashlib.sha256(content).hexdigest()
    monkeypatch.setitem(weights.KNOWN, name, dataclasses.replace(weights.KNOWN[name], sha256=sha, sha256_prefix=None))


# (file, env var -> folder below tmp_path or None for the default under HOME, path below that root, place label)
LOCATIONS = [
    ("w600k_r50.onnx", ("INSIGHTFACE_HOME", "if"), "models/buffalo_l/w600k_r50.onnx", "insightface"),
    ("det_10g.onnx", None, "home/.insightface/models/buffalo_l/det_10g.onnx", "insightface"),
    ("glintr100.onnx", None, "home/.insightface/models/antelopev2/glintr100.onnx", "insightface"),
    ("mobilenet_v2-b0353104.pth", ("TORCH_HOME", "th"), "hub/checkpoints/mobilenet_v2-b0353104.pth", "torch hub"),
    ("vgg16-397923af.pth", None, "home/.cache/torch/hub/checkpoints/vgg16-397923af.pth", "torch hub"),
    ("w600k_r50.onnx", ("FACEFUSION_HOME", "ff"), ".assets/models/arcface_w600k_r50.onnx", "facefusion"),
    ("simswap_256.onnx", ("FACEFUSION_HOME", "ff"), ".assets/models/simswap_256.onnx", "facefusion"),
]


@pytest.mark.parametrize("name,env,rel,place", LOCATIONS, ids=[f"{p}:{r}" for _, _, r, p in LOCATIONS])
def test_each_place_is_found(places, monkeypatch, name, env, rel, place):
    content = f"fake {name}".encode()
    pin(monkeypatch, name, content)
    root = places
    if env:
        var, folder = env
        root = places / folder
        monkeypatch.setenv(var, str(root))
    with pytest.raises(weights.WeightNotFound, match=f"weight file {name} not found"):
        weights.locate(name)
    path = put(root / rel, content)
    assert weights.locate(name) == path
    st = weights.status(name)
    assert (st.state, st.path, st.place.split(" (")[0]) == ("present", path, place)
    assert st.sha256 == hashlib.sha256(content).hexdigest()


def test_search_roots_find_other_layouts_and_flat_files(places, monkeypatch):
    # a face-parsing.PyTorch checkout: no checksum is published, so the first file found is used
    checkout = places / "face-parsing.PyTorch"
    path = put(checkout / "res/cp/79999_iter.pth", b"bisenet")
    assert weights.KNOWN["79999_iter.pth"].sha256 is None
    with pytest.raises(weights.WeightNotFound):
        weights.locate("79999_iter.pth")
    weights.set_search_roots([checkout])
    weights.set_search_roots([checkout])  # a second evaluate() in the process adds nothing twice
    assert weights.search_roots() == [checkout.resolve()]
    assert weights.locate("79999_iter.pth") == path
    assert weights.status("79999_iter.pth").state == "present (no pinned sha256)"
    # a flat download folder holding facefusion's name for the ArcFace file
    pin(monkeypatch, "w600k_r50.onnx", b"arcface")
    flat = put(places / "downloads" / "arcface_w600k_r50.onnx", b"arcface")
    monkeypatch.setenv("HARNESS_WEIGHTS_SEARCH", str(places / "downloads"))
    st = weights.status("w600k_r50.onnx")
    assert (st.path, st.place) == (flat, f"search root {places / 'downloads'}")


def test_precedence_weights_dir_then_search_root_then_package_then_other_tools(places, monkeypatch):
    name = "shape_predictor_5_face_landmarks.dat"  # also ships in face_recognition_models
    content = b"five points"
    pin(monkeypatch, name, content)
    monkeypatch.setitem(weights.KNOWN, name, dataclasses.replace(
        weights.KNOWN[name], elsewhere=(("insightface", f"models/buffalo_l/{name}"),)))
    monkeypatch.setenv("HARNESS_WEIGHTS_SEARCH", str(places / "extra"))
    monkeypatch.setenv("INSIGHTFACE_HOME", str(places / "if"))
    package_dir = places / "pkg"
    monkeypatch.setattr(weights.importlib.util, "find_spec",
                        lambda pkg: type("Spec", (), {"submodule_search_locations": [str(package_dir)]}))
    files = [put(places / "weights" / name, content), put(places / "extra" / name, content),
             put(package_dir / weights.KNOWN[name].package_path, content),
             put(places / "if" / "models/buffalo_l" / name, content)]
    expected = ["weights folder", f"search root {places / 'extra'}", "package face_recognition_models",
                f"insightface ({places / 'if'})"]
    for path, place in zip(files, expected):
        st = weights.status(name)
        assert (st.path, st.place) == (path, place)
        path.unlink()  # the next place in the order takes over
    assert weights.status(name).state == "missing"


def test_a_wrong_checksum_is_refused_and_the_next_good_file_used(places, monkeypatch):
    pin(monkeypatch, "w600k_r50.onnx", b"the real arcface")
    bad = put(places / "weights" / "w600k_r50.onnx", b"a truncated download")
    monkeypatch.setenv("INSIGHTFACE_HOME", str(places / "if"))
    good = put(places / "if/models/buffalo_l/w600k_r50.onnx", b"the real arcface")
    assert weights.verified("w600k_r50.onnx")[0] == good
    st = weights.status("w600k_r50.onnx")
    assert st.state == "present" and st.path == good
    assert len(st.refused) == 1 and st.refused[0].startswith(f"{bad}: sha256 ")
    assert "does not match the expected" in st.refused[0]


def test_only_wrong_files_give_a_clear_error_and_wrong_sha_status(places, monkeypatch):
    pin(monkeypatch, "w600k_r50.onnx", b"the real arcface")
    monkeypatch.setenv("FACEFUSION_HOME", str(places / "ff"))
    bad = put(places / "ff/.assets/models/arcface_w600k_r50.onnx", b"another model")
    with pytest.raises(weights.WeightMismatch) as err:
        weights.locate("w600k_r50.onnx")
    msg = str(err.value)
    assert msg.startswith(f"{bad}: sha256 {hashlib.sha256(b'another model').hexdigest()[:12]}")
    assert "does not match the expected" in msg and "not used" in msg and "\n" not in msg
    st = weights.status("w600k_r50.onnx")
    assert (st.state, st.path, st.place) == ("WRONG-SHA", bad, f"facefusion ({places / 'ff'})")
    # a registry entry needing it counts it as missing: it is not usable
    from harness.registry import METHODS

    assert "w600k_r50.onnx" in METHODS.resolve("inswapper_128").missing_weights()
    # and a run says why, on one line: a wrong file is not a missing one
    res = CliRunner().invoke(app, ["run", "--protocol", "demo", "--method", "inswapper_128", "--out",
                                   str(places / "out"), "--no-mlflow"])
    assert res.exit_code != 0  # harness.cli.main turns the error into one stderr line and exit code 1
    line = str(res.exception)
    assert ("\n" not in line and "inswapper_128: cannot use its weights" in line
            and "does not match the expected" in line)
    assert str(bad) in line and "missing" not in line
    listed = CliRunner().invoke(app, ["list", "methods"]).output
    assert "w600k_r50.onnx: refused (wrong sha256)" in listed and "inswapper_128.onnx: not found" in listed


def test_a_torch_hub_prefix_is_checked(places, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(places / "th"))
    put(places / "th/hub/checkpoints/vgg16-397923af.pth", b"not vgg")  # its sha256 does not start with 397923af
    with pytest.raises(weights.WeightMismatch, match="does not start with 397923af"):
        weights.locate("vgg16-397923af.pth")


def test_cli_weights_says_where_each_file_was_found(places, monkeypatch):
    pin(monkeypatch, "w600k_r50.onnx", b"arcface")
    put(places / "if/models/buffalo_l/w600k_r50.onnx", b"arcface")
    put(places / "cp/res/cp/79999_iter.pth", b"bisenet")
    env = {"INSIGHTFACE_HOME": str(places / "if")}
    res = CliRunner().invoke(app, ["weights", "--json", "--weights-search", str(places / "cp")], env=env)
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    files = {f["name"]: f for f in data["files"]}
    assert files["w600k_r50.onnx"]["found_in"] == f"insightface ({places / 'if'})"
    assert files["79999_iter.pth"]["found_in"] == f"search root {(places / 'cp').resolve()}"
    assert files["79999_iter.pth"]["path"] == str((places / "cp/res/cp/79999_iter.pth").resolve())
    assert files["glintr100.onnx"]["state"] == "missing" and files["glintr100.onnx"]["found_in"] is None
    assert str((places / "cp").resolve()) in data["search_roots"]
    res = CliRunner().invoke(app, ["weights"], env=env)
    line = next(ln for ln in res.stdout.splitlines() if " w600k_r50.onnx " in ln)
    assert line.startswith("present") and f"[insightface ({places / 'if'})]" in line
