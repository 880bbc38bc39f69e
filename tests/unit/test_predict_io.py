"""`mtbert predict`'s files: CSV or TSV in (delimiter from the header, id optional), a CSV that
pandas reads out (sst with label names), or the course format; one-line errors naming file, line
and field."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mtbert.data import DataFormatError
from mtbert.evaluate import TaskPredictions, write_course_predictions
from mtbert.pipeline.serving import (
    SST_LABELS,
    predict_file,
    read_input_file,
    sniff_delimiter,
    write_csv_predictions,
)
from tests.unit.test_predict_fuzz import model_dir  # noqa: F401 - a tiny trained-model folder


@pytest.mark.parametrize(("header", "expected"), [
    ("id,sentence", ","), ("id\tsentence", "\t"), ("id;sentence1;sentence2", ";"),
    ("id|sentence", "|"), ("\tid\tsentence1\tsentence2", "\t"), ("sentence", "\t"),
    ('"a,b"\tsentence', "\t"), ("id,sentence\tx", "\t"),
])
def test_sniff_delimiter(header: str, expected: str) -> None:
    assert sniff_delimiter(header) == expected


def write(tmp_path: Path, text: str, name: str = "in.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_comma_csv_with_id_and_quoted_commas(tmp_path: Path) -> None:
    path = write(tmp_path, 'id,sentence,notes\na1,"Good, really good .",x\na2, Bad . ,y\n')
    frame = read_input_file(path, "sst")
    assert frame.to_dict("list") == {"id": ["a1", "a2"], "sentence1": ["Good, really good .", "Bad ."]}


def test_without_id_the_ids_are_pandas_row_positions(tmp_path: Path) -> None:
    path = write(tmp_path, "sentence1,sentence2\nA b .,C d .\n\nE f .,G h .\n")
    frame = read_input_file(path, "sts")
    assert frame["id"].tolist() == [str(i) for i in pd.read_csv(path).index] == ["0", "1"]
    assert frame["sentence2"].tolist() == ["C d .", "G h ."]


def test_course_tsv_with_extra_columns_and_bom(tmp_path: Path) -> None:
    path = write(tmp_path, "\ufeff\tid\tsentence1\tsentence2\r\n7\tx1\tA .\tB .\r\n")
    assert read_input_file(path, "para").values.tolist() == [["x1", "A .", "B ."]]


def test_one_column_file_keeps_commas_in_the_sentence(tmp_path: Path) -> None:
    path = write(tmp_path, "sentence\nWell, well , well .\n")
    assert read_input_file(path, "sst")["sentence1"].tolist() == ["Well, well , well ."]


@pytest.mark.parametrize(("text", "line", "field", "reason"), [
    ("id,text\n1,a\n", 1, "sentence",
     "missing required column in header of in.csv (found columns: 'id', 'text'; sst needs sentence, "
     "and optionally id)"),
    ("id,sentence1\n1,a\n", 1, "sentence2", "missing required column in header of in.csv (found "
                                              "columns: 'id', 'sentence1'; para needs sentence1, "
                                              "sentence2, and optionally id)"),
    ("id,sentence\n1,a\n2,b,c\n", 3, "row", "expected 2 fields, found 3"),
    ("", 1, "row", "empty header line (no column names)"),
    ("id,sentence\n1,a\n1,b\n", 3, "id", "duplicate id '1' (first on line 2)"),
    ("id,sentence\n1,  \n", 2, "sentence", "empty or whitespace-only sentence"),
    ('id,sentence\n1,"open\n', 2, "row", None),
    ("id,sentence,sentence\n1,a,b\n", 1, "sentence", "column appears 2 times in the header"),
])
def test_errors_name_file_line_and_field(tmp_path: Path, text: str, line: int, field: str,
                                         reason: str | None) -> None:
    path = write(tmp_path, text)
    task = "para" if "sentence1" in text else "sst"
    with pytest.raises(DataFormatError) as caught:
        read_input_file(path, task)
    err = caught.value
    assert (err.path, err.line, err.field) == (str(path), line, field)
    assert str(err).startswith(f"{path}:{line}: field '{field}': ") and "\n" not in str(err)
    if reason:
        assert err.reason == reason


def test_csv_output_reads_back_with_pandas(tmp_path: Path) -> None:
    ids = pd.Series(["a", "b,c", "7"])
    sst = TaskPredictions("sst", np.array([0, 4, 2]), np.array([0.5, 0.6, 0.7]))
    write_csv_predictions(tmp_path / "sst.csv", ids, sst)
    back = pd.read_csv(tmp_path / "sst.csv", dtype={"id": str})
    assert back.to_dict("list") == {"id": ["a", "b,c", "7"], "prediction": [0, 4, 2],
                                    "label": ["negative", "positive", "neutral"]}
    sts = TaskPredictions("sts", np.array([0.25, 4.5], dtype=np.float32), np.zeros(2))
    write_csv_predictions(tmp_path / "sts.csv", ids[:2], sts)
    assert pd.read_csv(tmp_path / "sts.csv")["prediction"].tolist() == [0.25, 4.5]
    assert SST_LABELS == ("negative", "somewhat negative", "neutral", "somewhat positive", "positive")


@pytest.mark.parametrize("task", ["sst", "para", "sts"])
def test_predict_file_csv_and_course(model_dir: Path, tmp_path: Path, task: str) -> None:  # noqa: F811
    columns = "sentence" if task == "sst" else "sentence1,sentence2"
    row = "A fine film ." if task == "sst" else '"Is it, really ?",Is it ?'
    source = write(tmp_path, f"{columns}\n{row}\n{row}\n{row}\n")
    assert predict_file(model_dir, task, source, tmp_path / "out.csv", output_format="csv") == 3
    back = pd.read_csv(tmp_path / "out.csv")
    assert back["id"].tolist() == [0, 1, 2] and len(back) == 3
    assert list(back.columns) == (["id", "prediction", "label"] if task == "sst" else ["id", "prediction"])
    if task == "sst":
        assert back["label"].tolist() == [SST_LABELS[p] for p in back["prediction"]]
    predict_file(model_dir, task, source, tmp_path / "course.csv", output_format="course")
    ids = pd.Series(["0", "1", "2"])
    pred = TaskPredictions(task, back["prediction"].to_numpy(), np.zeros(3))
    write_course_predictions(tmp_path / "expected.csv", ids, pred)
    if task != "sts":  # sts values are floats: the csv round trip may print them differently
        assert (tmp_path / "course.csv").read_bytes() == (tmp_path / "expected.csv").read_bytes()
    with pytest.raises(ValueError, match="output_format"):
        predict_file(model_dir, task, source, tmp_path / "x.csv", output_format="json")
