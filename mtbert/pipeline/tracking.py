"""MLflow tracking: the only module of the pipeline that talks to MLflow's tracking API.

The default store is a SQLite file in the working directory (`sqlite:///mlflow.db`); setting
`MLFLOW_TRACKING_URI` points every command at a tracking server instead. A remote server is checked
before any training time is spent. Every stage runs under MLflow through `tracked_run`: metrics go
through a buffering callback, and those the server cannot take (it went away mid-run) are written
to a fallback file and sent by the next tracked run instead of being lost.
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
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pyarrow.parquet as pq
import yaml
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset

from mtbert.config import Config, ConfigError, flatten, load_config, to_dict
from mtbert.errors import Interrupted, UserError
from mtbert.fileio import atomic_write_text, sha256_file
from mtbert.callbacks import Callback, FitContext

log = logging.getLogger("mtbert")

RUN_FILE = "mlflow_run.json"
TRAINED_SHA_TAG = "mtbert.trained_sha256"  # run tag: sha256 of the weights the run saved
DEFAULT_URI = "sqlite:///mlflow.db"


class TrackingUnavailable(UserError, RuntimeError):
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
    outs = (yaml.safe_load(path.read_text()) or {}).get("outs", [{}])
    return str(outs[0].get("md5", "unknown"))


# ---------------------------------------------------------------------------------------------
# What the MLflow UI shows first

# MLflow 3 shows an experiment either as "GenAI" (traces overview) or as "Model training" (the runs
# table). Its UIs before 3.17 chose by this experiment tag; 3.17 chooses by the page's
# `workflowType` (URL, else the browser's last choice, else GenAI), so `ui_url` names it too.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
# A view of the runs table stored on the experiment (the UI's "shared view" tag), opened by
# `?viewStateShareKey=mtbert`: the dev metrics as columns. The UI's own default shows no metric.
VIEW_KEY = "mtbert"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
DEV_COLUMNS = ("dev/overall", "dev/sst/accuracy", "dev/para/accuracy", "dev/sts/pearson")
VIEW_PARAMS = ("profile", "train.lr", "train.epochs", "train.sampler", "model.pooling")
UI_DEFAULT_BASE = "http://127.0.0.1:5000"  # where `ui_command` serves


def ui_command(uri: str | None = None) -> str:
    """The command that serves the UI over a local store (the one in use, by default)."""
    return f"mlflow ui --backend-store-uri {uri or tracking_uri()} --host 127.0.0.1"


def runs_view() -> dict[str, Any]:
    """The runs-table view state stored in VIEW_TAG (the keys the UI's shared views hold)."""
    columns = [f"metrics.`{name}`" for name in DEV_COLUMNS]
    columns += [f"params.`{name}`" for name in VIEW_PARAMS]
    return {"orderByKey": "attributes.start_time", "orderByAsc": False,
            "selectedColumns": columns}  # no Dataset column: it is wide and would push them off screen


def experiment_tags(existing: Mapping[str, str]) -> dict[str, str]:
    """The tags mtbert sets on its experiment, less those already right. A kind the user chose
    (another value of the tag) is kept; the view is mtbert's own and kept current."""
    wanted = {VIEW_TAG: json.dumps(runs_view(), separators=(",", ":"))}
    if EXPERIMENT_KIND_TAG not in existing:
        wanted[EXPERIMENT_KIND_TAG] = MODEL_TRAINING_KIND
    return {k: v for k, v in wanted.items() if existing.get(k) != v}


def ui_url(experiment_id: str, uri: str | None = None) -> str:
    """Where the experiment's runs table opens, with the dev metric columns, for anyone: the
    tracking server itself, or for a local store what `ui_command` serves."""
    uri = uri or tracking_uri()
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else UI_DEFAULT_BASE
    return (f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
            f"&viewStateShareKey={VIEW_KEY}")


def _setup(cfg: Config) -> None:
    uri = tracking_uri()
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.set_experiment(cfg.register.experiment)
    missing = experiment_tags(experiment.tags)
    if missing:
        with best_effort("tag the MLflow experiment for its UI"), bounded_http():
            for key, value in missing.items():
                mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, key, value)


