"""Session-wide test settings: offline, no telemetry, every service state in temporary folders."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# Set before any test imports transformers, MLflow, Prefect or DVC (they read these at import).
_OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "TOKENIZERS_PARALLELISM": "false",
}
for _key, _value in _OFFLINE_ENV.items():
    os.environ.setdefault(_key, _value)
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="mtbert-prefect-"))

# Fixtures that run the real command line in a subprocess: a test using one is an integration test.
SUBPROCESS_FIXTURES = {"prepared_project", "trained_project", "tracked_project", "mlflow_server",
                       "project", "prefect_server"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The layers of the tests: everything under tests/integration/, and every test that uses a
    subprocess fixture, is `integration` (real servers, the real CLI); the rest are unit tests,
    the default run (`pytest`); `.ci/run` runs both."""
    integration_dir = REPO_ROOT / "tests" / "integration"
    for item in items:
        in_dir = integration_dir in Path(str(item.fspath)).parents
        if in_dir or SUBPROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The course data directory (MTBERT_DATA_DIR, else ../shared/data beside the repo)."""
    path = Path(os.environ.get("MTBERT_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
    if not (path / "ids-sst-train.csv").exists():
        pytest.fail(f"course data not found in {path}; set MTBERT_DATA_DIR")
    return path


def run_cli(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the real `mtbert` command line in `cwd`; fail the test with its output if it fails."""
    cmd = [sys.executable, "-m", "mtbert.cli", *args]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def make_project(root: Path, profile: str = "tiny") -> Path:
    """A project folder holding params.yaml set to `profile` (paths in it are relative to root)."""
    root.mkdir(parents=True, exist_ok=True)
    text = (REPO_ROOT / "params.yaml").read_text().replace("profile: quick", f"profile: {profile}", 1)
    (root / "params.yaml").write_text(text)
    return root


@pytest.fixture(scope="session")
def prepared_project(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """A tiny-profile project with the course data imported and prepared (built once)."""
    root = make_project(tmp_path_factory.mktemp("prepared"))
    run_cli(["-q", "import-data", "--source", str(data_dir)], root)
    run_cli(["-q", "prepare"], root)
    return root


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory: pytest.TempPathFactory, prepared_project: Path) -> Path:
    """The prepared tiny project after `mtbert train` and `mtbert evaluate` (built once).

    Tests that change files must copy it first (`copy_project`).
    """
    root = tmp_path_factory.mktemp("trained") / "project"
    shutil.copytree(prepared_project, root)
    run_cli(["-q", "train"], root)
    run_cli(["-q", "evaluate"], root)
    return root


def copy_project(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest
