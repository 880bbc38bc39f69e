"""The real CLI after `mtbert train profile=tiny`: evaluate and predict use the trained model's
settings whatever params.yaml says, and predict reads CSV/TSV and writes a CSV pandas reads.

`trained_project` trained with the tiny profile (its params.yaml said tiny); the model folder keeps
that resolved config, so switching params.yaml back to quick afterwards is what a user who ran
`mtbert train profile=tiny` with params.yaml on quick has.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from tests.conftest import copy_project, run_cli

EVAL_LINE = ("evaluate: using the trained model's settings (profile tiny; dev sizes sst 64, para 64, "
             "sts 64; max_length 64)")


def on_quick(project: Path) -> Path:
    params = project / "params.yaml"
    params.write_text(params.read_text().replace("profile: tiny", "profile: quick", 1))
    assert "profile: quick" in params.read_text()
    return project


def test_evaluate_measures_the_tiny_model_as_tiny(trained_project: Path, tmp_path: Path) -> None:
    project = on_quick(copy_project(trained_project, tmp_path / "p"))
    predictions = project / "artifacts" / "eval" / "predictions"
    for old in predictions.iterdir():
        old.unlink()
    start = time.monotonic()
    proc = run_cli(["-q", "evaluate", "train.threads=1"], project, timeout=300)
    elapsed = time.monotonic() - start
    assert EVAL_LINE in proc.stdout.splitlines(), proc.stdout
    # the dev rows of tiny (64 per task, plus the header), not quick's 15,999; no test files
    assert sorted(p.name for p in predictions.iterdir()) == [
        f"{t}-dev-output.csv" for t in ("para", "sst", "sts")]
    for path in predictions.iterdir():
        assert len(path.read_text().splitlines()) == 65, path
    assert elapsed < 150, f"evaluate took {elapsed:.0f} s"  # quick's dev sets take minutes

    proc = run_cli(["-q", "evaluate", "train.threads=1", "data.dev_size.sst=70"], project, timeout=300)
    assert "data.dev_size.sst=70 differs from the trained model's 64" in proc.stdout
    assert len((predictions / "sst-dev-output.csv").read_text().splitlines()) == 71


def test_predict_comma_csv_with_and_without_id(trained_project: Path, tmp_path: Path) -> None:
    project = on_quick(copy_project(trained_project, tmp_path / "p"))
    with_id = tmp_path / "with_id.csv"
    pd.DataFrame({"id": ["r1", "r2", "r3"], "sentence": ["A great , moving film .", "Dull .",
                                                          "It is fine."]}).to_csv(with_id, index=False)
    proc = run_cli(["-q", "predict", "--task", "sst", "--input", str(with_id), "--output",
                    str(tmp_path / "sst.csv"), "train.threads=1"], project)
    assert "predict: using the trained model's settings (profile tiny; max_length 64)" in proc.stdout
    sst = pd.read_csv(tmp_path / "sst.csv")
    assert list(sst.columns) == ["id", "prediction", "label"] and sst["id"].tolist() == ["r1", "r2", "r3"]
    names = ["negative", "somewhat negative", "neutral", "somewhat positive", "positive"]
    assert sst["label"].tolist() == [names[p] for p in sst["prediction"]]

    no_id = tmp_path / "pairs.csv"
    pd.DataFrame({"sentence1": ["How do I learn, fast?", "What is AI?"],
                  "sentence2": ["How can I learn quickly?", "Who is Al?"]}).to_csv(no_id, index=False)
    run_cli(["-q", "predict", "--task", "para", "--input", str(no_id), "--output",
             str(tmp_path / "para.csv"), "train.threads=1"], project)
    para = pd.read_csv(tmp_path / "para.csv")
    assert para["id"].tolist() == pd.read_csv(no_id).index.tolist() == [0, 1]
    assert set(para["prediction"]) <= {0, 1} and len(para) == 2


def test_predict_course_format_matches_evaluate(trained_project: Path, tmp_path: Path,
                                                data_dir: Path) -> None:
    """`--format course` writes what evaluate writes for the same rows (the old output format)."""
    project = on_quick(copy_project(trained_project, tmp_path / "p"))
    lines = (data_dir / "ids-sst-dev.csv").read_text().splitlines()[:65]  # the tiny dev rows
    source = tmp_path / "sst-dev.tsv"
    source.write_text("\n".join(lines) + "\n")
    run_cli(["-q", "predict", "--task", "sst", "--format", "course", "--input", str(source),
             "--output", str(tmp_path / "course.csv"), "train.threads=1"], project)
    expected = project / "artifacts" / "eval" / "predictions" / "sst-dev-output.csv"
    assert (tmp_path / "course.csv").read_bytes() == expected.read_bytes()
