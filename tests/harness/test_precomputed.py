"""precomputed + export-pairs: the round trip, both namings, missing and extra outputs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from faceeval.errors import HarnessError
from faceeval.images import load_rgb, save_png, to_tensor
from harness.cli import app
from harness.export import export_pairs
from methods.precomputed import PrecomputedMethod, names_key
from protocols.demo import DemoProtocol


@pytest.fixture(scope="module")
def demo():
    return DemoProtocol(num_pairs=4).build()


def _fake_output(pairset, pair):
    """A recognisable 'swap': the target with its left half taken from the source, at 128 px."""
    src, tgt = load_rgb(pairset.path(pair.source)), load_rgb(pairset.path(pair.target))
    out = tgt.copy()
    out[:, :128] = src[:, :128]
    return out


def _batch(method, pairset):
    pairs = list(pairset.pairs)
    src = to_tensor(np.stack([load_rgb(pairset.path(p.source)) for p in pairs]))
    tgt = to_tensor(np.stack([load_rgb(pairset.path(p.target)) for p in pairs]))  # (B, 3, 256, 256)
    return method.swap_batch(pairs, src, tgt), tgt


@pytest.mark.parametrize("naming", ["pair_id", "names"])
def test_reads_outputs_by_either_naming(demo, tmp_path, naming):
    for p in demo.pairs:
        stem = p.pair_id if naming == "pair_id" else names_key(p)
        save_png(tmp_path / f"{stem}.png", _fake_output(demo, p))
    m = PrecomputedMethod(dir=tmp_path)
    assert m.prepare(demo) == []
    assert m.describe()["resolved_key"] == naming
    out, _ = _batch(m, demo)
    expected = to_tensor(np.stack([_fake_output(demo, p) for p in demo.pairs]))
    assert torch.equal(out, expected)


def test_missing_outputs_are_listed_and_extra_reported(demo, tmp_path):
    for p in demo.pairs[1:]:
        save_png(tmp_path / f"{p.pair_id}.png", _fake_output(demo, p))
    save_png(tmp_path / "stray.png", _fake_output(demo, demo.pairs[0]))
    with pytest.raises(HarnessError, match=rf"1 of 4 pairs have no output.*{demo.pairs[0].pair_id}"):
        PrecomputedMethod(dir=tmp_path).prepare(demo)
    m = PrecomputedMethod(dir=tmp_path, allow_missing="true")
    notes = m.prepare(demo)
    assert len(notes) == 2 and "no output" in notes[0] and "stray.png" in notes[1]
    out, tgt = _batch(m, demo)
    assert torch.equal(out[0], tgt[0])  # the missing one is the unchanged target, as the note says


def test_needs_a_folder(monkeypatch):
    monkeypatch.delenv("HARNESS_PRECOMPUTED_DIR", raising=False)
    with pytest.raises(HarnessError, match="precomputed.dir"):
        PrecomputedMethod()


def test_fingerprint_follows_file_content(demo, tmp_path):
    p = demo.pairs[0]
    save_png(tmp_path / f"{p.pair_id}.png", _fake_output(demo, p))
    fp1 = PrecomputedMethod(dir=tmp_path).fingerprint()
    save_png(tmp_path / f"{p.pair_id}.png", load_rgb(demo.path(p.target)))
    assert PrecomputedMethod(dir=tmp_path).fingerprint() != fp1


def test_export_then_score_round_trip(tmp_path):
    runner = CliRunner()
    exp = tmp_path / "exp"
    res = runner.invoke(app, ["export-pairs", "--protocol", "demo", "--num-pairs", "4", "--out", str(exp),
                              "--cache", str(tmp_path / "h")])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader((exp / "pairs.csv").open()))
    assert len(rows) == 4 and (exp / rows[0]["source_file"]).is_file() and (exp / rows[0]["target_file"]).is_file()
    meta = json.loads((exp / "export.json").read_text())
    pairset = DemoProtocol(num_pairs=4).build()
    assert meta["manifest_sha256"] == pairset.manifest_sha256
    for name in ("FSGAN", "MegaFS", "InfoSwap", "DiffSwap", "BlendFace", "E4S"):
        assert name in (exp / "README.md").read_text()
    # "another repository": swap = the exported source, written where the README says
    for r in rows:
        save_png(exp / r["output_file"], load_rgb(exp / r["source_file"]))
    res = runner.invoke(app, ["run", "--protocol", "demo", "--num-pairs", "4", "--method", "precomputed",
                              "--method-option", f"precomputed.dir={exp / 'outputs'}",
                              "--method-option", "precomputed.label=ext_source",
                              "--out", str(tmp_path / "h"), "--no-mlflow", "--no-report", "--no-progress"])
    assert res.exit_code == 0, res.output
    summary = json.loads(next((tmp_path / "h" / "runs" / "demo").glob("ext_source-*/summary.json")).read_text())
    assert summary["method"] == "ext_source"
    assert summary["metrics"]["id_retrieval_top1_sface"]["value"] == 1.0  # the sources themselves came back


def test_export_refuses_a_different_pair_set(tmp_path):
    export_pairs(DemoProtocol(num_pairs=3).build(), tmp_path)
    export_pairs(DemoProtocol(num_pairs=3).build(), tmp_path)  # same pairs: fine
    with pytest.raises(HarnessError, match="different pair set"):
        export_pairs(DemoProtocol(num_pairs=3, seed=1).build(), tmp_path)


def test_runner_needs_a_swap_method_and_its_default_hooks_suffice(demo, tmp_path):
    """A SwapMethod with only swap() runs on the base class's hooks; an object that only
    looks like one is refused with a clear error instead of being probed."""
    from faceeval.api import SwapMethod
    from faceeval.cache import FeatureStore
    from faceeval.metrics.identity import IdentityMetric
    from harness.runner import RunConfig, run_method

    class Bare(SwapMethod):
        name = "bare"

        def swap(self, source, target):
            return target.clone()

    class LooksLikeOne:
        name, resolution = "duck", None

        def swap(self, source, target):
            return target.clone()

    cfg = RunConfig(out_dir=tmp_path, progress=False, bootstrap_resamples=50)
    fs = FeatureStore(tmp_path / "f.sqlite")
    s = run_method(Bare(), demo, [IdentityMetric()], cfg, fs)
    with pytest.raises(HarnessError, match="LooksLikeOne is not a faceeval.api.SwapMethod"):
        run_method(LooksLikeOne(), demo, [IdentityMetric()], cfg, fs)
    fs.close()
    assert s.num_pairs == 4 and s.metrics["id_retrieval_top1_dlib"].value == 0.0


def test_outputs_of_another_export_are_refused(tmp_path):
    exp = export_pairs(DemoProtocol(num_pairs=3).build(), tmp_path / "exp")
    other = DemoProtocol(num_pairs=3, seed=5).build()
    for p in other.pairs:
        save_png(exp / "outputs" / f"{p.pair_id}.png", _fake_output(other, p))
    with pytest.raises(HarnessError, match="not for this run's pairs"):
        PrecomputedMethod(dir=exp / "outputs").prepare(other)