# ---------------------------------------------------------------------------------------------
# Run names: what the run is, readable in the runs table

STAGE_RUNS = ("train", "evaluate", "pretrain-mlm")  # named by `run_name`; others keep their name
# Keys that do not change what a run computes (where, how fast, what else): never in a name.
_UNNAMED = ("profile", "train.threads", "train.device", "train.checkpoint_every", "train.out_dir",
            "train.eval_every", "train.eval_rows", "train.distill.outputs_dir", "mlm.out_dir",
            "data.source", "data.raw_dir", "data.prepared_dir", "data.augmented_dir", "eval.",
            "register.", "tune.")
MAX_NAMED_KEYS = 4


def describe_run(cfg: Config, stage: str, base: Config | None = None) -> str:
    """`stage profile key=value ...`: the settings in which `cfg` differs from `base` (by default
    the project's params.yaml under the same profile), by their shortest names, sorted, at most
    MAX_NAMED_KEYS then `+N`. E.g. `train quick lr=3e-05 pooling=mean`, `evaluate tiny`.
    Names other than STAGE_RUNS (tuning trials, ablation configurations) are kept."""
    if stage not in STAGE_RUNS:
        return stage
    base = base if base is not None else _project_params(cfg)
    new = flatten(to_dict(cfg))
    old = flatten(to_dict(base)) if base is not None else new
    changed = sorted(k for k in new if new[k] != old.get(k) and not k.startswith(_UNNAMED))
    parts = sorted(f"{_short_key(k, changed)}={_short_value(new[k])}" for k in changed)
    parts = parts[:MAX_NAMED_KEYS]
    if len(changed) > MAX_NAMED_KEYS:
        parts.append(f"+{len(changed) - MAX_NAMED_KEYS}")
    return " ".join([stage, cfg.profile or "default", *parts])


def _project_params(cfg: Config) -> Config | None:
    """params.yaml of the working directory under `cfg`'s profile; None if it cannot be read."""
    try:
        return load_config("params.yaml", [f"profile={json.dumps(cfg.profile)}"])
    except (ConfigError, OSError):
        return None


def _short_key(key: str, keys: Sequence[str]) -> str:
    """The last part of a dotted key, or the last two where the last is ambiguous (`sst`)."""
    last = key.rsplit(".", 1)[-1]
    if sum(k.rsplit(".", 1)[-1] == last for k in keys) > 1 or last in ("sst", "para", "sts", "enabled"):
        return ".".join(key.split(".")[-2:])
    return last


def _short_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ",".join(map(_short_value, value))
    return str(value)


@contextlib.contextmanager
def start_run(cfg: Config, run_name: str, run_id: str | None = None,
              nested: bool = False) -> Iterator[mlflow.ActiveRun]:
    """Open (or re-open, with `run_id`) a run; a new run logs the resolved config and provenance.

    Ending the run never raises: if the server went away while the body ran (whose results are
    already on disk), the run is left open on the server and a warning says so.
    """
    _setup(cfg)
    run = mlflow.start_run(run_id=run_id, run_name=None if run_id else describe_run(cfg, run_name),
                           nested=nested)
    status = "FAILED"
    try:
        if run_id is None:
            mlflow.log_params({k: str(v) for k, v in flatten(to_dict(cfg)).items()})
            mlflow.set_tags({"git_commit": git_commit(), "data_md5": data_hash(),
                             "profile": str(cfg.profile), "stage": run_name})
            mlflow.log_dict(to_dict(cfg), "config/resolved_params.json")
        yield run
        status = "FINISHED"
    except Interrupted:  # stopped on request, resumable: not a failure
        status = "KILLED"
        raise
    finally:
        active = mlflow.active_run()
        try:
            if active is not None and active.info.run_id == run.info.run_id:  # not ended by the body
                with bounded_http():
                    mlflow.end_run(status)  # pops the active run before calling the server
        except Exception as err:  # noqa: BLE001 - the work is done; only the run's status is lost
            log.warning("could not mark MLflow run %s %s at %s (%s); it stays RUNNING there",
                        run.info.run_id, status, tracking_uri(), err)


