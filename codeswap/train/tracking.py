"""MLflow for training runs, in the harness's store (SQLite under the output folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from faceeval.tracking import Tracker


class RunTracker(Tracker):
    """MLflow for training runs, in the harness's store (SQLite under the output folder)."""

    def start(self, name: str, params: dict[str, Any], run_id: str | None = None) -> str | None:
        """Start (or, with ``run_id``, continue) a run; returns its id."""
        if not self.enabled:
            return None
        mlflow = self._client()
        run = mlflow.start_run(run_id=run_id) if run_id else mlflow.start_run(run_name=name)
        if not run_id:
            mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})
        return run.info.run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.enabled:
            self._client().log_metrics(metrics, step=step)

    def log_file(self, path: Path, artifact_path: str) -> None:
        if self.enabled:
            self._client().log_artifact(str(path), artifact_path=artifact_path)

    def end(self) -> None:
        if self.enabled and self._mlflow is not None:
            self._mlflow.end_run()
