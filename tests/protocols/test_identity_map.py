"""FF++ identities are people: the identity map (video -> person), its checks, its effect on the
gallery and on retrieval, and `harness prepare ffpp --suggest-identity-map`."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from faceeval.metrics.identity import retrieval_hits
from helpers import REPO
from layout_helpers import layout_problems
from protocols.ffpp import FFppProtocol, video_dir
from protocols.fixtures import DEMO_DIR, VIDEO_FACES, _synthetic_video, write_ffpp
from protocols.identity_map import propose_groups, read_identity_map

CLI = [sys.executable, "-m", "harness.cli"]
TWIN = "006"  # a second video of the person of video 000 (the same face, another clip)


def write_map(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """The miniature FF++ tree (000-004 synthetic, 005 carphone) plus video 006 made of video 000's face."""
    fx = write_ffpp(tmp_path_factory.mktemp("ffpp-twins"))
    face = Image.open(DEMO_DIR / VIDEO_FACES[0]).convert("RGB")
    _synthetic_video(fx.root / video_dir("c23") / f"{TWIN}.mp4", face, seed=17, frames=30, gap_every=None)
    return fx


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("out")  # one output folder: crops and features are made once


@pytest.fixture(scope="module")
def twin_map(tmp_path_factory):
    return write_map(tmp_path_factory.mktemp("maps") / "people.csv", f"video,person\n000,p000\n{TWIN},p000\n")


# --- the map changes a hit the way it should -------------------------------------------------


def test_constructed_embeddings_a_landing_on_the_same_persons_other_video_becomes_a_hit(tmp_path):
    videos = ["043", "343", "100"]
    gallery = np.eye(3, 4, dtype=np.float32)  # (3, 4): one unit vector per video
    query = np.array([[0.1, 0.9, 0.0, 0.1],  # a swap of 043's person that lands on 343
                      [0.9, 0.1, 0.0, 0.1],  # a swap of 043's person that lands on 043
                      [0.0, 0.9, 0.1, 0.1]], np.float32)  # a swap of 100's person that lands on 343
    truth_videos = ["043", "043", "100"]
    ident, _ = read_identity_map(write_map(tmp_path / "m.csv", "video,person\n043,p1\n343,p1\n"), videos)
    by_video = retrieval_hits(query, gallery, videos, truth_videos, ks=(1,))[1]
    by_person = retrieval_hits(query, gallery, [ident.person(v) for v in videos],
                               [ident.person(v) for v in truth_videos], ks=(1,))[1]
    assert by_video.tolist() == [False, True, False]
    assert by_person.tolist() == [True, True, False]  # only the landing on the same person's video changes


def test_the_map_labels_gallery_and_pairs_with_people_and_is_recorded(tree, out, twin_map):
    plain = FFppProtocol(root=tree.root, cache_dir=out / "cache").build()
    mapped = FFppProtocol(root=tree.root, cache_dir=out / "cache", identity_map=str(twin_map)).build()
    labels = {g.path.split("/")[0]: g.identity for g in mapped.gallery}
    assert labels["000"] == labels[TWIN] == "p000"
    assert {labels[v] for v in ("001", "002", "003", "004", "005")} == {"001", "002", "003", "004", "005"}
    assert [g.path for g in mapped.gallery] == [g.path for g in plain.gallery]  # still one frame per video
    assert all(p.source_id != p.target_id for p in mapped.pairs)  # never a person onto themself
    assert all(p.source_id == labels[p.source.split("/")[0]] for p in mapped.pairs)
    sha = hashlib.sha256(twin_map.read_bytes()).hexdigest()
    assert dict(mapped.settings)["identity_map_sha256"] == sha and "identity_map_sha256" not in dict(plain.settings)
    assert any(n.startswith(f"identity map people.csv (sha256 {sha}): 7 videos are 6 people") and "p000: 000, 006" in n
               for n in mapped.notes)
    assert mapped.gallery_sha256 != plain.gallery_sha256


