"""The pipeline as a Prefect deployment on a process work pool, run by a real `prefect worker`.

The team setup, on 127.0.0.1: PostgreSQL 15 holds both the Prefect server's database (asyncpg) and
the MLflow server's (psycopg); MLflow keeps artifacts in S3 (SeaweedFS), and only the MLflow server
holds the S3 keys. The project is a tiny-profile checkout (params.yaml, the data, flows/).

`prefect work-pool create P --type process`, `python -m flows.deploy --work-pool P` (the real
command, which exits after registering), `prefect worker start --pool P`, `prefect deployment run`:
the worker runs the whole pipeline in a subprocess and the model lands in MLflow's registry.
A misspelt override is refused by `python -m flows.deploy` before anything is registered.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import pytest
from mlflow import MlflowClient
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.responses import DeploymentResponse
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import State

pytest.register_assert_rewrite("tests.integration.services")  # before its import: it is also a plugin
from tests.conftest import REPO_ROOT, copy_project  # noqa: E402
from tests.integration.conftest import (  # noqa: E402
    MLFLOW_ENV_KEYS,
    free_port,
    mlflow_env,
    start_process_group,
    stop_process_group,
    wait_http,
)
from tests.integration.services import (  # noqa: E402
    S3,
    Postgres,
    missing_postgres,
    missing_s3,
    without_aws,
)

pytest_plugins = ("tests.integration.services",)  # the session fixtures `postgres` and `s3`

_MISSING = missing_postgres() or missing_s3()
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(_MISSING is not None, reason=f"{_MISSING}; run `bash scripts/setup.sh`"),
]

STARTUP_TIMEOUT_S = 300.0  # both servers migrate a fresh database: 15-30 s here
FLOW_RUN_TIMEOUT_S = 420.0
POOL = "mtbert-pool"
DEPLOYMENT = "team-nightly"
CRON = "17 3 * * *"
MODEL_NAME = "mtbert-team"
PREFECT = str(Path(sys.executable).parent / "prefect")
SMALL = ["data.train_size={sst: 8, para: 8, sts: 8}", "data.dev_size={sst: 16, para: 16, sts: 16}",
         "model.max_length=32", "train.checkpoint_every=100000"]


@dataclass(frozen=True)
class Team:
    """The shared services and the checkout the deployment runs in."""

    prefect_api: str
    mlflow_uri: str
    s3: S3
    project: Path
    home: Path  # PREFECT_HOME and logs of the test's Prefect clients and worker
    seconds: dict[str, float]

    def env(self) -> dict[str, str]:
        """Environment of every client (CLI, deploy, worker, its flow runs): no S3 keys."""
        env = without_aws(mlflow_env(self.mlflow_uri))
        return {**env, "PREFECT_API_URL": self.prefect_api, "PREFECT_HOME": str(self.home),
                "PREFECT_WORKER_QUERY_SECONDS": "2"}


def _start_prefect(postgres: Postgres, root: Path) -> tuple[subprocess.Popen, str]:
    url = postgres.create_database("prefect_team").replace("+psycopg://", "+asyncpg://")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(root), "PREFECT_API_DATABASE_CONNECTION_URL": url,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_UI_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    cmd = [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    return start_process_group(cmd, root / "prefect-server.log", env, root), f"http://127.0.0.1:{port}/api"


def _start_mlflow(postgres: Postgres, s3: S3, root: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", postgres.create_database("mlflow_team"),
        "--artifacts-destination", f"s3://{s3.buckets[0]}/team",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    env = {k: v for k, v in without_aws().items() if k not in MLFLOW_ENV_KEYS}
    env.update({**s3.env(), "MLFLOW_S3_ENDPOINT_URL": s3.endpoint_url})  # keys: the server's only
    return start_process_group(cmd, root / "mlflow-server.log", env, root), f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def team(postgres: Postgres, s3: S3, prepared_project: Path,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Team]:
    """PostgreSQL-backed Prefect and MLflow servers (started together) and a tiny checkout."""
    root = tmp_path_factory.mktemp("prefect-team")
    start = time.monotonic()
    prefect, api = _start_prefect(postgres, root)
    mlflow_proc, mlflow_uri = _start_mlflow(postgres, s3, root)
    try:
        project = copy_project(prepared_project, root / "checkout")
        shutil.copytree(REPO_ROOT / "flows", project / "flows", ignore=shutil.ignore_patterns("__pycache__"))
        wait_http(f"{api}/health", prefect, root / "prefect-server.log", STARTUP_TIMEOUT_S)
        wait_http(f"{mlflow_uri}/health", mlflow_proc, root / "mlflow-server.log", STARTUP_TIMEOUT_S)
        (root / "home").mkdir()
        yield Team(api, mlflow_uri, s3, project, root / "home", {"servers": time.monotonic() - start})
    finally:
        # This MLflow server outlived SIGTERM's 10 s grace here; its state is thrown away anyway.
        for name, proc, grace_s in (("mlflow", mlflow_proc, 3.0), ("prefect", prefect, 10.0)):
            stop_start = time.monotonic()
            stop_process_group(proc, grace_s=grace_s)
            print(f"{name} server stopped in {time.monotonic() - stop_start:.1f} s ({proc.returncode})")


def _run(cmd: list[str], team: Team, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=team.project, env=team.env(), capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def _deploy(team: Team, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "flows.deploy", "--work-pool", POOL, *args], team, check=check)


def _overrides(data_dir: Path) -> list[str]:
    return [*SMALL, f"data.source={data_dir}", f"register.model_name={MODEL_NAME}"]


@contextlib.contextmanager
def _prefect(team: Team) -> Iterator[SyncPrefectClient]:
    with temporary_settings(updates={PREFECT_API_URL: team.prefect_api}):
        with get_client(sync_client=True) as client:
            yield client


def _deployment(team: Team, name: str) -> DeploymentResponse | None:
    with _prefect(team) as client:
        with contextlib.suppress(ObjectNotFound):
            return client.read_deployment_by_name(f"mtbert-pipeline/{name}")
    return None


@pytest.fixture(scope="module")
def pool(team: Team) -> str:
    """The process work pool, made with the real CLI."""
    start = time.monotonic()
    _run([PREFECT, "work-pool", "create", POOL, "--type", "process"], team)
    team.seconds["work_pool_create"] = time.monotonic() - start
    return POOL


def test_misspelt_override_or_missing_pool_is_refused_before_anything_is_deployed(team: Team, pool: str,
                                                                   data_dir: Path) -> None:
    out = _deploy(team, "--name", "typo", *_overrides(data_dir), "train.lrr=3e-5", check=False)

    assert out.returncode == 2, out.stdout + out.stderr
    (line,) = out.stderr.strip().splitlines()  # one line, no traceback
    assert line.startswith("flows.deploy: runs would fail:")
    assert "train.lrr: unknown key" in line and "nothing was deployed" in line
    assert _deployment(team, "typo") is None

    out = _run([sys.executable, "-m", "flows.deploy", "--work-pool", "no-such-pool", "--name", "typo",
                *_overrides(data_dir)], team, check=False)
    assert out.returncode == 2, out.stdout + out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert "no-such-pool" in line and "prefect work-pool create no-such-pool --type process" in line
    assert _deployment(team, "typo") is None


def test_worker_runs_the_deployment_and_registers_a_model(team: Team, pool: str, data_dir: Path) -> None:
    seconds = team.seconds
    start = time.monotonic()
    deployed = _deploy(team, "--name", DEPLOYMENT, "--cron", CRON, *_overrides(data_dir))
    seconds["deploy"] = time.monotonic() - start
    assert f"mtbert-pipeline/{DEPLOYMENT}" in deployed.stdout
    deployment = _deployment(team, DEPLOYMENT)
    assert deployment.work_pool_name == pool
    assert deployment.schedules[0].schedule.cron == CRON
    assert deployment.parameters["overrides"] == _overrides(data_dir)
    assert deployment.pull_steps == [{"prefect.deployments.steps.set_working_directory":
                                      {"directory": str(team.project)}}]

    worker = start_process_group([PREFECT, "worker", "start", "--pool", pool, "--type", "process"],
                                 team.home / "worker.log", team.env(), team.project)
    try:
        start = time.monotonic()
        ran = _run([PREFECT, "deployment", "run", f"mtbert-pipeline/{DEPLOYMENT}"], team)
        flow_run_id = UUID(re.search(r"UUID: ([0-9a-f-]{36})", ran.stdout).group(1))
        state = _wait_final(team, flow_run_id, worker)
        seconds["flow_run"] = time.monotonic() - start
    finally:
        stop_start = time.monotonic()
        _interrupt(worker)
        seconds["worker_stop"] = time.monotonic() - stop_start
    print("prefect worker seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
    log = (team.home / "worker.log").read_text(errors="replace")
    assert state.is_completed(), f"{state.type}: {state.message}\n{log[-6000:]}"
    _check_registered(team)


def _wait_final(team: Team, flow_run_id: UUID, worker: subprocess.Popen) -> State:
    start = time.monotonic()
    with _prefect(team) as client:
        while time.monotonic() - start < FLOW_RUN_TIMEOUT_S:
            flow_run = client.read_flow_run(flow_run_id)
            if flow_run.state is not None and flow_run.state.is_final():
                return flow_run.state
            if worker.poll() is not None:
                pytest.fail(f"worker exited ({worker.returncode}):\n{_tail(team.home / 'worker.log')}")
            time.sleep(1.0)
    pytest.fail(f"flow run {flow_run_id} not finished in {FLOW_RUN_TIMEOUT_S:.0f} s "
                f"({flow_run.state.name}):\n{_tail(team.home / 'worker.log')}")


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-6000:]


def _interrupt(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """Ctrl-C to the worker's process group (it ignores SIGTERM for minutes), then the usual stop."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
    stop_process_group(proc)


def _check_registered(team: Team) -> None:
    client = MlflowClient(tracking_uri=team.mlflow_uri, registry_uri=team.mlflow_uri)
    version = client.get_model_version_by_alias(MODEL_NAME, "champion")
    run = client.get_run(version.run_id)
    assert run.info.status == "FINISHED"
    assert 0.0 < run.data.metrics["dev/overall"] < 1.0
    assert run.data.params["data.train_size.sst"] == "8"  # the deployment's overrides reached the run
    keys = team.s3.objects(team.s3.buckets[0], "team/")
    assert any(key.endswith("/MLmodel") for key in keys), sorted(keys)[:20]
