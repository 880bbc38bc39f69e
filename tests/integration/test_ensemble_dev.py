"""scripts/ensemble_dev.py (the teachers' ceiling in docs/results.md) scores models as the evaluate
stage does: a model averaged with itself is its own ensemble, with the dev metrics `mtbert evaluate`
wrote; a folder that holds no model is one line, not a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "ensemble_dev.py"


def _script(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_a_model_with_itself_scores_what_evaluate_wrote(trained_project: Path, tmp_path: Path) -> None:
    out = tmp_path / "ensemble.json"
    proc = _script(trained_project, "--json", str(out), "artifacts/model", "artifacts/model")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    evaluated = json.loads((trained_project / "artifacts" / "eval" / "metrics.json").read_text())
    for task, key in (("sst", "dev/sst/accuracy"), ("para", "dev/para/accuracy"), ("sts", "dev/sts/pearson")):
        scores = result["tasks"][task]
        assert scores["mean"] == pytest.approx(evaluated[key], abs=1e-6), task
        assert scores["ensemble"] == pytest.approx(scores["mean"], abs=1e-6), task
    assert result["overall_ensemble"] == pytest.approx(evaluated["dev/overall"], abs=1e-6)
    assert "overall: models' mean" in proc.stdout


def test_a_folder_without_a_model_is_one_line(trained_project: Path) -> None:
    proc = _script(trained_project, "artifacts/model", "artifacts/no-such-model")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ensemble_dev: ") and "no-such-model" in lines[0], proc.stderr
