"""Long runs under bad conditions (issue 28, items 4-8 and 11): a full disk, scripts that
start the worker pool badly, tracking URIs that cannot work, Ctrl-C and SIGTERM, damaged
caches, and a fully cached re-run that must start nothing.

Every case builds its condition with tests/bad_inputs.py (a full disk is simulated by
making the writes fail with ENOSPC, so the tests run anywhere without mounting a small
file system) and checks what the harness does: one line that says what to do, nothing
lost, nothing left running, nothing scored wrong.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import bad_inputs as bi
from faceeval.errors import HarnessError
from helpers import HANG_GUARD_S, REPO

PYPATH = os.pathsep.join([str(REPO), str(REPO / "tests")])
ENV = {**os.environ, "HARNESS_DEBUG": "", "PYTHONPATH": PYPATH, "OMP_NUM_THREADS": "1"}
CHEAP = ["-p", "demo", "-m", "source", "--num-pairs", "2", "--metric", "pose", "--device", "cpu", "--no-report"]


def harness(*args: str, prefix: str = "", env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """``harness ARGS`` in a subprocess, after running the Python source ``prefix``."""
    code = prefix + "import sys\nfrom harness.cli import main\nsys.argv[0] = 'harness'\nmain()\n"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env={**ENV, **(env or {})}, cwd=REPO, timeout=HANG_GUARD_S, **kw)


def one_line_error(proc, *fragments: str) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and sum(ln.startswith("error") for ln in lines) == 1, proc.stderr
    for f in fragments:
        assert f in lines[-1], lines[-1]
    return lines[-1]


def _evaluate(out: Path, **kw):
    from harness import evaluate

    args = dict(num_pairs=2, metrics=["pose"], out=out, mlflow=False, report=False, progress=False, workers=1,
                device="cpu", log=kw.pop("log", lambda m: None))
    args.update(kw)
    return evaluate("demo", kw.pop("methods", ["source"]), **args)


# -- item 4: a full disk ---------------------------------------------------------------------
def test_full_disk_during_a_run_is_one_line_naming_the_folder_and_the_rerun_works(tmp_path):
    out = tmp_path / "o"
    proc = harness("run", *CHEAP, "--out", str(out), "--no-mlflow", "--workers", "1", prefix=bi.full_disk_code(3))
    line = one_line_error(proc, "no space left on the device of", str(out), "run the same command again")
    assert not list(out.rglob(".tmp-*")), "a failed write left its temporary file"
    assert "Traceback" not in line
    again = harness("run", *CHEAP, "--out", str(out), "--no-mlflow", "--workers", "1")  # space freed
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "results.json").is_file()


def test_mlflow_store_creation_is_atomic_when_the_disk_fills(tmp_path, monkeypatch):
    """The first migration dies of a full disk halfway: nothing half-migrated is left, the
    error names the folder, and the next try (space freed) creates a working store."""
    import mlflow.store.db.utils as dbu

    from faceeval.tracking import Tracker

    real = dbu._upgrade_db

    def full(engine):
        with engine.begin() as con:  # what alembic had done when the disk filled
            con.exec_driver_sql("CREATE TABLE _alembic_tmp_latest_metrics (key VARCHAR(250))")
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(dbu, "_upgrade_db", full)
    with pytest.raises(HarnessError, match="no space left on the device of") as info:
        with Tracker(tmp_path).parent("p", {"a": 1}):
            pass
    assert str(tmp_path) in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "mlflow.db").exists() and not list(tmp_path.glob(".mlflow.db.creating-*"))
    monkeypatch.setattr(dbu, "_upgrade_db", real)
    t = Tracker(tmp_path)
    with t.parent("p", {"a": 1}) as run_id:
        assert run_id
    tables = {r[0] for r in sqlite3.connect(tmp_path / "mlflow.db").execute("SELECT name FROM sqlite_master")}
    assert "runs" in tables and not any(n.startswith("_alembic_tmp") for n in tables)


def test_a_half_migrated_store_left_by_an_older_version_is_rebuilt(tmp_path):
    from mlflow.tracking import MlflowClient

    from faceeval.tracking import Tracker

    bi.half_migrated_mlflow_store(tmp_path / "mlflow.db")
    notes = []
    t = Tracker(tmp_path, log=notes.append)
    with t.parent("p", {"a": 1}):
        pass
    assert any("half-created" in n for n in notes)
    client = MlflowClient(tracking_uri=t.uri)
    runs = client.search_runs([client.get_experiment_by_name("codeswap-harness").experiment_id])
    assert [r.info.status for r in runs] == ["FINISHED"]


def test_full_disk_in_the_feature_store_is_one_line(tmp_path):
    from faceeval.cache import FeatureStore

    store = FeatureStore(tmp_path / "cache" / "features.sqlite")

    class Full:  # a connection whose writes find the disk full
        def __init__(self, db):
            self.db = db

        def executemany(self, *a):
            raise sqlite3.OperationalError("database or disk is full")

        def rollback(self):
            self.db.rollback()

        def close(self):
            self.db.close()

    store._db = Full(store._db)
    with pytest.raises(HarnessError, match=r"no space left on the device of .*cache"):
        store.put_many("ns", {"a" * 64: np.zeros(3, np.float32)})
    store.close()


# -- item 5: the worker pool from any kind of caller -------------------------------------------
@pytest.mark.parametrize("how", ["script_in_a_thread", "stdin", "dash_c"])
def test_evaluate_without_a_main_guard_never_reruns_the_caller(tmp_path, how):
    out = str(tmp_path / "o")
    if how == "script_in_a_thread":
        script = tmp_path / "noguard.py"
        script.write_text(bi.NO_MAIN_GUARD_SCRIPT)
        cmd, stdin = [sys.executable, str(script), out, "thread"], None
    elif how == "stdin":
        cmd, stdin = [sys.executable, "-", out], bi.NO_MAIN_GUARD_SCRIPT
    else:
        cmd, stdin = [sys.executable, "-c", bi.NO_MAIN_GUARD_SCRIPT, out], None
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, env=ENV, cwd=tmp_path,
                          timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("TOPLEVEL") == 1, proc.stdout  # the caller's code ran once, in the caller
    assert "SWAPPED 2" in proc.stdout  # the classical swaps ran in the two workers


def test_a_worker_that_dies_is_named_with_its_signal_and_task():
    from faceeval.parallel import _launched, map_chunks, worker_pool

    with pytest.raises(HarnessError) as info:
        with worker_pool(2):
            map_chunks(bi.die_in_worker, [1, 2, 3, 4])
    msg = str(info.value)
    assert "killed by SIGKILL" in msg and "die_in_worker" in msg and "--workers" in msg, msg
    assert "out of memory?" not in msg
    assert not _launched


# -- item 6: the tracking URI is checked before any work ---------------------------------------
class _Handler(http.server.BaseHTTPRequestHandler):
    status, body = 404, b"<html>not here</html>"

    def do_GET(self):
        self.send_response(self.status)
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *a):
        pass


@pytest.fixture
def server():
    servers = []

    def start(status: int, body: bytes) -> str:
        handler = type("H", (_Handler,), {"status": status, "body": body})
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}"

    yield start
    for srv in servers:
        srv.shutdown()


@pytest.mark.parametrize(("kind", "fragment"), [
    ("refused", "cannot reach the server"),
    ("not_mlflow", "is not an MLflow tracking server"),
    ("unauthorised", "refused the credentials (HTTP 401)"),
    ("scheme", "unsupported scheme foo://"),
    ("databricks", "Databricks"),
    ("new_folder", "does not exist"),
])
def test_unusable_tracking_uris_are_one_line_before_any_work(tmp_path, server, monkeypatch, kind, fragment):
    from faceeval.tracking import Tracker

    uri = {"refused": "http://127.0.0.1:9", "scheme": "foo://bar", "databricks": "databricks",
           "new_folder": f"sqlite:///{tmp_path}/new/dir/x.db"}.get(kind)
    if kind == "not_mlflow":
        uri = server(404, b"<html>not here</html>")
    elif kind == "unauthorised":
        uri = server(401, b"")
    for var in [v for v in os.environ if v.startswith("DATABRICKS_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.databrickscfg
    t0 = time.monotonic()
    with pytest.raises(HarnessError) as info:
        Tracker(tmp_path / "o", uri).check()
    msg = str(info.value)
    assert fragment in msg and uri in msg and "--no-mlflow" in msg and "\n" not in msg, msg
    assert time.monotonic() - t0 < 60  # not minutes of retries
    assert not (tmp_path / "new").exists()


def test_a_real_mlflow_answer_passes_the_server_check(server, tmp_path):
    from faceeval.tracking import Tracker

    uri = server(404, json.dumps({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no"}).encode())
    Tracker(tmp_path, uri)._probe_server()  # an MLflow server that lacks the experiment yet: fine


def test_cli_refuses_a_dead_tracking_server_before_any_work(tmp_path):
    out = tmp_path / "o"
    proc = harness("run", *CHEAP, "--out", str(out), "--tracking-uri", "http://127.0.0.1:9")
    one_line_error(proc, "http://127.0.0.1:9", "--no-mlflow")
    assert not (out / "runs").exists() and "method 1" not in proc.stderr


def test_a_tracking_failure_after_the_work_keeps_the_results(tmp_path, monkeypatch):
    from faceeval.tracking import Tracker

    def broken(self, summary):
        raise ConnectionError("the server went away")

    monkeypatch.setattr(Tracker, "_log_method", broken)
    lines: list[str] = []
    res = _evaluate(tmp_path, mlflow=True, log=lines.append)
    assert (tmp_path / "results.json").is_file() and res.summaries
    assert sum("warning: MLflow logging" in ln and "the server went away" in ln for ln in lines) == 1, lines
    assert res.tracking_uri is None


# -- item 7: stops ------------------------------------------------------------------------------
def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_prints_the_interrupted_line_ends_the_workers_and_marks_the_run(tmp_path, sig, code):
    from mlflow.tracking import MlflowClient

    out = tmp_path / "o"
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", "-p", "demo", "-m", "classical",
                             "--metric", "pose", "--workers", "2", "--out", str(out), "--device", "cpu", "--no-report"],
                            stderr=subprocess.PIPE, text=True, env=ENV, cwd=REPO)
    line = ""
    while "method 1 of" not in line:  # the known point: swapping has begun
        line = proc.stderr.readline()
        assert line or proc.poll() is None, "the run ended before swapping"
    deadline = time.monotonic() + HANG_GUARD_S
    while len(_descendants(proc.pid)) < 3 and time.monotonic() < deadline:  # the workers are up
        time.sleep(0.1)
    workers = _descendants(proc.pid)
    proc.send_signal(sig)
    err = proc.stderr.read()
    proc.wait(HANG_GUARD_S)
    assert proc.returncode == code, err
    assert "interrupted: finished work is cached" in err and "Traceback" not in err, err
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in workers if _alive(p)], "a worker outlived harness run"
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("codeswap-harness").experiment_id])
    assert [r.info.status for r in runs] == ["KILLED"]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallowed exception itself
def test_a_swallowed_signal_still_stops_the_run():
    """Python ignores an exception raised in a __del__ ("Exception ignored in: ..."); a
    signal landing there is remembered and the next check raises it."""
    from faceeval import stops

    class Dying:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs here; its exception is swallowed
                pass

    stops.reset()
    try:
        with stops.handling():
            Dying()  # collected at once
            with pytest.raises(stops.Interrupted) as info:
                stops.check()
        assert info.value.signum == signal.SIGTERM and stops.exit_code(stops.received()) == 143
        with stops.handling():  # the next run in this process (a notebook) starts afresh
            stops.check()
    finally:
        stops.reset()


def test_runs_carry_their_owner_from_creation_and_ownerless_ones_are_marked(tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    from faceeval.tracking import Tracker

    t = Tracker(tmp_path)
    real = mlflow.set_tags
    monkeypatch.setattr(mlflow, "set_tags", lambda tags: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):  # killed right after the run was created
        with t.parent("p", {"a": 1}):
            pass
    monkeypatch.setattr(mlflow, "set_tags", real)
    client = MlflowClient(tracking_uri=t.uri)
    exp = client.get_experiment_by_name("codeswap-harness").experiment_id
    (run,) = client.search_runs([exp])
    assert run.info.status == "RUNNING" and run.data.tags["harness_pid"] == str(os.getpid())
    mlflow.end_run()
    # an older version's ownerless RUNNING run: the next run marks it KILLED
    orphan = client.create_run(exp, tags={"harness_parent_key": "old"}).info.run_id
    Tracker(tmp_path).mark_stale_runs()
    assert client.get_run(orphan).info.status == "KILLED"


# -- item 8: damaged caches ---------------------------------------------------------------------
def _numbers(res) -> dict:
    return {k: v["value"] for s in res.summaries for k, v in s["metrics"].items()}


def test_a_truncated_cached_swap_is_named_once_and_swapped_again(tmp_path):
    first = _evaluate(tmp_path)
    png = next((tmp_path / "cache" / "swaps").rglob("*.png"))
    bi.truncate_file(png)
    again = _evaluate(tmp_path)
    s = again.summaries[0]
    assert s["swaps"]["computed"] == 1 and _numbers(again) == _numbers(first)
    assert sum("did not decode" in n for n in s["notes"]) == 1, s["notes"]
    third = _evaluate(tmp_path)  # repaired for good
    assert (third.summaries[0]["swaps"]["computed"] == 0
            and not any("did not decode" in n for n in third.summaries[0]["notes"]))


def test_a_truncated_feature_row_is_named_once_and_recomputed(tmp_path, capfd):
    first = _evaluate(tmp_path)
    bi.truncate_feature_row(tmp_path / "cache" / "features.sqlite")
    capfd.readouterr()
    again = _evaluate(tmp_path)
    err = capfd.readouterr().err
    assert err.count("holds damaged rows") == 1, err
    assert _numbers(again) == _numbers(first)
    _evaluate(tmp_path)
    assert "damaged" not in capfd.readouterr().err  # the row was rewritten


def test_a_half_truncated_feature_store_keeps_what_reads_and_recomputes_the_rest(tmp_path, capfd):
    first = _evaluate(tmp_path)
    db = tmp_path / "cache" / "features.sqlite"
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    bi.truncate_file(db)
    capfd.readouterr()
    again = _evaluate(tmp_path)
    err = capfd.readouterr().err
    assert _numbers(again) == _numbers(first)
    assert err.count("was damaged") == 1 and "Traceback" not in err, err
    assert list(db.parent.glob("features.sqlite.damaged-*"))


def test_a_feature_store_that_is_not_a_database_is_one_line_saying_what_to_delete(tmp_path):
    bi.garbage_feature_store(tmp_path / "cache" / "features.sqlite")
    proc = harness("run", *CHEAP, "--out", str(tmp_path), "--no-mlflow", "--workers", "1")
    one_line_error(proc, "features.sqlite cannot be read", "rm ")


# -- item 11: a fully cached re-run starts nothing -----------------------------------------------
#: a prefix that makes any network, dlib model or worker pool an error
NOTHING_LOADS = """
import concurrent.futures, torch, onnxruntime
import faceeval.faces.dlib_models as _dm
def _refuse(what):
    def refuse(*a, **k):
        raise RuntimeError(f"a fully cached run loaded {what}")
    return refuse
torch.nn.Module.__init__ = _refuse("a torch network")
onnxruntime.InferenceSession = _refuse("an ONNX network")
_dm._read = _refuse("a dlib model")
_dm.hog_detector = _refuse("the dlib detector")
concurrent.futures.ProcessPoolExecutor.__init__ = _refuse("a worker pool")
"""


def test_a_fully_cached_rerun_starts_no_worker_and_loads_no_network(tmp_path):
    args = ["run", "-p", "demo", "--num-pairs", "4", "-m", "source", "-m", "classical", "--device", "cpu",
            "--out", str(tmp_path), "--no-report", "--no-mlflow", "--workers", "2"]  # the default metric suite
    cold = harness(*args)
    assert cold.returncode == 0, cold.stderr[-3000:]
    warm = harness(*args, prefix=NOTHING_LOADS)
    assert warm.returncode == 0, warm.stderr[-3000:]
    assert warm.stderr.count("0 swapped, 4 cached") == 2
    res = json.loads((tmp_path / "results.json").read_text())
    assert all(s["features"]["computed"] == 0 for s in res["summaries"])
