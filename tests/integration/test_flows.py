"""The Prefect flow against a really started `prefect server` (127.0.0.1) and MLflow server.

The flow runs in this process with PREFECT_API_URL pointing at the server, so every flow and task
run, its states, its retries, its artifacts and (where a test turns it on) its log are recorded by
the real API and read back from it. The deployment tests start `python -m flows.deploy` (Prefect
`serve`) in a subprocess and stop it before the server.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import mlflow
import pytest
import yaml
from prefect import flow
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter,
                                            FlowRunFilterId, LogFilter, LogFilterFlowRunId)
from prefect.client.schemas.objects import Artifact, Log, StateType, TaskRun
from prefect.client.schemas.responses import DeploymentResponse
from prefect.exceptions import ObjectNotFound
from prefect.logging.handlers import APILogHandler
from prefect.states import State
from prefect.settings import PREFECT_API_URL, PREFECT_LOGGING_TO_API_ENABLED, temporary_settings

from flows import pipeline
from flows.deploy import DEPLOYMENT_NAME
from flows.report import REPORT_KEY
from mtbert.config import load_config
from mtbert.errors import UserError
from tests.conftest import REPO_ROOT
from tests.integration.conftest import free_port, start_process_group, stop_process_group, wait_http

pytestmark = pytest.mark.integration

PREFECT_STARTUP_TIMEOUT_S = 120.0
SMALL = ["data.train_size={sst: 8, para: 8, sts: 8}", "data.dev_size={sst: 16, para: 16, sts: 16}",
         "model.max_length=32", "train.threads=1"]


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`prefect server start` on a free 127.0.0.1 port with its own home and database."""
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_UI_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    cmd = [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1",
           "--port", str(port)]
    proc = start_process_group(cmd, home / "server.log", env, home)
    try:
        api = f"http://127.0.0.1:{port}/api"
        wait_http(f"{api}/health", proc, home / "server.log", PREFECT_STARTUP_TIMEOUT_S)
        # Run logs are not sent to the API: nothing reads them, and a late flush after the server
        # stops would only print connection errors.
        with temporary_settings(updates={PREFECT_API_URL: api, PREFECT_LOGGING_TO_API_ENABLED: False}):
            yield api
    finally:
        stop_process_group(proc)


def _client() -> SyncPrefectClient:
    return get_client(sync_client=True)


def _task_runs(client: SyncPrefectClient, flow_run_id: UUID) -> dict[str, TaskRun]:
    runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {run.name.rsplit("-", 1)[0]: run for run in runs}  # task run names are "<task>-<suffix>"


def _artifacts(client: SyncPrefectClient, flow_run_id: UUID) -> list[Artifact]:
    return client.read_artifacts(artifact_filter=ArtifactFilter(
        flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))


def _logs(client: SyncPrefectClient, flow_run_id: UUID) -> list[Log]:
    """The flow run's log (its task runs' records included), as the UI shows it."""
    APILogHandler().flush()  # send the records still queued in this process
    return client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))


def _source_with_a_bad_row(data_dir: Path, dest: Path) -> Path:
    """A copy of the course data whose SST train file ends with a row labelled 9 (range 0-4)."""
    shutil.copytree(data_dir, dest)
    with open(dest / "ids-sst-train.csv", "a") as fh:
        fh.write("99999\tbadrow0000000000000000000\t a row with a label out of range\t9\n")
    return dest


