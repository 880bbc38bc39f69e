"""Prediction for users and servers: a table of (task, sentence1, sentence2) rows in, labels out.

The same function backs `mtbert predict` and the MLflow pyfunc model, and it validates requests
with messages a caller can act on (`PredictionInputError`), never a stack trace.

`mtbert predict` reads a CSV or TSV file with a header (`read_input_file`: the delimiter is the one
the header uses; `id` is optional) and writes a CSV that pandas reads (`write_csv_predictions`), or
the course's own format (`--format course`).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pandas as pd

from mtbert.batching import tokenize_frame
from mtbert.data import DataFormatError
from mtbert.evaluate import ProgressStart, RowHook, TaskPredictions, predict, write_course_predictions
from mtbert.fileio import atomic_write_text
from mtbert.model.trained import load_trained
from mtbert.errors import MissingFileError, UserError
from mtbert.tasks import LABEL_NAMES, TASK_SPECS, TASKS

MAX_ROWS = 10_000  # one request; more should be split by the client
MAX_CHARS = 2_000  # one sentence; the encoder sees at most max_length tokens anyway


class PredictionInputError(UserError, ValueError):
    """A request the model cannot answer; the message says which row and why."""


def validate_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """Check a request table (columns task, sentence1[, sentence2]) and return it normalised."""
    if "task" not in rows.columns or "sentence1" not in rows.columns:
        raise PredictionInputError("input needs columns 'task' and 'sentence1' (and 'sentence2' "
                                   "for para and sts)")
    if len(rows) > MAX_ROWS:
        raise PredictionInputError(f"{len(rows)} rows in one request; the limit is {MAX_ROWS}")
    rows = rows.reset_index(drop=True)
    if "sentence2" not in rows.columns:
        rows = rows.assign(sentence2=None)
    for i, row in rows.iterrows():
        _validate_row(i, row)
    return rows


def _validate_row(i: int, row: pd.Series) -> None:
    if row["task"] not in TASK_SPECS:
        raise PredictionInputError(f"row {i}: unknown task {row['task']!r}; valid: {', '.join(TASKS)}")
    fields = ["sentence1", "sentence2"] if TASK_SPECS[row["task"]].is_pair else ["sentence1"]
    for name in fields:
        text = row[name]
        if not isinstance(text, str) or not text.strip():
            what = "missing" if text is None or (isinstance(text, float) and np.isnan(text)) else "empty"
            raise PredictionInputError(f"row {i}: field '{name}' is {what} (task {row['task']} "
                                       f"needs {' and '.join(fields)})")
        if len(text) > MAX_CHARS:
            raise PredictionInputError(f"row {i}: field '{name}' has {len(text)} characters; "
                                       f"the limit is {MAX_CHARS}")


def predict_rows(model, tokenizer, pair_encoding: str, max_length: int, rows: pd.DataFrame,
                 batch_size: int = 64, on_batch: RowHook | None = None) -> pd.DataFrame:
    """Predict every row; returns columns task, prediction (label or score) and score.

    `on_batch`, if given, is called after each batch with its number of rows (they sum to len(rows)).
    """
    rows = validate_rows(rows)
    out = pd.DataFrame({"task": rows["task"], "prediction": np.nan, "score": np.nan})
    missing = sorted(set(rows["task"]) - set(getattr(model, "tasks", TASKS)))
    if missing:
        raise PredictionInputError(f"this model has no head for {', '.join(missing)}; it was trained "
                                   f"for {', '.join(model.tasks)}")
    for task, group in rows.groupby("task", sort=False):
        data = tokenize_frame(tokenizer, group, task, pair_encoding, max_length)
        pred = predict(model, data, batch_size, on_batch=on_batch)
        out.loc[group.index, "prediction"] = pred.labels.astype(float)
        out.loc[group.index, "score"] = pred.scores.astype(float)
    return out


def check_output_path(input_path: str | Path, output_path: str | Path) -> None:
    """Refuse an output that would overwrite the input (however spelt) or is not a writable file."""
    source, target = Path(input_path), Path(output_path)
    shown = str(output_path)  # as the user spelt it (Path drops a leading ./)
    if target.exists() and source.exists() and target.samefile(source):  # links included
        raise UserError("is the input file; predictions would overwrite it", path=shown,
                        field="--output", fix="write them to another file")
    if target.is_dir():
        raise UserError("is a directory", path=shown, field="--output",
                        fix="name a file, e.g. predictions.csv")
    if not target.parent.is_dir():
        raise UserError("its folder does not exist", path=shown, field="--output")


# The input columns each task needs (the course files' names); `id` is optional.
INPUT_COLUMNS = {"sst": ("sentence",), "para": ("sentence1", "sentence2"),
                 "sts": ("sentence1", "sentence2")}
DELIMITERS = ("\t", ",", ";", "|")  # the candidates, in the order that breaks a tie
# SST-5 as the course labels it (data README: 0 negative .. 4 positive).
SST_LABELS = LABEL_NAMES["sst"]
OUTPUT_FORMATS = ("csv", "course")


def sniff_delimiter(header: str) -> str:
    """The delimiter a header line uses: the candidate it holds most often outside quotes (a tab
    on a tie). A one-column header gives a tab, so that commas in the sentences stay text."""
    bare = "".join(header.split('"')[::2])  # outside double quotes
    counts = {d: bare.count(d) for d in DELIMITERS}
    best = max(DELIMITERS, key=lambda d: counts[d])  # max keeps the first of equal counts
    return best if counts[best] else "\t"


def read_input_file(path: str | Path, task: str) -> pd.DataFrame:
    """Read a prediction input: CSV or TSV with a header naming the task's sentence columns
    (`INPUT_COLUMNS`) and optionally `id`; other columns are ignored.

    Returns columns id, sentence1[, sentence2] (strings). Without an `id` column the ids are the
    rows' positions 0, 1, 2, ... (pandas' index of the file); blank lines are skipped.

    Raises:
        DataFormatError: naming file, line and field: a missing column (listing those found), a
            row of another width, bad quoting or UTF-8, an empty sentence or id, a duplicate id.
        UserError: the file cannot be read.
    """
    lines = _physical_lines(path)
    if not lines or not _decode(path, 1, lines[0]).strip():
        raise DataFormatError(path, 1, "row", "empty header line (no column names)")
    delimiter = sniff_delimiter(_decode(path, 1, lines[0]).removeprefix("\ufeff"))
    names = [n.strip() for n in _fields(path, 1, lines[0], delimiter)]
    names[0] = names[0].removeprefix("\ufeff").strip()
    positions = _input_positions(path, names, task)
    records: list[list[str]] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(lines[1:], start=2):
        if not _decode(path, number, raw).strip():
            continue
        fields = _fields(path, number, raw, delimiter)
        if len(fields) != len(names):
            raise DataFormatError(path, number, "row",
                                  f"expected {len(names)} fields, found {len(fields)}")
        row_id = fields[positions["id"]].strip() if "id" in positions else str(len(records))
        if not row_id:
            raise DataFormatError(path, number, "id", "empty id")
        if row_id in seen:
            raise DataFormatError(path, number, "id", f"duplicate id {row_id[:40]!r} (first on line "
                                  f"{seen[row_id]})")
        seen[row_id] = number
        records.append([row_id, *(_sentence(path, number, fields, positions, c)
                                  for c in INPUT_COLUMNS[task])])
    columns = ["id", "sentence1", "sentence2"][: 1 + len(INPUT_COLUMNS[task])]
    return pd.DataFrame(records, columns=columns, dtype=object).astype(str)


def _physical_lines(path: str | Path) -> list[bytes]:
    try:
        lines = Path(path).read_bytes().split(b"\n")
    except OSError as err:
        raise UserError(f"cannot read the input file ({err.strerror or err})", path=str(path),
                        field="--input") from None
    return lines[:-1] if lines and lines[-1] == b"" else lines


def _decode(path: str | Path, number: int, raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataFormatError(path, number, "row", f"invalid UTF-8 at byte {err.start}") from None
    return text[:-1] if text.endswith("\r") else text


def _fields(path: str | Path, number: int, raw: bytes, delimiter: str) -> list[str]:
    try:
        return next(csv.reader((_decode(path, number, raw),), delimiter=delimiter, quotechar='"',
                               doublequote=True, strict=True))
    except csv.Error as err:
        raise DataFormatError(path, number, "row", f"malformed quoting ({err})") from None


def _input_positions(path: str | Path, names: list[str], task: str) -> dict[str, int]:
    """Where the id (if any) and the sentence columns are; one error naming what is missing."""
    found = ", ".join(repr(n) for n in names)
    positions: dict[str, int] = {}
    for column in ("id", *INPUT_COLUMNS[task]):
        count = names.count(column)
        if count == 0 and column != "id":
            raise DataFormatError(path, 1, column, f"missing required column in header of "
                                  f"{Path(path).name} (found columns: {found}; {task} needs "
                                  f"{', '.join(INPUT_COLUMNS[task])}, and optionally id)")
        if count > 1:
            raise DataFormatError(path, 1, column, f"column appears {count} times in the header")
        if count == 1:
            positions[column] = names.index(column)
    return positions


def _sentence(path: str | Path, number: int, fields: list[str], positions: dict[str, int],
              column: str) -> str:
    text = fields[positions[column]].strip()
    if not text:
        raise DataFormatError(path, number, column, "empty or whitespace-only sentence")
    return text


def write_csv_predictions(path: str | Path, ids: pd.Series, pred: TaskPredictions) -> Path:
    """Write predictions as a CSV that `pandas.read_csv` reads: id, prediction (sst: the class
    0..4, para: 0/1, sts: the similarity 0..5) and, for sst, `label` (its name, `SST_LABELS`)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    values = pred.labels.tolist()
    if pred.task == "sst":
        writer.writerow(["id", "prediction", "label"])
        writer.writerows([i, int(v), SST_LABELS[int(v)]] for i, v in zip(ids.tolist(), values))
    else:
        writer.writerow(["id", "prediction"])
        writer.writerows([i, int(v) if pred.task == "para" else v] for i, v in zip(ids.tolist(), values))
    return atomic_write_text(path, buffer.getvalue())


