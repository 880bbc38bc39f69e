"""MLflow tracking: the only module of the pipeline's stages that talks to MLflow.

The default store is a SQLite file in the working directory (`sqlite:///mlflow.db`); setting
`MLFLOW_TRACKING_URI` points every command at a tracking server instead. A remote server is checked
before any training time is spent, and metrics logged while it is unreachable are kept in a local
file and sent later instead of being lost.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow

from mtbert.config import Config, flatten, to_dict
from mtbert.train import Callback, TrainState

log = logging.getLogger("mtbert")

RUN_FILE = "mlflow_run.json"
DEFAULT_URI = "sqlite:///mlflow.db"


class TrackingUnavailable(RuntimeError):
    """The tracking server cannot be reached."""


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, before any training, when an HTTP tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as resp:
            if resp.status == 200:
                return
            reason = f"HTTP {resp.status}"
    except (urllib.error.URLError, OSError) as err:
        reason = str(getattr(err, "reason", err))
    raise TrackingUnavailable(
        f"MLflow tracking server {uri} is not reachable ({reason}). Start it, or unset "
        f"MLFLOW_TRACKING_URI to track into the local {DEFAULT_URI}."
    )


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def data_hash(dvc_file: str | Path = "data.dvc") -> str:
    """The md5 DVC recorded for the raw data (the version of the data this run used)."""
    path = Path(dvc_file)
    if not path.exists():
        return "unknown"
    import yaml

    outs = (yaml.safe_load(path.read_text()) or {}).get("outs", [{}])
    return str(outs[0].get("md5", "unknown"))


def _setup(cfg: Config) -> None:
    uri = tracking_uri()
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(cfg.register.experiment)


@contextlib.contextmanager
def start_run(cfg: Config, run_name: str, run_id: str | None = None,
              nested: bool = False) -> Iterator[mlflow.ActiveRun]:
    """Open (or re-open, with `run_id`) a run; a new run logs the resolved config and provenance."""
    _setup(cfg)
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name, nested=nested) as run:
        if run_id is None:
            mlflow.log_params({k: str(v) for k, v in flatten(to_dict(cfg)).items()})
            mlflow.set_tags({"git_commit": git_commit(), "data_md5": data_hash(),
                             "profile": str(cfg.profile), "stage": run_name})
            mlflow.log_dict(to_dict(cfg), "config/resolved_params.json")
        yield run


def save_run_id(model_dir: str | Path, run_id: str) -> None:
    Path(model_dir).mkdir(parents=True, exist_ok=True)
    (Path(model_dir) / RUN_FILE).write_text(json.dumps({"run_id": run_id}))


def load_run_id(model_dir: str | Path) -> str | None:
    path = Path(model_dir) / RUN_FILE
    return json.loads(path.read_text())["run_id"] if path.exists() else None


class MlflowCallback(Callback):
    """Logs step metrics in batches; on a failure keeps them and retries, so nothing is lost.

    Metrics that still cannot be sent when training ends are written to `fallback_path` and the
    user is told where they are.
    """

    def __init__(self, run_id: str, every: int = 10, fallback_path: str | Path | None = None) -> None:
        self.client = mlflow.MlflowClient()
        self.run_id, self.every = run_id, every
        self.fallback_path = Path(fallback_path) if fallback_path else None
        self.pending: list[mlflow.entities.Metric] = []
        self.failed_once = False

    def on_step(self, state: TrainState, metrics: dict[str, float]) -> None:
        import time

        now = int(time.time() * 1000)
        self.pending += [mlflow.entities.Metric(k, float(v), now, state.global_step)
                         for k, v in metrics.items()]
        if state.global_step % self.every == 0:
            self.flush()

    def on_epoch_end(self, state: TrainState) -> None:
        self.flush()

    def flush(self) -> bool:
        if not self.pending:
            return True
        try:
            for start in range(0, len(self.pending), 500):  # MLflow's batch limit is 1000 metrics
                self.client.log_batch(self.run_id, metrics=self.pending[start:start + 500])
        except Exception as err:  # noqa: BLE001 - any transport error: keep the metrics, go on training
            if not self.failed_once:
                log.warning("MLflow unreachable while training (%s); buffering metrics", err)
                self.failed_once = True
            return False
        self.pending = []
        return True

    def close(self) -> None:
        """Last flush; whatever is still unsent goes to the fallback file (and the log says so)."""
        if self.flush() or self.fallback_path is None:
            return
        self.fallback_path.parent.mkdir(parents=True, exist_ok=True)
        rows = [{"key": m.key, "value": m.value, "timestamp": m.timestamp, "step": m.step}
                for m in self.pending]
        self.fallback_path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        log.warning("MLflow still unreachable: %d metric values written to %s", len(rows),
                    self.fallback_path)


def log_evaluation(metrics: dict[str, float], eval_dir: str | Path) -> None:
    """Log dev metrics and the evaluation outputs (plots, prediction files) to the active run."""
    mlflow.log_metrics(metrics)
    mlflow.log_artifacts(str(eval_dir), artifact_path="eval")