def test_flow_runs_end_to_end_and_registers_a_champion(prefect_api: str, project: Path, data_dir: Path,
                                                      mlflow_server: str, tmp_path: Path) -> None:
    model_name = f"flow-e2e-{os.getpid()}"
    overrides = [*SMALL, f"register.model_name={model_name}", "tune.n_trials=1",
                 f"tune.storage=sqlite:///{project / 'optuna.db'}", "data.on_error=skip"]
    source = _source_with_a_bad_row(data_dir, tmp_path / "source")
    with temporary_settings(updates={PREFECT_LOGGING_TO_API_ENABLED: True}):
        state = pipeline.mtbert_pipeline(overrides=overrides, data_source=str(source), tune=True,
                                         return_state=True)
        with _client() as prefect:
            logs = _logs(prefect, state.state_details.flow_run_id)

    assert state.is_completed(), state.message
    result = state.result()
    client = mlflow.MlflowClient(mlflow_server)
    version = client.get_model_version_by_alias(model_name, "champion")
    assert version.run_id == result["run_id"]
    assert result["registration"]["decision"] == "champion"
    assert 0.0 < result["metrics"]["dev/overall"] < 1.0
    best = yaml.safe_load((project / "artifacts" / "tune" / "best_params.yaml").read_text())
    trained = client.get_run(result["run_id"]).data.params
    assert float(trained["train.lr"]) == pytest.approx(best["train.lr"])  # trained with the tuned values
    with _client() as prefect:
        flow_run = prefect.read_flow_run(state.state_details.flow_run_id)
        assert flow_run.state_type == StateType.COMPLETED
        tasks = _task_runs(prefect, flow_run.id)
        (artifact,) = _artifacts(prefect, flow_run.id)
    assert set(tasks) == {"preprocess", "augment", "tune", "train", "evaluate", "register", "report"}
    assert all(run.state_type == StateType.COMPLETED for run in tasks.values())
    # The run's report: metrics, decision and reason, and where the MLflow run is.
    experiment_id = client.get_run(result["run_id"]).info.experiment_id
    report = artifact.data
    assert artifact.key == REPORT_KEY and artifact.type == "markdown"
    assert f"v{version.version} is **champion**" in report
    assert f"because {result['registration']['reason']}" in report
    assert f"| `dev/overall` | {result['metrics']['dev/overall']:.4f} |" in report
    assert f"| `dev/sts/pearson` | {result['metrics']['dev/sts/pearson']:.4f} |" in report
    assert f"{mlflow_server}/#/experiments/{experiment_id}/runs/{result['run_id']}" in report
    # mtbert's warning (the skipped row) is in the flow run's log, once.
    skipped = [log for log in logs if log.name == "mtbert" and "skipped ids-sst-train.csv" in log.message]
    assert len(skipped) == 1 and skipped[0].level == 30 and "field 'sentiment'" in skipped[0].message


