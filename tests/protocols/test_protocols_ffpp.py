"""The ffpp protocol on a miniature FaceForensics++ tree in the official layout (real mp4s)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from PIL import Image

from faceeval.errors import HarnessError
from harness.registry import PROTOCOLS
from helpers import REPO
from layout_helpers import broken_copy, layout_problems
from protocols.ffpp import FFppProtocol, video_dir
from protocols.ffpp_frames import frame_order
from protocols.fixtures import GAP_VIDEO, _synthetic_video, write_celebahq, write_ffpp

VIDEOS = video_dir("c23")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return write_ffpp(tmp_path_factory.mktemp("ffpp"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def built(tree, cache):
    return FFppProtocol(root=tree.root, seed=0, cache_dir=cache).build()


def problems_of(root: Path, **kw) -> list[str]:
    return layout_problems(FFppProtocol, root, **kw)


def frames_by_video(pairset) -> dict[str, set[str]]:
    out = defaultdict(set)
    for p in pairset.pairs:
        out[p.source_id].add(p.source)
        out[p.target_id].add(p.target)
    return out


def test_exactly_ten_frames_per_video_each_a_source_once(tree, built):
    per_video = frames_by_video(built)
    assert sorted(per_video) == list(tree.videos)
    assert all(len(frames) == 10 for frames in per_video.values())
    assert len(built.pairs) == 10 * len(tree.videos)
    assert Counter(p.source for p in built.pairs).most_common(1)[0][1] == 1
    assert Counter(p.target for p in built.pairs).most_common(1)[0][1] == 1
    for p in built.pairs:
        assert p.source_id != p.target_id
        assert p.source.startswith(p.source_id + "/") and p.target.startswith(p.target_id + "/")
    for rel in {p.source for p in built.pairs} | {g.path for g in built.gallery}:
        with Image.open(built.path(rel)) as im:
            assert im.size == (256, 256)
        assert built.root.resolve() in built.path(rel).resolve().parents


def test_gallery_is_one_frame_per_video_and_never_a_source_frame(tree, built):
    assert [g.identity for g in built.gallery] == list(tree.videos)
    gallery_of = {g.identity: g.path for g in built.gallery}
    for p in built.pairs:
        assert gallery_of[p.source_id] != p.source
    used = {p.source for p in built.pairs} | {p.target for p in built.pairs}
    assert not used & set(gallery_of.values())


def test_same_seed_same_manifest_twice_and_across_processes(tree, cache, built, tmp_path):
    again = FFppProtocol(root=tree.root, seed=0, cache_dir=cache).build()
    assert (again.manifest_sha256, again.gallery_sha256) == (built.manifest_sha256, built.gallery_sha256)
    assert again.manifest_bytes() == built.manifest_bytes()
    code = ("import sys; from protocols.ffpp import FFppProtocol as P; "
            "ps = P(root=sys.argv[1], seed=0, cache_dir=sys.argv[2]).build(); "
            "print(ps.manifest_sha256, ps.gallery_sha256)")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": "7"}
    out = subprocess.run([sys.executable, "-c", code, str(tree.root), str(tmp_path / "fresh-cache")], env=env,
                         capture_output=True, text=True, check=True, cwd=tmp_path).stdout.split()
    assert out == [built.manifest_sha256, built.gallery_sha256]
    other = FFppProtocol(root=tree.root, seed=1, cache_dir=cache).build()
    assert other.manifest_sha256 != built.manifest_sha256


def test_random_sampling_replaces_faceless_frames_by_the_next_sampled_frame(tree, cache, built):
    proto = FFppProtocol(root=tree.root, seed=0, cache_dir=cache)
    layout = proto.validate()
    video = next(v for v in layout.videos if v.video_id == GAP_VIDEO)
    choice = proto.prepare_video(video)
    blank = set(tree.no_face_frames[GAP_VIDEO])
    order = frame_order(GAP_VIDEO, tree.frames[GAP_VIDEO], proto.seed)
    with_face = [f for f in order if f not in blank][:11]
    passed = sum(f in blank for f in order[: order.index(with_face[-1])])
    assert choice.evaluation == tuple(sorted(with_face[:10]))
    assert choice.gallery == with_face[10]
    assert choice.passed_over == passed > 0
    assert f"{passed} examined frames had no detectable face and were replaced by the next sampled frame" in \
        " ".join(built.notes)


def test_even_sampling_takes_the_first_face_frame_of_each_tenth(tree, cache):
    proto = FFppProtocol(root=tree.root, seed=0, cache_dir=cache, sampling="even")
    ps = proto.build()
    layout = proto.validate()
    for v in layout.videos:
        n = tree.frames[v.video_id]
        choice = proto.prepare_video(v)
        blank = set(tree.no_face_frames[v.video_id])
        expected = []
        for i in range(10):
            f = math.floor(i * n / 10)
            while f in blank:
                f += 1
            expected.append(f)
        assert choice.evaluation == tuple(expected)
        assert choice.gallery not in expected and choice.gallery not in blank
    assert all(len(f) == 10 for f in frames_by_video(ps).values())
    assert dict(ps.settings)["sampling"] == "even"


def test_split_pairing_puts_frame_n_of_a_onto_frame_n_of_b(tree, cache):
    proto = FFppProtocol(root=tree.root, seed=0, cache_dir=cache, pairing="split")
    ps = proto.build()
    splits = [tuple(p) for name in ("train", "val", "test")
              for p in json.loads((tree.root / "splits" / f"{name}.json").read_text())]
    assert len(ps.pairs) == len(splits) * 2 * 10
    slots = {v.video_id: proto.prepare_video(v).evaluation for v in proto.validate().videos}
    expected = [(a, b, n) for x, y in splits for a, b in ((x, y), (y, x)) for n in range(10)]
    for p, (a, b, n) in zip(ps.pairs, expected):
        assert (p.source_id, p.target_id) == (a, b)
        assert p.source == f"{a}/{slots[a][n]:06d}.png" and p.target == f"{b}/{slots[b][n]:06d}.png"
    test_only = FFppProtocol(root=tree.root, seed=0, cache_dir=cache, pairing="split", split="test").build()
    assert len(test_only.pairs) == 20 and len(test_only.gallery) == 2


def test_preparation_resumes_without_detecting_again(tree, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = FFppProtocol(root=tree.root, seed=5, cache_dir=cache).build()
    import faceeval.faces.crops as crops

    def no_detection(*a, **k):
        raise AssertionError("a cached frame was detected again")

    monkeypatch.setattr(crops, "crop_largest", no_detection)
    again = FFppProtocol(root=tree.root, seed=5, cache_dir=cache).build()
    assert again.manifest_sha256 == first.manifest_sha256
    monkeypatch.undo()
    first.path(first.pairs[0].source).unlink()  # a lost crop is made again
    third = FFppProtocol(root=tree.root, seed=5, cache_dir=cache).build()
    assert third.manifest_sha256 == first.manifest_sha256 and third.path(first.pairs[0].source).is_file()


def test_a_video_without_faces_is_left_out_and_reported(tree, tmp_path):
    root = broken_copy(tree, tmp_path)
    face = Image.open(REPO / "protocols" / "demo_faces" / "astronaut.png").convert("RGB")
    _synthetic_video(root / VIDEOS / "900.mp4", face, seed=9, frames=14, gap_every=1)  # every frame blank
    ps = FFppProtocol(root=root, cache_dir=tmp_path / "cache").build()
    assert "900" not in {g.identity for g in ps.gallery}
    assert "1 videos left out: video 900: 0 of 14 frames hold a detectable face, needs 11; left out" in ps.notes


def test_corrupt_videos_wrong_counts_and_bad_names_are_listed(tree, tmp_path):
    root = broken_copy(tree, tmp_path)
    (root / VIDEOS / "002.mp4").write_bytes(b"\x00garbage, not an mp4" * 10)
    data = (root / VIDEOS / "003.mp4").read_bytes()
    (root / VIDEOS / "003.mp4").write_bytes(data[: len(data) // 2])  # truncated download
    face = Image.open(REPO / "protocols" / "demo_faces" / "grace_hopper.png").convert("RGB")
    _synthetic_video(root / VIDEOS / "007.mp4", face, seed=1, frames=8, gap_every=None)
    shutil.copyfile(root / VIDEOS / "000.mp4", root / VIDEOS / "bad name.mp4")
    assert problems_of(root) == [
        f"{VIDEOS}/bad name.mp4: video names must use only letters, digits, '_' and '-'",
        f"{VIDEOS}/002.mp4: cannot be opened as a video (corrupt or not an mp4)",
        f"{VIDEOS}/003.mp4: cannot be opened as a video (corrupt or not an mp4)",
        f"{VIDEOS}/007.mp4: 8 frames, needs at least 11 (10 sampled + 1 gallery)",
    ]


def test_missing_folders_and_split_files_are_listed(tree, tmp_path):
    assert problems_of(tree.root, compression="c40") == [
        f"missing folder {video_dir('c40')}/ (present: {VIDEOS}; choose with --option compression=...)"]
    (tmp_path / "empty").mkdir()
    assert problems_of(tmp_path / "empty") == [f"missing folder {VIDEOS}/"]
    root = broken_copy(tree, tmp_path)
    (root / "splits" / "val.json").unlink()
    (root / "splits" / "test.json").write_text(json.dumps([["004", "999"], ["004"], ["000", "005"]]))
    assert problems_of(root, pairing="split") == [
        "missing file splits/val.json (needed by pairing=split)"]
    assert problems_of(root, pairing="split", split="test") == [
        f"splits/test.json entry 0: video 999 not found in {VIDEOS}/",
        "splits/test.json entry 1: expected a pair of two different video ids, got ['004']",
    ]
    (root / "splits" / "train.json").write_text("[[\"000\", ")
    assert problems_of(root, pairing="split", split="train")[0].startswith("splits/train.json: not valid JSON (")
    FFppProtocol(root=root, cache_dir=tmp_path / "c").validate()  # random pairing does not read the splits


def test_options_arrive_as_strings_and_typos_are_caught(tree):
    proto = FFppProtocol(root=tree.root, frames_per_video="4", resolution="128", upsample="0", sampling="EVEN")
    assert (proto.frames_per_video, proto.resolution, proto.upsample, proto.sampling) == (4, 128, 0, "even")
    with pytest.raises(HarnessError, match="option sampling must be one of random, even"):
        FFppProtocol(root=tree.root, sampling="uniform")
    with pytest.raises(HarnessError,
                       match=r"unknown setting 'compresion' for protocol 'ffpp'; did you mean 'compression'\?"):
        PROTOCOLS.create("ffpp", root=tree.root, compresion="c40")
    assert PROTOCOLS.create("ffpp", root=tree.root, frames_per_video="4").frames_per_video == 4


def test_cli_runs_both_protocols_side_by_side_in_table1(tree, tmp_path):
    celeba = write_celebahq(tmp_path / "celebahq", multi_identities=2)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cli = [sys.executable, "-m", "harness.cli"]
    out = tmp_path / "out"
    prep = subprocess.run(cli + ["prepare", "ffpp", "--root", str(tree.root), "--out", str(out)], env=env,
                          capture_output=True, text=True)
    assert prep.returncode == 0, prep.stderr
    assert "ffpp: 60 pairs, 6 gallery faces" in prep.stdout
    for args in (["--protocol", "celebahq", "--root", str(celeba.root), "--option", "num_identities=8"],
                 ["--protocol", "ffpp", "--root", str(tree.root), "--num-pairs", "16"]):
        run = subprocess.run(cli + ["run", *args, "--method", "source", "--method", "target", "--out", str(out),
                                    "--no-mlflow"], env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
    header = (out / "report" / "table1.md").read_text().splitlines()[2]
    assert "celebahq: ID retrieval top-1" in header and "ffpp: ID retrieval top-1" in header
    assert header.index("celebahq:") < header.index("ffpp:")
    summary = json.loads(next((out / "runs" / "ffpp").glob("source-*/summary.json")).read_text())
    assert summary["num_pairs"] == 16 and summary["metrics"]["id_retrieval_top1_sface"]["value"] == 1.0
    pairs_csv = next((out / "runs" / "ffpp").glob("source-*/pairs.csv")).read_bytes()
    assert hashlib.sha256(pairs_csv).hexdigest() == summary["manifest_sha256"]

    root = broken_copy(tree, tmp_path)
    (root / VIDEOS / "004.mp4").write_bytes(b"corrupt")
    bad = subprocess.run(cli + ["prepare", "ffpp", "--root", str(root), "--out", str(out)], env=env,
                         capture_output=True, text=True)
    assert bad.returncode == 1
    assert f"  - {VIDEOS}/004.mp4: cannot be opened as a video (corrupt or not an mp4)" in bad.stderr.splitlines()
    assert bad.stderr.splitlines()[-1] == (f"error: ffpp layout at {root}: 1 problem: "
                                           f"{VIDEOS}/004.mp4: cannot be opened as a video (corrupt or not an mp4)")


def test_pair_frames_is_balanced_across_videos_for_any_seed():
    from faceeval.api import GalleryItem
    from protocols.ffpp_frames import pair_frames

    for videos in (2, 3, 7):
        frames = [GalleryItem(f"{v:03d}/{f:06d}.png", f"{v:03d}") for v in range(videos) for f in range(10)]
        for seed in range(20):
            pairs = pair_frames(frames, seed, len(frames) * 2 + 3)
            assert len(pairs) == len(frames) * 2 + 3
            assert all(p.source_id != p.target_id for p in pairs)
            first = pairs[: len(frames)]
            assert sorted(p.source for p in first) == sorted(p.target for p in first) == sorted(f.path for f in frames)
    lopsided = [GalleryItem(f"a/{i}.png", "a") for i in range(5)] + [GalleryItem("b/0.png", "b")]
    with pytest.raises(HarnessError, match="cannot pair 6 frames across identities"):
        pair_frames(lopsided, 0, 6)


def test_large_frames_searched_downscaled_align_like_full_resolution(tree):
    import cv2
    import numpy as np

    from faceeval.faces.crops import crop_largest
    from protocols.video import read_frames

    frame = read_frames(tree.root / VIDEOS / "000.mp4", {12})[12]
    big = cv2.resize(frame, (1920, 1440), interpolation=cv2.INTER_CUBIC)  # (1440, 1920, 3)
    proto = FFppProtocol(root=tree.root)  # default: searched at 960 px, landmarked at full size
    fast = crop_largest(big, proto._detector_instance(), 256)
    full = crop_largest(big, FFppProtocol(root=tree.root, detect_max_side=4000)._detector_instance(), 256)
    assert fast is not None and full is not None
    corners = np.abs(fast.aligned.quad - full.aligned.quad).max()
    assert corners < 0.01 * np.ptp(full.aligned.quad[:, 0])  # the aligned square moves by < 1 % of its side
    assert np.abs(fast.aligned.crop.astype(int) - full.aligned.crop.astype(int)).mean() < 4
