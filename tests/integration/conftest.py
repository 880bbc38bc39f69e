"""Fixtures for integration tests: really started services on 127.0.0.1, stopped even on failure.

`mlflow_server` is a session fixture shared by every integration test: a real `mlflow server`
(SQLite backend store, proxied artifact store under a temp folder, one worker) on a free port.
Subprocesses talking to it get `mlflow_env(uri)` as their environment (`run_mtbert` does that).

In-process MLflow calls must go through `mlflow_in_process(uri)`: `mlflow.set_tracking_uri` and
`mlflow.set_experiment` write MLFLOW_TRACKING_URI / MLFLOW_EXPERIMENT_ID into os.environ, which
would otherwise leak into every later test's subprocesses.

`tracked_project` is the session's tiny trained project with its training run recorded on the
server, ready for `mtbert register`.

The helpers `free_port`, `wait_http`, `start_process_group` and `stop_process_group` are plain
functions so other fixtures (Prefect server, `mlflow models serve`) can reuse them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import copy_project

MLFLOW_STARTUP_TIMEOUT_S = 120.0  # 7-10 s idle; over 30 s seen while other jobs load the CPU


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _read_log(log_path: Path) -> str:
    return log_path.read_text(errors="replace")[-8000:] if log_path.exists() else "<no log>"


def wait_http(url: str, proc: subprocess.Popen, log_path: Path, timeout_s: float) -> float:
    """Poll `url` until it answers HTTP 200; fail the test with the process log otherwise.

    Returns:
        Seconds waited.
    """
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if proc.poll() is not None:
            pytest.fail(f"process exited ({proc.returncode}) before {url} answered:\n"
                        f"{_read_log(log_path)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return time.monotonic() - start
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.25)
    pytest.fail(f"{url} did not answer 200 within {timeout_s:.0f} s:\n{_read_log(log_path)}")


def start_process_group(cmd: list[str], log_path: Path, env: dict[str, str],
                        cwd: Path) -> subprocess.Popen:
    """Start `cmd` in its own process group, stdout and stderr into `log_path`."""
    with open(log_path, "wb") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
        )


def stop_process_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the process group of `proc`, then SIGKILL it if it is still alive after `grace_s`."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError, PermissionError):  # workers may outlive the parent
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.wait(timeout=grace_s)


MLFLOW_ENV_KEYS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID",
                   "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID")


def mlflow_env(tracking_uri: str) -> dict[str, str]:
    """A copy of os.environ pointing MLflow clients (CLI subprocesses included) at `tracking_uri`."""
    env = {k: v for k, v in os.environ.items() if k not in MLFLOW_ENV_KEYS}
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    env["MLFLOW_REGISTRY_URI"] = tracking_uri
    return env


@contextlib.contextmanager
def mlflow_in_process(tracking_uri: str, cwd: Path | None = None) -> Iterator[None]:
    """Use MLflow in the test process against `tracking_uri` (optionally from `cwd`), then undo it.

    Restores the MLflow variables of os.environ, the working directory, and MLflow's global
    tracking URI and active experiment, and ends any run left open.
    """
    import mlflow
    import mlflow.tracking.fluent as fluent

    saved = {key: os.environ.pop(key, None) for key in MLFLOW_ENV_KEYS}
    old_cwd = Path.cwd()
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    mlflow.set_tracking_uri(tracking_uri)
    try:
        if cwd is not None:
            os.chdir(cwd)
        yield
    finally:
        os.chdir(old_cwd)
        while mlflow.active_run() is not None:
            mlflow.end_run()
        mlflow.set_tracking_uri(None)
        fluent._active_experiment_id = None  # no public reset; set_experiment stores it here
        for key, value in saved.items():
            os.environ.pop(key, None)
            if value is not None:
                os.environ[key] = value


def run_mtbert(args: list[str], cwd: Path, env: dict[str, str], timeout: int = 300,
               check: bool = True) -> subprocess.CompletedProcess:
    """Run the real `mtbert` CLI with `env`; unless `check` is False, fail the test if it fails."""
    cmd = [sys.executable, "-m", "mtbert.cli", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"mtbert {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow tracking + registry server; yields its URI (http://127.0.0.1:PORT).

    SQLite backend store and proxied artifacts (`mlflow-artifacts:/`, stored under a temp
    folder), one worker. Stopped (SIGTERM, then SIGKILL of the process group) at session end.
    """
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    log_path = root / "server.log"
    env = dict(os.environ)
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        env.pop(key, None)
    proc = start_process_group(cmd, log_path, env, root)
    try:
        waited = wait_http(f"http://127.0.0.1:{port}/health", proc, log_path, MLFLOW_STARTUP_TIMEOUT_S)
        print(f"mlflow server healthy after {waited:.1f} s")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process_group(proc)


