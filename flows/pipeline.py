"""The Prefect flow: the stages dvc.yaml runs (mtbert.pipeline.stages), as tasks with retries where
they can help.

    python -m flows.pipeline [--tune] [--params params.yaml] [--data-source DIR] [section.key=value ...]

Without PREFECT_API_URL, Prefect starts a temporary local API for the run (give it time:
PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=120); with it, the run is recorded by that server.

Retries: import/prepare (file I/O, e.g. a network share that blips) and register (the tracking
server may be briefly unreachable) retry after a delay, but never on an error caused by the input
(`mtbert.errors.UserError`: missing data, a bad value, a full disk): that fails the same way every
time, so the task fails on its first attempt and the flow run fails with that one line as its
message (no traceback; `python -m flows.pipeline` prints it and exits with status 2). Training
does not retry at all: its failures are deterministic (config, data, code) and a retry would
repeat minutes of work to fail again; an
interrupted training resumes from its checkpoint when the flow is run again. Tuning does not
either: a study resumes by itself. No task caches its result: every stage writes files, so a
cache keyed on the inputs would skip work whose outputs may be gone.

Data: the course CSVs are imported only when `--data-source` is given or the files at
`data.source` differ from those in `data.raw_dir` (`prepare.data_changed`); otherwise the data
already there is prepared as it is.

Every run publishes a markdown artifact under the key `mtbert-pipeline-report` (flows/report.py):
the dev metrics, whether the model became champion or challenger and why, and the MLflow run;
a run stopped by bad input publishes that error instead. Warnings of the `mtbert` logger go to the
flow run's log (as Prefect's PREFECT_LOGGING_EXTRA_LOGGERS would send them).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import sys
from collections.abc import Iterator
from typing import Any

from prefect import Task, flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.logging.handlers import APILogHandler
from prefect.states import Failed, State

from flows.report import REPORT_KEY, failure_markdown, success_markdown
from mtbert.config import Config, load_config, with_overrides
from mtbert.errors import UserError, one_line
from mtbert.pipeline.stages import augment as augment_stage
from mtbert.pipeline.stages import evaluate as evaluate_stage
from mtbert.pipeline.stages import prepare as prepare_stage
from mtbert.pipeline.stages import register as register_stage
from mtbert.pipeline.stages import teach as teach_stage
from mtbert.pipeline.stages import teachers as teachers_stage
from mtbert.pipeline.stages import train as train_stage
from mtbert.pipeline.stages import tune as tune_stage

IO_RETRIES, IO_RETRY_DELAY_S = 2, 5
REGISTER_RETRIES, REGISTER_RETRY_DELAY_S = 3, 10


def retry_unless_user_error(task: Task, task_run: TaskRun, state: State) -> bool:
    """Prefect `retry_condition_fn`: retry transient failures, never one the input caused."""
    return not isinstance(state.data, UserError)  # the engine hands the exception as `data`


@contextlib.contextmanager
def mtbert_logs_to_run() -> Iterator[None]:
    """Send the `mtbert` logger's records to the Prefect run log while the block runs."""
    logger = logging.getLogger("mtbert")
    handler = None
    if not any(isinstance(h, APILogHandler) for h in logger.handlers):  # PREFECT_LOGGING_EXTRA_LOGGERS
        handler = APILogHandler()
        logger.addHandler(handler)
    try:
        yield
    finally:
        if handler is not None:
            logger.removeHandler(handler)


@task(name="preprocess", retries=IO_RETRIES, retry_delay_seconds=IO_RETRY_DELAY_S,
      retry_condition_fn=retry_unless_user_error, cache_policy=NO_CACHE)
def preprocess(cfg: Config, data_source: str | None = None) -> dict[str, Any]:
    """Import the course CSVs when `data_source` is given or `data.source` changed; write the tables."""
    if data_source is not None or prepare_stage.data_changed(cfg):
        prepare_stage.import_data(cfg, data_source)
    else:
        get_run_logger().info("course data in %s unchanged: not imported again", cfg.data.raw_dir)
    return prepare_stage.run(cfg)


@task(name="augment", cache_policy=NO_CACHE)
def augment(cfg: Config) -> dict[str, Any]:
    """SICK pairs for sts and EDA copies (as dvc.yaml's augment stage)."""
    return augment_stage.run(cfg)


