"""The DVC pipeline in a real temporary git + DVC repository with a local remote.

Only the cheap stages run (prepare, augment: no training). The repository is laid out like the
project: dvc.yaml, params.yaml (tiny profile) and the code files the stages list as dependencies.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, make_project, run_cli

pytestmark = pytest.mark.integration

TRACKED = ("data", "artifacts/prepared", "artifacts/augmented")


def _dvc(root: Path, *args: str) -> str:
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"dvc {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout + proc.stderr


def _digests(root: Path) -> dict[str, str]:
    """sha256 of every file under the tracked folders, by relative path."""
    out = {}
    for folder in TRACKED:
        for path in sorted((root / folder).rglob("*")):
            if path.is_file():
                out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture
def dvc_repo(tmp_path: Path, data_dir: Path) -> Path:
    """git init + dvc init, a local remote, the raw data imported and `dvc add`-ed."""
    root = make_project(tmp_path / "repo")
    shutil.copy(REPO_ROOT / "dvc.yaml", root / "dvc.yaml")
    shutil.copytree(REPO_ROOT / "mtbert", root / "mtbert", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    _dvc(root, "init", "-q")
    _dvc(root, "config", "core.analytics", "false")
    _dvc(root, "remote", "add", "-d", "local", str(tmp_path / "remote"))
    run_cli(["-q", "import-data", "--source", str(data_dir)], root)
    _dvc(root, "add", "data")
    return root


def test_push_pull_round_trip_and_incremental_repro(dvc_repo: Path) -> None:
    root = dvc_repo
    first = _dvc(root, "repro", "augment")
    assert "Running stage 'prepare'" in first and "Running stage 'augment'" in first
    before = _digests(root)
    assert any(p.startswith("artifacts/augmented/") for p in before)
    assert any(p.startswith("artifacts/prepared/") for p in before)

    _dvc(root, "push")
    shutil.rmtree(root / ".dvc" / "cache")
    for folder in TRACKED:
        shutil.rmtree(root / folder)
    _dvc(root, "pull", "data.dvc", "prepare", "augment")  # train/evaluate never ran: nothing to pull
    assert _digests(root) == before  # byte for byte

    again = _dvc(root, "repro", "augment")
    assert "Running stage" not in again
    assert "Stage 'prepare' didn't change" in again and "Stage 'augment' didn't change" in again

    params = root / "params.yaml"
    text = params.read_text()
    assert "  swap_rate: 0.1\n" in text
    params.write_text(text.replace("  swap_rate: 0.1\n", "  swap_rate: 0.3\n", 1))
    changed = _dvc(root, "repro", "augment")
    assert "Running stage 'augment'" in changed and "Running stage 'prepare'" not in changed
    after = _digests(root)
    prepared = [p for p in before if p.startswith("artifacts/prepared/")]
    assert all(after[p] == before[p] for p in prepared)
    assert after["artifacts/augmented/sst-train.parquet"] != before["artifacts/augmented/sst-train.parquet"]


def _edit_function(path: Path, function: str) -> str:
    """Add a statement to the body of `function` in `path` (a real code change); returns the old text."""
    old = path.read_text()
    head = f"\ndef {function}("
    start = old.index(head)
    body = old.index('"""\n', old.index('"""', start) + 3) + 4  # after the docstring
    path.write_text(old[:body] + "    _edited = True  # a change dvc must see\n" + old[body:])
    return old


def _changed_stages(root: Path) -> set[str]:
    import json

    status = json.loads(_dvc(root, "status", "--json").strip().splitlines()[-1] or "{}")
    return {name for name in status if not name.endswith(".dvc")}


def test_editing_the_code_a_stage_runs_marks_that_stage_changed(dvc_repo: Path) -> None:
    root = dvc_repo
    _dvc(root, "repro")  # the whole tiny pipeline, so that dvc.lock records every stage
    assert _changed_stages(root) == set()

    stages = root / "mtbert" / "pipeline" / "stages"
    for path, function, stage in ((stages / "train.py", "train_model", "train"),
                                  (stages / "evaluate.py", "evaluate_model", "evaluate"),
                                  (root / "mtbert" / "samplers.py", "build_schedule", "train")):
        old = _edit_function(path, function)
        assert _changed_stages(root) == {stage}, f"editing {function} in {path.name}"
        path.write_text(old)
        assert _changed_stages(root) == set()