@dataclass(frozen=True)
class TrackedProject:
    """A trained project whose training run lives on the test MLflow server."""

    root: Path
    tracking_uri: str
    model_name: str
    experiment: str
    run_id: str
    metrics: dict[str, float]  # the real dev metrics `mtbert evaluate` wrote
    git_commit: str
    data_md5: str


def _git(root: Path, *args: str) -> str:
    cmd = ["git", "-c", "user.name=mtbert-tests", "-c", "user.email=tests@mtbert.invalid", *args]
    return subprocess.run(cmd, cwd=root, check=True, capture_output=True, text=True).stdout.strip()


def version_the_project(root: Path, model_name: str, experiment: str) -> tuple[str, str]:
    """Name the registered model, `dvc add` the data and commit: (git commit, data md5)."""
    params = root / "params.yaml"
    text = re.sub(r"(?m)^  model_name: .*$", f"  model_name: {model_name}", params.read_text())
    params.write_text(re.sub(r"(?m)^  experiment: .*$", f"  experiment: {experiment}", text))
    _git(root, "init", "-q")
    for args in (["init", "-q"], ["add", "-q", "data"]):
        subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, check=True, capture_output=True)
    _git(root, "add", "params.yaml", "data.dvc", ".gitignore", ".dvc")
    _git(root, "commit", "-q", "-m", "tiny project")
    import yaml

    md5 = yaml.safe_load((root / "data.dvc").read_text())["outs"][0]["md5"]
    return _git(root, "rev-parse", "HEAD"), md5


@pytest.fixture(scope="session")
def tracked_project(tmp_path_factory: pytest.TempPathFactory, trained_project: Path,
                    mlflow_server: str) -> TrackedProject:
    """A copy of `trained_project` whose training run is recorded on `mlflow_server`.

    `trained_project` was trained against its own local store, so the server does not know its
    run. The copy is made a git repository with DVC-tracked data, then gets what `mtbert train`
    and `mtbert evaluate` record on a server, through the same `mtbert.pipeline.tracking` calls: a run
    with the resolved params, git commit and data md5 tags, the real dev metrics and eval
    files; its id is saved in the model directory. The weights and metrics are the real ones;
    only the run record is re-created (training again here would cost a minute or more).
    """
    start = time.monotonic()
    root = tmp_path_factory.mktemp("tracked") / "project"
    shutil.copytree(trained_project, root, ignore=shutil.ignore_patterns("mlflow.db", "mlruns"))
    model_name, experiment = f"mtbert-it-{root.parent.name}", "mtbert-integration"
    commit, md5 = version_the_project(root, model_name, experiment)
    run_id, metrics = track_training_run(root, mlflow_server)
    print(f"tracked_project ready in {time.monotonic() - start:.1f} s")
    return TrackedProject(root, mlflow_server, model_name, experiment, run_id, metrics, commit, md5)


def track_training_run(root: Path, tracking_uri: str) -> tuple[str, dict[str, float]]:
    """Record a trained project's run on a server as `mtbert train` + `evaluate` do.

    A run with the resolved params, git commit and data md5 tags, the real dev metrics and eval
    files; its id is saved in the model directory. Returns the run id and the metrics.
    """
    from mtbert.checkpoint import MODEL_FILE
    from mtbert.config import load_config
    from mtbert.fileio import sha256_file
    from mtbert.pipeline import tracking
    from mtbert.pipeline.project import unsent_path

    cfg = load_config(root / "params.yaml")
    metrics = json.loads((root / cfg.eval.out_dir / cfg.eval.metrics_file).read_text())
    with mlflow_in_process(tracking_uri, cwd=root):
        with tracking.tracked_run(cfg, "train", fallback=unsent_path(cfg)) as run:
            sha = sha256_file(Path(cfg.train.out_dir) / MODEL_FILE)
            tracking.save_run_id(cfg.train.out_dir, run.run_id, model_sha256=sha)
            run.set_tags({tracking.TRAINED_SHA_TAG: sha})
            run.log_metrics(metrics)
            run.log_artifacts([Path(cfg.eval.out_dir)], "eval")
    return run.run_id, metrics


@pytest.fixture
def project(tmp_path: Path, prepared_project: Path, mlflow_server: str,
            monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the prepared tiny project as working directory, tracking into the MLflow server."""
    root = copy_project(prepared_project, tmp_path / "project")
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    return root
