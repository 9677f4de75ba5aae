"""Pair sets: seeded, byte-identical, never pairing an identity with itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from faceeval.api import GalleryItem, PairSet
from faceeval.errors import HarnessError
from protocols.base import pair_images, seeded_order


def _images(n_ids: int, per_id: int) -> list[GalleryItem]:
    return [GalleryItem(f"id{i}/img{j}.png", f"id{i}") for i in range(n_ids) for j in range(per_id)]


def test_one_image_per_identity_is_a_derangement():
    images = _images(50, 1)
    pairs = pair_images(images, seed=3)
    assert len(pairs) == 50
    assert sorted(p.source for p in pairs) == sorted(g.path for g in images)
    assert sorted(p.target for p in pairs) == sorted(g.path for g in images)
    assert all(p.source_id != p.target_id for p in pairs)


def test_several_images_per_identity_never_pair_an_identity_with_itself():
    pairs = pair_images(_images(3, 7), seed=1, num_pairs=100)
    assert len(pairs) == 100
    assert all(p.source_id != p.target_id for p in pairs)


def test_seed_changes_pairs_and_same_seed_repeats_them():
    images = _images(20, 1)
    assert pair_images(images, 0) == pair_images(images, 0)
    assert pair_images(images, 0) != pair_images(images, 1)
    assert seeded_order(["a", "b", "c"], 0, "x") == seeded_order(["a", "b", "c"], 0, "x")


def test_pairing_rejects_a_single_identity():
    with pytest.raises(HarnessError, match="at least 2 identities"):
        pair_images(_images(1, 5), seed=0)


def test_demo_manifest_is_byte_identical_across_processes(demo_pairset):
    code = "from protocols.demo import DemoProtocol; print(DemoProtocol(seed=0).build().manifest_sha256)"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert other == demo_pairset.manifest_sha256
    assert demo_pairset.manifest_bytes().startswith(b"pair_id,source,target,source_id,target_id\n")
    assert b"\r" not in demo_pairset.manifest_bytes()


def test_demo_protocol_shape(demo_pairset):
    assert len(demo_pairset.gallery) == len({g.identity for g in demo_pairset.gallery}) >= 25
    assert len(demo_pairset.pairs) == len(demo_pairset.gallery)
    assert all(p.source_id != p.target_id for p in demo_pairset.pairs)


def test_manifest_paths_cannot_leave_the_root(tmp_path: Path):
    with pytest.raises(ValueError, match="outside the dataset root"):
        PairSet("x", "1", tmp_path, 256, 0, pairs=(), gallery=(GalleryItem("../etc/passwd", "a"),))
