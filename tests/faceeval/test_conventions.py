"""Evaluation conventions (faceeval.conventions) and presets (faceeval.presets): known answers for
every formula variant, settings checked with a did-you-mean, recorded, never mixed in a table,
and each preset run end to end on the miniature FF++ tree."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from faceeval.conventions import (
    IdentityConvention,
    aggregate,
    angle_error,
    bin_errors,
    gallery_vectors,
    retrieval_scores,
)
from faceeval.errors import HarnessError
from faceeval.metrics.identity import retrieval_hits
from faceeval.presets import PRESETS, resolve
from faceeval.summaries import RunSummary

# --- known answers -------------------------------------------------------------------------


def test_hopenet_bins_of_hand_made_logits_is_reliableswaps_sqrt_mse_dim_over_two():
    a = np.zeros((1, 198))
    b = np.zeros((1, 198))
    b[0, 0], b[0, 1] = 3.0, 4.0  # yaw logits differ by (3, 4): |d| = 5
    b[0, 66], b[0, 67] = 6.0, 8.0  # pitch: |d| = 10; roll equal
    per_angle = bin_errors(a, b, (66, 66, 66))
    assert per_angle.tolist() == [[2.5, 5.0, 0.0]]
    # ReliableSwap's _calc_mse_l2 on the same vectors: sqrt(mean((a - b)^2) * 66) / 2 per angle
    yaw = np.sqrt(np.mean((a[:, :66] - b[:, :66]) ** 2) * 66) / 2
    assert per_angle[0, 0] == pytest.approx(yaw)


def test_hopenet_bins_over_a_set_is_the_mean_of_the_per_angle_roots():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(7, 120 + 66 + 66)), rng.normal(size=(7, 120 + 66 + 66))
    per_angle = bin_errors(a, b, (120, 66, 66))  # (7, 3)
    expected = np.mean([np.sqrt(np.mean((a[:, lo:hi] - b[:, lo:hi]) ** 2) * (hi - lo)) / 2
                        for lo, hi in ((0, 120), (120, 186), (186, 252))])
    assert aggregate(per_angle, "rms") == pytest.approx(expected)
    assert aggregate(per_angle, "mean") != pytest.approx(expected)  # the two aggregates differ


def test_sqrt_mse_dim_over_the_set_is_the_rms_of_the_per_pair_l2():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(9, 64)), rng.normal(size=(9, 64))
    l2 = np.linalg.norm(a - b, axis=1)
    assert aggregate(l2, "rms") == pytest.approx(np.sqrt(np.mean((a - b) ** 2) * 64))
    assert aggregate(l2, "mean") == pytest.approx(l2.mean())


def test_pose_l2_over_three_or_two_angles():
    a, b = np.array([[0.0, 0.0, 0.0]]), np.array([[3.0, 4.0, 12.0]])
    assert angle_error(a, b, "l2_3angles").tolist() == [13.0]
    assert angle_error(a, b, "l2_2angles").tolist() == [5.0]


def _unit(deg: float) -> np.ndarray:
    r = np.deg2rad(deg)
    return np.array([np.cos(r), np.sin(r)], np.float32)


def test_dot_and_cosine_rank_identity_means_differently():
    # identity A: two faces 120 degrees apart around 0 degrees (mean length 0.5); B: two faces at 60 degrees (length 1)
    faces = np.stack([_unit(60), _unit(-60), _unit(60), _unit(60)])
    ids = ["A", "A", "B", "B"]
    gallery, gallery_ids = gallery_vectors(faces, ids, "identity_mean")
    assert gallery_ids == ["A", "B"]
    assert np.linalg.norm(gallery, axis=1) == pytest.approx([0.5, 1.0])
    query = _unit(20)[None]  # cos to A's direction 0.94, to B's 0.77
    assert retrieval_hits(query, gallery, gallery_ids, ["A"], ks=(1,), score="cosine")[1].tolist() == [True]
    # the dot product sees the means' length: 0.5 * 0.94 < 0.77
    assert retrieval_hits(query, gallery, gallery_ids, ["B"], ks=(1,), score="dot")[1].tolist() == [True]
    assert retrieval_scores(query, gallery, "dot")[0] == pytest.approx([0.5 * np.cos(np.deg2rad(20)),
                                                                       np.cos(np.deg2rad(40))], abs=1e-6)


def test_one_per_identity_and_every_frame_keep_each_vector():
    faces = np.eye(3, dtype=np.float32)
    vectors, ids = gallery_vectors(faces, ["x", "x", "y"], "every_frame")
    assert ids == ["x", "x", "y"] and vectors.shape == (3, 3)


# --- settings: checked, did-you-mean, fingerprints ---------------------------------------------


def test_unknown_values_get_a_did_you_mean():
    with pytest.raises(HarnessError, match="did you mean 'identity_mean'"):
        IdentityConvention(gallery="identity_means")
    from harness.registry import METRICS

    with pytest.raises(HarnessError, match="did you mean 'hopenet_bins'"):
        METRICS.create("pose_whenet", formula="hopenet_bin")
    with pytest.raises(HarnessError, match="bin classifier"):
        METRICS.create("pose", formula="hopenet_bins")  # PnP has no logits
    with pytest.raises(HarnessError, match="needs an expression code"):
        METRICS.create("expression", formula="sqrt_mse_dim")
    with pytest.raises(HarnessError, match="unknown convention 'reface2'; did you mean 'reface'"):
        resolve("reface2")


def test_default_settings_keep_todays_fingerprint_and_others_change_it():
    from harness.registry import METRICS

    default = METRICS.create("identity_sface")
    assert "convention" not in default.fingerprint()  # cached runs of today stay valid
    assert default.convention() == {"crop": "model", "mask": "none", "gallery": "one_per_identity", "score": "cosine"}
    other = METRICS.create("identity_sface", score="dot")
    assert other.fingerprint() != default.fingerprint()
    assert other._ns() == default._ns()  # the score does not change the embeddings
    assert METRICS.create("identity_sface", crop="psp")._ns() != default._ns()
    pose = METRICS.create("pose_whenet", formula="hopenet_bins")
    assert pose.keys[0].key == "pose_error_bins_whenet" and pose.keys[0].aggregate == "rms"
    assert pose.keys[0].parts == pose.pair_columns


def test_psp_crop_takes_refaces_region():
    from faceeval.metrics.identity import convention_crops

    img = np.zeros((256, 256, 3), np.uint8)
    img[35:223, 32:220] = 200  # inside REFace's region
    crop = convention_crops([img], IdentityConvention(crop="psp"))[0]
    assert crop.shape == (112, 112, 3) and crop.min() == 200
    whole = convention_crops([img], IdentityConvention(crop="resize"))[0]
    assert whole.shape == (112, 112, 3) and whole.min() == 0


# --- presets ---------------------------------------------------------------------------------


def test_every_preset_setting_cites_a_file_and_line_or_a_note():
    for p in PRESETS.values():
        for role in p.roles:
            assert role.cite, f"{p.name} {role.kind} cites nothing"
            for line in role.cite:
                assert re.search(r"lines? \d+", line) or "NOTE:" in line, line
        for line in p.cite:
            assert re.search(r"lines? \d+", line) or "NOTE:" in line, line


def test_the_conventions_page_shows_every_presets_sources():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "conventions.md").read_text()
    for p in PRESETS.values():
        assert f"### `{p.name}`" in doc
        for line in [c for role in p.roles for c in role.cite] + list(p.cite):
            assert line in doc, f"docs/conventions.md lacks {p.name}'s source: {line[:80]}"


def test_missing_networks_are_one_line_naming_the_files_or_substituted():
    with pytest.raises(HarnessError) as info:
        resolve("reliableswap")
    text = str(info.value)
    assert "\n" not in text
    for f in ("net_sphere20_data_vggface2_acc_9955.pth", "hopenet_robust_alpha1.pkl", "deep3dfacerecon_epoch_20.pth"):
        assert f in text
    r = resolve("reliableswap", allow_substitute=True)
    assert r.metrics["identity_sface"] == {"crop": "resize", "mask": "none", "gallery": "every_frame",
                                           "score": "cosine"}
    assert r.metrics["pose_whenet"] == {"formula": "hopenet_bins"}
    assert r.options == {"ffpp": {"sampling": "even", "compression": "c23"}}
    assert len(r.substitutions) == 3 and all("substituted by" in s for s in r.substitutions)
    assert resolve("codeswap").substitutions == ()  # the paper's account runs on the default suite


def test_flat_mlflow_params_carry_the_convention():
    from faceeval.tracking import _flat_params

    summary = RunSummary.from_dict({
               "finished": "", "environment": {"git_commit": "x", "python": "3", "packages": {}}, "protocol": "demo",
               "protocol_version": "1", "manifest_sha256": "m", "gallery_sha256": "g", "seed": 0, "num_pairs": 1,
               "resolution": 256, "method": "source", "method_key": "k", "device": "cpu", "protocol_settings": {},
               "method_info": {}, "backends": {}, "convention": "reface",
               "conventions": {"identity_sface": {"score": "dot"}}, "substitutions": ["identity: x substituted by y"]})
    params = _flat_params(summary)
    assert params["convention"] == "reface"
    assert params["convention.identity_sface.score"] == "dot"
    assert params["substituted.0"] == "identity: x substituted by y"


def test_a_contradicting_protocol_option_is_refused():
    from harness.evaluation import _preset_options

    assert _preset_options("reliableswap", {"sampling": "even"}, {"pairing": "split"}) == {"sampling": "even",
                                                                                          "pairing": "split"}
    with pytest.raises(HarnessError, match="contradicts --convention reliableswap"):
        _preset_options("reliableswap", {"sampling": "even"}, {"sampling": "random"})


# --- end to end ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ffpp_tree(tmp_path_factory):
    from protocols.fixtures import write_ffpp

    return write_ffpp(tmp_path_factory.mktemp("ffpp"), num_synthetic=3, carphone=False)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_each_preset_runs_on_the_miniature_ffpp_tree(name, ffpp_tree, tmp_path):
    from harness.evaluation import evaluate

    out = tmp_path / "out"
    res = evaluate("ffpp", ["source", "target"], root=ffpp_tree.root, num_pairs=8, convention=name,
                   allow_substitute=True, out=out, mlflow=False, report=True, progress=False, workers=1,
                   log=lambda m: None)
    s = res.summaries[0]
    expected = resolve(name, allow_substitute=True)
    assert s["convention"] == name
    assert s["conventions"] == expected.metrics
    assert s["substitutions"] == list(expected.substitutions)
    for key, value in expected.options.get("ffpp", {}).items():
        assert s["protocol_settings"][key] == value
    stored = json.loads((out / "results.json").read_text())["summaries"][0]
    assert stored["conventions"] == expected.metrics
    table = (out / "report" / "table1.md").read_text()
    assert f"convention: {name}" in table
    assert table.count("SUBSTITUTED") == len(expected.substitutions)
    top1 = next(e for k, e in s["metrics"].items() if k.startswith("id_retrieval_top1"))
    assert top1["value"] == 1.0  # the source itself is always retrieved, under any convention


def test_runs_under_two_conventions_are_never_one_table(tmp_path):
    from faceeval.summaries import load_summaries
    from harness.evaluation import evaluate
    from reports.tables import build_table

    out = tmp_path / "out"
    kw = dict(out=out, mlflow=False, report=False, progress=False, workers=1, log=lambda m: None)
    evaluate("demo", ["source", "target"], metrics=["identity_sface"], **kw)
    evaluate("demo", ["source"], metrics=["identity_sface:gallery=identity_mean,score=dot"], **kw)
    runs = load_summaries(out)
    assert len({s.run_id for s in runs}) == 3  # a new convention is a new run, never the cached one
    table = build_table(runs)
    assert table.methods == ["source"]  # target's run was under the other convention: left out
    evaluate("demo", ["source"], metrics=["identity_sface"], convention="codeswap", **kw)
    assert build_table(load_summaries(out)).methods == ["source"]


# --- harness report --conventions ------------------------------------------------------------


def test_kendall_tau_and_ranks_of_constructed_values():
    from reports.sensitivity import kendall_tau, ranks

    a = {"m1": 0.9, "m2": 0.5, "m3": 0.1}
    assert ranks(a, higher_is_better=True) == {"m1": 1, "m2": 2, "m3": 3}
    assert ranks(a, higher_is_better=False) == {"m1": 3, "m2": 2, "m3": 1}
    assert kendall_tau(a, a) == pytest.approx(1.0)
    assert kendall_tau(a, {"m1": 0.1, "m2": 0.5, "m3": 0.9}) == pytest.approx(-1.0)


def test_report_conventions_rescores_cached_swaps_under_each_preset(tmp_path):
    from faceeval.summaries import load_summaries
    from harness.evaluation import evaluate
    from harness.rescore import write_sensitivity

    out = tmp_path / "out"
    evaluate("demo", ["source", "target", "classical"], metrics=["identity_sface", "pose_whenet"], out=out,
             mlflow=False, report=False, progress=False, workers=1, log=lambda m: None)
    path = write_sensitivity(out, ["codeswap", "reliableswap"], allow_substitute=True, log=lambda m: None)
    text = path.read_text()
    assert "| classical |" in text and "Kendall τ" in text and "SUBSTITUTED" in text
    rescored = [s for s in load_summaries(out) if s.convention]
    assert {s.convention for s in rescored} == {"codeswap", "reliableswap"}
    assert all(s.swaps["computed"] == 0 for s in rescored)  # nothing swapped again
    bins = next(s for s in rescored if s.convention == "reliableswap" and s.method == "classical")
    assert "pose_error_bins_whenet" in bins.metrics
    with pytest.raises(HarnessError, match="did you mean 'reface'"):
        write_sensitivity(out, ["refac"])


def test_rescoring_never_swaps(tmp_path):
    from harness.evaluation import evaluate

    with pytest.raises(HarnessError, match="rescoring never swaps"):
        evaluate("demo", ["target"], metrics=["identity_sface"], out=tmp_path / "o", mlflow=False, report=False,
                 progress=False, workers=1, cached_swaps_only=True, log=lambda m: None)
