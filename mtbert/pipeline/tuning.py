"""Hyperparameter search with Optuna: a resumable study that several workers can share.

The study lives in an RDB storage (`tune.storage`: SQLite by default, any SQLAlchemy URL), opened
with `load_if_exists`, so a crashed or stopped search resumes and parallel `mtbert tune` processes
share one study. Each running trial records a heartbeat; a trial whose worker died (no heartbeat for
`tune.grace_s` seconds) is marked FAIL by the next worker that asks for a trial and queued again
with the same parameters. An exception inside a trial fails that trial only; the study goes on.

Every trial trains with the train stage's `train_model` into its own directory, reports a dev score
of the live model on a small dev subset every `tune.report_every` steps and at each epoch end (a
MedianPruner stops weak trials), and is scored by the evaluate stage's `evaluate_model`
(`dev/overall`). Each trial is an MLflow run nested under the study's
parent run; the parent run gets the optimization-history and parameter-importance plots. The best
parameters are written to `tune.out_file` as dotted overrides (`train.lr: 3.1e-05`), read back by
`mtbert train --overrides-file`.

Parallel workers should each get their own `tune.sampler_seed` (e.g. `mtbert tune
tune.sampler_seed=8`): with the same seed they draw the same first random configurations.

Across machines (`tune.storage` a PostgreSQL URL, `postgresql+psycopg://user@host/db`), the study is
created once (`create_study`, `mtbert tune --create-only`) before any worker starts: workers
starting together on an empty database race on creating Optuna's tables (optuna#1092). Workers then
join with `open_study(..., must_exist=True)` (`mtbert tune --worker`), which never creates tables or
studies and raises StudyNotFound instead.

Trial scores compare only when measured on the same dev rows under the same profile: each study
records its measurement key (`measurement.MeasurementKey`: profile, dev sizes, dev rows' hash) as
the study attribute `measurement_key`, and every worker opening it (resume, `--worker`,
`--create-only`) is refused with `StudyKeyMismatch` when its own key differs. Without a
`tune.study_name` the study is named after the key (`mtbert-<profile>-<digest>`), so `mtbert tune
profile=tiny` and `mtbert tune profile=quick` open different studies.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import mlflow
import optuna
import pandas as pd
import sqlalchemy
import yaml
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState
from optuna.visualization import matplotlib as optuna_plots
from tqdm import tqdm

from mtbert.batching import TokenizedTask, tokenize_frame
from mtbert.config import Config, TuneConfig, with_overrides
from mtbert.errors import UserError
from mtbert.evaluate import predict, summary_metrics, task_metrics
from mtbert.fileio import atomic_write_text
from mtbert.model.load_hf import load_tokenizer
from mtbert.pipeline import tracking
from mtbert.pipeline.measurement import MeasurementKey, measurement_key
from mtbert.pipeline.project import checkpoint_dir, dev_frame, unsent_path
from mtbert.pipeline.stages.evaluate import evaluate_model
from mtbert.pipeline.stages.train import train_model
from mtbert.callbacks import Callback, FitContext

log = logging.getLogger("mtbert")

LR, DROPOUT = "train.lr", "model.head_dropout"
# sst keeps loss scale 1.0: Adam is invariant to a common scale of all losses, so only the
# ratios para/sst and sts/sst change training; a third free scale would only add noise to TPE.
SCALED_TASKS = ("para", "sts")
TPE_STARTUP_TRIALS = 3  # random trials before TPE models the history (Optuna's default 10 > n_trials)
PRUNER_STARTUP_TRIALS = 2  # finished trials before the median pruner may stop a trial
RETRY_LIMIT = 2  # a trial whose worker died twice more is probably poison (e.g. out of memory)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
PARENT_RUN_ATTR = "mlflow_parent_run_id"
KEY_ATTR = "measurement_key"  # study attribute: what its trials' scores are measured on
INTERMEDIATE_METRIC = "tune/dev_subset_overall"


def study_key(cfg: Config) -> MeasurementKey:
    """What the study's trials are scored on: `cfg`'s profile and dev rows of `train.tasks`."""
    return measurement_key(cfg, cfg.train.tasks)


def study_name(cfg: Config, key: MeasurementKey | None = None) -> str:
    """`tune.study_name`, or without one `mtbert-<profile>-<key digest>`."""
    if cfg.tune.study_name:
        return cfg.tune.study_name
    key = key or study_key(cfg)
    return f"mtbert-{key.profile}-{key.digest}"


# ---------------------------------------------------------------------------------------------
# Search space and per-trial config


def suggest(trial: optuna.Trial, tune: TuneConfig) -> dict[str, float]:
    """Draw one configuration; the parameter names are the dotted config keys they override."""
    params = {
        LR: trial.suggest_float(LR, tune.lr_min, tune.lr_max, log=True),
        DROPOUT: trial.suggest_float(DROPOUT, tune.dropout_min, tune.dropout_max),
    }
    for task in SCALED_TASKS:
        key = f"train.loss_scale.{task}"
        params[key] = trial.suggest_float(key, tune.loss_scale_min, tune.loss_scale_max)
    return params


def trials_dir(cfg: Config) -> Path:
    return Path(cfg.tune.out_file).parent / "trials" / study_name(cfg)


def trial_config(cfg: Config, params: dict[str, Any], number: int) -> Config:
    """The config of one trial: its parameters, its own output folders, no test predictions."""
    root = trials_dir(cfg) / f"trial-{number:03d}"
    extra: dict[str, Any] = {"train.out_dir": str(root / "model"), "eval.out_dir": str(root / "eval"),
                             "eval.predict_test": False}
    return with_overrides(cfg, {**params, **extra})


# ---------------------------------------------------------------------------------------------
# Intermediate dev scores and pruning


class DevReporter(Callback):
    """Scores the live model on a small dev subset, reports it to the trial, prunes if told to.

    Args:
        trial: the Optuna trial.
        cfg: the trial's config (`tune.report_every`, `tune.report_dev_size`, eval batch size).
        log_metric: where the intermediate score is also logged (the trial's MLflow run).
    """

    def __init__(self, trial: optuna.Trial, cfg: Config,
                 log_metric: Callable[[dict[str, float], int], None]) -> None:
        self.trial, self.cfg, self.log_metric = trial, cfg, log_metric
        self.last_step = -1
        self.data: dict[str, TokenizedTask] = {}
        self.gold: dict[str, Any] = {}

    def on_step(self, ctx: FitContext, metrics: dict[str, float]) -> None:
        every = self.cfg.tune.report_every
        if every and ctx.state.global_step % every == 0:
            self.report(ctx)

    def on_epoch_end(self, ctx: FitContext) -> None:
        self.report(ctx)

    def report(self, ctx: FitContext) -> None:
        step = ctx.state.global_step
        if step == self.last_step:
            return
        self.last_step = step
        score = self.score(ctx.model)
        self.trial.report(score, step)
        self.log_metric({INTERMEDIATE_METRIC: score}, step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"step {step}: dev subset score {score:.4f} "
                                     "is below the median of earlier trials")

    def score(self, model: Any) -> float:
        """`dev/overall` of `model` on the dev subset (`predict` runs it in eval mode, no grad)."""
        if not self.data:
            self._setup()
        per_task = {}
        for task, data in self.data.items():
            pred = predict(model, data, self.cfg.eval.batch_size, self.cfg.train.precision)
            per_task[task] = task_metrics(pred, self.gold[task])
        return summary_metrics(per_task)["dev/overall"]

    def _setup(self) -> None:
        cfg = self.cfg
        tokenizer = load_tokenizer(cfg.train.init_from or cfg.model.checkpoint)
        frames = {task: dev_frame(cfg, task).head(cfg.tune.report_dev_size) for task in cfg.train.tasks}
        self.data = {task: tokenize_frame(tokenizer, frame, task, cfg.model.pair_encoding,
                                          cfg.model.max_length) for task, frame in frames.items()}
        self.gold = {task: frame["label"].to_numpy() for task, frame in frames.items()}


# ---------------------------------------------------------------------------------------------
# The objective: one trial = one nested MLflow run


def _train_and_score(trial: optuna.Trial, cfg: Config, tracked: tracking.TrackedRun) -> float:
    try:
        reporter = DevReporter(trial, cfg, tracked.log_metrics)
        state = train_model(cfg, resume=False, callbacks=[tracked.callback, reporter])
        metrics = evaluate_model(cfg)
    finally:
        # The weights are not kept: the best parameters are retrained (`--overrides-file`).
        shutil.rmtree(cfg.train.out_dir, ignore_errors=True)
        shutil.rmtree(checkpoint_dir(cfg), ignore_errors=True)
    # At the last training step: MLflow shows a metric's value at its highest step, and training
    # logged the same names on a dev subset (its validation curve) up to that step.
    tracked.log_metrics(metrics, state.global_step)
    return metrics["dev/overall"]


def make_objective(cfg: Config) -> Callable[[optuna.Trial], float]:
    """The objective: train and evaluate one trial's config; the value is `dev/overall`.

    Each trial is a nested MLflow run; what the server cannot take while it runs goes to the
    project's fallback file (`unsent_path(cfg)`) and is sent by the next tracked run.
    """

    name = study_name(cfg)

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        params = suggest(trial, cfg.tune)
        trial_cfg = trial_config(cfg, params, trial.number)
        tags = {"optuna.study": name, "optuna.trial": trial.number}
        with tracking.tracked_run(trial_cfg, f"trial-{trial.number}", fallback=unsent_path(cfg),
                                  nested=True, tags=tags) as tracked:
            trial.set_user_attr("mlflow_run_id", tracked.run_id)
            try:
                return _train_and_score(trial, trial_cfg, tracked)
            except optuna.TrialPruned as err:
                # Raised after the run is closed, so MLflow records FINISHED, not FAILED.
                with tracking.best_effort("tag the pruned trial's run"):
                    mlflow.set_tag("optuna.state", "PRUNED")
                pruned = err
        raise pruned

    return objective


# ---------------------------------------------------------------------------------------------
# The study


class RetryStaleTrial:
    """For a trial whose worker died: mark its MLflow run FAILED and queue it again (same params)."""

    def __init__(self, max_retry: int = RETRY_LIMIT) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retry)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        log.warning("trial %d lost its worker (no heartbeat); marked FAIL and queued again", trial.number)
        self.retry(study, trial)
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id:
            try:
                mlflow.MlflowClient().set_terminated(run_id, "FAILED")
            except Exception as err:  # noqa: BLE001 - bookkeeping only; the retry is already queued
                log.warning("could not mark MLflow run %s FAILED: %s", run_id, err)


class StudyNotFound(UserError, LookupError):
    """A worker was pointed at a study (or a database) where no study was created."""


class StudyKeyMismatch(UserError, ValueError):
    """The study's trials were measured on other dev rows or under another profile than this run's."""


@dataclass(frozen=True)
class StudyInfo:
    """What `create_study` found or made."""

    name: str
    storage: str  # the URL with its password hidden
    key: str  # what its trials are measured on (`MeasurementKey`)
    created: bool  # False: the study existed already
    trials: int  # trials it holds, any state


def shown_url(url: str) -> str:
    """`url` with its password (if any) replaced by ***, for messages and logs."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url


def _sqlite_path(url: str) -> Path | None:
    path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else ""
    return Path(path) if path and path != ":memory:" else None


def open_storage(url: str, tune: TuneConfig, create_tables: bool = True) -> optuna.storages.RDBStorage:
    """The RDB storage with heartbeats; creates the folder of a SQLite file (and the tables) unless
    `create_tables` is False."""
    engine_kwargs: dict[str, Any] = {}
    sqlite_path = _sqlite_path(url)
    if url.startswith("sqlite:"):
        if sqlite_path is not None and create_tables:
            sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        # Workers wait up to 60 s for each other's write locks instead of failing after 5 s.
        engine_kwargs["connect_args"] = {"timeout": 60}
    else:
        # A trial can take an hour: check a pooled connection before use (a restarted database
        # or a firewall that dropped the idle connection would otherwise fail the next write).
        engine_kwargs["pool_pre_ping"] = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url, engine_kwargs=engine_kwargs, heartbeat_interval=tune.heartbeat_s,
            grace_period=tune.grace_s, heartbeat_stale_trial_callback=RetryStaleTrial(),
            skip_table_creation=not create_tables)


