"""The Prefect flow against a really started `prefect server` (127.0.0.1) and MLflow server.

The flow runs in this process with PREFECT_API_URL pointing at the server, so every flow and task
run, its states and its retries are recorded by the real API and read back from it. The deployment
test starts `python -m flows.deploy` (Prefect `serve`) in a subprocess and stops it before the
server.
"""

from __future__ import annotations

import os
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
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import StateType, TaskRun
from prefect.client.schemas.responses import DeploymentResponse
from prefect.exceptions import ObjectNotFound
from prefect.states import State
from prefect.settings import PREFECT_API_URL, PREFECT_LOGGING_TO_API_ENABLED, temporary_settings

from flows import pipeline
from flows.deploy import DEPLOYMENT_NAME
from mtbert.config import load_config
from tests.conftest import REPO_ROOT
from tests.integration.conftest import free_port, start_process_group, stop_process_group, wait_http

pytestmark = pytest.mark.integration

PREFECT_STARTUP_TIMEOUT_S = 120.0
SMALL = ["data.train_size={sst: 8, para: 8, sts: 8}", "data.dev_size={sst: 16, para: 16, sts: 16}",
         "model.max_length=32"]


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


def test_flow_runs_end_to_end_and_registers_a_champion(prefect_api: str, project: Path,
                                                      data_dir: Path, mlflow_server: str) -> None:
    model_name = f"flow-e2e-{os.getpid()}"
    overrides = [*SMALL, f"register.model_name={model_name}", "tune.n_trials=1",
                 f"tune.storage=sqlite:///{project / 'optuna.db'}"]
    state = pipeline.mtbert_pipeline(overrides=overrides, data_source=str(data_dir), tune=True,
                                     return_state=True)

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
    assert set(tasks) == {"preprocess", "augment", "tune", "train", "evaluate", "register"}
    assert all(run.state_type == StateType.COMPLETED for run in tasks.values())


def test_transient_io_failure_is_retried(prefect_api: str, project: Path, data_dir: Path) -> None:
    share = project / "share"  # absent on the first attempt, as if a network share blipped
    failures: list[str] = []

    def share_comes_back(task: object, task_run: TaskRun, state: State) -> bool:  # retry_condition_fn
        failures.append(state.message)
        share.symlink_to(data_dir, target_is_directory=True)
        return True

    flaky = pipeline.preprocess.with_options(retry_delay_seconds=0, retry_condition_fn=share_comes_back)

    @flow(name="flaky-preprocess")
    def flaky_flow() -> dict:
        return flaky(load_config("params.yaml"), str(share))

    state = flaky_flow(return_state=True)

    assert state.is_completed(), state.message
    assert len(failures) == 1 and "course data folder does not exist" in failures[0]
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
