"""Model registry (edge module: imports MLflow): register, promote by dev/overall, compare, serve.

Every registration creates a new version of `register.model_name` and then decides between the
`champion` alias and the `challenger` alias:

1. the behavioural gate (`mtbert.behaviour`, `register.behaviour`) runs on the candidate; failing
   it means challenger. Its pass rates go to the candidate's training run (metrics and
   `behaviour/behaviour.json`) and to version tags.
2. the candidate's dev metrics are compared with the champion's only when both were measured on
   the same dev rows under the same profile (the `measurement_key` tag, `measurement.py`). When
   the keys differ the candidate is not compared: it becomes challenger and the reason says so.
   To promote it anyway: evaluate it on the champion's dev rows (same profile and
   `data.dev_size`) and register again, or `mtbert register --force` (promotes without comparing;
   the gate still applies).
3. with matching keys, strictly better `dev/overall` than the champion (or no champion yet) wins.

The decision, its reason, the dev metrics, the measurement key, the gate and the provenance (data
md5, git commit) are written as version tags, and summed up in the version's description, so the
registry alone answers "which model serves, and why". Registry stages are deprecated and not used.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

from mtbert import behaviour
from mtbert.checkpoint import META_FILE, MODEL_FILE
from mtbert.config import Config
from mtbert.errors import UserError
from mtbert.fileio import sha256_file
from mtbert.model.trained import load_trained
from mtbert.pipeline import pyfunc, tracking
from mtbert.pipeline.project import apply_threads
from mtbert.pipeline.serving import predict_rows

log = logging.getLogger("mtbert")

PRIMARY_METRIC = "dev/overall"
MODEL_URI_TAG = "mtbert.model_uri"  # run tag: the pyfunc model logged for this run
MODEL_SHA_TAG = "mtbert.model_sha256"  # run tag: hash of the weights that model holds
PROVENANCE_TAGS = ("data_md5", "git_commit", "profile")
COMPARE_METRICS = ("dev/overall", "dev/sst/accuracy", "dev/para/accuracy", "dev/sts/pearson")
KEY_TAG = "measurement_key"  # version tag: what its dev metrics were measured on
GATE_TAG = "behaviour"  # version tag: the gate's one-line result ("passed: ...", "failed: ...", "not run")
GATE_ARTIFACT = "behaviour/behaviour.json"  # in the candidate's training run


class RegistryError(UserError, RuntimeError):
    """Registration cannot proceed; the message says what to do."""


@dataclass(frozen=True)
class RegistrationResult:
    """What `register` did.

    Attributes:
        name: registered model name.
        version: the new version.
        model_uri: the logged pyfunc model the version points to.
        decision: the alias the version received (`champion` or `challenger`).
        reason: why, e.g. "dev/overall 0.6100 > champion v3 0.5800".
        previous_champion: the champion version before this registration, if any.
    """

    name: str
    version: int
    model_uri: str
    decision: str
    reason: str
    previous_champion: int | None
    measurement_key: str = ""
    behaviour: str = ""


def connect() -> MlflowClient:
    """Point MLflow at the configured tracking server (checked first) and return a client."""
    uri = tracking.tracking_uri()
    tracking.check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    return MlflowClient()


def _is_missing(err: MlflowException) -> bool:
    return err.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST)


def _get_run(client: MlflowClient, run_id: str) -> mlflow.entities.Run:
    try:
        return client.get_run(run_id)
    except MlflowException as err:
        if not _is_missing(err):
            raise
        raise RegistryError(
            f"run {run_id} (recorded by `mtbert train`) does not exist at {tracking.tracking_uri()}; "
            "register against the tracking server the model was trained with, or retrain with "
            "MLFLOW_TRACKING_URI pointing at this one") from None


def ensure_logged_model(cfg: Config, run: mlflow.entities.Run, model_dir: str | Path) -> str:
    """The run's pyfunc model URI; logs the model to the run first unless these weights already were."""
    sha = sha256_file(Path(model_dir) / MODEL_FILE)
    tags = run.data.tags
    if tags.get(MODEL_SHA_TAG) == sha and tags.get(MODEL_URI_TAG):
        return tags[MODEL_URI_TAG]
    with tracking.start_run(cfg, "register", run_id=run.info.run_id):
        model_uri = pyfunc.log_model(model_dir)
        mlflow.set_tags({MODEL_URI_TAG: model_uri, MODEL_SHA_TAG: sha})
    return model_uri