@task(name="teachers", cache_policy=NO_CACHE)
def train_teachers(cfg: Config) -> dict[str, Any]:
    """The single-task teachers of `train.distill.teacher_seeds` (as `mtbert train-teachers`)."""
    return teachers_stage.run(cfg)


@task(name="teach", cache_policy=NO_CACHE)
def teach(cfg: Config) -> dict[str, Any]:
    """The teachers' outputs on the training rows (as `mtbert teach`)."""
    return teach_stage.run(cfg)


@task(name="tune", cache_policy=NO_CACHE)
def tune_params(cfg: Config) -> dict[str, Any]:
    """Run (or resume) the Optuna study; the best parameters as dotted overrides."""
    return tune_stage.run(cfg)


@task(name="train", cache_policy=NO_CACHE)
def train(cfg: Config) -> str:
    """Train into `train.out_dir` inside an MLflow run (as `mtbert train`); return the run id."""
    return train_stage.run(cfg, resume=True)[1]


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(cfg: Config, run_id: str) -> dict[str, float]:
    """Dev metrics and plots, logged to the training run (as `mtbert evaluate`)."""
    return evaluate_stage.run(cfg, run_id)


@task(name="register", retries=REGISTER_RETRIES, retry_delay_seconds=REGISTER_RETRY_DELAY_S,
      retry_condition_fn=retry_unless_user_error, cache_policy=NO_CACHE)
def register(cfg: Config) -> dict[str, Any]:
    """Register the model and give it the champion or challenger alias."""
    return dataclasses.asdict(register_stage.run(cfg))


@task(name="report", retries=REGISTER_RETRIES, retry_delay_seconds=REGISTER_RETRY_DELAY_S,
      retry_condition_fn=retry_unless_user_error, cache_policy=NO_CACHE)
def report(metrics: dict[str, float], registration: dict[str, Any], run_id: str) -> str:
    """Publish the run's markdown artifact: dev metrics, promotion decision, MLflow run."""
    markdown = success_markdown(metrics, registration, register_stage.run_link(run_id))
    create_markdown_artifact(markdown, key=REPORT_KEY, description="dev metrics and promotion decision")
    return markdown


@flow(name="mtbert-pipeline")
def mtbert_pipeline(params_path: str = "params.yaml", overrides: list[str] | None = None,
                    data_source: str | None = None, tune: bool = False) -> dict[str, Any] | State:
    """preprocess -> augment -> [teachers -> teach] -> [tune] -> train -> evaluate -> register -> report.

    The teachers and their outputs only with `train.distill.enabled`.

    Args:
        params_path: the parameters file.
        overrides: dotted overrides, e.g. ["profile=tiny", "train.lr=3e-5"].
        data_source: where to import the course CSVs from (default `data.source`).
        tune: run the Optuna study first and train with its best parameters.

    Returns:
        run_id, metrics and registration; on an input error a Failed state holding it, whose
        message is the error's one line (calling the flow raises that error).
    """
    with mtbert_logs_to_run():
        try:
            return _pipeline(load_config(params_path, overrides or []), data_source, tune)
        except UserError as err:  # already reported by its task's state: no traceback, no retry
            message = one_line(str(err))
            create_markdown_artifact(failure_markdown(message), key=REPORT_KEY,
                                     description="the input error that stopped this run")
            return Failed(data=err, message=message)


def _pipeline(cfg: Config, data_source: str | None, tune: bool) -> dict[str, Any]:
    preprocess(cfg, data_source)
    augment(cfg)
    if cfg.train.distill.enabled:  # before tuning: its trials distil too
        train_teachers(cfg)
        teach(cfg)
    if tune:
        cfg = with_overrides(cfg, tune_params(cfg))
    run_id = train(cfg)
    metrics = evaluate(cfg, run_id)
    registration = register(cfg)
    report(metrics, registration, run_id)
    return {"run_id": run_id, "metrics": metrics, "registration": registration}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the mtbert pipeline as a Prefect flow.")
    parser.add_argument("--params", default="params.yaml", help="parameters file")
    parser.add_argument("--data-source", help="course CSV folder (default: data.source)")
    parser.add_argument("--tune", action="store_true", help="run the Optuna study before training")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. profile=tiny")
    args = parser.parse_args(argv)
    try:
        mtbert_pipeline(args.params, args.overrides, args.data_source, args.tune)
    except UserError as err:  # the flow run's log has it; a bug keeps its traceback
        print(f"flows.pipeline: {one_line(str(err))}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
