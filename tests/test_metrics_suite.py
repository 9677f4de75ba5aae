"""The offline default suite end to end on the demo faces: reference rows behave as they
must, every metric is batch-size independent, and the report names backends and units."""

from __future__ import annotations

import numpy as np
import pytest

from harness.cache import FeatureStore
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
def demo_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite")
    return {m: _run(m, out, 16, num_pairs=12) for m in ("source", "target")}


def test_source_tops_identity_and_target_has_zero_attribute_error(demo_runs):
    src, tgt = demo_runs["source"]["metrics"], demo_runs["target"]["metrics"]
    id_keys = [k for k in src if k.startswith("id_")]
    assert id_keys, "the default suite scores identity"
    for k in id_keys:
        assert src[k]["value"] > tgt[k]["value"], k
    assert src["id_retrieval_top1_dlib"]["value"] == 1.0
    for k in ("pose_error_pnp", "expression_error_lmk"):
        assert tgt[k]["value"] == pytest.approx(0.0, abs=1e-9)
        assert src[k]["value"] > 1e-3, k
    # every key states a unit and every backend its weights
    for run in demo_runs.values():
        for key, e in run["metrics"].items():
            assert "unit" in e and e["backend"]
        for b in run["backends"].values():
            assert b["weights"] and all(len(sha) == 64 for _, sha in b["weights"])


def test_every_metric_is_batch_size_independent(demo_runs, tmp_path):
    # a fresh output folder: nothing cached, all features recomputed in batches of 3
    small = _run("source", tmp_path, 3, num_pairs=12)
    big = demo_runs["source"]
    for key, e in big["metrics"].items():
        # FID of two identical demo sets is ~0 up to eigenvalue round-off of a rank-deficient
        # covariance: compare it on the scale of its inputs, not to 1e-6
        tol = 1e-3 if key.startswith("fid") else 1e-6
        assert small["metrics"][key]["value"] == pytest.approx(e["value"], rel=1e-5, abs=tol), key
    import pandas as pd

    a = pd.read_parquet(f"{small['run_dir']}/pairs.parquet")
    b = pd.read_parquet(f"{big['run_dir']}/pairs.parquet")
    for col in a.columns:
        if a[col].dtype.kind == "f":
            assert np.allclose(a[col], b[col], rtol=1e-5, atol=1e-6, equal_nan=True), col


def test_training_model_is_flagged(tmp_path, monkeypatch):
    from methods.reference import SourceMethod

    monkeypatch.setattr(SourceMethod, "identity_model", "dlib_resnet_v1")
    pairset = DemoProtocol(num_pairs=4).build()
    cfg = RunConfig(out_dir=tmp_path, bootstrap_resamples=20, progress=False)
    features = FeatureStore(tmp_path / "f.sqlite")
    summary = run_method(SourceMethod(), pairset, [METRICS.create("identity")], cfg, features)
    features.close()
    assert summary["scored_by_training_model"] == ["identity"]
    assert any("trained with" in n for n in summary["notes"])