def test_on_the_tree_a_swap_landing_on_the_twin_video_is_a_hit_only_under_the_map(tree, out, twin_map):
    from faceeval.summaries import RunSummary
    from faceeval.tracking import _flat_params
    from harness.evaluation import evaluate

    runs = {}
    for name, options in (("plain", {}), ("mapped", {"identity_map": str(twin_map)})):
        res = evaluate("ffpp", ["source"], root=tree.root, metrics=["identity_sface"], options=options, out=out,
                       mlflow=False, report=name == "mapped", progress=False, workers=1, log=lambda m: None)
        summary = res.summaries[0]
        frame = pd.read_parquet(Path(summary["run_dir"]) / "pairs.parquet")
        runs[name] = (summary, frame.set_index("source")["id_retrieval_top1_sface"])
    (plain, top1), (mapped, top1_mapped) = runs["plain"], runs["mapped"]
    assert plain["run_id"] != mapped["run_id"]
    sha = hashlib.sha256(twin_map.read_bytes()).hexdigest()
    assert mapped["protocol_settings"]["identity_map_sha256"] == sha
    assert _flat_params(RunSummary.from_dict(mapped))["protocol.identity_map_sha256"] == sha
    results = json.loads((out / "results.json").read_text())
    assert results["summaries"][0]["protocol_settings"]["identity_map_sha256"] == sha
    assert results["settings"]["options"] == {"identity_map": str(twin_map)}
    report = (out / "report" / "table1.md").read_text()
    assert sha in report
    # the swaps of the twins' frames: the source output lands on 000 or 006, a hit under the map
    shared = top1.index.intersection(top1_mapped.index)
    twins = [s for s in shared if s.split("/")[0] in ("000", TWIN)]
    others = [s for s in shared if s.split("/")[0] not in ("000", TWIN)]
    assert twins and others
    assert top1_mapped[twins].all()
    assert not top1[twins].all()  # some landed on the other video of the same person: a miss without the map
    assert (top1_mapped[others] == top1[others]).all()  # nobody else's hits move


# --- bad maps: every problem listed, one line each, before any work ---------------------------


