"""The register stage and the registry's read side: register and promote the trained model,
compare registered versions, serve the champion."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from mtbert.checkpoint import MODEL_FILE
from mtbert.config import Config
from mtbert.fileio import sha256_file
from mtbert.pipeline import measurement, pyfunc, registry, tracking
from mtbert.pipeline.stages import evaluate as evaluate_stage


def run(cfg: Config, force: bool = False) -> registry.RegistrationResult:
    """Register the model in `train.out_dir` with the dev metrics `evaluate` wrote; gate and promote it.

    Lineage is checked first: the weights must be those the recorded MLflow run saved (their
    sha256 in the run record, and in the run's tag), and the dev metrics must have been measured
    on these weights and be finite; otherwise nothing is registered. What the metrics were
    measured on (the dev rows `evaluate` predicted, the model's profile) becomes the version's
    measurement key: it is compared with the champion only when the keys match. `force` promotes
    it without comparing (the behavioural gate still applies); see `registry`.
    """
    model_dir, eval_dir = Path(cfg.train.out_dir), Path(cfg.eval.out_dir)
    record = tracking.load_run_record(model_dir)
    if record is None or not (model_dir / MODEL_FILE).exists():
        raise registry.RegistryError("no trained model recorded by a run", path=model_dir / tracking.RUN_FILE,
                                     fix="train the model with `mtbert train`")
    sha = sha256_file(model_dir / MODEL_FILE)
    if record.get("model_sha256") != sha:
        raise registry.RegistryError(
            f"these weights are not the ones MLflow run {record['run_id']} saved", path=model_dir / MODEL_FILE,
            fix="retrain with `mtbert train` so that the run and the weights match")
    metrics_path = eval_dir / cfg.eval.metrics_file
    if not metrics_path.exists():
        raise registry.RegistryError("missing", path=metrics_path, fix="run `mtbert evaluate` first")
    evaluated = evaluate_stage.read_evaluated(eval_dir)
    if evaluated != sha:
        raise registry.RegistryError("the dev metrics were measured on other weights", path=metrics_path,
                                     fix="run `mtbert evaluate` on this model first")
    metrics = json.loads(metrics_path.read_text())
    bad = sorted(k for k, v in metrics.items() if not math.isfinite(float(v)))
    if bad:
        raise registry.RegistryError(f"non-finite metrics {bad}", path=metrics_path,
                                     fix="the model is broken: retrain it")
    profile = registry.model_summary(model_dir)["profile"]
    key = measurement.evaluated_key(cfg, profile, measurement.measured_tasks(metrics))
    return registry.register(cfg, record["run_id"], model_dir, metrics, sha, str(key), force)


def run_link(run_id: str) -> dict[str, str]:
    """Where an MLflow run lives: tracking URI, experiment and run ids, and its UI address (an
    HTTP tracking server's run page; empty for a local store)."""
    uri = tracking.tracking_uri()
    experiment_id = registry.connect().get_run(run_id).info.experiment_id
    url = f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}" if uri.startswith("http") else ""
    return {"tracking_uri": uri, "experiment_id": experiment_id, "run_id": run_id, "url": url}


def compare(cfg: Config) -> pd.DataFrame:
    """One row per registered version: aliases, dev metrics, provenance (`registry.compare`)."""
    return registry.compare(cfg)


def compare_markdown(table: pd.DataFrame) -> str:
    return registry.compare_markdown(table)


def serve_command(cfg: Config, port: int) -> tuple[list[str], dict[str, str]]:
    """The command and environment that serve the champion, after checking there is one."""
    if registry.current_champion(registry.connect(), cfg) is None:
        raise registry.RegistryError(f"{cfg.register.model_name!r} has no "
                                     f"@{cfg.register.champion_alias}; run `mtbert register` first")
    env = {**registry.serve_env(), pyfunc.QUANTIZE_ENV: cfg.eval.quantize}
    return registry.serve_command(cfg, port), env