def save_run_id(folder: str | Path, run_id: str, **record: Any) -> None:
    """Record (atomically) which MLflow run wrote `folder`, with facts about it (`record`).

    The train stage writes it once the weights are saved, with their sha256: a run that fails or
    is killed before then leaves the previous record, which still matches the previous weights.
    """
    atomic_write_text(Path(folder) / RUN_FILE, json.dumps({"run_id": run_id, **record}))


def load_run_record(folder: str | Path) -> dict[str, Any] | None:
    path = Path(folder) / RUN_FILE
    return json.loads(path.read_text()) if path.exists() else None


def load_run_id(folder: str | Path) -> str | None:
    record = load_run_record(folder)
    return None if record is None else record["run_id"]


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

    def on_step(self, ctx: FitContext, metrics: dict[str, float]) -> None:
        self.log_metrics(metrics, ctx.state.global_step)
        if ctx.state.global_step % self.every == 0:
            self.flush()

    def on_epoch_end(self, ctx: FitContext) -> None:
        self.flush()

    def on_eval(self, ctx: FitContext, metrics: dict[str, float]) -> None:
        self.log_metrics(metrics, ctx.state.global_step)
        self.flush()

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Queue metrics; they go out with the next flush or `close` (or into the fallback file)."""
        now = int(time.time() * 1000)
        self.pending += [mlflow.entities.Metric(k, float(v), now, step) for k, v in metrics.items()]

    def flush(self, force: bool = False) -> bool:
        """Send what is buffered; True when nothing is left. Never raises."""
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
                    "tracked run (any mtbert command that trains or evaluates) sends them", len(rows), self.run_id, self.fallback_path)
        return self.fallback_path

    @staticmethod
    def replay(path: str | Path) -> int:
        """Send the metrics a fallback file holds to their runs, then delete it; returns the count.

        A run still RUNNING is marked FINISHED: the file is written only after its training ended.
        Raises what MLflow raises if the server is unreachable (the file is then left as it was).
        """
        path = Path(path)
        # Claimed by a rename: a worker that appends meanwhile starts a new file, and two replays
        # of one file cannot both send it.
        claimed = path.with_name(f".{path.name}.{os.getpid()}.sending")
        try:
            os.replace(path, claimed)
        except FileNotFoundError:  # another process is sending it
            return 0
        try:
            rows = [json.loads(line) for line in claimed.read_text().splitlines() if line.strip()]
            _send_rows(rows)
        except BaseException:
            with path.open("a") as fh:  # back where it was, with anything appended meanwhile
                fh.write(claimed.read_text())
            claimed.unlink()
            raise
        claimed.unlink()
        return len(rows)


def _send_rows(rows: list[dict[str, Any]]) -> None:
    client = mlflow.MlflowClient()
    with bounded_http():
        for run_id in dict.fromkeys(r["run_id"] for r in rows):
            metrics = [mlflow.entities.Metric(r["key"], r["value"], r["timestamp"], r["step"])
                       for r in rows if r["run_id"] == run_id]
            for start in range(0, len(metrics), 500):
                client.log_batch(run_id, metrics=metrics[start:start + 500])
            if client.get_run(run_id).info.status == "RUNNING":
                client.set_terminated(run_id, "FINISHED")


# ---------------------------------------------------------------------------------------------
# The one way a stage runs under MLflow


@dataclass
class TrackedRun:
    """An open MLflow run as a stage sees it: metrics are buffered and never lost.

    Attributes:
        run_id: the MLflow run.
        callback: a training callback that logs every step's metrics (pass it to `fit`).
    """

    run_id: str
    callback: MlflowCallback

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Queue run-level metrics; sent with the next flush, at the end, or kept in the fallback file."""
        self.callback.log_metrics({k: float(v) for k, v in metrics.items()}, step)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Tag the run; a failure only warns (the facts are also on disk)."""
        if self.callback.failed_once:
            log.warning("MLflow unreachable: tags %s not set; they are on disk", sorted(tags))
            return
        with best_effort("tag the MLflow run"), bounded_http():
            client = mlflow.MlflowClient()
            for key, value in tags.items():
                client.set_tag(self.run_id, key, str(value))

    def log_datasets(self, files: Sequence[tuple[Path, str]]) -> None:
        """Log prepared tables as the run's inputs: (path, context) pairs, e.g. "training".

        Each dataset is named after its file (`sst-train`) with its path as source; its digest is
        the file's sha256, cut to the 36 characters MLflow stores (the whole one is the input tag
        `sha256`, beside `rows`). Missing files are skipped; a failure only warns.
        """
        present = [(Path(path), context) for path, context in files if Path(path).is_file()]
        if not present or self.callback.failed_once:
            return
        with best_effort("log the datasets to MLflow"), bounded_http():
            datasets, contexts, tags = [], [], []
            for path, context in present:
                sha = sha256_file(path)
                with warnings.catch_warnings():  # MLflow registers its local-file source twice
                    warnings.filterwarnings("ignore", message=".*can be interpreted in multiple ways")
                    source = resolve_dataset_source(str(path.resolve()))
                datasets.append(MetaDataset(source, name=path.stem, digest=sha[:36]))
                contexts.append(context)
                tags.append({"sha256": sha, "rows": str(pq.read_metadata(path).num_rows)})
            mlflow.log_inputs(datasets=datasets, contexts=contexts, tags_list=tags)

    def log_artifacts(self, paths: list[Path], artifact_path: str) -> None:
        """Upload files (a folder: its contents) to the run; a failure only warns (they stay on disk).

        Skipped when the server was last seen down: an upload would wait on it for minutes.
        """
        if self.callback.failed_once:
            log.warning("MLflow unreachable: %s not logged; the files are on disk", artifact_path)
            return
        with best_effort(f"log {artifact_path} to MLflow"), bounded_http():
            for path in paths:
                if Path(path).is_dir():
                    mlflow.log_artifacts(str(path), artifact_path=artifact_path)
                else:
                    mlflow.log_artifact(str(path), artifact_path=artifact_path)


@contextlib.contextmanager
def tracked_run(cfg: Config, name: str, *, fallback: str | Path, run_id: str | None = None,
                nested: bool = False, tags: Mapping[str, Any] | None = None) -> Iterator[TrackedRun]:
    """Run a stage inside an MLflow run (new, or `run_id` re-opened) with a metrics buffer.

    Metrics an earlier run left in `fallback` are sent first. Whatever the body logs through the
    yielded `TrackedRun` (or its `callback`) and the server cannot take is appended to `fallback`
    when the block ends, however it ends: the buffer is closed in `finally`.
    """
    with start_run(cfg, name, run_id=run_id, nested=nested) as run:
        if tags:
            mlflow.set_tags({k: str(v) for k, v in tags.items()})
        replay_unsent(Path(fallback))
        tracked = TrackedRun(run.info.run_id, MlflowCallback(run.info.run_id, fallback_path=fallback))
        try:
            yield tracked
        finally:  # tracking failures only warn: unsent metrics go to `fallback`, and the log says so
            tracked.callback.close()
        if not nested:
            where = "" if tracking_uri().startswith(("http://", "https://")) else f" (after `{ui_command()}`)"
            log.info("MLflow run %r: %s%s", run.info.run_name, ui_url(run.info.experiment_id), where)


def replay_unsent(path: Path) -> None:
    """Send metrics an earlier run could not (the server was down); keep the file on failure."""
    if not path.exists():
        return
    try:
        n = MlflowCallback.replay(path)
        log.info("sent %d metric values buffered in %s by an earlier run", n, path)
    except Exception as err:  # noqa: BLE001 - tracking only; the stage goes on
        log.warning("could not send the metrics buffered in %s (%s); kept for the next run", path, err)


@contextlib.contextmanager
def best_effort(what: str) -> Iterator[None]:
    """For tracking calls after the work is done: a failure is a warning, never the stage's end."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - the results are on disk; only their copy in MLflow is lost
        log.warning("could not %s (%s)", what, err)
