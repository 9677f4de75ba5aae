"""Scale-out: torchrun ranks, the worker pool and concurrent runs give the one-process numbers.

The subprocesses are the thing under test (``python -m torch.distributed.run`` with 2 gloo
ranks on CPU, ``harness run`` processes side by side), so the timeouts are generous: the
test machine may be busy. Runs are small (8 pairs, batches of 4: one batch per rank).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from faceeval.cache import FeatureStore, merge_feature_shards, shard_folder
from faceeval.parallel import World, fixed_batches, pool_map, shard_batches, worker_pool
from helpers import HANG_GUARD_S, REPO

TIMEOUT = HANG_GUARD_S  # seconds per subprocess: a busy 2-core machine runs these slowly
METHODS = ("source", "target", "classical")
DEMO_ARGS = ("--protocol", "demo", "--num-pairs", "8", "--batch-size", "4", "--device", "cpu")


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "HARNESS_DEBUG": "", **extra}


def harness(*args: str, nproc: int = 1, env: dict[str, str] | None = None, check: bool = True,
            ) -> subprocess.CompletedProcess:
    """``harness ARGS`` in one process, or under ``torch.distributed.run`` with ``nproc`` ranks."""
    cmd = [sys.executable, "-m", "harness.cli", *args]
    if nproc > 1:
        with socket.socket() as s:  # a free port for the rendezvous
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--master-port", str(port), "-m", "harness.cli", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env or _env(), timeout=TIMEOUT)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def run_args(out: Path, *extra: str, methods=METHODS) -> list[str]:
    return ["run", *DEMO_ARGS, *(a for m in methods for a in ("--method", m)), "--out", str(out), *extra]


def summaries(out: Path) -> dict[str, dict]:
    """method -> its summary.json (one run per method in these fresh folders)."""
    found = [json.loads(p.read_text()) for p in out.glob("runs/*/*/summary.json")]
    assert len({s["method"] for s in found}) == len(found)
    return {s["method"]: s for s in found}


def metrics_by_method(out: Path) -> str:
    """Every method's "metrics" (values, CIs, n: the numbers) as canonical JSON text, so
    NaN compares equal to NaN and a float must match to the last bit."""
    return json.dumps({m: s["metrics"] for m, s in summaries(out).items()}, sort_keys=True)


def feature_rows(out: Path) -> dict[tuple[str, str], bytes]:
    db = sqlite3.connect(out / "cache" / "features.sqlite")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return {(ns, sha): data for ns, sha, data in db.execute("SELECT ns, sha, data FROM features")}
    finally:
        db.close()


def swap_files(out: Path) -> dict[str, set[str]]:
    """method -> names of its swapped crops in the cache."""
    return {d.name.rsplit("-", 1)[0]: {p.name for p in d.glob("*/*.png")} for d in (out / "cache" / "swaps").iterdir()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The one-process, one-worker run every scaled run must match."""
    out = tmp_path_factory.mktemp("reference")
    harness(*run_args(out, "--workers", "1", "--no-mlflow"))
    return out


# ---------------------------------------------------------------------------------------
# Pieces
# ---------------------------------------------------------------------------------------


def test_batches_are_shared_out_whole_and_in_order():
    items = list(range(10))
    parts = [shard_batches(items, 3, World(rank=r, size=2)) for r in range(2)]
    assert parts == [[0, 1, 2, 6, 7, 8], [3, 4, 5, 9]]
    assert sorted(parts[0] + parts[1]) == items


def test_fixed_batches_make_a_row_independent_of_its_neighbours():
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), torch.nn.Conv2d(16, 8, 3),
                              torch.nn.Flatten()).eval()
    rows = torch.rand(11, 3, 20, 20)
    with torch.inference_mode():
        together = fixed_batches(net, rows, 4)
        alone = torch.cat([fixed_batches(net, rows[i : i + 1], 4) for i in range(len(rows))])
        shifted = fixed_batches(net, torch.cat([torch.rand(3, 3, 20, 20), rows]), 4)[3:]
    assert together.shape == (11, 8 * 16 * 16)
    assert torch.equal(together, alone) and torch.equal(together, shifted)
    assert fixed_batches(lambda x: x * 2, np.arange(5.0)[:, None], 4).ravel().tolist() == [0, 2, 4, 6, 8]