def _has_optuna_tables(url: str) -> bool:
    """Whether the database at `url` holds Optuna's tables (without creating a SQLite file)."""
    sqlite_path = _sqlite_path(url)
    if sqlite_path is not None and not sqlite_path.exists():
        return False
    engine = sqlalchemy.create_engine(url)
    try:
        return sqlalchemy.inspect(engine).has_table("studies")
    finally:
        engine.dispose()


def _not_found(cfg: Config, url: str, where: str) -> StudyNotFound:
    return StudyNotFound(f"study {study_name(cfg)!r} does not exist {where} {shown_url(url)}",
                         field="tune.storage",
                         fix="create it once, before any worker: mtbert tune --create-only")


def _search(cfg: Config) -> dict[str, Any]:
    """The sampler and pruner of every worker (each from this worker's `tune.sampler_seed`)."""
    return {"sampler": optuna.samplers.TPESampler(seed=cfg.tune.sampler_seed,
                                                  n_startup_trials=TPE_STARTUP_TRIALS),
            "pruner": optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS)}


def open_study(cfg: Config, storage: str | None = None, must_exist: bool = False) -> optuna.Study:
    """Load the study, or create it if it does not exist (resume, or join other workers).

    With `must_exist` (a worker joining a study made by `create_study`), nothing is created:
    StudyNotFound if the database has no Optuna tables or no study of that name.
    """
    url = storage or cfg.tune.storage
    key = study_key(cfg)
    name = study_name(cfg, key)
    if not must_exist:
        study = optuna.create_study(study_name=name, storage=open_storage(url, cfg.tune),
                                    direction="maximize", load_if_exists=True, **_search(cfg))
        return check_key(study, key, url)
    if not _has_optuna_tables(url):
        raise _not_found(cfg, url, "(no Optuna tables yet) in")
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(url, cfg.tune, create_tables=False),
                                  **_search(cfg))
    except KeyError:  # optuna: "Record does not exist."
        raise _not_found(cfg, url, "in") from None
    return check_key(study, key, url)


