"""The runner on the real demo faces: bounds, caching, resuming, batch-size independence."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from faceeval.cache import FeatureStore
from faceeval.errors import HarnessError
from faceeval.metrics.identity import IdentityMetric
from harness.runner import RunConfig, bootstrap_ci, run_method
from methods.reference import SourceMethod, TargetMethod


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("out")


def _run(method, pairset, out, batch_size=8, save_images=False):
    cfg = RunConfig(out_dir=out, batch_size=batch_size, progress=False, bootstrap_resamples=500,
                    save_images=save_images)
    features = FeatureStore(out / "cache" / "features.sqlite")
    try:
        return run_method(method, pairset, [IdentityMetric()], cfg, features)
    finally:
        features.close()


def test_source_is_the_upper_bound_and_target_the_lower(demo_pairset, out):
    src = _run(SourceMethod(), demo_pairset, out)
    tgt = _run(TargetMethod(), demo_pairset, out)
    n = len(demo_pairset.gallery)
    assert src.metrics["id_retrieval_top1_dlib"].value == 1.0
    assert src.metrics["id_similarity_dlib"].value == pytest.approx(1.0, abs=1e-5)
    # the target's own photo is in the gallery, so its nearest face is never the source
    assert tgt.metrics["id_retrieval_top1_dlib"].value == 0.0
    # top-5 of the target: about chance (4 of the other n-1 identities)
    assert tgt.metrics["id_retrieval_top5_dlib"].value < 3 * 4 / (n - 1)
    assert tgt.metrics["id_similarity_dlib"].value < src.metrics["id_similarity_dlib"].value - 0.05
    e = tgt.metrics["id_similarity_dlib"]
    assert e.ci_low <= e.value <= e.ci_high
    assert src.manifest_sha256 == demo_pairset.manifest_sha256
    assert src.backends["identity"].standard is False
    rows = pd.read_parquet(f"{tgt.run_dir}/pairs.parquet")
    assert len(rows) == n and rows["pair_id"].is_unique


def test_cached_rerun_is_identical_and_computes_nothing(demo_pairset, out):
    first = _run(TargetMethod(), demo_pairset, out)
    again = _run(TargetMethod(), demo_pairset, out)
    assert again.swaps == {"computed": 0, "cached": len(demo_pairset.pairs)}
    assert again.metrics == first.metrics
    a = pd.read_parquet(f"{first.run_dir}/pairs.parquet")
    b = pd.read_parquet(f"{again.run_dir}/pairs.parquet")
    pd.testing.assert_frame_equal(a, b)


class _Interrupted(Exception):
    pass


class FlakyTarget(TargetMethod):
    """Same fingerprint as `target`; dies after two batches, as a killed run would."""

    calls = 0

    def swap(self, source, target):
        FlakyTarget.calls += 1
        if FlakyTarget.calls > 2:
            raise _Interrupted
        return super().swap(source, target)


def test_a_killed_run_resumes_without_recomputing(demo_pairset, tmp_path):
    with pytest.raises(HarnessError, match="method target failed on pair .*_Interrupted") as info:
        _run(FlakyTarget(), demo_pairset, tmp_path, batch_size=4)  # a method's exception: one line naming the pair
    assert isinstance(info.value.__cause__, _Interrupted)  # chained, for HARNESS_DEBUG=1's traceback
    resumed = _run(TargetMethod(), demo_pairset, tmp_path, batch_size=4)
    assert resumed.swaps["cached"] == 8
    assert resumed.swaps["computed"] == len(demo_pairset.pairs) - 8


def test_per_pair_values_do_not_depend_on_batch_size(demo_pairset, tmp_path):
    a = _run(TargetMethod(), demo_pairset, tmp_path / "a", batch_size=3)
    b = _run(TargetMethod(), demo_pairset, tmp_path / "b", batch_size=32)
    ra = pd.read_parquet(f"{a.run_dir}/pairs.parquet")
    rb = pd.read_parquet(f"{b.run_dir}/pairs.parquet")
    np.testing.assert_allclose(ra["id_similarity_dlib"], rb["id_similarity_dlib"], atol=1e-6)
    assert (ra["id_retrieval_top5_dlib"] == rb["id_retrieval_top5_dlib"]).all()


def test_bootstrap_ci():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 1.0, 400)
    lo, hi = bootstrap_ci(x, 1000, 0.95, seed=0)
    half = 1.96 / np.sqrt(400)  # normal-theory half-width for sd 1
    assert lo < x.mean() < hi
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.2)
    assert bootstrap_ci(x, 1000, 0.95, seed=0) == (lo, hi)  # seeded: reproducible
    assert bootstrap_ci(np.ones(5), 100, 0.95, 0) == (1.0, 1.0)
    assert all(np.isnan(bootstrap_ci(np.ones(1), 100, 0.95, 0)))


def test_save_images_writes_each_swap_by_pair_id(demo_pairset, tmp_path):
    from faceeval.images import load_rgb

    s = _run(TargetMethod(), demo_pairset, tmp_path, save_images=True)
    saved = sorted((tmp_path / "runs" / "demo").glob("target-*/images/*.png"))
    assert [p.stem for p in saved] == sorted(p.pair_id for p in demo_pairset.pairs)
    first = demo_pairset.pairs[0]
    np.testing.assert_array_equal(load_rgb(saved[0]), load_rgb(demo_pairset.path(first.target)))
    assert s.swaps["computed"] == len(demo_pairset.pairs)


def test_features_are_keyed_by_the_weights_they_came_from(tmp_path):
    """A replaced weight file (most have no pinned sha256) must not reuse stale features."""
    from faceeval.cache import FeatureStore, cached_features

    store = FeatureStore(tmp_path / "features.sqlite")
    calls = []

    def compute(batch):
        calls.append(len(batch))
        return np.ones((len(batch), 2)) * len(calls)

    imgs = [np.zeros((4, 4, 3), np.uint8)] * 2
    shas = ["a" * 64, "b" * 64]
    first = cached_features(store, "emb:v1", shas, imgs, compute, weights=(("net.onnx", "1" * 64),))
    again = cached_features(store, "emb:v1", shas, imgs, compute, weights=(("net.onnx", "1" * 64),))
    assert calls == [2] and np.array_equal(first, again)
    other = cached_features(store, "emb:v1", shas, imgs, compute, weights=(("net.onnx", "2" * 64),))
    assert calls == [2, 2] and not np.array_equal(first, other)
    # the order in which a metric lists its files does not matter
    both = (("a.dat", "3" * 64), ("net.onnx", "1" * 64))
    cached_features(store, "emb:v1", shas, imgs, compute, weights=both)
    cached_features(store, "emb:v1", shas, imgs, compute, weights=both[::-1])
    assert calls == [2, 2, 2]
