"""MLflow logging: one parent run per ``harness run``, one child run per method.

In the foundation because two layers log to the same store: the evaluation
(``harness.evaluation``) and CodeSwap's training (``codeswap.train.tracking.RunTracker``);
it is the one module that imports MLflow (an import-linter contract in pyproject.toml).

Default store: SQLite at ``<out>/mlflow.db`` with artifacts in ``<out>/mlartifacts``;
``--tracking-uri`` points at a server instead. Open the UI with
``mlflow ui --backend-store-uri sqlite:///<out>/mlflow.db``.

Safe under kills and concurrent runs:
* the SQLite store is created and migrated by one process at a time (a file lock,
  ``mlflow.db.lock``), so two runs started at once on a new ``--out`` both work;
* a run that ends by an error is marked FAILED, by Ctrl-C or SIGTERM KILLED; a run left
  RUNNING by a process that no longer exists (kill -9) is marked KILLED by the next run
  (runs are created with their owner's pid and host as tags, so there is no moment when a
  kill leaves a run without an owner; an ownerless RUNNING run of an older version is
  marked too);
* the same command after a kill resumes its unfinished parent run, and a method whose
  child run exists under it is logged into that child again, not into a duplicate.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from faceeval import stops
from faceeval.cache import stable_hash
from faceeval.errors import HarnessError, is_no_space, no_space
from faceeval.summaries import RunSummary

EXPERIMENT = "codeswap-harness"


def default_uri(out_dir: Path) -> str:
    return f"sqlite:///{(out_dir / 'mlflow.db').resolve()}"


def _flat_params(run: RunSummary) -> dict[str, str]:
    env = run.environment
    params = {
        "protocol": run.protocol,
        "protocol_version": run.protocol_version,
        "manifest_sha256": run.manifest_sha256,
        "gallery_sha256": run.gallery_sha256,
        "seed": run.seed,
        "num_pairs": run.num_pairs,
        "resolution": run.resolution,
        "method": run.method,
        "method_key": run.method_key,
        "device": run.device,
        "git_commit": env["git_commit"],
        "python": env["python"],
    }
    for k, v in run.protocol_settings.items():
        params[f"protocol.{k}"] = v
    for k, v in run.method_info.items():
        params[f"method.{k}"] = v
    for metric, b in run.backends.items():
        params[f"backend.{metric}"] = b.name
        params[f"backend.{metric}.standard"] = b.standard
        for name, sha in b.weights:
            params[f"weights.{name}"] = sha
    params["convention"] = run.convention or "none"
    for metric, settings in run.conventions.items():
        for k, v in settings.items():
            params[f"convention.{metric}.{k}"] = v
    for i, line in enumerate(run.substitutions):
        params[f"substituted.{i}"] = line
    for pkg, ver in env["packages"].items():
        params[f"pkg.{pkg}"] = ver
    return {k: str(v)[:6000] for k, v in params.items()}


def _metrics(run: RunSummary) -> dict[str, float]:
    out = {}
    for key, e in run.metrics.items():
        out[key] = e.value
        if e.raw_value is not None and e.raw_value != e.value:  # clamped in the summary
            out[f"{key}_raw"] = e.raw_value
        if e.ci_low is not None:
            out[f"{key}_ci_low"] = e.ci_low
            out[f"{key}_ci_high"] = e.ci_high
    out["swaps_computed"] = run.swaps["computed"]
    out["swaps_cached"] = run.swaps["cached"]
    return {k: float(v) for k, v in out.items() if v is not None}


#: schemes MLflow's tracking stores accept (a database URI may name its driver: postgresql+psycopg2)
SCHEMES = ("sqlite", "http", "https", "databricks", "databricks-uc", "uc", "postgresql", "mysql", "mssql", "file")
#: seconds the tracking server gets to answer the check before any work
CONNECT_TIMEOUT_S = 5.0


class Tracker:
    """Thin wrapper so the runner never imports MLflow itself.

    :meth:`check` tries the store before any work (one-line :class:`HarnessError` naming the
    URI and ``--no-mlflow``); a failure while logging after the work only ends the logging,
    with a warning (``log``): results, runs and report on disk are never lost to it."""

    def __init__(self, out_dir: Path, tracking_uri: str | None = None, enabled: bool = True,
                 log=None) -> None:
        self.enabled = enabled
        self.out_dir = out_dir
        self.uri = tracking_uri or default_uri(out_dir)
        self.explicit = tracking_uri is not None
        self._mlflow = None
        self._log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.failure: str | None = None  # why logging stopped after the work began

    def _error(self, reason: str) -> HarnessError:
        return HarnessError(f"MLflow tracking URI {self.uri}: {reason}; fix --tracking-uri or pass --no-mlflow")

    def check(self) -> None:
        """Make sure the tracking store works before any work is done: the scheme is one
        MLflow knows, an SQLite file's folder exists (it is created only inside ``--out``),
        a server answers within :data:`CONNECT_TIMEOUT_S` as MLflow and accepts the
        credentials, Databricks credentials are configured. Raises a one-line HarnessError."""
        if not self.enabled:
            return
        from urllib.parse import urlparse

        scheme = urlparse(self.uri).scheme.split("+")[0] if "://" in self.uri else self.uri.split(":")[0]
        if scheme not in SCHEMES:
            raise self._error(f"unsupported scheme {scheme + '://' if scheme else repr(self.uri)} "
                              f"(MLflow stores: {', '.join(s + '://' for s in SCHEMES[:3])}, databricks, "
                              "postgresql://, mysql://, mssql://)")
        if scheme == "sqlite" and self.explicit:
            db = Path(self.uri[len("sqlite:///"):]) if self.uri.startswith("sqlite:///") else None
            if db is not None and db != Path() and not db.parent.is_dir():
                raise self._error(f"the folder {db.parent} does not exist (create it first: mkdir -p {db.parent})")
        if scheme in ("http", "https"):
            self._probe_server()
        from faceeval.parallel import environ

        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        # fail now, not after minutes of retries
        fast = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(CONNECT_TIMEOUT_S * 2))}
        with environ(fast):
            import mlflow  # noqa: F401 - configures its loggers, then quietened here

            quiet = logging.getLogger("mlflow")
            level = quiet.level
            quiet.setLevel(logging.ERROR)  # its warnings would come before our one line
            try:
                self._client()
            except HarnessError:
                raise
            except Exception as exc:  # noqa: BLE001 - MLflow's own refusals (credentials, file store, database)
                hint = (" (set DATABRICKS_HOST and DATABRICKS_TOKEN, or a profile in ~/.databrickscfg)"
                        if scheme.startswith("databricks") else "")
                raise self._error(_first_sentence(exc) + hint) from None
            finally:
                quiet.setLevel(level)

    def _probe_server(self) -> None:
        """One GET to the server's REST API with a short timeout: reachable, MLflow, credentials accepted."""
        import base64
        import json
        import urllib.error
        import urllib.request
        from urllib.parse import quote

        url = f"{self.uri.rstrip('/')}/api/2.0/mlflow/experiments/get-by-name?experiment_name={quote(EXPERIMENT)}"
        headers = {}
        if os.environ.get("MLFLOW_TRACKING_TOKEN"):
            headers["Authorization"] = f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"
        elif os.environ.get("MLFLOW_TRACKING_USERNAME"):
            pair = f"{os.environ['MLFLOW_TRACKING_USERNAME']}:{os.environ.get('MLFLOW_TRACKING_PASSWORD', '')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=CONNECT_TIMEOUT_S) as r:
                status, body = r.status, r.read(1 << 16)
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read(1 << 16)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise self._error(f"cannot reach the server ({reason}; waited at most {CONNECT_TIMEOUT_S:g}s)") from None
        if status in (401, 403):
            raise self._error(f"the server refused the credentials (HTTP {status}); set MLFLOW_TRACKING_TOKEN "
                              "or MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if not isinstance(data, dict) or not ("experiment" in data or "error_code" in data):
            raise self._error(f"the server answered HTTP {status} but is not an MLflow tracking server")

    def _safely(self, what: str, fn, *args) -> None:
        """Log to MLflow; a failure stops the logging with one warning line instead of failing
        a run whose results are already on disk."""
        if self.failure is not None:
            return
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - any tracking failure after the work
            self.failure = _first_sentence(exc)
            self._log(f"warning: MLflow logging to {self.uri} failed while {what} ({self.failure}); the results "
                      f"are on disk in {self.out_dir}; MLflow logging stops for this run")

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
                if logging.getLogger(name).level < logging.WARNING:  # check() may have raised it further
                    logging.getLogger(name).setLevel(logging.WARNING)

            mlflow.set_tracking_uri(self.uri)
            db = self._sqlite_path()
            local = self.uri == default_uri(self.out_dir)  # the store inside --out (not --tracking-uri)
            artifacts = (self.out_dir / "mlartifacts").resolve().as_uri() if db is not None else None
            try:
                with self._store_lock():  # first use creates and migrates the store: one process at a time
                    if db is not None:
                        _ensure_sqlite_store(db, self._log)
                    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
                    if experiment is None:
                        mlflow.create_experiment(EXPERIMENT, artifact_location=artifacts)
                    elif local and experiment.artifact_location != artifacts:
                        relocate_artifacts(db, experiment.artifact_location, artifacts)
                    self._experiment_id = mlflow.set_experiment(EXPERIMENT).experiment_id
            except Exception as exc:
                if is_no_space(exc):
                    raise no_space(db.parent if db is not None else self.out_dir) from None
                raise
            self._mlflow = mlflow
        return self._mlflow

    def _sqlite_path(self) -> Path | None:
        prefix = "sqlite:///"
        return Path(self.uri[len(prefix):]) if self.uri.startswith(prefix) and len(self.uri) > len(prefix) else None

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
            ours = "harness_parent_key" in tags or "harness_run_id" in tags
            if ours and "harness_pid" not in tags:  # started by a version that tagged its owner later, then killed
                client.set_terminated(run.info.run_id, status="KILLED")
                stale.append(run.info.run_id)
                continue
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

        ``manifest`` (a :class:`faceeval.api.PairSet`) is logged as the run's MLflow dataset
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
            run = mlflow.start_run(run_name=name, tags={"harness_parent_key": key, **self._owner_tags()})
            mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})
            if manifest is not None:
                mlflow.log_input(manifest_dataset(manifest), context="evaluation")
        mlflow.set_tags({**self._owner_tags(), **git_tags()})
        with stops.handling():
            try:
                yield run.info.run_id
            except BaseException as exc:
                try:
                    mlflow.end_run(status="KILLED" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "FAILED")
                except Exception:  # noqa: BLE001 - the store failing too: the first error is the one to see
                    pass
                raise
            if self.failure is None:
                self._safely("ending the parent run", mlflow.end_run, "FINISHED")
            else:
                try:
                    mlflow.end_run(status="FAILED")
                except Exception:  # noqa: BLE001 - said once already
                    pass

    def log_method(self, run: RunSummary) -> None:
        """One child run per method; a child of this parent with the same harness run id
        (left unfinished by a kill) is reused, one that finished is left as it is. A failure
        is a warning (see :meth:`_safely`)."""
        if self.enabled:
            self._safely(f"logging method {run.method}", self._log_method, run)

    def _log_method(self, run: RunSummary) -> None:
        mlflow = self._client()
        active = mlflow.active_run()
        existing = [] if active is None else self._search(
            f"tags.mlflow.parentRunId = '{active.info.run_id}' and tags.harness_run_id = '{run.run_id}'")
        if existing and existing[0].info.status == "FINISHED":
            return
        params = _flat_params(run)
        if existing:
            known = existing[0].data.params
            params = {k: v for k, v in params.items() if k not in known}  # MLflow params are write-once
            ctx = mlflow.start_run(run_id=existing[0].info.run_id, nested=True)
        else:
            ctx = mlflow.start_run(run_name=f"{run.protocol}/{run.method}", nested=True,
                                   tags={"harness_run_id": run.run_id, **self._owner_tags()})
        with ctx:
            mlflow.set_tags({"protocol": run.protocol, "method": run.method, **self._owner_tags()})
            if params:
                mlflow.log_params(params)
            mlflow.log_metrics(_metrics(run))
            mlflow.log_artifacts(run.run_dir, artifact_path="run")

    def log_artifacts(self, folder: Path, artifact_path: str) -> None:
        if self.enabled and folder.is_dir():
            self._safely(f"logging {artifact_path}", lambda: self._client().log_artifacts(str(folder),
                                                                                          artifact_path=artifact_path))


