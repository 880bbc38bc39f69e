"""Nothing lost, nothing mislabelled: what a user does by mistake, tried for real.

Each test runs the real CLI in a copy of the tiny trained project (MLflow in the project's own
SQLite store) and checks the outcome a user relies on: lineage that cannot point at the wrong
weights, one training per model folder, signals that save a checkpoint, no orphaned training
under a stopped `dvc repro`, and broken weights refused.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from mtbert.checkpoint import CHECKPOINT_FILE, MODEL_FILE
from tests.conftest import REPO_ROOT, copy_project
from tests.integration.conftest import MLFLOW_ENV_KEYS

pytestmark = pytest.mark.integration

RUN_RECORD = Path("artifacts/model/mlflow_run.json")
CHECKPOINT = Path("artifacts/model-checkpoint") / CHECKPOINT_FILE
LOCK = Path("artifacts/.model.lock")
LONG = ["train.epochs=60", "train.checkpoint_every=2"]  # a few hundred tiny steps


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in MLFLOW_ENV_KEYS}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]])
    return env


def _mtbert(root: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mtbert.cli", *args], cwd=root, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def _start(root: Path, *args: str, log: str = "bg") -> subprocess.Popen:
    out = open(root / f"{log}.out", "wb")
    err = open(root / f"{log}.err", "wb")
    return subprocess.Popen([sys.executable, "-m", "mtbert.cli", *args], cwd=root, env=_env(),
                            stdout=out, stderr=err, start_new_session=True)


def _wait(predicate, what: str, timeout_s: float = 300) -> None:
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout_s, f"no {what} within {timeout_s} s"
        time.sleep(0.2)


def _one_line_error(proc: subprocess.CompletedProcess, command: str) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"mtbert {command}: "), proc.stderr[-2000:]
    return last


@pytest.fixture
def project(trained_project: Path, tmp_path: Path) -> Path:
    return copy_project(trained_project, tmp_path / "project")


# ---------------------------------------------------------------------------------------------
# Provenance


def test_a_failed_or_killed_training_never_takes_over_the_run_record(project: Path) -> None:
    before = (project / RUN_RECORD).read_bytes()
    failed = _mtbert(project, "-q", "train", "--no-resume", "model.checkpoint=does/not/exist")
    _one_line_error(failed, "train")
    assert (project / RUN_RECORD).read_bytes() == before

    proc = _start(project, "-q", "train", "--no-resume", *LONG)
    _wait(lambda: (project / CHECKPOINT).exists(), "checkpoint")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert (project / RUN_RECORD).read_bytes() == before

    registered = _mtbert(project, "register")
    assert registered.returncode == 0, registered.stderr[-3000:]
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    version = client.get_model_version("mtbert", "1")
    assert version.run_id == json.loads(before)["run_id"]


def test_register_refuses_weights_that_are_not_the_runs(project: Path) -> None:
    weights = load_file(str(project / "artifacts/model" / MODEL_FILE))
    name = next(iter(weights))
    weights[name] = weights[name] + 0.01  # other weights, same shapes: they would load fine
    save_file(weights, str(project / "artifacts/model" / MODEL_FILE))
    last = _one_line_error(_mtbert(project, "register"), "register")
    assert "these weights are not the ones MLflow run" in last and MODEL_FILE in last


def test_register_refuses_metrics_measured_on_other_weights(project: Path) -> None:
    record = json.loads((project / "artifacts/eval/evaluated_model.json").read_text())
    record["model_sha256"] = "0" * 64
    (project / "artifacts/eval/evaluated_model.json").write_text(json.dumps(record))
    last = _one_line_error(_mtbert(project, "register"), "register")
    assert "the dev metrics were measured on other weights" in last


def test_nan_weights_are_refused_by_evaluate(project: Path) -> None:
    path = project / "artifacts/model" / MODEL_FILE
    weights = load_file(str(path))
    name = next(k for k, v in weights.items() if v.is_floating_point())
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, str(path))
    before = (project / "artifacts/eval/metrics.json").read_bytes()
    last = _one_line_error(_mtbert(project, "-q", "evaluate"), "evaluate")
    assert "hold NaN or inf" in last and name in last
    assert (project / "artifacts/eval/metrics.json").read_bytes() == before


# ---------------------------------------------------------------------------------------------
# One training per model folder; signals


def test_a_second_training_of_the_same_model_is_refused_and_sigterm_saves_a_checkpoint(
        project: Path) -> None:
    proc = _start(project, "-q", "train", "--no-resume", *LONG)
    try:
        _wait(lambda: (project / CHECKPOINT).exists(), "first checkpoint")
        second = _mtbert(project, "-q", "train")
        last = _one_line_error(second, "train")
        assert "in use by `mtbert train` (pid" in last and str(LOCK) in last
        _one_line_error(_mtbert(project, "-q", "evaluate"), "evaluate")
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    err = (project / "bg.err").read_text()
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "stopped by SIGTERM at step" in err and "checkpoint saved" in err and "Traceback" not in err
    assert (project / CHECKPOINT).exists()
    resumed = _mtbert(project, "train", *LONG[:1], "train.epochs=2", timeout=900)
    # Another epoch count is another run: refused, and the checkpoint is still there.
    assert resumed.returncode == 2 and "written by another run" in resumed.stderr
    assert (project / CHECKPOINT).exists()


# DVC runs a stage as `$SHELL -c CMD`: bash execs the command, dash (/bin/sh, CI has no SHELL) stays
# between dvc and mtbert, alive when dvc is killed.
@pytest.mark.parametrize("shell", ["/bin/sh", "/bin/bash"])
def test_sigterm_to_dvc_repro_leaves_no_training_behind(project: Path, tmp_path: Path,
                                                        shell: str) -> None:
    dvc = [sys.executable, "-m", "dvc"]
    params = project / "params.yaml"
    params.write_text(params.read_text().replace("    train.epochs: 1\n    train.batch_size: 8",
                                                 "    train.epochs: 60\n    train.batch_size: 8", 1))
    # The train stage alone (its command as in dvc.yaml): what matters is dvc -> mtbert.
    train = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]["train"]
    stage = {"cmd": train["cmd"], "deps": ["artifacts/prepared"], "outs": ["artifacts/model"]}
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": stage}}))
    shutil.rmtree(project / "artifacts/model")
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    subprocess.run([*dvc, "init", "-q"], cwd=project, check=True, env=_env())
    log = open(tmp_path / "dvc.log", "wb")
    proc = subprocess.Popen([*dvc, "repro", "train"], cwd=project, env={**_env(), "SHELL": shell},
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        def started() -> bool:
            assert proc.poll() is None, (tmp_path / "dvc.log").read_text()[-3000:]
            return (project / CHECKPOINT).exists()

        _wait(started, "checkpoint under dvc repro", 600)
        trainers = _trainers(project)
        assert trainers, "no `mtbert train` process found under dvc repro"
        proc.send_signal(signal.SIGTERM)  # to dvc alone, as a scheduler or a user's kill does
        proc.wait(timeout=60)
        _wait(lambda: not _trainers(project), "the training to stop after dvc", 120)
    finally:
        for pid in _trainers(project):
            os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
    assert (project / CHECKPOINT).exists()


def _trainers(root: Path) -> list[int]:
    """Live `mtbert ... train` processes whose working directory is `root`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(entry / "cwd")
            state = (entry / "stat").read_text().split()[2]
        except OSError:
            continue
        if cwd == str(root) and state != "Z" and b"train" in cmd and any(b"mtbert" in c for c in cmd):
            found.append(int(entry.name))
    return found
