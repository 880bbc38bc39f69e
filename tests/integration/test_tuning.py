"""Optuna search on a real SQLite study, real tiny trainings and a real MLflow server.

Trials are shrunk below the tiny profile (8 rows per task: one optimizer step) so that a trial
costs seconds; the Optuna machinery under test (RDB storage shared by processes, heartbeats,
pruning, failures) does not care how big the model's data is.
"""

from __future__ import annotations

import os
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
from optuna.trial import TrialState

from mtbert.pipeline import tuning
from mtbert.config import Config, load_config
from tests.conftest import run_cli
from tests.integration.conftest import mlflow_env, run_mtbert, start_process_group, stop_process_group

pytestmark = pytest.mark.integration

SMALL = [
    "data.train_size={sst: 8, para: 8, sts: 8}",
    "data.dev_size={sst: 16, para: 16, sts: 16}",
    "model.max_length=32",
    "tune.report_every=1",
]


def _config(root: Path, *extra: str) -> Config:
    return load_config(root / "params.yaml", [*SMALL, *extra])


def _storage(root: Path) -> str:
    return f"sqlite:///{root / 'optuna.db'}"


def _states(study: optuna.Study) -> list[TrialState]:
    return [t.state for t in study.get_trials(deepcopy=False)]


@pytest.mark.filterwarnings("ignore:Fixed parameter model.head_dropout with value 1.5 is out of range")
def test_study_survives_a_failing_trial_and_writes_best_params(project: Path, mlflow_server: str) -> None:
    cfg = _config(project, "tune.study_name=main", f"tune.storage={_storage(project)}")
    first = tuning.open_study(cfg)
    # A real failure inside the objective: an out-of-range dropout fails config validation.
    first.enqueue_trial({"model.head_dropout": 1.5}, skip_if_exists=False)

    study = tuning.run_study(cfg, n_trials=3)

    assert _states(study) == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert all(t.intermediate_values for t in study.get_trials(states=(TrialState.COMPLETE,)))
    best = yaml.safe_load(Path(cfg.tune.out_file).read_text())
    assert best == study.best_params
    assert set(best) == {"train.lr", "model.head_dropout", "train.loss_scale.para", "train.loss_scale.sts"}
    # The file loads into the config through the real command line.
    shown = run_cli(["config", "--overrides-file", cfg.tune.out_file], project).stdout
    resolved = yaml.safe_load(shown)
    assert resolved["train"]["lr"] == pytest.approx(best["train.lr"])
    assert resolved["train"]["loss_scale"]["sts"] == pytest.approx(best["train.loss_scale.sts"])
    assert resolved["model"]["head_dropout"] == pytest.approx(best["model.head_dropout"])
    history = tuning.history_path(cfg).read_text().splitlines()  # trial,state,value,best
    assert [line.split(",")[1] for line in history[1:]] == ["fail", "complete", "complete"]
    assert float(history[-1].split(",")[3]) == pytest.approx(study.best_value)
    for name in (tuning.HISTORY_PNG, tuning.IMPORTANCES_PNG):  # declared in dvc.yaml as plots
        assert (tuning.history_path(cfg).parent / name).read_bytes()[:4] == b"\x89PNG"
    _check_mlflow(study, mlflow_server)


def _check_mlflow(study: optuna.Study, uri: str) -> None:
    client = mlflow.MlflowClient(uri)
    parent_id = study.user_attrs[tuning.PARENT_RUN_ATTR]
    parent = client.get_run(parent_id)
    artifacts = {a.path for a in client.list_artifacts(parent_id, "tune")}
    assert {"tune/optimization_history.png", "tune/param_importances.png", "tune/history.csv"} <= artifacts
    assert parent.data.metrics["tune/best_dev_overall"] == pytest.approx(study.best_value)
    for trial in study.get_trials(states=(TrialState.COMPLETE,)):
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.data.tags["mlflow.parentRunId"] == parent_id
        assert run.info.status == "FINISHED"
        assert run.data.metrics["dev/overall"] == pytest.approx(trial.value)
        assert float(run.data.params["train.lr"]) == pytest.approx(trial.params["train.lr"])
        history = client.get_metric_history(run.info.run_id, tuning.INTERMEDIATE_METRIC)
        assert [m.step for m in history] == sorted(trial.intermediate_values)


@pytest.mark.filterwarnings("ignore::UserWarning:optuna.*")  # plots of trials without parameters
def test_weak_trial_is_pruned_at_its_first_report(project: Path) -> None:
    cfg = _config(project, "tune.study_name=prune", f"tune.storage={_storage(project)}")
    study = tuning.open_study(cfg)
    # History: two finished trials that scored 0.99 at step 1. A real one-step trial cannot.
    for _ in range(2):
        study.add_trial(optuna.trial.create_trial(value=0.99, intermediate_values={1: 0.99}))

    study = tuning.run_study(cfg, n_trials=3)

    trial = study.trials[-1]
    assert trial.state == TrialState.PRUNED
    assert list(trial.intermediate_values) == [1]
    run = mlflow.MlflowClient().get_run(trial.user_attrs["mlflow_run_id"])
    assert run.data.tags["optuna.state"] == "PRUNED"
    assert "dev/overall" not in run.data.metrics  # pruned before the full evaluation


