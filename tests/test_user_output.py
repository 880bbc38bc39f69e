"""What a user sees on the tiny trained project: progress bars on stderr (none with -q), the
learning curves `mtbert train` writes, and the plots DVC finds in dvc.yaml."""

from __future__ import annotations

import json
import re
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO_ROOT, copy_project, run_cli

TINY_DEV_ROWS = 3 * 64  # the tiny profile scores the first 64 dev rows of each task, no test files


def test_evaluate_shows_a_rows_bar_and_quiet_mode_hides_it(trained_project: Path, tmp_path: Path) -> None:
    root = copy_project(trained_project, tmp_path / "project")
    loud = run_cli(["evaluate"], root)
    bar = re.compile(rf"evaluate: 100%\|[^|\n]*\| {TINY_DEV_ROWS}/{TINY_DEV_ROWS} \[[^\]\n]*row/s\]")
    assert bar.search(loud.stderr), loud.stderr[-3000:]
    quiet = run_cli(["-q", "evaluate"], root)
    assert "row/s" not in quiet.stderr and "%|" not in quiet.stderr and "\r" not in quiet.stderr
    assert loud.stdout == quiet.stdout and "overall" in loud.stdout  # bars never touch stdout


def test_predict_shows_a_rows_bar(trained_project: Path, tmp_path: Path) -> None:
    src = tmp_path / "sentences.csv"
    src.write_text("\tid\tsentence\n" + "".join(f"{i}\ts{i}\tSentence number {i} is fine.\n"
                                               for i in range(7)))
    loud = run_cli(["predict", "--task", "sst", "--input", str(src), "--output", str(tmp_path / "o.csv")],
                   trained_project)
    assert re.search(r"predict sst: 100%\|[^|\n]*\| 7/7 \[", loud.stderr), loud.stderr[-3000:]
    quiet = run_cli(["-q", "predict", "--task", "sst", "--input", str(src), "--output",
                     str(tmp_path / "q.csv")], trained_project)
    assert "%|" not in quiet.stderr and "row/s" not in quiet.stderr


def test_training_wrote_the_learning_curves(trained_project: Path) -> None:
    model = trained_project / "artifacts/model"
    steps = json.loads((model / "mtbert.json").read_text())["train_state"]["global_step"]
    frame = pd.read_csv(model / "curves.csv")
    assert list(frame.columns) == ["step", "task", "loss"] and steps > 1
    # The tiny profile trains round robin: every step holds a batch of each task.
    assert list(zip(frame["step"], frame["task"])) == [(s, t) for s in range(1, steps + 1)
                                                      for t in ("sst", "para", "sts")]
    assert frame["loss"].between(0.0, 50.0).all() and frame["loss"].nunique() > steps
    wide = pd.read_csv(model / "curves-wide.csv")
    assert list(wide.columns) == ["step", "sst", "para", "sts"]
    long = frame.pivot(index="step", columns="task", values="loss")[["sst", "para", "sts"]]
    pd.testing.assert_frame_equal(wide.set_index("step"), long, check_names=False)
    assert (model / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert not (trained_project / "artifacts/model-checkpoint/curves.csv").exists()


@pytest.mark.integration
def test_dvc_plots_show_finds_the_learning_curve_and_the_eval_plots(trained_project: Path,
                                                                      tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy(REPO_ROOT / "dvc.yaml", root / "dvc.yaml")
    shutil.copy(trained_project / "params.yaml", root / "params.yaml")
    shutil.copytree(trained_project / "artifacts/model", root / "artifacts/model",
                    ignore=shutil.ignore_patterns("*.safetensors"))
    shutil.copytree(trained_project / "artifacts/eval", root / "artifacts/eval")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "-q"], cwd=root, check=True)
    proc = subprocess.run([*dvc, "plots", "show", "--json"], cwd=root, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    # No study ran in this project: only the Optuna plots (artifacts/tune/) may be missing.
    missing = {(e["source"], e["type"]) for e in shown.get("errors", [])}
    assert missing == {(f"artifacts/tune/{name}", "FileNotFoundError") for name in
                       ("history.csv", "optimization_history.png", "param_importances.png")}
    drawn = {name for name, plots in shown["data"].items() if plots}
    assert drawn == {"training-loss", "artifacts/model/curves.png", "artifacts/eval/sst-confusion.png",
                     "artifacts/eval/sts-scatter.png"}
    values = shown["data"]["training-loss"][0]["content"]["data"]["values"]
    steps = len(pd.read_csv(root / "artifacts/model/curves-wide.csv"))
    assert sorted((v["field"], int(v["step"])) for v in values) == \
        sorted((t, s) for t in ("sst", "para", "sts") for s in range(1, steps + 1))
    assert all(float(v["dvc_inferred_y_value"]) > 0 for v in values)