def test_transient_io_failure_is_retried(prefect_api: str, project: Path, data_dir: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    copies: list[str] = []
    copyfile = shutil.copyfile

    def blips_once(src: str, dst: str) -> str:  # the share fails one read, as a network share may
        copies.append(str(src))
        if len(copies) == 1:
            raise OSError(errno.EIO, "Input/output error", str(src))
        return copyfile(src, dst)

    monkeypatch.setattr(shutil, "copyfile", blips_once)
    flaky = pipeline.preprocess.with_options(retry_delay_seconds=0)  # the task's own retry condition

    @flow(name="flaky-preprocess")
    def flaky_flow() -> dict:
        return flaky(load_config("params.yaml"), str(data_dir))

    state = flaky_flow(return_state=True)

    assert state.is_completed(), state.message
    assert flaky.retry_condition_fn is pipeline.retry_unless_user_error
    assert copies.count(copies[0]) == 2  # the file that failed was copied again
    assert (project / "artifacts" / "prepared" / "sst-train.parquet").exists()
    with _client() as client:
        (run,) = _task_runs(client, state.state_details.flow_run_id).values()
        names = [s.name for s in client.read_task_run_states(run.id)]
    assert run.state_type == StateType.COMPLETED and run.run_count == 2
    assert names == ["Pending", "Running", "Retrying", "Completed"]


def test_failed_flow_reports_the_failing_task(prefect_api: str, project: Path, data_dir: Path) -> None:
    missing = project / "no-such-model"
    state = pipeline.mtbert_pipeline(overrides=[*SMALL, f"model.checkpoint={missing}"],
                                     data_source=str(data_dir), return_state=True)

    assert state.is_failed()
    with _client() as client:
        flow_run = client.read_flow_run(state.state_details.flow_run_id)
        tasks = _task_runs(client, flow_run.id)
    assert flow_run.state_type == StateType.FAILED
    assert "no-such-model" in flow_run.state.message
    assert tasks["preprocess"].state_type == StateType.COMPLETED
    assert tasks["train"].state_type == StateType.FAILED
    assert "no-such-model" in tasks["train"].state.message
    assert tasks["train"].run_count == 1  # training is not retried
    assert "evaluate" not in tasks and "register" not in tasks


def test_input_error_is_tried_once_and_reported_once(prefect_api: str, project: Path,
                                                    tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "no-such-data"
    with temporary_settings(updates={PREFECT_LOGGING_TO_API_ENABLED: True}):
        state = pipeline.mtbert_pipeline(overrides=SMALL, data_source=str(missing), return_state=True)
        with _client() as client:
            flow_run = client.read_flow_run(state.state_details.flow_run_id)
            tasks = _task_runs(client, flow_run.id)
            states = [s.name for s in client.read_task_run_states(tasks["preprocess"].id)]
            logs = _logs(client, flow_run.id)
            (artifact,) = _artifacts(client, flow_run.id)

    reason = "course data folder does not exist"
    assert flow_run.state_type == StateType.FAILED
    assert flow_run.state.message == f"{missing}: {reason} (pass --source DIR or set data.source in params.yaml)"
    assert set(tasks) == {"preprocess"} and tasks["preprocess"].run_count == 1  # one attempt
    assert states == ["Pending", "Running", "Failed"]  # no Retrying, no AwaitingRetry
    mentions = [log for log in logs if reason in log.message]
    errors = [log for log in mentions if log.level >= 40]
    assert len(errors) == 1, [log.message for log in mentions]  # the failed task's one line
    # ... and the flow run's final state, which says the same; no traceback, no retry notice.
    assert len(mentions) == 2 and "Finished in state Failed" in mentions[1].message
    assert not [log for log in logs if "Traceback" in log.message or "Retry" in log.message]
    assert all("\n" not in log.message for log in mentions)
    assert artifact.key == REPORT_KEY and reason in artifact.data
    assert "Traceback" not in capsys.readouterr().err
    with pytest.raises(UserError, match=reason):  # as `python -m flows.pipeline` sees it
        state.result()


def test_second_run_without_source_does_not_import_unchanged_data(prefect_api: str, project: Path,
                                                                 data_dir: Path, tmp_path: Path) -> None:
    source = shutil.copytree(data_dir, tmp_path / "source")
    raw = project / "data" / "ids-sst-train.csv"
    # Both runs stop at train (no such checkpoint), after preprocess and augment.
    overrides = [*SMALL, f"data.source={source}", f"model.checkpoint={tmp_path / 'no-such-model'}"]

    def run_inode(data_source: str | None) -> tuple[int, dict[str, TaskRun]]:
        state = pipeline.mtbert_pipeline(overrides=overrides, data_source=data_source, return_state=True)
        assert state.is_failed() and "no-such-model" in state.message
        with _client() as client:
            tasks = _task_runs(client, state.state_details.flow_run_id)
        assert tasks["preprocess"].state_type == StateType.COMPLETED
        return raw.stat().st_ino, tasks

    before = raw.stat().st_ino
    given, _ = run_inode(str(source))  # a source given: imported (each file is replaced atomically)
    assert given != before
    unchanged, _ = run_inode(None)  # no source, same files at data.source: nothing imported
    assert unchanged == given
    with open(source / "ids-sst-train.csv", "a") as fh:  # the data changed at data.source
        fh.write("99999\tchangedrow000000000000000000\t a new row\t2\n")
    changed, _ = run_inode(None)
    assert changed != unchanged and raw.read_bytes() == (source / "ids-sst-train.csv").read_bytes()


def test_deploy_refuses_a_misspelt_override(prefect_api: str, tmp_path: Path) -> None:
    name = f"misspelt-{os.getpid()}"
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PREFECT_HOME": str(tmp_path / "home")}
    for extra in ([], ["--work-pool", "no-such-pool"]):
        cmd = [sys.executable, "-m", "flows.deploy", "--name", name, *extra, "profile=tiny", "train.lrr=3e-5"]
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180)

        assert proc.returncode == 2, proc.stdout + proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("flows.deploy: runs would fail: "), proc.stderr
        assert "train.lrr: unknown key" in lines[0] and "nothing was deployed" in lines[0]
    with _client() as client, pytest.raises(ObjectNotFound):
        client.read_deployment_by_name(f"mtbert-pipeline/{name}")


def test_served_deployment_has_its_cron_schedule(prefect_api: str, tmp_path: Path) -> None:
    cron = "17 3 * * *"
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PREFECT_HOME": str(tmp_path / "home")}
    cmd = [sys.executable, "-m", "flows.deploy", "--cron", cron, "profile=tiny"]
    serve = start_process_group(cmd, tmp_path / "serve.log", env, REPO_ROOT)
    try:
        deployment = _wait_for_deployment(f"mtbert-pipeline/{DEPLOYMENT_NAME}", serve, tmp_path / "serve.log")
        (schedule,) = deployment.schedules
        assert schedule.schedule.cron == cron
        assert schedule.active and not deployment.paused
        assert deployment.parameters["overrides"] == ["profile=tiny"]
    finally:
        stop_process_group(serve)  # before the server (module fixture): the other order hangs


def _wait_for_deployment(name: str, proc: subprocess.Popen, log: Path,
                         timeout_s: float = 180.0) -> DeploymentResponse:
    start = time.monotonic()
    with _client() as client:
        while time.monotonic() - start < timeout_s:
            if proc.poll() is not None:
                pytest.fail(f"serve exited ({proc.returncode}):\n{log.read_text()[-4000:]}")
            try:
                return client.read_deployment_by_name(name)
            except ObjectNotFound:
                time.sleep(1.0)
    pytest.fail(f"deployment {name} did not appear in {timeout_s:.0f} s:\n{log.read_text()[-4000:]}")
