"""Learning curves: the per-task training loss of every step, kept whole across resumed runs.

`CurveRecorder` is a training callback. It saves its rows (step, task, loss) at exactly the steps
where the trainer writes a checkpoint, and it runs *before* the `CheckpointCallback`, so the saved
curve file always reaches at least the step of the newest checkpoint. On resume from a checkpoint
at step S the rows with step <= S are kept and later ones dropped: those steps are trained again
and recorded again, so no row is lost or counted twice, whichever write a kill interrupted.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pandas as pd

from mtbert.fileio import atomic_write_text
from mtbert.plots import learning_curve_png
from mtbert.tasks import TASKS
from mtbert.callbacks import Callback, FitContext

CURVES_FILE = "curves.csv"
CURVES_WIDE_FILE = "curves-wide.csv"
CURVES_PNG = "curves.png"
COLUMNS = ("step", "task", "loss")

Row = tuple[int, str, float]


def loss_rows(step: int, metrics: dict[str, float]) -> list[Row]:
    """The (step, task, loss) rows of one step's metrics (`train/<task>/loss` keys)."""
    rows = []
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "train" and parts[2] == "loss" and parts[1] in TASKS:
            rows.append((step, parts[1], float(value)))
    return rows


def rows_to_csv(rows: list[Row]) -> str:
    """CSV text with a `step,task,loss` header; losses keep full float precision."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows((step, task, repr(loss)) for step, task, loss in rows)
    return buf.getvalue()


def read_rows(path: str | Path, upto: int | None = None) -> list[Row]:
    """Rows of a curve file, those with step <= `upto` if given; [] if the file does not exist."""
    path = Path(path)
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        rows = [(int(r["step"]), r["task"], float(r["loss"])) for r in csv.DictReader(fh)]
    return [r for r in rows if upto is None or r[0] <= upto]


class CurveRecorder(Callback):
    """Records the per-task training loss of every step and saves it at every checkpoint step.

    Args:
        path: where the rows are saved during training (beside the checkpoint).
        every: the checkpoint interval in steps (0: only at epoch ends), as the CheckpointCallback.
        rows: rows of an interrupted run to continue (see `read_rows(path, upto=step)`).
    """

    def __init__(self, path: str | Path, every: int, rows: list[Row] | None = None) -> None:
        self.path, self.every = Path(path), every
        self.rows: list[Row] = list(rows or [])

    def on_step(self, ctx: FitContext, metrics: dict[str, float]) -> None:
        self.rows += loss_rows(ctx.state.global_step, metrics)
        if self.every and ctx.state.global_step % self.every == 0:
            self.save()

    def on_epoch_end(self, ctx: FitContext) -> None:
        self.save()

    def save(self, path: str | Path | None = None) -> Path:
        """Write the rows (atomically) to `path`, default the recorder's own path."""
        return atomic_write_text(path or self.path, rows_to_csv(self.rows))

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=list(COLUMNS))


def wide(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per step, one loss column per task (empty where a step did not train that task)."""
    table = frame.pivot_table(index="step", columns="task", values="loss", aggfunc="last")
    return table.reindex(columns=[t for t in TASKS if t in table.columns]).reset_index()


def write_curves(curves: CurveRecorder, out_dir: str | Path) -> Path:
    """Write the learning curves into a model folder: long and wide CSVs and a PNG; returns the CSV."""
    out = Path(out_dir)
    frame = curves.frame()
    curves.save(out / CURVES_FILE)
    atomic_write_text(out / CURVES_WIDE_FILE, wide(frame).to_csv(index=False))
    by_task = {task: frame[frame["task"] == task] for task in TASKS if (frame["task"] == task).any()}
    learning_curve_png({t: f["step"].to_numpy() for t, f in by_task.items()},
                       {t: f["loss"].to_numpy() for t, f in by_task.items()}, out / CURVES_PNG)
    return out / CURVES_FILE
