"""Optuna across machines: one study in a real PostgreSQL 15, created once (`mtbert tune
--create-only`), joined by three `mtbert tune --worker` processes (the real CLI); the first is
SIGKILLed in the middle of its trial while the other two join, and one of them retries that trial.

Trials are as small as in test_tuning.py (8 rows per task, one optimizer step, a report every
step): the machinery under test is the shared RDB study, its heartbeats and the retry of a dead
worker's trial, which do not care how big the model's data is.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml
from optuna.trial import FrozenTrial, TrialState

pytest.register_assert_rewrite("tests.integration.services")  # before its import: it is also a plugin
from mtbert.config import load_config  # noqa: E402
from mtbert.pipeline import tuning  # noqa: E402
from tests.integration.conftest import (  # noqa: E402
    mlflow_env,
    mlflow_in_process,
    run_mtbert,
    start_process_group,
    stop_process_group,
)
from tests.integration.services import Postgres, missing_postgres  # noqa: E402

pytest_plugins = ("tests.integration.services",)  # the session fixture `postgres`

_MISSING = missing_postgres()
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(_MISSING is not None, reason=f"{_MISSING}; run `bash scripts/setup.sh`"),
]

SMALL = [
    "data.train_size={sst: 8, para: 8, sts: 8}",
    "data.dev_size={sst: 16, para: 16, sts: 16}",
    "model.max_length=32",
    "tune.report_every=1",
    "train.threads=1",  # three workers on two cores
]
# A worker is dead after 3 s without a heartbeat; joining workers take longer than that to import.
HEARTBEAT = ["tune.heartbeat_s=1", "tune.grace_s=3"]
N_TRIALS = 4
WORKERS = 3


def _options(url: str, study: str, *extra: str) -> list[str]:
    return [*SMALL, *HEARTBEAT, f"tune.storage={url}", f"tune.study_name={study}", *extra]


def _tables(pg: Postgres, dbname: str) -> set[str]:
    with pg.connect(dbname) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return {row[0] for row in rows}


def test_worker_refuses_a_study_that_was_never_created(project: Path, postgres: Postgres,
                                                       mlflow_server: str) -> None:
    url = postgres.create_database("optuna_missing")
    out = run_mtbert(["-q", "tune", "--worker", *_options(url, "nowhere")], project,
                     mlflow_env(mlflow_server), check=False)

    assert out.returncode == 2, out.stdout + out.stderr
    (line,) = out.stderr.strip().splitlines()  # one line, no traceback
    assert line.startswith("mtbert tune: params.yaml: tune.storage: study 'nowhere' does not exist")
    assert "mtbert tune --create-only" in line
    assert _tables(postgres, "optuna_missing") == set()  # the worker created no table

    # Tables, but not this study: still refused, and nothing is created.
    created = load_config(project / "params.yaml", _options(url, "other"))
    with mlflow_in_process(mlflow_server):  # create_study makes the study's MLflow parent run
        tuning.create_study(created)
    joining = load_config(project / "params.yaml", _options(url, "nowhere"))
    with pytest.raises(tuning.StudyNotFound, match="study 'nowhere' does not exist in postgresql"):
        tuning.open_study(joining, must_exist=True)
    assert optuna.get_all_study_names(url) == ["other"]


def _worker_pid(trial: FrozenTrial) -> int | None:
    worker = trial.user_attrs.get("worker")
    return int(worker.rsplit(":", 1)[1]) if worker else None


def _wait_for(condition: Callable[[], FrozenTrial | None], timeout_s: float, what: str,
              procs: list[subprocess.Popen]) -> FrozenTrial:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        found = condition()
        if found is not None:
            return found
        for proc in procs:
            if proc.poll() is not None:
                pytest.fail(f"worker {proc.pid} exited ({proc.returncode}) while waiting for {what}")
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


def _running_trial_of(study: optuna.Study, pid: int) -> Callable[[], FrozenTrial | None]:
    def find() -> FrozenTrial | None:
        running = study.get_trials(states=(TrialState.RUNNING,))  # read from the database each time
        return next((t for t in running if _worker_pid(t) == pid and "mlflow_run_id" in t.user_attrs), None)

    return find


def _create_with_cli(project: Path, postgres: Postgres, options: list[str],
                     env: dict[str, str]) -> optuna.Study:
    """`mtbert tune --create-only`: the tables, the study (no trial) and its MLflow parent run."""
    created = run_mtbert(["-q", "tune", "--create-only", *options], project, env)
    assert re.search(r"study 'shared' \(profile=[^)]*\) created in postgresql\+psycopg://", created.stdout), created.stdout
    assert "mtbert tune --worker" in created.stdout
    study = tuning.open_study(load_config(project / "params.yaml", options), must_exist=True)
    assert study.trials == [] and tuning.PARENT_RUN_ATTR in study.user_attrs
    assert {"studies", "trials", "trial_heartbeats"} <= _tables(postgres, "optuna_workers")
    return study


def test_three_workers_share_a_postgres_study_and_retry_a_killed_workers_trial(
        project: Path, postgres: Postgres, mlflow_server: str) -> None:
    options = _options(postgres.create_database("optuna_workers"), "shared", f"tune.n_trials={N_TRIALS}")
    cfg, env = load_config(project / "params.yaml", options), mlflow_env(mlflow_server)
    start = time.monotonic()
    study = _create_with_cli(project, postgres, options, env)
    seconds = {"create_only": time.monotonic() - start}
    start = time.monotonic()
    logs = [project / f"worker-{i}.log" for i in range(WORKERS)]
    cmd = [sys.executable, "-m", "mtbert.cli", "-q", "tune", "--worker", *options]
    procs: list[subprocess.Popen] = []

    def start_worker(i: int) -> subprocess.Popen:
        procs.append(start_process_group([*cmd, f"tune.sampler_seed={i + 1}"], logs[i], env, project))
        return procs[-1]

    try:
        victim = start_worker(0)
        killed = _wait_for(_running_trial_of(study, victim.pid), 240, "the first worker's trial", procs)
        # Two more machines join while it trains; then it dies without any chance to clean up. The
        # joiners' first trials start after their imports (seconds), past the grace period: the
        # dead worker's trial is stale by then, and the first joiner to start a trial retries it.
        survivors = [start_worker(1), start_worker(2)]
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait(timeout=30)
        seconds["until_kill"] = time.monotonic() - start
        codes = [proc.wait(timeout=300) for proc in survivors]
        seconds["workers"] = time.monotonic() - start
    finally:
        for proc in procs:
            stop_process_group(proc)
    output = "\n".join(f"--- {log.name}\n{log.read_text()}" for log in logs)
    print("tuning workers seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
    assert codes == [0] * len(survivors), output
    study = tuning.open_study(cfg, must_exist=True)
    _check_study(study, killed, procs, output)
    _check_runs(study, killed, mlflow_server)
    best = yaml.safe_load(Path(project / cfg.tune.out_file).read_text())
    assert set(best) == set(killed.params)


def _check_study(study: optuna.Study, killed: FrozenTrial, procs: list[subprocess.Popen],
                 output: str) -> None:
    trials = {t.number: t for t in study.get_trials()}
    states = {n: t.state.name for n, t in trials.items()}
    print("trials: " + ", ".join(f"{n} {t.state.name} pid {_worker_pid(t)}" for n, t in trials.items()))
    assert trials[killed.number].state == TrialState.FAIL, states
    assert [t.number for t in trials.values() if t.state == TrialState.FAIL] == [killed.number], output
    (retry,) = [t for t in trials.values() if t.system_attrs.get("failed_trial") == killed.number]
    # The retry is one of the joiners' first trials: when it reports, at most one trial has
    # completed, fewer than the median pruner needs before it prunes anything; so it completes.
    assert retry.state == TrialState.COMPLETE and retry.params == killed.params, states
    assert _worker_pid(retry) in {p.pid for p in procs[1:]}
    assert not [t for t in trials.values() if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # The study is full; each worker may finish the trial it was running when it filled up.
    finished = [t for t in trials.values() if t.state in tuning.FINISHED]
    assert N_TRIALS <= len(finished) <= N_TRIALS + 1, states
    assert {_worker_pid(t) for t in trials.values()} == {p.pid for p in procs}, states  # all took part
    assert output.count("lost its worker") == 1, output  # failed and queued again once, not twice


def _check_runs(study: optuna.Study, killed: FrozenTrial, uri: str) -> None:
    client = mlflow.MlflowClient(uri)
    parent = study.user_attrs[tuning.PARENT_RUN_ATTR]
    for trial in study.get_trials():
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.data.tags["mlflow.parentRunId"] == parent  # one parent run for all workers
        expected = "FAILED" if trial.number == killed.number else "FINISHED"
        assert run.info.status == expected, (trial.number, trial.state)
