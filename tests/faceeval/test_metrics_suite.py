"""The default suite (SFace, WHENet, MediaPipe blendshapes, Inception FID) end to end on the
demo faces: reference rows behave as they must, every metric is batch-size independent, the
report names backends and units, and the stand-ins still run by name."""

from __future__ import annotations

import numpy as np
import pytest

from faceeval.cache import FeatureStore
from harness.evaluation import DEFAULT_METRICS
from harness.registry import METHODS, METRICS
from harness.runner import RunConfig, run_method
from protocols.demo import DemoProtocol


def _run(method: str, out, batch_size: int, num_pairs: int | None = None):
    pairset = DemoProtocol(num_pairs=num_pairs).build()
    cfg = RunConfig(out_dir=out, batch_size=batch_size, bootstrap_resamples=50, progress=False)
    metrics = [METRICS.create(m, device="cpu") for m in DEFAULT_METRICS]
    features = FeatureStore(out / "cache" / "features.sqlite")
    try:
        return run_method(METHODS.create(method, device="cpu"), pairset, metrics, cfg, features)
    finally:
        features.close()


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory, default_suite_weights):
    out = tmp_path_factory.mktemp("suite")
    return {m: _run(m, out, 16, num_pairs=12) for m in ("source", "target")}


def test_source_tops_identity_and_target_has_zero_attribute_error(demo_runs):
    src, tgt = demo_runs["source"].metrics, demo_runs["target"].metrics
    id_keys = [k for k in src if k.startswith("id_")]
    assert id_keys, "the default suite scores identity"
    for k in id_keys:
        assert src[k].value > tgt[k].value, k
    assert src["id_retrieval_top1_sface"].value == 1.0
    assert tgt["id_retrieval_top1_sface"].value == 0.0  # the target's own photo is in the gallery
    for k in ("pose_error_whenet", "expression_error_blendshapes"):
        assert tgt[k].value == pytest.approx(0.0, abs=1e-9)
        assert src[k].value > 1e-3, k
    # every key states a unit and every backend its weights
    for run in demo_runs.values():
        for e in run.metrics.values():
            assert isinstance(e.unit, str) and e.backend
        for b in run.backends.values():
            assert b.weights and all(len(sha) == 64 for _, sha in b.weights)


def test_pose_per_angle_columns_are_in_the_pair_data(demo_runs):
    import pandas as pd

    f = pd.read_parquet(f"{demo_runs['source'].run_dir}/pairs.parquet")
    angles = f[["pose_yaw_error_whenet", "pose_pitch_error_whenet", "pose_roll_error_whenet"]].to_numpy()
    ok = np.isfinite(f["pose_error_whenet"].to_numpy())
    assert ok.sum() >= 8
    assert np.allclose(np.linalg.norm(angles[ok], axis=1), f["pose_error_whenet"].to_numpy()[ok], atol=1e-9)
    assert "pose_yaw_error_whenet" not in demo_runs["source"].metrics  # data, not a table column


def test_every_metric_is_batch_size_independent(demo_runs, tmp_path):
    # a fresh output folder: nothing cached, all features recomputed in batches of 3
    small = _run("source", tmp_path, 3, num_pairs=12)
    big = demo_runs["source"]
    for key, e in big.metrics.items():
        # FID of two identical demo sets is ~0 up to eigenvalue round-off of a rank-deficient
        # covariance: compare it on the scale of its inputs, not to 1e-6
        tol = 1e-3 if key.startswith("fid") else 1e-6
        assert small.metrics[key].value == pytest.approx(e.value, rel=1e-5, abs=tol), key
    import pandas as pd

    a = pd.read_parquet(f"{small.run_dir}/pairs.parquet")
    b = pd.read_parquet(f"{big.run_dir}/pairs.parquet")
    for col in a.columns:
        if a[col].dtype.kind == "f":
            # WHENet's angles move by a few float32 ulps (measured 1.1e-5 deg) with the batch a
            # crop is in (EfficientNet's kernels); every other column is bit-identical
            atol = 1e-4 if col.endswith("_whenet") else 1e-6
            assert np.allclose(a[col], b[col], rtol=1e-5, atol=atol, equal_nan=True), col


def test_training_model_is_flagged(tmp_path, monkeypatch):
    from methods.reference import SourceMethod

    monkeypatch.setattr(SourceMethod, "identity_model", "dlib_resnet_v1")
    pairset = DemoProtocol(num_pairs=4).build()
    cfg = RunConfig(out_dir=tmp_path, bootstrap_resamples=20, progress=False)
    features = FeatureStore(tmp_path / "f.sqlite")
    summary = run_method(SourceMethod(), pairset, [METRICS.create("identity")], cfg, features)
    features.close()
    assert summary.scored_by_training_model == ["identity"]
    assert any("trained with (the score favours it)" in n for n in summary.notes)


def test_a_method_scored_with_another_recogniser_says_which(tmp_path, monkeypatch, default_suite_weights):
    from methods.reference import SourceMethod

    monkeypatch.setattr(SourceMethod, "identity_model", "facenet_casia_torch")  # as the CodeSwap demo model
    pairset = DemoProtocol(num_pairs=4).build()
    cfg = RunConfig(out_dir=tmp_path, bootstrap_resamples=20, progress=False)
    features = FeatureStore(tmp_path / "f.sqlite")
    summary = run_method(SourceMethod(), pairset, [METRICS.create("identity_sface")], cfg, features)
    features.close()
    assert summary.scored_by_training_model == []
    assert ("source: identity scored with sface_2021dec, not with facenet_casia_torch, the identity model the "
            "method trained with") in summary.notes


def test_the_stand_ins_still_run_by_name(tmp_path):
    pairset = DemoProtocol(num_pairs=6).build()
    cfg = RunConfig(out_dir=tmp_path, bootstrap_resamples=20, progress=False)
    features = FeatureStore(tmp_path / "f.sqlite")
    names = ("identity", "pose", "expression")
    summary = run_method(METHODS.create("target", device="cpu"), pairset, [METRICS.create(m) for m in names], cfg,
                         features)
    features.close()
    assert {"id_retrieval_top1_dlib", "pose_error_pnp", "expression_error_lmk"} <= set(summary.metrics)
    assert all(not summary.backends[m].standard for m in names)