def test_a_container_cpu_quota_caps_the_cores(tmp_path, monkeypatch):
    import faceeval.parallel as parallel

    v2, v1, none, odd = (tmp_path / n for n in ("v2", "v1", "none", "odd"))
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")  # docker --cpus 1.5
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    none.mkdir()
    (none / "cpu.max").write_text("max 100000\n")
    odd.mkdir()
    (odd / "cpu.max").write_text("garbage\n")
    assert [parallel.cgroup_cpu_quota(r) for r in (v2, v1, none, odd, tmp_path / "absent")] == [2, 2, None, None, None]
    monkeypatch.setattr(parallel, "cgroup_cpu_quota", lambda: 1)
    assert parallel.available_cores() == 1  # a quota below the affinity mask wins
    monkeypatch.setattr(parallel, "cgroup_cpu_quota", lambda: 10_000)
    assert parallel.available_cores() == len(os.sched_getaffinity(0))  # one above it does not


def _square(x: int) -> int:
    return x * x


def test_worker_pool_keeps_item_order_and_reports_each_result():
    seen = []
    with worker_pool(2) as n:
        assert n == 2
        out = pool_map(_square, list(range(9)), on_result=lambda item, r: seen.append((item, r)))
    assert out == [x * x for x in range(9)]
    assert seen == list(zip(range(9), out))


def _write_features(path: str, worker: int, start) -> None:
    store = FeatureStore(Path(path))
    start.wait()
    for i in range(40):
        # overlapping keys: every process writes keys 0..59, the same value for a key
        keys = [f"{(worker * 20 + i + j) % 60:04d}" for j in range(5)]
        store.put_many("ns:v1", {k: np.full(16, int(k), np.float32) for k in keys})
        got = store.get_many("ns:v1", keys)
        assert all(np.array_equal(got[k], np.full(16, int(k), np.float32)) for k in keys)
    store.close()


def test_feature_store_under_concurrent_processes_stays_whole(tmp_path):
    path = tmp_path / "features.sqlite"
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_write_features, args=(str(path), w, start)) for w in range(3)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(TIMEOUT)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    rows = db.execute("SELECT sha, data FROM features").fetchall()
    assert len(rows) == 60
    assert all(np.array_equal(np.frombuffer(d, np.float32), np.full(16, int(k), np.float32)) for k, d in rows)


def test_sharded_feature_store_reads_the_main_file_and_merges_into_it(tmp_path):
    path = tmp_path / "features.sqlite"
    main = FeatureStore(path)
    main.put_many("ns", {"a": np.ones(2, np.float32)})
    main.close()
    one, two = FeatureStore(path, shard="one"), FeatureStore(path, shard="two")
    assert set(one.get_many("ns", ["a", "b"])) == {"a"}  # the main file, read-only
    one.put_many("ns", {"b": np.full(2, 2, np.float32)})
    two.put_many("ns", {"b": np.full(2, 2, np.float32), "c": np.full(2, 3, np.float32)})
    assert set(one.get_many("ns", ["a", "b", "c"])) == {"a", "b"}  # its own file, not the other's
    one.close()
    two.close()
    assert merge_feature_shards(path) == 2
    assert not list(shard_folder(path).glob("*"))
    again = FeatureStore(path)
    assert {k: v.tolist() for k, v in again.get_many("ns", ["a", "b", "c"]).items()} == {
        "a": [1.0, 1.0], "b": [2.0, 2.0], "c": [3.0, 3.0]}
    again.close()


# ---------------------------------------------------------------------------------------
# Whole runs
# ---------------------------------------------------------------------------------------


def test_workers_do_not_change_the_numbers(reference, tmp_path):
    harness(*run_args(tmp_path, "--workers", "2", "--no-mlflow"))
    assert metrics_by_method(tmp_path) == metrics_by_method(reference)
    assert (tmp_path / "report" / "table1.csv").read_bytes() == (reference / "report" / "table1.csv").read_bytes()
    assert summaries(tmp_path)["classical"]["processes"] == {"ranks": 1, "workers_per_rank": 2}


def test_two_ranks_give_the_one_process_numbers_and_one_mlflow_parent(reference, tmp_path):
    proc = harness(*run_args(tmp_path, "--workers", "1"), nproc=2)
    assert metrics_by_method(tmp_path) == metrics_by_method(reference)
    assert (tmp_path / "report" / "table1.csv").read_bytes() == (reference / "report" / "table1.csv").read_bytes()
    assert proc.stdout.count("results: ") == 1  # rank 0 alone reports
    s = summaries(tmp_path)
    assert all(s[m]["processes"]["ranks"] == 2 and s[m]["swaps"] == {"computed": 8, "cached": 0} for m in METHODS)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("codeswap-harness")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.data.tags["method"] for r in children) == sorted(METHODS)
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}


