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
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

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
    """Open (or re-open, with `run_id`) a run; a new run logs the resolved config and provenance.

    Ending the run never raises: if the server went away while the body ran (whose results are
    already on disk), the run is left open on the server and a warning says so.
    """
    _setup(cfg)
    run = mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name, nested=nested)
    status = "FAILED"
    try:
        if run_id is None:
            mlflow.log_params({k: str(v) for k, v in flatten(to_dict(cfg)).items()})
            mlflow.set_tags({"git_commit": git_commit(), "data_md5": data_hash(),
                             "profile": str(cfg.profile), "stage": run_name})
            mlflow.log_dict(to_dict(cfg), "config/resolved_params.json")
        yield run
        status = "FINISHED"
    finally:
        active = mlflow.active_run()
        try:
            if active is not None and active.info.run_id == run.info.run_id:  # not ended by the body
                with bounded_http():
                    mlflow.end_run(status)  # pops the active run before calling the server
        except Exception as err:  # noqa: BLE001 - the work is done; only the run's status is lost
            log.warning("could not mark MLflow run %s %s at %s (%s); it stays RUNNING there",
                        run.info.run_id, status, tracking_uri(), err)


def save_run_id(model_dir: str | Path, run_id: str) -> None:
    Path(model_dir).mkdir(parents=True, exist_ok=True)
    (Path(model_dir) / RUN_FILE).write_text(json.dumps({"run_id": run_id}))


def load_run_id(model_dir: str | Path) -> str | None:
    path = Path(model_dir) / RUN_FILE
    return json.loads(path.read_text())["run_id"] if path.exists() else None


# MLflow's client retries a failed request 7 times with exponential backoff (about 4 minutes) by
# default; while training, a dead server must cost milliseconds, not minutes per call.
_BOUNDED_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