def version_tags(run: mlflow.entities.Run, metrics: dict[str, float]) -> dict[str, str]:
    """Dev metrics plus the provenance the training run recorded (fallback: the checkout now)."""
    tags = {key: repr(float(value)) for key, value in metrics.items() if key.startswith("dev/")}
    fallback = {"data_md5": tracking.data_hash, "git_commit": tracking.git_commit}
    for key in PROVENANCE_TAGS:
        value = run.data.tags.get(key) or (fallback[key]() if key in fallback else None)
        if value:
            tags[key] = value
    return tags


def version_metric(client: MlflowClient, version: ModelVersion,
                   key: str = PRIMARY_METRIC) -> float | None:
    """A dev metric of a version: its tag, else its run's metric (versions registered elsewhere)."""
    if key in version.tags:
        return float(version.tags[key])
    if version.run_id:
        try:
            return client.get_run(version.run_id).data.metrics.get(key)
        except MlflowException as err:
            if not _is_missing(err):
                raise
    return None


def current_champion(client: MlflowClient, cfg: Config) -> ModelVersion | None:
    """The version the champion alias points to (read from the model's alias map), if any."""
    name = cfg.register.model_name
    try:
        version = client.get_registered_model(name).aliases.get(cfg.register.champion_alias)
    except MlflowException as err:
        if _is_missing(err):
            return None
        raise
    return None if version is None else client.get_model_version(name, str(version))


def _pair(new: float, old: float) -> tuple[str, str]:
    """Both values to 4 decimals, or more where 4 would make different values look equal."""
    digits = 4
    while digits < 12 and new != old and f"{new:.{digits}f}" == f"{old:.{digits}f}":
        digits += 1
    return f"{new:.{digits}f}", f"{old:.{digits}f}"


def decide(client: MlflowClient, cfg: Config, value: float, key: str,
           force: bool = False) -> tuple[str, str, int | None]:
    """(alias, reason, champion version) for a new version whose `dev/overall` is `value`,
    measured on `key`.

    No champion (or a champion without the metric): champion. A champion measured on another key:
    not compared, challenger (champion with `force`). Same key: strictly better wins the champion
    alias, a tie or worse gets the challenger alias (champion with `force`).
    """
    reg = cfg.register
    champion = current_champion(client, cfg)
    if champion is None:
        return reg.champion_alias, f"no {reg.champion_alias} yet", None
    number = int(champion.version)
    where = f"{reg.champion_alias} v{number}"
    theirs = champion.tags.get(KEY_TAG) or "unrecorded dev rows"
    if theirs != key:
        what = f"not compared: measured on {key}, {where} on {theirs}"
        if force:
            return reg.champion_alias, f"forced, {what}", number
        return reg.challenger_alias, (f"{what} (to promote: evaluate on the {reg.champion_alias}'s "
                                      "dev rows and profile, or `mtbert register --force`)"), number
    old = version_metric(client, champion)
    if old is None:
        return reg.champion_alias, f"{where} has no {PRIMARY_METRIC}", number
    shown_new, shown_old = _pair(value, old)
    if value > old:
        return reg.champion_alias, f"{PRIMARY_METRIC} {shown_new} > {where} {shown_old}", number
    worse = f"{PRIMARY_METRIC} {shown_new} <= {where} {shown_old}"
    if force:
        return reg.champion_alias, f"forced, {worse}", number
    return reg.challenger_alias, worse, number


def behaviour_gate(cfg: Config, model_dir: str | Path) -> behaviour.GateResult | None:
    """The behavioural checks on the model in `model_dir` (None when `register.behaviour` is off)."""
    gate = cfg.register.behaviour
    if not gate.enabled:
        return None
    apply_threads(cfg)
    model, tokenizer, trained = load_trained(model_dir)

    def predict(task: str, first: Sequence[str], second: Sequence[str] | None) -> np.ndarray:
        rows = pd.DataFrame({"task": task, "sentence1": list(first),
                             "sentence2": None if second is None else list(second)})
        out = predict_rows(model, tokenizer, trained.model.pair_encoding, trained.model.max_length, rows)
        return out["prediction" if task == "sst" else "score"].to_numpy()

    return behaviour.run_gate(predict, model.tasks, trained.model.pair_encoding,
                              dataclasses.asdict(gate.min_pass))


