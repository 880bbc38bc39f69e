"""End to end through the real CLI on the tiny profile: import, prepare, train, evaluate, predict."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from tests.conftest import run_cli


def test_prepare_reports_the_malformed_quora_rows(prepared_project: Path) -> None:
    report = json.loads((prepared_project / "artifacts/prepared/report.json").read_text())
    skipped = [(i["path"].split("/")[-1], i["line"]) for i in report["issues"]]
    assert skipped == [("quora-dev.csv", 1267), ("quora-dev.csv", 7083)]
    assert report["files"]["quora-dev.csv"] == {"rows": 10100, "skipped": 2}


def test_evaluate_writes_metrics_predictions_and_plots(trained_project: Path) -> None:
    out = trained_project / "artifacts/eval"
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"dev/sst/accuracy", "dev/para/accuracy", "dev/sts/pearson",
                            "dev/sts/spearman", "dev/overall"}
    expected = (metrics["dev/sst/accuracy"] + metrics["dev/para/accuracy"]
                + (metrics["dev/sts/pearson"] + 1) / 2) / 3
    assert abs(metrics["dev/overall"] - expected) < 1e-9
    lines = (out / "predictions/sst-dev-output.csv").read_text().splitlines()
    assert lines[0] == "id \t Predicted_Sentiment "
    assert len(lines) == 1 + 64  # the tiny profile evaluates the first 64 dev rows
    assert {int(line.split(" , ")[1]) for line in lines[1:]} <= set(range(5))
    assert (out / "sst-confusion.png").stat().st_size > 1000
    counts = pd.read_csv(out / "sst-confusion.csv", index_col=0)
    assert counts.to_numpy().sum() == 64


def test_predict_command_writes_course_format(trained_project: Path, tmp_path: Path) -> None:
    src = tmp_path / "pairs.csv"
    src.write_text("\tid\tsentence1\tsentence2\n0\ta1\tA man plays a guitar.\tA person plays music.\n"
                   "1\ta2\tThe cat sleeps.\tStocks fell sharply today.\n")
    out = tmp_path / "out.csv"
    run_cli(["-q", "predict", "--task", "sts", "--format", "course", "--input", str(src),
             "--output", str(out)], trained_project)
    rows = out.read_text().splitlines()
    assert rows[0] == "id \t Predicted_Similiarity "
    scores = [float(r.split(" , ")[1]) for r in rows[1:]]
    assert [r.split(" , ")[0] for r in rows[1:]] == ["a1", "a2"]
    assert all(0.0 <= s <= 5.0 for s in scores)


def test_bad_override_fails_before_training(prepared_project: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "mtbert.cli", "train", "train.lr=-1"],
                          cwd=prepared_project, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "train.lr: must be > 0" in proc.stderr