def _ensure_sqlite_store(db: Path, log) -> None:
    """Create the SQLite store atomically: MLflow's migrations run on a temporary file in the
    same folder, renamed to ``db`` once complete, so a full disk or a kill midway leaves no
    half-migrated store (that one made every later run fail with "table ... already
    exists"). A store left half-created by an older version (it holds no run) is rebuilt;
    one that holds runs is left alone. Call with the store lock held."""
    import sqlite3

    for stale in db.parent.glob(f".{db.name}.creating-*"):  # leftovers of a killed creation
        stale.unlink(missing_ok=True)
    if db.is_file() and db.stat().st_size > 0:
        try:
            con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
            try:
                tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                half = any(t.startswith("_alembic_tmp_") for t in tables)
                runs = con.execute("SELECT COUNT(*) FROM runs").fetchone()[0] if "runs" in tables else 0
            finally:
                con.close()
        except sqlite3.DatabaseError as exc:
            raise HarnessError(f"the MLflow store {db} cannot be read ({exc}): move it away or delete it, or pass "
                               "--no-mlflow") from None
        if not half:
            return
        if runs:
            raise HarnessError(f"the MLflow store {db} was left half-migrated but holds {runs} runs: back it up, then "
                               f"run `mlflow db upgrade sqlite:///{db}` or move it away; or pass --no-mlflow")
        log(f"  note: the MLflow store {db} was left half-created (no runs in it); creating it again")
    import uuid

    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    # a new name: MLflow caches engines by URI
    tmp = db.with_name(f".{db.name}.creating-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        store = SqlAlchemyStore(f"sqlite:///{tmp}", (db.parent / "mlartifacts").resolve().as_uri())
        store.engine.dispose()
        os.replace(tmp, db)
    except BaseException as exc:
        for extra in ("", "-journal", "-wal", "-shm"):
            Path(str(tmp) + extra).unlink(missing_ok=True)
        if isinstance(exc, Exception) and is_no_space(exc):
            raise no_space(db.parent) from None
        raise


def _first_sentence(exc: BaseException) -> str:
    """An exception's message cut to one line (MLflow's run to paragraphs)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    cut = text.find(". ")
    return (text[:cut] if 0 < cut < 300 else text[:300]).rstrip(".")


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
            con.execute("UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) "
                        "WHERE substr(artifact_uri, 1, ?) = ?",
                        (new, len(old) + 1, len(old), old))
    finally:
        con.close()


def git_tags() -> dict[str, str]:
    """MLflow's standard source tags for the harness checkout: ``mlflow.source.git.commit``
    (the bare sha) and ``harness_git_dirty``; none outside a git checkout."""
    from faceeval.provenance import environment

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