def check_key(study: optuna.Study, key: MeasurementKey, url: str) -> optuna.Study:
    """The study, once its measurement key is this run's (recorded here if it has none yet).

    Raises:
        StudyKeyMismatch: the study records another key, or it holds trials but no key (made
            before studies recorded one): their scores would not compare with this run's.
    """
    stored = study.user_attrs.get(KEY_ATTR)
    if stored is None and not study.get_trials(deepcopy=False):
        study.set_user_attr(KEY_ATTR, str(key))
        stored = study.user_attrs[KEY_ATTR]  # two workers starting at once wrote the same value
    if stored == str(key):
        return study
    what = f"measured on {stored}" if stored else "measured on unrecorded dev rows"
    raise StudyKeyMismatch(f"study {study.study_name!r} in {shown_url(url)} is {what}; this run "
                           f"measures on {key}: the scores would not compare", field="tune.study_name",
                           fix="use the study's profile and data.dev_size, or another tune.study_name "
                               "(or none: named after the key)")


def create_study(cfg: Config, storage: str | None = None) -> StudyInfo:
    """Create the study, its tables and its MLflow parent run once, before workers join it.

    Idempotent: an existing study is left as it is (`StudyInfo.created` is False).
    """
    url = storage or cfg.tune.storage
    rdb = open_storage(url, cfg.tune)
    key = study_key(cfg)
    name = study_name(cfg, key)
    try:
        study = optuna.create_study(study_name=name, storage=rdb, direction="maximize", **_search(cfg))
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study, created = optuna.load_study(study_name=name, storage=rdb), False
    check_key(study, key, url)
    # Made here, workers starting together do not each create a parent run and delete the extras.
    _parent_run_id(cfg, study)
    return StudyInfo(name, shown_url(url), str(key), created, len(study.get_trials(deepcopy=False)))