def log_gate(cfg: Config, run_id: str, gate: behaviour.GateResult) -> None:
    """The gate's pass rates (metrics) and cases (`GATE_ARTIFACT`) on the candidate's training run."""
    with tracking.start_run(cfg, "register", run_id=run_id):
        mlflow.log_metrics(gate.metrics())
        mlflow.log_dict(gate.to_dict(), GATE_ARTIFACT)


def gate_tags(gate: behaviour.GateResult | None) -> dict[str, str]:
    if gate is None:
        return {GATE_TAG: "not run (register.behaviour.enabled: false)"}
    rates = {f"{GATE_TAG}/{c.name}": "skipped" if c.skipped else f"{c.rate:.4f}" for c in gate.checks}
    return {GATE_TAG: gate.summary(), **rates}


def model_summary(model_dir: str | Path) -> dict[str, object]:
    """What the model is, from its saved config: backbone, pair encoding, tasks, profile."""
    saved = json.loads((Path(model_dir) / META_FILE).read_text())["config"]
    return {"checkpoint": saved["model"]["checkpoint"], "pair_encoding": saved["model"]["pair_encoding"],
            "tasks": list(saved["train"]["tasks"]), "profile": saved.get("profile")}


def describe(summary: dict[str, object], metrics: dict[str, float], tags: dict[str, str],
             decision: str, reason: str) -> str:
    """The version's description: the model, dev metrics, measurement key, gate, provenance."""
    shown = ", ".join(f"{k} {float(v):.4f}" for k, v in sorted(metrics.items()) if k.startswith("dev/"))
    return "\n".join([
        f"mtbert multitask BERT ({', '.join(summary['tasks'])}): {summary['pair_encoding']}-encoder "
        f"on {summary['checkpoint']}, trained with profile {summary['profile']}.",
        f"Dev metrics: {shown}.",
        f"Measured on: {tags.get(KEY_TAG, '?')}.",
        f"Behaviour gate: {tags[GATE_TAG]}.",
        f"Promotion: @{decision} ({reason}).",
        f"Data md5 {tags.get('data_md5', '?')}, git commit {tags.get('git_commit', '?')}.",
    ])


def _checked_run(client: MlflowClient, run_id: str, model_dir: str | Path, metrics: dict[str, float],
                 sha: str | None) -> mlflow.entities.Run:
    """The training run, once the metrics hold `dev/overall` and the run saved these weights."""
    if PRIMARY_METRIC not in metrics:
        raise RegistryError(f"metrics have no {PRIMARY_METRIC!r} (keys: {sorted(metrics)}); "
                            "run `mtbert evaluate` first")
    run = _get_run(client, run_id)
    trained = run.data.tags.get(tracking.TRAINED_SHA_TAG)
    if sha is not None and trained is not None and trained != sha:
        raise RegistryError(f"run {run_id} saved other weights (sha256 {trained[:12]}...) than "
                            f"{model_dir} holds ({sha[:12]}...); nothing registered")
    logged = run.data.metrics.get(PRIMARY_METRIC)
    if logged is not None and abs(logged - float(metrics[PRIMARY_METRIC])) > 1e-9:
        log.warning("registering with %s %.4f, but run %s logged %.4f (stale metrics file?)",
                    PRIMARY_METRIC, float(metrics[PRIMARY_METRIC]), run_id, logged)
    return run