def predict_file(model_dir: str | Path, task: str, input_path: str | Path, output_path: str | Path,
                 batch_size: int = 64, progress: ProgressStart | None = None,
                 output_format: str = "course", max_length: int | None = None,
                 quantize: str = "none") -> int:
    """Predict a CSV/TSV file (`read_input_file`) into `output_path`.

    `output_format` is "csv" (`write_csv_predictions`) or "course" (the course's `id \t
    Predicted_...` header and `id , value` rows). `max_length` defaults to the model's.
    `quantize`: "int8" predicts with dynamic int8 linear layers (`mtbert.model.quantize`).
    `progress`, if given, is called with the number of rows once the file is read and returns the
    hook `predict` calls after each batch (see `mtbert.evaluate.RowHook`).
    """
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output_format must be one of {', '.join(OUTPUT_FORMATS)}, got {output_format!r}")
    if not Path(input_path).is_file():  # before the model loads: seconds saved on a typo
        what = "is not a file" if Path(input_path).exists() else "input file does not exist"
        raise MissingFileError(what, path=str(input_path), field="--input")
    check_output_path(input_path, output_path)
    frame = read_input_file(input_path, task)
    if frame.empty:
        raise UserError("has a header but no rows to predict", path=str(input_path))
    model, tokenizer, cfg = load_trained(model_dir, quantize=quantize)
    if task not in model.tasks:
        raise UserError(f"this model has no head for {task}; it was trained for "
                        f"{', '.join(model.tasks)}", path=str(model_dir), field="--task")
    data = tokenize_frame(tokenizer, frame, task, cfg.model.pair_encoding,
                          max_length or cfg.model.max_length)
    pred = predict(model, data, batch_size, on_batch=progress(len(frame)) if progress else None)
    write = write_csv_predictions if output_format == "csv" else write_course_predictions
    write(output_path, frame["id"], pred)
    return len(frame)