def run_study(cfg: Config, n_trials: int | None = None, storage: str | None = None,
              progress: bool = False, join: bool = False) -> optuna.Study:
    """Run trials until the study holds `n_trials` finished (complete or pruned) trials.

    Args:
        cfg: the resolved config; `cfg.tune` sets the study, the search space and the storage.
        n_trials: the study's target size (default `tune.n_trials`). One call runs at most the
            missing number of trials, failed ones included, so a resumed study only fills the gap
            and a failing objective cannot loop; concurrent workers stop once the study is full
            (each may finish the trial it is running, so the total can exceed the target by up
            to workers - 1).
        storage: an SQLAlchemy URL overriding `tune.storage`.
        progress: show a bar over this worker's trials (with the best value so far) on stderr.
        join: only join an existing study (StudyNotFound if there is none); see `open_study`.

    Returns:
        The study. The best parameters are written to `tune.out_file` when a trial completed, and
        the trial history to `history.csv` beside it (see `history_frame`).
    """
    target = cfg.tune.n_trials if n_trials is None else n_trials
    study = open_study(cfg, storage, must_exist=join)
    remaining = target - len(study.get_trials(deepcopy=False, states=FINISHED))
    if remaining > 0:
        parent = _parent_run_id(cfg, study)
        bar = TrialProgress(remaining, enabled=progress)
        with tracking.start_run(cfg, "tune", run_id=parent):
            try:
                study.optimize(make_objective(cfg), n_trials=remaining, catch=(Exception,),
                               timeout=cfg.tune.timeout_s or None,
                               callbacks=[optuna.study.MaxTrialsCallback(target, states=FINISHED), bar])
            finally:
                bar.close()
            with tracking.best_effort(f"log study {study.study_name!r} to MLflow"):
                log_study(study, history_path(cfg).parent)
    if study.get_trials(deepcopy=False):
        atomic_write_text(history_path(cfg), history_frame(study).to_csv(index=False))
    if completed(study):
        write_best_params(study, cfg.tune.out_file)
    return study


