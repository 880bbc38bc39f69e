"""The Prefect flow: the stages dvc.yaml runs (mtbert.pipeline.stages), as tasks with retries where
they can help.

    python -m flows.pipeline [--tune] [--params params.yaml] [--data-source DIR] [section.key=value ...]

Without PREFECT_API_URL, Prefect starts a temporary local API for the run (give it time:
PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=120); with it, the run is recorded by that server.

Retries: import/prepare (file I/O, e.g. a network share that blips) and register (the tracking
server may be briefly unreachable) retry after a delay. Training does not: its failures are
deterministic (config, data, code) and a retry would repeat minutes of work to fail again; an
interrupted training resumes from its checkpoint when the flow is run again. Tuning does not
either: a study resumes by itself. No task caches its result: every stage writes files, so a
cache keyed on the inputs would skip work whose outputs may be gone.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from mtbert.config import Config, load_config, with_overrides
from mtbert.pipeline.stages import augment as augment_stage
from mtbert.pipeline.stages import evaluate as evaluate_stage
from mtbert.pipeline.stages import prepare as prepare_stage
from mtbert.pipeline.stages import register as register_stage
from mtbert.pipeline.stages import train as train_stage
from mtbert.pipeline.stages import tune as tune_stage

IO_RETRIES, IO_RETRY_DELAY_S = 2, 5
REGISTER_RETRIES, REGISTER_RETRY_DELAY_S = 3, 10


@task(name="preprocess", retries=IO_RETRIES, retry_delay_seconds=IO_RETRY_DELAY_S, cache_policy=NO_CACHE)
def preprocess(cfg: Config, data_source: str | None = None) -> dict[str, Any]:
    """Import the course CSVs (from `data_source` or `data.source`) and write the typed tables."""
    prepare_stage.import_data(cfg, data_source)
    return prepare_stage.run(cfg)


@task(name="augment", cache_policy=NO_CACHE)
def augment(cfg: Config) -> dict[str, Any]:
    """SICK pairs for sts and EDA copies (as dvc.yaml's augment stage)."""
    return augment_stage.run(cfg)


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
      cache_policy=NO_CACHE)
def register(cfg: Config) -> dict[str, Any]:
    """Register the model and give it the champion or challenger alias."""
    return dataclasses.asdict(register_stage.run(cfg))


@flow(name="mtbert-pipeline")
def mtbert_pipeline(params_path: str = "params.yaml", overrides: list[str] | None = None,
                    data_source: str | None = None, tune: bool = False) -> dict[str, Any]:
    """preprocess -> augment -> [tune] -> train -> evaluate -> register.

    Args:
        params_path: the parameters file.
        overrides: dotted overrides, e.g. ["profile=tiny", "train.lr=3e-5"].
        data_source: where to import the course CSVs from (default `data.source`).
        tune: run the Optuna study first and train with its best parameters.
    """
    cfg = load_config(params_path, overrides or [])
    preprocess(cfg, data_source)
    augment(cfg)
    if tune:
        cfg = with_overrides(cfg, tune_params(cfg))
    run_id = train(cfg)
    metrics = evaluate(cfg, run_id)
    return {"run_id": run_id, "metrics": metrics, "registration": register(cfg)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the mtbert pipeline as a Prefect flow.")
    parser.add_argument("--params", default="params.yaml", help="parameters file")
    parser.add_argument("--data-source", help="course CSV folder (default: data.source)")
    parser.add_argument("--tune", action="store_true", help="run the Optuna study before training")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. profile=tiny")
    args = parser.parse_args(argv)
    mtbert_pipeline(args.params, args.overrides, args.data_source, args.tune)


if __name__ == "__main__":
    main()
