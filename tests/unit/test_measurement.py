"""Measurement keys (mtbert/pipeline/measurement.py): what a dev score was measured on."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from mtbert.config import Config, load_config
from mtbert.errors import UserError
from mtbert.pipeline import measurement, tuning
from mtbert.pipeline.project import prepared_path

REPO_PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"
ROWS = 97  # more than the tiny profile's 64 dev rows, fewer than the quick profile's (all)


def _write_dev(root: Path, changed_row: int | None = None) -> None:
    for task in ("sst", "para", "sts"):
        frame = pd.DataFrame({"id": [f"{task}{i}" for i in range(ROWS)],
                              "sentence1": [f"sentence {i}" for i in range(ROWS)],
                              "label": [i % 5 for i in range(ROWS)]})
        if changed_row is not None:
            frame.loc[changed_row, "sentence1"] = "changed"
        path = root / f"{task}-dev.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(path)


def _cfg(root: Path, *overrides: str) -> Config:
    return load_config(REPO_PARAMS, [f"data.prepared_dir={root}", *overrides])


def test_tiny_and_quick_keys_and_study_names_differ(tmp_path: Path) -> None:
    _write_dev(tmp_path)
    tiny, quick = _cfg(tmp_path, "profile=tiny"), _cfg(tmp_path, "profile=quick")

    tiny_key = measurement.measurement_key(tiny, tiny.train.tasks)
    quick_key = measurement.measurement_key(quick, quick.train.tasks)

    assert str(tiny_key).startswith("profile=tiny dev=sst:64,para:64,sts:64 rows=")
    assert str(quick_key).startswith(f"profile=quick dev=sst:{ROWS},para:{ROWS},sts:{ROWS} rows=")
    assert tiny_key.rows_sha256 != quick_key.rows_sha256
    assert tuning.study_name(tiny) == f"mtbert-tiny-{tiny_key.digest}"
    assert tuning.study_name(quick) == f"mtbert-quick-{quick_key.digest}"
    assert tuning.study_name(tiny) != tuning.study_name(quick)
    # The same dev rows under another profile are still another key (another training budget).
    same_rows = _cfg(tmp_path, "profile=quick", "data.dev_size={sst: 64, para: 64, sts: 64}")
    other = measurement.measurement_key(same_rows, same_rows.train.tasks)
    assert other.rows_sha256 == tiny_key.rows_sha256 and other != tiny_key
    # An explicit study name is kept as it is.
    assert tuning.study_name(_cfg(tmp_path, "profile=tiny", "tune.study_name=mine")) == "mine"


def test_key_follows_the_measured_rows_only(tmp_path: Path) -> None:
    _write_dev(tmp_path)
    tiny = _cfg(tmp_path, "profile=tiny")
    before = measurement.measurement_key(tiny, tiny.train.tasks)
    assert measurement.measurement_key(tiny, tiny.train.tasks) == before  # deterministic

    _write_dev(tmp_path, changed_row=80)  # past the 64 rows tiny measures
    assert measurement.measurement_key(tiny, tiny.train.tasks) == before
    _write_dev(tmp_path, changed_row=3)
    assert measurement.measurement_key(tiny, tiny.train.tasks).rows_sha256 != before.rows_sha256
    single = measurement.measurement_key(tiny, ["sts"])
    assert str(single).startswith("profile=tiny dev=sts:64 ")


def _write_predictions(root: Path, task: str, ids: list[str]) -> None:
    path = root / "predictions" / f"{task}-dev-output.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("id \t Predicted_X \n" + "".join(f"{i} , 1 \n" for i in ids))


def test_evaluated_key_is_the_key_of_the_rows_evaluate_predicted(tmp_path: Path) -> None:
    prepared, evaluated = tmp_path / "prepared", tmp_path / "eval"
    _write_dev(prepared)
    cfg = _cfg(prepared, "profile=quick", f"eval.out_dir={evaluated}")  # params say quick ...
    for task in ("sst", "para", "sts"):  # ... but evaluate measured 64 rows per task
        _write_predictions(evaluated, task, [f"{task}{i}" for i in range(64)])

    key = measurement.evaluated_key(cfg, "tiny", ["sst", "para", "sts"])

    tiny = _cfg(prepared, "profile=tiny")
    assert key == measurement.measurement_key(tiny, tiny.train.tasks)

    _write_predictions(evaluated, "sts", ["sts5", "sts1"])  # not the table's first rows
    with pytest.raises(UserError, match="are not the first rows of the prepared sts dev table"):
        measurement.evaluated_key(cfg, "tiny", ["sst", "para", "sts"])
    with pytest.raises(UserError, match="the dev rows the metrics were measured on are unknown"):
        measurement.evaluated_key(cfg, "tiny", ["sst", "nli"])


def test_measured_tasks_come_from_metric_names() -> None:
    metrics = {"dev/overall": 0.5, "dev/sts/pearson": 0.8, "dev/sst/accuracy": 0.4}
    assert measurement.measured_tasks(metrics) == ["sst", "sts"]
    assert prepared_path(_cfg(Path("x")), "sst", "dev") == Path("x/sst-dev.parquet")
