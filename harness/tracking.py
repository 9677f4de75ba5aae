"""MLflow logging: one parent run per ``harness run``, one child run per method.

Default store: SQLite at ``<out>/mlflow.db`` with artifacts in ``<out>/mlartifacts``;
``--tracking-uri`` points at a server instead. Open the UI with
``mlflow ui --backend-store-uri sqlite:///<out>/mlflow.db``.

Safe under kills and concurrent runs:
* the SQLite store is created and migrated by one process at a time (a file lock,
  ``mlflow.db.lock``), so two runs started at once on a new ``--out`` both work;
* a run that ends by an error is marked FAILED, by Ctrl-C or SIGTERM KILLED; a run left
  RUNNING by a process that no longer exists (kill -9) is marked KILLED by the next run;
* the same command after a kill resumes its unfinished parent run, and a method whose
  child run exists under it is logged into that child again, not into a duplicate.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from harness.cache import stable_hash

EXPERIMENT = "codeswap-harness"


def default_uri(out_dir: Path) -> str:
    return f"sqlite:///{(out_dir / 'mlflow.db').resolve()}"


def _flat_params(summary: dict[str, Any]) -> dict[str, str]:
    env = summary["environment"]
    params = {
        "protocol": summary["protocol"],
        "protocol_version": summary["protocol_version"],
        "manifest_sha256": summary["manifest_sha256"],
        "gallery_sha256": summary["gallery_sha256"],
        "seed": summary["seed"],
        "num_pairs": summary["num_pairs"],
        "resolution": summary["resolution"],
        "method": summary["method"],
        "method_key": summary["method_key"],
        "device": summary["device"],
        "git_commit": env["git_commit"],
        "python": env["python"],
    }
    for k, v in summary["protocol_settings"].items():
        params[f"protocol.{k}"] = v
    for k, v in summary["method_info"].items():
        params[f"method.{k}"] = v
    for metric, b in summary["backends"].items():
        params[f"backend.{metric}"] = b["name"]
        params[f"backend.{metric}.standard"] = b["standard"]
        for name, sha in b["weights"]:
            params[f"weights.{name}"] = sha
    for pkg, ver in env["packages"].items():
        params[f"pkg.{pkg}"] = ver
    return {k: str(v)[:6000] for k, v in params.items()}


def _metrics(summary: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, e in summary["metrics"].items():
        out[key] = e["value"]
        if e.get("raw_value") is not None and e["raw_value"] != e["value"]:  # clamped in the summary
            out[f"{key}_raw"] = e["raw_value"]
        if e.get("ci_low") is not None:
            out[f"{key}_ci_low"] = e["ci_low"]
            out[f"{key}_ci_high"] = e["ci_high"]
    out["swaps_computed"] = summary["swaps"]["computed"]
    out["swaps_cached"] = summary["swaps"]["cached"]
    return {k: float(v) for k, v in out.items() if v is not None}


class Tracker:
    """Thin wrapper so the runner never imports MLflow itself."""

    def __init__(self, out_dir: Path, tracking_uri: str | None = None, enabled: bool = True) -> None:
        self.enabled = enabled
        self.out_dir = out_dir
        self.uri = tracking_uri or default_uri(out_dir)
        self._mlflow = None

    @contextmanager
    def _store_lock(self) -> Iterator[None]:
        """Hold ``<db>.lock`` while the SQLite store is created or migrated (other stores:
        no lock; a server serialises its own migrations)."""
        prefix = "sqlite:///"
        if not self.uri.startswith(prefix):
            yield
            return
        from filelock import FileLock

        db = Path(self.uri[len(prefix):])
        db.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(db) + ".lock", timeout=600):
            yield

    def _client(self):
        if self._mlflow is None:
            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
            import mlflow

            # MLflow configures its loggers on import; quiet its schema-migration chatter.
            for name in ("mlflow", "alembic"):
                logging.getLogger(name).setLevel(logging.WARNING)

            mlflow.set_tracking_uri(self.uri)
            local = self.uri == default_uri(self.out_dir)  # the store inside --out (not --tracking-uri)
            artifacts = (self.out_dir / "mlartifacts").resolve().as_uri() if local else None
            with self._store_lock():  # first use creates and migrates the store: one process at a time
                experiment = mlflow.get_experiment_by_name(EXPERIMENT)
                if experiment is None:
                    mlflow.create_experiment(EXPERIMENT, artifact_location=artifacts)
                elif local and experiment.artifact_location != artifacts:
                    relocate_artifacts(Path(self.uri[len("sqlite:///"):]), experiment.artifact_location, artifacts)
                self._experiment_id = mlflow.set_experiment(EXPERIMENT).experiment_id
            self._mlflow = mlflow
        return self._mlflow

    def _search(self, filter_string: str) -> list:
        client = self._client().MlflowClient()
        return client.search_runs([self._experiment_id], filter_string=filter_string,
                                  order_by=["attributes.start_time DESC"], max_results=1000)

    def mark_stale_runs(self) -> list[str]:
        """Mark KILLED the RUNNING runs of this machine whose process no longer exists (a
        kill -9, a lost machine). Returns their run ids."""
        client = self._client().MlflowClient()
        stale = []
        for run in self._search("attributes.status = 'RUNNING'"):
            tags = run.data.tags
            if tags.get("harness_host") != socket.gethostname() or not tags.get("harness_pid", "").isdigit():
                continue
            pid = int(tags["harness_pid"])
            if pid != os.getpid() and not _alive(pid):
                client.set_terminated(run.info.run_id, status="KILLED")
                stale.append(run.info.run_id)
        return stale

    def _owner_tags(self) -> dict[str, str]:
        return {"harness_pid": str(os.getpid()), "harness_host": socket.gethostname()}

    @contextmanager
    def parent(self, name: str, params: dict[str, Any], manifest: Any = None) -> Iterator[str | None]:
        """The parent run of one ``harness run``; the same command after a kill or an error
        resumes its unfinished parent (FAILED or KILLED) instead of starting another.

        ``manifest`` (a :class:`harness.api.PairSet`) is logged as the run's MLflow dataset
        input (context ``evaluation``, digest: the manifest sha256), and the harness's git
        commit as the standard tag ``mlflow.source.git.commit``."""
        if not self.enabled:
            yield None
            return
        mlflow = self._client()
        self.mark_stale_runs()
        key = stable_hash({k: str(v) for k, v in params.items()})
        unfinished = [r for r in self._search(f"tags.harness_parent_key = '{key}'")
                      if r.info.status in ("FAILED", "KILLED") and "mlflow.parentRunId" not in r.data.tags]
        if unfinished:
            run = mlflow.start_run(run_id=unfinished[0].info.run_id)
        else:
            run = mlflow.start_run(run_name=name, tags={"harness_parent_key": key})
            mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})
            if manifest is not None:
                mlflow.log_input(manifest_dataset(manifest), context="evaluation")
        mlflow.set_tags({**self._owner_tags(), **git_tags()})
        with _sigterm_as_interrupt():
            try:
                yield run.info.run_id
            except BaseException as exc:
                mlflow.end_run(status="KILLED" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "FAILED")
                raise
            mlflow.end_run(status="FINISHED")

    def log_method(self, summary: dict[str, Any]) -> None:
        """One child run per method; a child of this parent with the same harness run id
        (left unfinished by a kill) is reused, one that finished is left as it is."""
        if not self.enabled:
            return
        mlflow = self._client()
        active = mlflow.active_run()
        existing = [] if active is None else self._search(
            f"tags.mlflow.parentRunId = '{active.info.run_id}' and tags.harness_run_id = '{summary['run_id']}'")
        if existing and existing[0].info.status == "FINISHED":
            return
        params = _flat_params(summary)
        if existing:
            known = existing[0].data.params
            params = {k: v for k, v in params.items() if k not in known}  # MLflow params are write-once
            ctx = mlflow.start_run(run_id=existing[0].info.run_id, nested=True)
        else:
            ctx = mlflow.start_run(run_name=f"{summary['protocol']}/{summary['method']}", nested=True,
                                   tags={"harness_run_id": summary["run_id"]})
        with ctx:
            mlflow.set_tags({"protocol": summary["protocol"], "method": summary["method"], **self._owner_tags()})
            if params:
                mlflow.log_params(params)
            mlflow.log_metrics(_metrics(summary))
            mlflow.log_artifacts(summary["run_dir"], artifact_path="run")

    def log_artifacts(self, folder: Path, artifact_path: str) -> None:
        if self.enabled and folder.is_dir():
            self._client().log_artifacts(str(folder), artifact_path=artifact_path)


def relocate_artifacts(db: Path, old: str, new: str) -> None:
    """Point the store's artifact locations at ``new`` (``<out>/mlartifacts`` where the
    output folder is now) after the folder was moved, renamed or copied: MLflow keeps
    absolute URIs, so without this a moved folder's runs would log into the old path
    (recreating it, or failing on a file there) and a copy's into its original. Rewrites
    the experiment's location and the ``old`` prefix of every run's artifact URI (the
    files themselves moved with the folder). MLflow has no API for it; the schema's two
    columns are plain text. Called under the store lock."""
    import sqlite3

    con = sqlite3.connect(str(db), timeout=600)
    try:
        with con:
            con.execute("UPDATE experiments SET artifact_location = ? WHERE name = ?", (new, EXPERIMENT))
            con.execute("UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) WHERE substr(artifact_uri, 1, ?) = ?",
                        (new, len(old) + 1, len(old), old))
    finally:
        con.close()


def git_tags() -> dict[str, str]:
    """MLflow's standard source tags for the harness checkout: ``mlflow.source.git.commit``
    (the bare sha) and ``harness_git_dirty``; none outside a git checkout."""
    from harness.provenance import environment

    commit = str(environment()["git_commit"])
    if commit == "unknown":
        return {}
    sha, _, dirty = commit.partition("-")
    return {"mlflow.source.git.commit": sha, "harness_git_dirty": str(bool(dirty)).lower()}


def manifest_dataset(pairset: Any):
    """The pair set's manifest (one row per pair: pair_id, source, target, source_id,
    target_id) as an MLflow pandas dataset named ``<protocol>-manifest``, digest its sha256."""
    import io

    import pandas as pd
    from mlflow.data import from_pandas

    frame = pd.read_csv(io.BytesIO(pairset.manifest_bytes()), dtype=str, keep_default_na=False)
    with warnings.catch_warnings():  # MLflow registers two equivalent local-path sources and says so
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        return from_pandas(frame, source=Path(pairset.root).resolve().as_uri(), name=f"{pairset.protocol}-manifest",
                           digest=pairset.manifest_sha256[:16])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While logging, SIGTERM raises KeyboardInterrupt, so the runs end as KILLED instead
    of staying RUNNING (only in the main thread, where Python delivers signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
