"""Prediction for users and servers: a table of (task, sentence1, sentence2) rows in, labels out.

The same function backs `mtbert predict` and the MLflow pyfunc model, and it validates requests
with messages a caller can act on (`PredictionInputError`), never a stack trace.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mtbert.batching import tokenize_frame
from mtbert.data import read_task_file
from mtbert.evaluate import ProgressStart, RowHook, predict, write_course_predictions
from mtbert.model.trained import load_trained
from mtbert.errors import MissingFileError, UserError
from mtbert.tasks import TASK_SPECS, TASKS

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


def predict_file(model_dir: str | Path, task: str, input_path: str | Path, output_path: str | Path,
                 batch_size: int = 64, progress: ProgressStart | None = None) -> int:
    """Predict a course-format file (id, sentence[, sentence2]) and write course-format output.

    `progress`, if given, is called with the number of rows once the file is read and returns the
    hook `predict` calls after each batch (see `mtbert.evaluate.RowHook`).
    """
    if not Path(input_path).is_file():  # before the model loads: seconds saved on a typo
        what = "is not a file" if Path(input_path).exists() else "input file does not exist"
        raise MissingFileError(what, path=str(input_path), field="--input")
    check_output_path(input_path, output_path)
    model, tokenizer, cfg = load_trained(model_dir)
    frame = read_task_file(input_path, task, labeled=False, on_error="fail").frame
    if frame.empty:
        raise UserError("has a header but no rows to predict", path=str(input_path))
    data = tokenize_frame(tokenizer, frame, task, cfg.model.pair_encoding, cfg.model.max_length)
    pred = predict(model, data, batch_size, on_batch=progress(len(frame)) if progress else None)
    write_course_predictions(output_path, frame["id"], pred)
    return len(frame)