class TrialProgress:
    """An Optuna callback: a bar over the trials this worker runs, with the study's best value."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.bar = tqdm(total=total, desc="tune", unit="trial", disable=not enabled)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        postfix = {"last": trial.state.name.lower()}
        if completed(study):
            postfix["best"] = f"{study.best_value:.4f}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def completed(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def _parent_run_id(cfg: Config, study: optuna.Study) -> str:
    """The study's MLflow parent run, created by the first worker and kept in the study."""
    stored = study.user_attrs.get(PARENT_RUN_ATTR)
    if stored:
        return stored
    with tracking.start_run(cfg, f"tune-{study.study_name}") as run:
        mlflow.set_tags({"optuna.study": study.study_name, KEY_ATTR: study.user_attrs.get(KEY_ATTR, "")})
    study.set_user_attr(PARENT_RUN_ATTR, run.info.run_id)
    stored = study.user_attrs[PARENT_RUN_ATTR]  # two workers starting at once: the last write wins
    if stored != run.info.run_id:
        mlflow.MlflowClient().delete_run(run.info.run_id)
    return stored


# ---------------------------------------------------------------------------------------------
# Results


HISTORY_FILE = "history.csv"


def history_path(cfg: Config) -> Path:
    """The trial history CSV, beside `tune.out_file`."""
    return Path(cfg.tune.out_file).parent / HISTORY_FILE


def history_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, value (complete trials only) and the best value so far."""
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    frame = pd.DataFrame({
        "trial": [t.number for t in trials],
        "state": [t.state.name.lower() for t in trials],
        "value": [t.value if t.state == TrialState.COMPLETE else None for t in trials],
    })
    frame["value"] = frame["value"].astype(float)
    frame["best"] = frame["value"].cummax().ffill()  # NaN until the first trial completes
    return frame


def best_overrides(study: optuna.Study) -> dict[str, Any]:
    """The best trial's parameters as dotted config overrides."""
    return dict(study.best_trial.params)


def write_best_params(study: optuna.Study, path: str | Path) -> Path:
    """Write the best parameters as a YAML mapping of dotted overrides (atomically)."""
    best = study.best_trial
    header = (f"# best of study '{study.study_name}': trial {best.number}, "
              f"dev/overall {best.value:.4f}\n# use: mtbert train --overrides-file {path}\n")
    return atomic_write_text(path, header + yaml.safe_dump(best_overrides(study), sort_keys=True))


HISTORY_PNG, IMPORTANCES_PNG = "optimization_history.png", "param_importances.png"


def log_study(study: optuna.Study, out_dir: Path | None = None) -> None:
    """Log trial counts, the best value and params, and the study plots to the active MLflow run.

    With `out_dir`, the plots are also written there (the files dvc.yaml declares as plots).
    """
    matplotlib.use("Agg")  # headless
    states = [t.state for t in study.get_trials(deepcopy=False)]
    mlflow.log_metrics({f"tune/trials_{s.name.lower()}": float(states.count(s)) for s in TrialState})
    if states:
        mlflow.log_text(history_frame(study).to_csv(index=False), f"tune/{HISTORY_FILE}")
    done = completed(study)
    if not done:
        return
    mlflow.log_metric("tune/best_dev_overall", study.best_value)
    mlflow.log_dict(best_overrides(study), "tune/best_params.yaml")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            _save_figure(optuna_plots.plot_optimization_history(study).figure, HISTORY_PNG, out_dir)
            if len(done) >= 2:
                # PED-ANOVA needs no scikit-learn (the default fANOVA evaluator does).
                evaluator = optuna.importance.PedAnovaImportanceEvaluator()
                ax = optuna_plots.plot_param_importances(study, evaluator=evaluator)
                _save_figure(ax.figure, IMPORTANCES_PNG, out_dir)
    except (ValueError, RuntimeError) as err:  # e.g. trials without parameters: report, go on
        log.warning("could not plot study %s: %s", study.study_name, err)
    finally:
        plt.close("all")


def _save_figure(figure: Any, name: str, out_dir: Path | None) -> None:
    """Log a study plot to the active MLflow run under tune/ and, with `out_dir`, write it there."""
    mlflow.log_figure(figure, f"tune/{name}")
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = out_dir / f".{name}.tmp.png"
        figure.savefig(tmp)
        tmp.replace(out_dir / name)  # atomic: a half-written plot is never left under its name
