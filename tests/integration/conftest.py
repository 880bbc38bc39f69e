"""Fixtures for integration tests: really started services on 127.0.0.1, stopped even on failure.

`mlflow_server` is a session fixture shared by every integration test: a real `mlflow server`
(SQLite backend store, proxied artifact store under a temp folder, one worker) on a free port.
Tests that start subprocesses talking to it pass `mlflow_env(uri)` as their environment.
The helpers `free_port`, `wait_http` and `stop_process_group` are plain functions so other
fixtures (Prefect server, `mlflow models serve`) can reuse them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

MLFLOW_STARTUP_TIMEOUT_S = 60.0


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
            pytest.fail(f"process exited ({proc.returncode}) before {url} answered:\n{_read_log(log_path)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return time.monotonic() - start
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.25)
    pytest.fail(f"{url} did not answer 200 within {timeout_s:.0f} s:\n{_read_log(log_path)}")


def start_process_group(cmd: list[str], log_path: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    """Start `cmd` in its own process group, stdout and stderr into `log_path`."""
    with open(log_path, "wb") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
        )


def stop_process_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the process group of `proc`, then SIGKILL it if it is still alive after `grace_s`."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    try:  # workers may outlive the parent: always sweep the group
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        proc.wait(timeout=grace_s)


def mlflow_env(tracking_uri: str) -> dict[str, str]:
    """A copy of os.environ pointing MLflow clients (CLI subprocesses included) at `tracking_uri`."""
    env = dict(os.environ)
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    env["MLFLOW_REGISTRY_URI"] = tracking_uri
    return env


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
        wait_http(f"http://127.0.0.1:{port}/health", proc, log_path, MLFLOW_STARTUP_TIMEOUT_S)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process_group(proc)
