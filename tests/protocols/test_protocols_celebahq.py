"""The celebahq protocol on a miniature CelebA-HQ tree in the official layout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from faceeval.errors import HarnessError
from harness.registry import PROTOCOLS
from helpers import REPO
from layout_helpers import broken_copy, layout_problems
from protocols.celebahq import MAPPING_FILE, CelebAHQProtocol
from protocols.fixtures import write_celebahq


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return write_celebahq(tmp_path_factory.mktemp("celebahq"), size=512)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def problems_of(root: Path, **kw) -> list[str]:
    return layout_problems(CelebAHQProtocol, root, **kw)


def build_sha(root: Path, cache: Path, seed: int, n: int) -> tuple[str, str]:
    ps = CelebAHQProtocol(root=root, seed=seed, cache_dir=cache, num_identities=n).build()
    return ps.manifest_sha256, ps.gallery_sha256


def test_fixture_has_identities_with_several_images(tree):
    counts = Counter(tree.identity_of.values())
    assert len(counts) == 28
    assert sum(c > 1 for c in counts.values()) >= 4


def test_same_seed_same_manifest_twice_and_across_processes(tree, cache, tmp_path):
    first = build_sha(tree.root, cache, seed=3, n=12)
    assert build_sha(tree.root, cache, seed=3, n=12) == first
    assert build_sha(tree.root, tmp_path / "fresh-cache", seed=3, n=12) == first  # crops made anew
    code = ("import sys; from protocols.celebahq import CelebAHQProtocol as P; "
            "ps = P(root=sys.argv[1], seed=3, cache_dir=sys.argv[2], num_identities='12').build(); "
            "print(ps.manifest_sha256, ps.gallery_sha256)")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": "123"}
    out = subprocess.run([sys.executable, "-c", code, str(tree.root), str(tmp_path / "other-cache")], env=env,
                         capture_output=True, text=True, check=True, cwd=tmp_path).stdout.split()
    assert tuple(out) == first
    assert build_sha(tree.root, cache, seed=4, n=12)[0] != first[0]


def test_each_selected_identity_appears_once_and_pairs_never_join_an_identity(tree, cache):
    ps = CelebAHQProtocol(root=tree.root, seed=0, cache_dir=cache, num_identities="15").build()
    ids = [g.identity for g in ps.gallery]
    assert len(ids) == 15 and len(set(ids)) == 15
    for g in ps.gallery:  # the crop is named by its CelebA-HQ index, the label is its CelebA identity
        assert tree.identity_of[int(Path(g.path).stem)] == g.identity
    assert len(ps.pairs) == 15
    assert sorted(p.source for p in ps.pairs) == sorted(g.path for g in ps.gallery)
    assert sorted(p.target for p in ps.pairs) == sorted(g.path for g in ps.gallery)
    identity = {g.path: g.identity for g in ps.gallery}
    for p in ps.pairs:
        assert p.source_id != p.target_id
        assert (identity[p.source], identity[p.target]) == (p.source_id, p.target_id)
    assert dict(ps.settings)["num_identities"] == 15
    for g in ps.gallery:  # aligned crops at the protocol resolution, inside the crop root
        with Image.open(ps.path(g.path)) as im:
            assert im.size == (256, 256)
        assert ps.root.resolve() in ps.path(g.path).resolve().parents


def test_image_choice_within_an_identity_follows_the_seed(tree, cache):
    several = {i for i, c in Counter(tree.identity_of.values()).items() if c > 1}
    chosen: dict[str, set[str]] = {}
    for seed in range(8):
        ps = CelebAHQProtocol(root=tree.root, seed=seed, cache_dir=cache, num_identities=28).build()
        for g in ps.gallery:
            chosen.setdefault(g.identity, set()).add(g.path)
    assert all(len(chosen[i]) == 1 for i in chosen if i not in several)
    assert any(len(chosen[i]) > 1 for i in several)


def test_default_size_on_a_small_tree_uses_every_identity_and_says_so(tree, cache):
    ps = CelebAHQProtocol(root=tree.root, cache_dir=cache).build()
    assert len(ps.gallery) == 28 and len(ps.pairs) == 28
    assert any("not the paper's pair set" in n for n in ps.notes)
    with pytest.raises(HarnessError, match="num_identities=29 but .* holds only 28 distinct identities"):
        CelebAHQProtocol(root=tree.root, cache_dir=cache, num_identities=29).build()
    more = CelebAHQProtocol(root=tree.root, cache_dir=cache, num_identities=10, num_pairs="25").build()
    assert len(more.pairs) == 25 and all(p.source_id != p.target_id for p in more.pairs)


def test_1024_png_form_and_string_options(tmp_path):
    big = write_celebahq(tmp_path / "hq1024", size=1024, suffix=".png", multi_identities=0)
    ps = CelebAHQProtocol(root=big.root, cache_dir=tmp_path / "c", num_identities="6", resolution="128").build()
    assert ps.resolution == 128 and len(ps.pairs) == 6
    with Image.open(ps.path(ps.gallery[0].path)) as im:
        assert im.size == (128, 128)
    with pytest.raises(HarnessError, match="option num_identities must be an integer"):
        CelebAHQProtocol(root=big.root, num_identities="many")
    typo = r"unknown setting 'num_identites' for protocol 'celebahq'; did you mean 'num_identities'\?"
    with pytest.raises(HarnessError, match=typo):
        PROTOCOLS.create("celebahq", root=big.root, num_identites="6")
    with pytest.raises(HarnessError, match="setting 'num_identities' for protocol 'celebahq' must be an integer"):
        PROTOCOLS.create("celebahq", root=big.root, num_identities="many")
    assert PROTOCOLS.create("celebahq", root=big.root, num_identities="6", strict="yes").num_identities == 6


def test_missing_folders_and_files_are_all_listed(tmp_path):
    (tmp_path / "empty").mkdir()
    assert problems_of(tmp_path / "empty") == [
        "missing folder CelebA-HQ-img/ (expected CelebA-HQ-img/0.jpg ... 29999.jpg)",
        f"missing file {MAPPING_FILE}",
        "missing file identity_CelebA.txt (looked for identity_CelebA.txt or Anno/identity_CelebA.txt)",
    ]
    assert problems_of(tmp_path / "nowhere") == [f"dataset root not found: {tmp_path / 'nowhere'}"]


def test_missing_mapping_row_is_named(tree, tmp_path):
    root = broken_copy(tree, tmp_path)
    lines = (root / MAPPING_FILE).read_text().splitlines(keepends=True)
    (root / MAPPING_FILE).write_text("".join(line for line in lines if line.split()[0] != "7"))
    assert problems_of(root) == [f"CelebA-HQ-img/7.jpg: no row for idx 7 in {MAPPING_FILE}"]


def test_other_malformed_trees_are_listed_precisely(tree, tmp_path):
    root = broken_copy(tree, tmp_path)
    mapping = (root / MAPPING_FILE).read_text().splitlines()
    # line 3 is idx 1: give it a CelebA file that identity_CelebA.txt does not know
    mapping[2] = f"{'1':<12}{'202500':<12}{'202501.jpg':<12}"
    mapping.insert(5, "garbage line")  # becomes line 6; idx 9 moves to line 12
    (root / MAPPING_FILE).write_text("\n".join(mapping) + "\n")
    (root / "CelebA-HQ-img" / "3.jpg").write_bytes(b"not a jpeg at all")
    (root / "CelebA-HQ-img" / "9.jpg").unlink()
    Image.new("RGB", (512, 400)).save(root / "CelebA-HQ-img" / "11.jpg")
    shutil.copyfile(root / "CelebA-HQ-img" / "12.jpg", root / "CelebA-HQ-img" / "12.png")
    (root / "CelebA-HQ-img" / "cover.jpg").write_bytes(b"")
    with open(root / "identity_CelebA.txt", "a") as f:
        f.write("broken-line\n")
    found = problems_of(root, strict=True)
    n_ident = len((tree.root / "identity_CelebA.txt").read_text().splitlines()) + 1
    expected = [
        "CelebA-HQ-img/12.png: index 12 also present as CelebA-HQ-img/12.jpg",
        "CelebA-HQ-img/cover.jpg: name is not <index>.jpg or <index>.png",
        f"{MAPPING_FILE} line 6: expected 'idx orig_idx orig_file', got 'garbage line'",
        f"identity_CelebA.txt line {n_ident}: expected '<file>.jpg <identity>', got 'broken-line'",
        f"{MAPPING_FILE} line 3 (idx 1): 202501.jpg has no identity in identity_CelebA.txt",
        f"{MAPPING_FILE} line 12 (idx 9): image CelebA-HQ-img/9.jpg (or .png) is missing",
    ]
    assert found[: len(expected)] == expected
    rest = found[len(expected):]
    assert len(rest) == 2
    assert rest[0].startswith("CelebA-HQ-img/3.jpg: unreadable (")
    assert rest[1] == "CelebA-HQ-img/11.jpg: 512x400, expected a square aligned face"


def test_cli_run_and_prepare(tree, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cli = [sys.executable, "-m", "harness.cli"]
    out = tmp_path / "out"
    prep = subprocess.run(cli + ["prepare", "celebahq", "--root", str(tree.root), "--option", "num_identities=8",
                                 "--out", str(out)], env=env, capture_output=True, text=True)
    assert prep.returncode == 0, prep.stderr
    assert "celebahq: 8 pairs, 8 gallery faces" in prep.stdout
    run = subprocess.run(cli + ["run", "--protocol", "celebahq", "--root", str(tree.root), "--option",
                                "num_identities=8", "--method", "source", "--method", "target", "--out", str(out),
                                "--no-mlflow"], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    table = (out / "report" / "table1.md").read_text()
    assert "celebahq: ID retrieval top-1" in table and "| *source* | 100.0" in table
    sha = next(line.split()[-1] for line in prep.stdout.splitlines() if "manifest sha256" in line)
    runs = sorted((out / "runs" / "celebahq").glob("*/pairs.csv"))
    assert len(runs) == 2 and all(p.read_bytes() == runs[0].read_bytes() for p in runs)
    import hashlib

    assert hashlib.sha256(runs[0].read_bytes()).hexdigest() == sha

    root = broken_copy(tree, tmp_path)
    lines = (root / MAPPING_FILE).read_text().splitlines(keepends=True)
    (root / MAPPING_FILE).write_text("".join(line for line in lines if line.split()[0] not in ("4", "5")))
    bad = subprocess.run(cli + ["prepare", "celebahq", "--root", str(root), "--out", str(out)], env=env,
                         capture_output=True, text=True)
    assert bad.returncode == 1
    err = bad.stderr.splitlines()
    assert f"  - CelebA-HQ-img/4.jpg: no row for idx 4 in {MAPPING_FILE}" in err
    assert f"  - CelebA-HQ-img/5.jpg: no row for idx 5 in {MAPPING_FILE}" in err
    assert err[-1].startswith(f"error: celebahq layout at {root}: 2 problems: CelebA-HQ-img/4.jpg: no row")


def test_zero_padded_names_are_read(tree, tmp_path):
    root = broken_copy(tree, tmp_path)
    (root / "CelebA-HQ-img" / "5.jpg").rename(root / "CelebA-HQ-img" / "00005.jpg")
    layout = CelebAHQProtocol(root=root, cache_dir=tmp_path / "c").validate()
    assert next(im.file for im in layout.images if im.idx == 5) == "CelebA-HQ-img/00005.jpg"
    shutil.copyfile(root / "CelebA-HQ-img" / "00005.jpg", root / "CelebA-HQ-img" / "5.jpg")
    assert problems_of(root) == ["CelebA-HQ-img/5.jpg: index 5 also present as CelebA-HQ-img/00005.jpg"]


def test_a_partial_copy_runs_on_the_images_present_and_counts_the_absent(tree, tmp_path):
    root = broken_copy(tree, tmp_path)
    (root / "CelebA-HQ-img" / "9.jpg").unlink()
    (root / "CelebA-HQ-img" / "10.jpg").unlink()
    ps = CelebAHQProtocol(root=root, cache_dir=tmp_path / "cache", num_identities=8).build()
    note = next(n for n in ps.notes if "absent" in n)
    assert note.startswith(f"2 images listed in {MAPPING_FILE} are absent") and "CelebA-HQ-img/9.jpg" in note
    assert all(not p.source.startswith(("9.", "10.")) for p in ps.pairs)
    assert any("idx 9" in p for p in problems_of(root, strict="true"))