def test_a_dead_rank_is_resumed_from_the_caches(reference, tmp_path):
    # rank 1 dies once it has scored 4 pairs: its share of the first method; sharded
    # feature files (as on several machines) so the resume merges what it left
    env = _env(HARNESS_FEATURE_SHARDS="1")
    dead = harness(*run_args(tmp_path, "--workers", "1", "--no-mlflow", "--no-report"), nproc=2,
                   env={**env, "HARNESS_TEST_EXIT_AFTER": "1:4"}, check=False)
    assert dead.returncode != 0
    before = swap_files(tmp_path)
    assert len(before.get("source", ())) == 8 and not before.get("classical")
    harness(*run_args(tmp_path, "--workers", "1", "--no-mlflow"), nproc=2, env=env)
    assert metrics_by_method(tmp_path) == metrics_by_method(reference)
    s = summaries(tmp_path)
    for m in METHODS:  # only the swaps that were not on disk were made again
        assert s[m]["swaps"]["computed"] == 8 - len(before.get(m, ()))
    rows = feature_rows(tmp_path)
    assert set(rows) == set(feature_rows(reference))  # the same features, nothing left in shard files
    assert not list(shard_folder(tmp_path / "cache" / "features.sqlite").glob("*.sqlite"))
    computed = sum(s[m]["features"]["computed"] for m in METHODS)
    fresh = sum(v["features"]["computed"] for v in summaries(reference).values())
    assert 0 < computed < fresh  # the dead rank's finished features were kept


def test_two_concurrent_runs_on_one_out_agree(reference, tmp_path):
    args = run_args(tmp_path, "--workers", "1", "--no-mlflow", "--no-report")
    cmd = [sys.executable, "-m", "harness.cli", *args]
    procs = [subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [p.communicate(timeout=TIMEOUT) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-4000:]
    assert metrics_by_method(tmp_path) == metrics_by_method(reference)
    assert set(feature_rows(tmp_path)) == set(feature_rows(reference))  # integrity checked inside
    assert {m: len(f) for m, f in swap_files(tmp_path).items()} == {m: 8 for m in METHODS}
    assert not list((tmp_path / "cache").rglob(".tmp-*"))  # no half-written file left


def test_ffpp_under_two_ranks_matches_one_process(tmp_path):
    from protocols.fixtures import write_ffpp

    tree = write_ffpp(tmp_path / "ffpp")
    args = ["--protocol", "ffpp", "--root", str(tree.root), "--num-pairs", "8", "--batch-size", "4",
            "--device", "cpu", *(a for m in METHODS for a in ("--method", m)), "--no-mlflow", "--workers", "1"]
    one, two = tmp_path / "one", tmp_path / "two"
    harness("run", *args, "--out", str(one))
    prep = harness("prepare", "ffpp", "--root", str(tree.root), "--out", str(two), "--workers", "1", nproc=2)
    assert prep.stdout.count("manifest: ") == 1
    harness("run", *args, "--out", str(two), nproc=2)
    assert metrics_by_method(two) == metrics_by_method(one)
    assert (two / "report" / "table1.csv").read_bytes() == (one / "report" / "table1.csv").read_bytes()
    crops = [sorted(p.relative_to(out / "cache").as_posix() for p in (out / "cache" / "crops").rglob("*.png"))
             for out in (one, two)]
    assert crops[0] == crops[1] and crops[0]  # the ranks prepared exactly the frames one process does


def test_folder_preparation_resumes_from_a_killed_process_index_part(tmp_path, monkeypatch):
    import shutil

    import faceeval.faces.crops
    from faceeval.constants import DEMO_DIR
    from protocols.folder import FolderProtocol

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("astronaut.png", "grace_hopper.png", "tom_hanks.png"):
        shutil.copyfile(DEMO_DIR / name, photos / name)
    proto = FolderProtocol(root=photos, cache_dir=tmp_path / "cache")
    first = proto.build()
    index = proto.crop_root / "index.json"
    # a killed process leaves its entries in its own part file, never in index.json
    index.rename(proto.crop_root / "index.part-otherhost-123.json")
    monkeypatch.setattr(faceeval.faces.crops, "crop_largest", lambda *a, **k: pytest.fail("detected again"))
    again = FolderProtocol(root=photos, cache_dir=tmp_path / "cache").build()
    assert again.manifest_sha256 == first.manifest_sha256
    assert index.is_file() and not list(proto.crop_root.glob("index.part-*.json"))  # merged into index.json
    assert set(json.loads(index.read_text())) == {"astronaut.png", "grace_hopper.png", "tom_hanks.png"}