def _worker(root: Path, uri: str, log: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mtbert.cli", "-q", "tune", *SMALL, *extra]
    return start_process_group(cmd, log, mlflow_env(uri), root)


def _wait_for(condition: Callable[[], object], timeout_s: float, what: str,
              procs: list[subprocess.Popen]) -> None:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if condition():
            return
        for proc in procs:
            if proc.poll() is not None:
                pytest.fail(f"worker exited ({proc.returncode}) while waiting for {what}")
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


def _running(cfg: Config) -> list[optuna.trial.FrozenTrial]:
    return tuning.open_study(cfg).get_trials(states=(TrialState.RUNNING,))


def test_two_workers_share_one_sqlite_study(project: Path, mlflow_server: str) -> None:
    common = ["tune.study_name=shared", f"tune.storage={_storage(project)}", "tune.n_trials=2",
              "train.threads=1"]
    cfg = _config(project, *common)
    logs = [project / "worker-a.log", project / "worker-b.log"]
    procs = [_worker(project, mlflow_server, logs[0], *common, "tune.sampler_seed=1")]
    try:
        # Start the second worker while the first one is inside a trial: they really overlap.
        _wait_for(lambda: _running(cfg), 180, "the first worker's trial", procs)
        procs.append(_worker(project, mlflow_server, logs[1], *common, "tune.sampler_seed=2"))
        codes = [proc.wait(timeout=300) for proc in procs]
    finally:
        for proc in procs:
            stop_process_group(proc)
    output = "\n".join(log.read_text() for log in logs)
    assert codes == [0, 0], output
    assert "database is locked" not in output
    study = tuning.open_study(cfg)
    states = _states(study)
    # Each worker stops once the study is full, but may finish the trial it is running.
    assert states.count(TrialState.COMPLETE) in (2, 3), states
    assert TrialState.RUNNING not in states and TrialState.FAIL not in states
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2


def test_killed_worker_trial_is_failed_and_retried(project: Path, mlflow_server: str) -> None:
    common = ["tune.study_name=killed", f"tune.storage={_storage(project)}", "tune.heartbeat_s=1",
              "tune.grace_s=2"]
    cfg = _config(project, *common)
    proc = _worker(project, mlflow_server, project / "worker.log", *common, "tune.n_trials=1")
    try:
        _wait_for(lambda: any("mlflow_run_id" in t.user_attrs for t in _running(cfg)), 180,
                  "a running trial with its MLflow run", [proc])
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        stop_process_group(proc)
    killed = tuning.open_study(cfg).trials[0]
    assert killed.state == TrialState.RUNNING  # nobody has noticed yet
    time.sleep(cfg.tune.grace_s + 1.5)

    study = tuning.run_study(cfg, n_trials=1)  # the next worker

    first, retry = study.trials
    assert first.state == TrialState.FAIL
    assert retry.state == TrialState.COMPLETE
    assert retry.system_attrs["failed_trial"] == first.number
    assert retry.params == first.params
    client = mlflow.MlflowClient(mlflow_server)
    assert client.get_run(first.user_attrs["mlflow_run_id"]).info.status == "FAILED"
    assert client.get_run(retry.user_attrs["mlflow_run_id"]).info.status == "FINISHED"


def test_tiny_and_quick_use_different_studies_and_a_mismatched_worker_is_refused(
        project: Path, mlflow_server: str) -> None:
    """Without tune.study_name a study is named after its measurement key; a study remembers its key."""
    storage = f"tune.storage={_storage(project)}"
    tiny = _config(project, "profile=tiny", storage)
    quick = _config(project, "profile=quick", "data.dev_size={sst: 24, para: 24, sts: 24}", storage)
    assert tiny.tune.study_name is None and quick.tune.study_name is None

    tiny_study = tuning.run_study(tiny, n_trials=1)
    quick_study = tuning.run_study(quick, n_trials=1)

    tiny_key, quick_key = tuning.study_key(tiny), tuning.study_key(quick)
    assert str(tiny_key).startswith("profile=tiny dev=sst:16,para:16,sts:16 rows=")
    assert str(quick_key).startswith("profile=quick dev=sst:24,para:24,sts:24 rows=")
    assert tiny_study.study_name == f"mtbert-tiny-{tiny_key.digest}"
    assert quick_study.study_name == f"mtbert-quick-{quick_key.digest}"
    assert sorted(optuna.get_all_study_names(_storage(project))) == sorted(
        [tiny_study.study_name, quick_study.study_name])
    for study, key in ((tiny_study, tiny_key), (quick_study, quick_key)):
        reloaded = optuna.load_study(study_name=study.study_name, storage=_storage(project))
        assert reloaded.user_attrs[tuning.KEY_ATTR] == str(key)
        assert _states(reloaded) == [TrialState.COMPLETE]
    parent = mlflow.MlflowClient(mlflow_server).get_run(tiny_study.user_attrs[tuning.PARENT_RUN_ATTR])
    assert parent.data.tags[tuning.KEY_ATTR] == str(tiny_key)

    # A worker with quick's settings pointed at the tiny study by name: refused, nothing run.
    joining = [*SMALL, "profile=quick", "data.dev_size={sst: 24, para: 24, sts: 24}", storage,
               f"tune.study_name={tiny_study.study_name}", "tune.n_trials=2"]
    out = run_mtbert(["-q", "tune", "--worker", *joining], project, mlflow_env(mlflow_server), check=False)
    assert out.returncode == 2, out.stdout + out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("mtbert tune: ") and "Traceback" not in out.stderr
    assert f"study '{tiny_study.study_name}' in sqlite:///" in line
    assert f"is measured on {tiny_key}; this run measures on {quick_key}" in line
    with pytest.raises(tuning.StudyKeyMismatch, match="the scores would not compare"):
        tuning.open_study(load_config(project / "params.yaml", joining))  # resume without --worker
    assert _states(tuning.open_study(tiny)) == [TrialState.COMPLETE]  # nothing was run in it