@contextlib.contextmanager
def bounded_http() -> Iterator[None]:
    """MLflow HTTP calls inside this block are tried once, for 10 s at most (callers retry later)."""
    saved = {key: os.environ.get(key) for key in _BOUNDED_HTTP}
    os.environ.update(_BOUNDED_HTTP)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class MlflowCallback(Callback):
    """Logs step metrics in batches; on a failure keeps them and retries, so nothing is lost.

    Each send fails fast (`bounded_http`); after a failure, sends are retried at most every
    `retry_s` seconds, and everything buffered goes out once the server answers again. Metrics
    that still cannot be sent when training ends are appended, with their run id, to
    `fallback_path` (JSON lines) and the user is told where; `replay` sends them later (the next
    `mtbert train` does that first).
    """

    def __init__(self, run_id: str, every: int = 10, fallback_path: str | Path | None = None,
                 retry_s: float = 30.0) -> None:
        self.client = mlflow.MlflowClient()
        self.run_id, self.every, self.retry_s = run_id, every, retry_s
        self.fallback_path = Path(fallback_path) if fallback_path else None
        self.pending: list[mlflow.entities.Metric] = []
        self.failed_once = False
        self.retry_at = 0.0  # time.monotonic() before which no send is tried

    def on_step(self, state: TrainState, metrics: dict[str, float]) -> None:
        import time

        now = int(time.time() * 1000)
        self.pending += [mlflow.entities.Metric(k, float(v), now, state.global_step)
                         for k, v in metrics.items()]
        if state.global_step % self.every == 0:
            self.flush()

    def on_epoch_end(self, state: TrainState) -> None:
        self.flush()

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Queue run-level metrics (e.g. wall time); they go out with the next flush or `close`."""
        import time

        now = int(time.time() * 1000)
        self.pending += [mlflow.entities.Metric(k, float(v), now, step) for k, v in metrics.items()]

    def flush(self, force: bool = False) -> bool:
        """Send what is buffered; True when nothing is left. Never raises."""
        import time

        if not self.pending:
            return True
        if not force and time.monotonic() < self.retry_at:
            return False
        try:
            with bounded_http():
                while self.pending:  # MLflow's batch limit is 1000 metrics
                    self.client.log_batch(self.run_id, metrics=self.pending[:500])
                    self.pending = self.pending[500:]
        except Exception as err:  # noqa: BLE001 - any transport error: keep the metrics, go on training
            if not self.failed_once:
                log.warning("MLflow unreachable while training (%s); buffering metrics", err)
                self.failed_once = True
            self.retry_at = time.monotonic() + self.retry_s
            return False
        if self.failed_once:
            log.warning("MLflow reachable again: buffered metrics sent")
            self.failed_once = False
        return True

    def close(self) -> Path | None:
        """Last flush; what is still unsent is appended to the fallback file, whose path is returned."""
        if self.flush(force=True) or self.fallback_path is None:
            return None
        self.fallback_path.parent.mkdir(parents=True, exist_ok=True)
        rows = [{"run_id": self.run_id, "key": m.key, "value": m.value, "timestamp": m.timestamp,
                 "step": m.step} for m in self.pending]
        with self.fallback_path.open("a") as fh:  # earlier runs' unsent metrics stay in the file
            fh.write("".join(json.dumps(r) + "\n" for r in rows))
        log.warning("MLflow unreachable: %d metric values of run %s written to %s; the next "
                    "`mtbert train` sends them", len(rows), self.run_id, self.fallback_path)
        return self.fallback_path

    @staticmethod
    def replay(path: str | Path) -> int:
        """Send the metrics a fallback file holds to their runs, then delete it; returns the count.

        A run still RUNNING is marked FINISHED: the file is written only after its training ended.
        Raises what MLflow raises if the server is unreachable (the file is then left as it was).
        """
        path = Path(path)
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        client = mlflow.MlflowClient()
        with bounded_http():
            for run_id in dict.fromkeys(r["run_id"] for r in rows):
                metrics = [mlflow.entities.Metric(r["key"], r["value"], r["timestamp"], r["step"])
                           for r in rows if r["run_id"] == run_id]
                for start in range(0, len(metrics), 500):
                    client.log_batch(run_id, metrics=metrics[start:start + 500])
                if client.get_run(run_id).info.status == "RUNNING":
                    client.set_terminated(run_id, "FINISHED")
        path.unlink()
        return len(rows)


def log_evaluation(metrics: dict[str, float], eval_dir: str | Path) -> None:
    """Log dev metrics and the evaluation outputs (plots, prediction files) to the active run."""
    mlflow.log_metrics(metrics)
    mlflow.log_artifacts(str(eval_dir), artifact_path="eval")



# ---------------------------------------------------------------------------------------------
# The tracked stages: what `mtbert train` / `mtbert evaluate` and the Prefect flow both run

UNSENT_FILE = "unsent_metrics.jsonl"


def tracked_train(cfg: Config, resume: bool = True,
                  callbacks: Sequence[Callback] = ()) -> tuple[TrainState, str]:
    """`stages.train` inside the MLflow run "train"; returns the final state and the run id.

    Metrics an earlier run could not send are replayed first; if the server goes away mid-run,
    training goes on and its metrics are written next to the model (`unsent_metrics.jsonl`) for
    the next run to send. The learning curves and the wall time are logged at the end.
    """
    start = time.monotonic()
    unsent = Path(cfg.train.out_dir).with_name(UNSENT_FILE)
    with start_run(cfg, "train") as run:
        _replay_unsent(unsent)
        from mtbert import stages  # after the server check: the model imports are slow

        save_run_id(cfg.train.out_dir, run.info.run_id)
        logger = MlflowCallback(run.info.run_id, fallback_path=unsent)
        try:
            state = stages.train(cfg, resume=resume, callbacks=[*callbacks, logger])
            save_run_id(cfg.train.out_dir, run.info.run_id)  # the model dir was rewritten
            _log_curves(Path(cfg.train.out_dir), server_down=logger.failed_once)
            logger.log_metrics({"train/wall_s": time.monotonic() - start}, state.global_step)
        finally:  # tracking failures only warn: unsent metrics go to `unsent`, and the log says so
            logger.close()
    return state, run.info.run_id


def tracked_evaluate(cfg: Config, run_id: str | None = None, progress: Any = None) -> dict[str, float]:
    """`stages.evaluate`, its metrics and outputs logged to the model's training run (`run_id`,
    default: the run recorded in `train.out_dir`)."""
    from mtbert import stages

    metrics = stages.evaluate(cfg, progress=progress)
    with start_run(cfg, "evaluate", run_id=run_id or load_run_id(cfg.train.out_dir)):
        log_evaluation(metrics, cfg.eval.out_dir)
    return metrics


def _replay_unsent(path: Path) -> None:
    """Send metrics an earlier run could not (the server was down); keep the file on failure."""
    if not path.exists():
        return
    try:
        n = MlflowCallback.replay(path)
        log.info("sent %d metric values buffered in %s by an earlier run", n, path)
    except Exception as err:  # noqa: BLE001 - tracking only; training goes on
        log.warning("could not send the metrics buffered in %s (%s); kept for the next run", path, err)


def _log_curves(model_dir: Path, server_down: bool = False) -> None:
    """The learning curves `stages.train` wrote (CSV, PNG) as artifacts of the run; failures warn.

    Skipped when the server was last seen down (an upload would wait on it for minutes)."""
    from mtbert.curves import CURVES_FILE
    from mtbert.stages import CURVES_PNG

    if server_down:
        log.warning("MLflow unreachable: the learning curves are not logged; they are in %s", model_dir)
        return
    try:
        with bounded_http():
            for name in (CURVES_FILE, CURVES_PNG):
                mlflow.log_artifact(str(model_dir / name), artifact_path="curves")
    except Exception as err:  # noqa: BLE001 - tracking only; the model is already saved
        log.warning("could not log the learning curves to MLflow (%s); they are in %s", err, model_dir)