def register(cfg: Config, run_id: str, model_dir: str | Path, metrics: dict[str, float],
             sha: str | None = None, key: str = "", force: bool = False) -> RegistrationResult:
    """Log (if needed) and register the model of `run_id` as a new version; gate, promote or not.

    Args:
        cfg: config; `register.*` names the model and the aliases and sets the gate.
        run_id: the MLflow run that trained the model (recorded in the model dir by `mtbert train`).
        model_dir: the trained model directory (`train.out_dir`).
        metrics: dev metrics of this model (`mtbert evaluate`); must hold `dev/overall`.
        sha: the weights' sha256; if given, the run's own record of what it saved must match.
        key: what `metrics` were measured on (`measurement.MeasurementKey`, as a string).
        force: promote without comparing with the champion (the gate still applies).
    """
    client = connect()
    run = _checked_run(client, run_id, model_dir, metrics, sha)
    gate = behaviour_gate(cfg, model_dir)
    if gate is not None:
        log_gate(cfg, run_id, gate)
    model_uri = ensure_logged_model(cfg, run, model_dir)
    name = cfg.register.model_name
    tags = {**version_tags(run, metrics), KEY_TAG: key, **gate_tags(gate)}
    version = mlflow.register_model(model_uri, name, tags=tags)
    number = int(version.version)
    if gate is not None and not gate.ok:
        champion = current_champion(client, cfg)
        alias, reason = cfg.register.challenger_alias, f"behaviour gate {gate.summary()}"
        previous = None if champion is None else int(champion.version)
    else:
        alias, reason, previous = decide(client, cfg, float(metrics[PRIMARY_METRIC]), key, force)
    client.set_registered_model_alias(name, alias, str(number))
    client.set_model_version_tag(name, str(number), "promotion", alias)
    client.set_model_version_tag(name, str(number), "promotion_reason", reason)
    client.update_model_version(name, str(number), describe(model_summary(model_dir), metrics, tags,
                                                            alias, reason))
    if alias == cfg.register.champion_alias and previous is not None:
        client.set_model_version_tag(name, str(previous), "superseded_by", str(number))
    return RegistrationResult(name, number, model_uri, alias, reason, previous, key, tags[GATE_TAG])


def compare(cfg: Config) -> pd.DataFrame:
    """One row per registered version (oldest first): aliases, dev metrics, provenance, run, time."""
    client = connect()
    name = cfg.register.model_name
    versions = client.search_model_versions(f"name = '{name}'")
    aliases: dict[int, list[str]] = {}
    if versions:  # search results carry no aliases over REST: read the model's alias map
        for alias, number in client.get_registered_model(name).aliases.items():
            aliases.setdefault(int(number), []).append(alias)
    rows = [_compare_row(client, v, aliases.get(int(v.version), []))
            for v in sorted(versions, key=lambda v: int(v.version))]
    columns = ["version", "aliases", "promotion", "superseded_by", *COMPARE_METRICS,
               KEY_TAG, GATE_TAG, "data_md5", "git_commit", "run_id", "created"]
    return pd.DataFrame(rows, columns=columns)


def _compare_row(client: MlflowClient, version: ModelVersion, aliases: list[str]) -> dict[str, object]:
    row: dict[str, object] = {
        "version": int(version.version),
        "aliases": ",".join(sorted(aliases)),
        "promotion": version.tags.get("promotion", ""),
        "superseded_by": version.tags.get("superseded_by", ""),
        KEY_TAG: version.tags.get(KEY_TAG, ""),
        GATE_TAG: _gate_word(version.tags.get(GATE_TAG, "")),
        "data_md5": version.tags.get("data_md5", ""),
        "git_commit": version.tags.get("git_commit", ""),
        "run_id": version.run_id or "",
        "created": datetime.fromtimestamp(version.creation_timestamp / 1000, tz=UTC),
    }
    for key in COMPARE_METRICS:
        row[key] = version_metric(client, version, key)
    return row


def _gate_word(tag: str) -> str:
    """The gate tag's first word: passed, failed, "not run", or "" (registered before the gate)."""
    return tag.split(":", 1)[0] if tag.startswith(("passed", "failed")) else tag.split(" (", 1)[0]


def serve_command(cfg: Config, port: int, host: str = "127.0.0.1") -> list[str]:
    """The `mlflow models serve` command for the champion, in this Python environment."""
    model_uri = f"models:/{cfg.register.model_name}@{cfg.register.champion_alias}"
    return [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri,
            "--env-manager", "local", "--host", host, "--port", str(port)]


def serve_env() -> dict[str, str]:
    """The environment for `serve_command`: the configured tracking URI, this venv's bin on PATH.

    MLflow starts the scoring server as `exec uvicorn ...` through bash, so the interpreter's
    bin directory must be on PATH even when the venv is not activated.
    """
    env = dict(os.environ)
    env["MLFLOW_TRACKING_URI"] = tracking.tracking_uri()
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def compare_markdown(table: pd.DataFrame) -> str:
    """`compare`'s table as markdown (metrics to 4 decimals, times in UTC to the second)."""
    shown = table.assign(created=table["created"].map(lambda t: t.strftime("%Y-%m-%d %H:%M:%S")))
    return shown.to_markdown(index=False, floatfmt=".4f")
