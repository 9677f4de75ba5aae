"""MLflow logging: one parent run per ``harness run``, one child run per method.

Default store: SQLite at ``<out>/mlflow.db`` with artifacts in ``<out>/mlartifacts``;
``--tracking-uri`` points at a server instead. Open the UI with
``mlflow ui --backend-store-uri sqlite:///<out>/mlflow.db``.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

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

    def _client(self):
        if self._mlflow is None:
            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
            import mlflow

            # MLflow configures its loggers on import; quiet its schema-migration chatter.
            for name in ("mlflow", "alembic"):
                logging.getLogger(name).setLevel(logging.WARNING)

            mlflow.set_tracking_uri(self.uri)
            if mlflow.get_experiment_by_name(EXPERIMENT) is None:
                artifacts = (self.out_dir / "mlartifacts").resolve().as_uri() if self.uri.startswith("sqlite") else None
                mlflow.create_experiment(EXPERIMENT, artifact_location=artifacts)
            mlflow.set_experiment(EXPERIMENT)
            self._mlflow = mlflow
        return self._mlflow

    @contextmanager
    def parent(self, name: str, params: dict[str, Any]) -> Iterator[str | None]:
        if not self.enabled:
            yield None
            return
        mlflow = self._client()
        with mlflow.start_run(run_name=name) as run:
            mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})
            yield run.info.run_id

    def log_method(self, summary: dict[str, Any]) -> None:
        if not self.enabled:
            return
        mlflow = self._client()
        with mlflow.start_run(run_name=f"{summary['protocol']}/{summary['method']}", nested=True):
            mlflow.log_params(_flat_params(summary))
            mlflow.log_metrics(_metrics(summary))
            mlflow.set_tags({"protocol": summary["protocol"], "method": summary["method"]})
            mlflow.log_artifacts(summary["run_dir"], artifact_path="run")

    def log_artifacts(self, folder: Path, artifact_path: str) -> None:
        if self.enabled and folder.is_dir():
            self._client().log_artifacts(str(folder), artifact_path=artifact_path)