BAD_CASES = {
    "header missing": ("000,p1\n001,p2\n", ["line 1: header missing: the first row must be 'video,person', "
                                            "got '000,p1'"]),
    "misspelt header": ("vidoe,person\n000,p1\n", ["line 1: expected the header 'video,person', got "
                                                   "'vidoe,person'; did you mean 'video,person'?"]),
    "wrong column count": ("video,person\n000,p1,extra\n001\n", [
        "line 2: expected 2 columns (video,person), got 3: '000,p1,extra'",
        "line 3: expected 2 columns (video,person), got 1: '001'"]),
    "empty ids": ("video,person\n000,\n,p2\n", ["line 2: empty person id in '000,'",
                                                 "line 3: empty video id in ',p2'"]),
    "duplicated row": ("video,person\n000,p1\n001,p1\n000,p1\n", ["line 4: duplicated row 000,p1 (first on line 2)"]),
    "a video in two persons": ("video,person\n000,p1\n000,p2\n", [
        "line 3: video 000 is in two persons: p1 (line 2) and p2 (line 3)"]),
    "unknown video": ("video,person\n0000,p1\n999,p1\n", [
        f"line 2: unknown video 0000: not a video of {video_dir('c23')}/; did you mean '000'?",
        f"line 3: unknown video 999: not a video of {video_dir('c23')}/"]),
    "person id that is another video's id": ("video,person\n000,001\n", [
        "line 2: person id 001 is also the id of video 001, but video 001 is not listed: list 001,001 or "
        "choose another person id"]),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_each_bad_map_is_listed_one_line_each(tree, tmp_path, case):
    text, expected = BAD_CASES[case]
    path = write_map(tmp_path / "bad.csv", text)
    ident, problems = read_identity_map(path, list(tree.videos) + [TWIN], f"{video_dir('c23')}/")
    assert ident is None
    assert problems == [f"identity map bad.csv {line}" for line in expected]
    assert all("\n" not in p for p in problems)


def test_a_bad_map_fails_validate_with_the_tree_before_any_detection(tree, tmp_path):
    path = write_map(tmp_path / "bad.csv", "video,person\n000,p1\n000,p2\n004a,p3\n")
    problems = layout_problems(FFppProtocol, tree.root, identity_map=str(path))
    assert problems == ["identity map bad.csv line 3: video 000 is in two persons: p1 (line 2) and p2 (line 3)",
                        f"identity map bad.csv line 4: unknown video 004a: not a video of {video_dir('c23')}/; "
                        "did you mean '004'?"]
    assert not (tree.root.parent / "cache").exists()  # validate examined no frame, made no crop
    missing = layout_problems(FFppProtocol, tree.root, identity_map=str(tmp_path / "absent.csv"))
    assert missing == [f"identity map {tmp_path / 'absent.csv'}: file not found"]


def test_cli_run_lists_each_map_problem_then_one_error_line(tree, tmp_path):
    path = write_map(tmp_path / "bad.csv", "video,person\n000,p1\n000,p1\n001\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = tmp_path / "out"
    run = subprocess.run(CLI + ["run", "--protocol", "ffpp", "--root", str(tree.root), "--method", "source",
                                "--metric", "identity_sface", "--option", f"identity_map={path}", "--out", str(out),
                                "--no-mlflow"], env=env, capture_output=True, text=True)
    assert run.returncode == 1
    lines = run.stderr.splitlines()
    assert lines[-3:] == [
        "  - identity map bad.csv line 3: duplicated row 000,p1 (first on line 2)",
        "  - identity map bad.csv line 4: expected 2 columns (video,person), got 1: '001'",
        f"error: ffpp layout at {tree.root}: 2 problems: identity map bad.csv line 3: duplicated row 000,p1 "
        "(first on line 2); identity map bad.csv line 4: expected 2 columns (video,person), got 1: '001'"]
    assert not list(out.glob("cache/crops/*/*/frames.json"))  # no video was examined


# --- proposing a map --------------------------------------------------------------------------


def test_propose_groups_joins_pairs_above_the_threshold_transitively():
    v = np.array([[1, 0, 0], [0.9, 0.436, 0], [0.55, 0.835, 0], [0, 0, 1]], np.float64)  # (4, 3)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    groups = propose_groups(["a", "b", "c", "d"], v, threshold=0.85)
    assert [g.videos for g in groups] == [("a", "b", "c")]  # a-b and b-c, not a-c: one group by transitivity
    assert groups[0].person == "a" and {(x, y) for x, y, _ in groups[0].links} == {("a", "b"), ("b", "c")}
    assert propose_groups(["a", "b", "c", "d"], v, threshold=0.99) == []


def test_suggest_on_the_tree_proposes_the_two_videos_of_one_person(tree, out):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run(CLI + ["prepare", "ffpp", "--root", str(tree.root), "--out", str(out),
                                "--suggest-identity-map", "--device", "cpu"], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "identity map: 1 proposed group (2 videos) at cosine >= 0.5" in res.stdout
    proposal = out / "identity-maps" / "ffpp-identity-map.proposed.csv"
    rows = [line for line in proposal.read_text().splitlines() if line and not line.startswith("#")]
    assert rows == ["video,person", "000,000", f"{TWIN},000"]
    page = (out / "identity-maps" / "ffpp-identity-map.proposed.html").read_text()
    assert f"Proposed person 000: videos 000, {TWIN}" in page
    assert page.count('src="data:image/jpeg;base64,') >= 6  # thumbnails inlined: 3 frames of each
    assert "http://" not in page and "https://" not in page
    ident, problems = read_identity_map(proposal, list(tree.videos) + [TWIN])  # the proposal is a valid map
    assert problems == [] and ident.person(TWIN) == "000"


def test_suggest_is_only_for_ffpp(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run(CLI + ["prepare", "celebahq", "--root", str(tmp_path), "--suggest-identity-map"], env=env,
                         capture_output=True, text=True)
    assert res.returncode == 1
    assert res.stderr.splitlines()[-1] == ("error: --suggest-identity-map is for protocol ffpp (videos of one person), "
                                           "not 'celebahq'")
