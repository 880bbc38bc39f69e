"""Model registry (edge module: imports MLflow): register, promote by dev/overall, compare, serve.

Every registration creates a new version of `register.model_name` and then decides, on the dev
metric `dev/overall`, between the `champion` alias (strictly better than the current champion,
or no champion yet) and the `challenger` alias. The decision, its reason, the dev metrics and the
provenance (data md5, git commit) are written as version tags, so the registry alone answers
"which model serves, and why". Registry stages are deprecated and not used.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

from mtbert.checkpoint import MODEL_FILE
from mtbert.config import Config
from mtbert.errors import UserError
from mtbert.fileio import sha256_file
from mtbert.pipeline import pyfunc, tracking

log = logging.getLogger("mtbert")

PRIMARY_METRIC = "dev/overall"
MODEL_URI_TAG = "mtbert.model_uri"  # run tag: the pyfunc model logged for this run
MODEL_SHA_TAG = "mtbert.model_sha256"  # run tag: hash of the weights that model holds
PROVENANCE_TAGS = ("data_md5", "git_commit", "profile")
COMPARE_METRICS = ("dev/overall", "dev/sst/accuracy", "dev/para/accuracy", "dev/sts/pearson")


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


def decide(client: MlflowClient, cfg: Config, value: float) -> tuple[str, str, int | None]:
    """(alias, reason, champion version) for a new version whose `dev/overall` is `value`.

    Strictly better than the champion (or no champion, or a champion without the metric) wins
    the champion alias; a tie or worse gets the challenger alias.
    """
    reg = cfg.register
    champion = current_champion(client, cfg)
    if champion is None:
        return reg.champion_alias, f"no {reg.champion_alias} yet", None
    number, old = int(champion.version), version_metric(client, champion)
    where = f"{reg.champion_alias} v{number}"
    if old is None:
        return reg.champion_alias, f"{where} has no {PRIMARY_METRIC}", number
    shown_new, shown_old = _pair(value, old)
    if value > old:
        return reg.champion_alias, f"{PRIMARY_METRIC} {shown_new} > {where} {shown_old}", number
    return reg.challenger_alias, f"{PRIMARY_METRIC} {shown_new} <= {where} {shown_old}", number


def register(cfg: Config, run_id: str, model_dir: str | Path, metrics: dict[str, float],
             sha: str | None = None) -> RegistrationResult:
    """Log (if needed) and register the model of `run_id` as a new version; promote or not.

    Args:
        cfg: config; `register.*` names the model and the aliases.
        run_id: the MLflow run that trained the model (recorded in the model dir by `mtbert train`).
        model_dir: the trained model directory (`train.out_dir`).
        metrics: dev metrics of this model (`mtbert evaluate`); must hold `dev/overall`.
        sha: the weights' sha256; if given, the run's own record of what it saved must match.
    """
    if PRIMARY_METRIC not in metrics:
        raise RegistryError(f"metrics have no {PRIMARY_METRIC!r} (keys: {sorted(metrics)}); "
                            "run `mtbert evaluate` first")
    client = connect()
    run = _get_run(client, run_id)
    trained = run.data.tags.get(tracking.TRAINED_SHA_TAG)
    if sha is not None and trained is not None and trained != sha:
        raise RegistryError(f"run {run_id} saved other weights (sha256 {trained[:12]}...) than "
                            f"{model_dir} holds ({sha[:12]}...); nothing registered")
    logged = run.data.metrics.get(PRIMARY_METRIC)
    if logged is not None and abs(logged - float(metrics[PRIMARY_METRIC])) > 1e-9:
        log.warning("registering with %s %.4f, but run %s logged %.4f (stale metrics file?)",
                    PRIMARY_METRIC, float(metrics[PRIMARY_METRIC]), run_id, logged)
    model_uri = ensure_logged_model(cfg, run, model_dir)
    name = cfg.register.model_name
    version = mlflow.register_model(model_uri, name, tags=version_tags(run, metrics))
    number = int(version.version)
    alias, reason, previous = decide(client, cfg, float(metrics[PRIMARY_METRIC]))
    client.set_registered_model_alias(name, alias, str(number))
    client.set_model_version_tag(name, str(number), "promotion", alias)
    client.set_model_version_tag(name, str(number), "promotion_reason", reason)
    if alias == cfg.register.champion_alias and previous is not None:
        client.set_model_version_tag(name, str(previous), "superseded_by", str(number))
    return RegistrationResult(name, number, model_uri, alias, reason, previous)


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
               "data_md5", "git_commit", "run_id", "created"]
    return pd.DataFrame(rows, columns=columns)


def _compare_row(client: MlflowClient, version: ModelVersion, aliases: list[str]) -> dict[str, object]:
    row: dict[str, object] = {
        "version": int(version.version),
        "aliases": ",".join(sorted(aliases)),
        "promotion": version.tags.get("promotion", ""),
        "superseded_by": version.tags.get("superseded_by", ""),
        "data_md5": version.tags.get("data_md5", ""),
        "git_commit": version.tags.get("git_commit", ""),
        "run_id": version.run_id or "",
        "created": datetime.fromtimestamp(version.creation_timestamp / 1000, tz=UTC),
    }
    for key in COMPARE_METRICS:
        row[key] = version_metric(client, version, key)
    return row


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
