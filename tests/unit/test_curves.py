"""Learning-curve recording: rows per step and task, saved with the checkpoints, whole after a resume."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from mtbert.batching import TokenizedTask
from mtbert.config import ModelConfig, TrainConfig
from mtbert.curves import CurveRecorder, loss_rows, read_rows, rows_to_csv, wide
from mtbert.model.bert import BertModel
from mtbert.model.multitask import MultitaskBert
from mtbert.optim import build_optimizer
from mtbert.plots import learning_curve_png
from mtbert.train import Callback, FitContext, TrainState, fit
from tests.unit.test_progress import TINY

EVERY = 3
CFG = TrainConfig(epochs=2, batch_size=4, sampler="round_robin")  # 5 steps an epoch (para: 17 rows)


class Killed(Exception):
    """Stands for the process being killed."""


class StateCheckpoint(Callback):
    """Keeps a copy of the state where CheckpointCallback would save; can die just before a save."""

    def __init__(self, every: int, die_before_save_at: int | None = None) -> None:
        self.every, self.die_at = every, die_before_save_at
        self.saved: TrainState | None = None

    def save(self, state: TrainState) -> None:
        if state.global_step == self.die_at:
            raise Killed
        self.saved = dataclasses.replace(state)

    def on_step(self, ctx: FitContext, metrics: dict[str, float]) -> None:
        if ctx.state.global_step % self.every == 0:
            self.save(ctx.state)

    def on_epoch_end(self, ctx: FitContext) -> None:
        self.save(ctx.state)


class KillAfter(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step(self, ctx: FitContext, metrics: dict[str, float]) -> None:
        if ctx.state.global_step == self.step:
            raise Killed


def task_data() -> dict[str, TokenizedTask]:
    g = torch.Generator().manual_seed(9)
    return {task: TokenizedTask(task, [tuple(([1, *torch.randint(5, 99, (n,), generator=g).tolist(), 2],
                                              [0] * (n + 2)) for _ in range(1 if task == "sst" else 2))
                                       for n in torch.randint(1, 5, (rows,), generator=g).tolist()],
                                [float(i % 2) for i in range(rows)])
            for task, rows in (("sst", 11), ("para", 17), ("sts", 7))}


def train(callbacks: list[Callback], state: TrainState | None = None) -> TrainState:
    torch.manual_seed(0)
    model = MultitaskBert(BertModel(TINY), ModelConfig(head_dropout=0.0, pair_encoding="bi"))
    return fit(model, task_data(), build_optimizer(model, "mtbert", 1e-3, 0.0), CFG, seed=3,
               state=state, callbacks=callbacks)


def keys(rows: list[tuple[int, str, float]]) -> list[tuple[int, str]]:
    return [(step, task) for step, task, _ in rows]


def test_uninterrupted_run_records_every_step_and_task(tmp_path: Path) -> None:
    curves = CurveRecorder(tmp_path / "curves.csv", EVERY)
    state = train([curves, StateCheckpoint(EVERY)])
    assert keys(curves.rows) == [(s, t) for s in range(1, state.global_step + 1) for t in ("sst", "para", "sts")]
    assert all(0.0 < loss < 100.0 for _, _, loss in curves.rows)
    assert read_rows(curves.path) == curves.rows  # the last save (epoch end) holds them all, exactly


@pytest.mark.parametrize("kill", ["after step 8", "inside the checkpoint save at step 6"])
def test_resumed_run_neither_loses_nor_repeats_rows(tmp_path: Path, kill: str) -> None:
    reference = CurveRecorder(tmp_path / "reference.csv", EVERY)
    train([reference, StateCheckpoint(EVERY)])

    path = tmp_path / "curves.csv"
    first = CurveRecorder(path, EVERY)
    ckpt = StateCheckpoint(EVERY, die_before_save_at=6 if kill.startswith("inside") else None)
    with pytest.raises(Killed):
        train([first, ckpt, KillAfter(8)])
    assert ckpt.saved is not None
    assert ckpt.saved.global_step == (5 if kill.startswith("inside") else 6)
    assert max(step for step, _, _ in read_rows(path)) == 6  # curves are saved before the checkpoint

    resumed = CurveRecorder(path, EVERY, read_rows(path, upto=ckpt.saved.global_step))
    train([resumed, StateCheckpoint(EVERY)], state=ckpt.saved)
    assert keys(read_rows(path)) == keys(reference.rows)


def test_loss_rows_take_only_task_losses() -> None:
    metrics = {"train/sst/loss": 1.5, "train/sts/smart": 0.2, "train/lr": 1e-3, "train/grad_norm": 2.0,
               "train/para/loss": 0.25}
    assert loss_rows(7, metrics) == [(7, "sst", 1.5), (7, "para", 0.25)]


def test_csv_round_trip_keeps_full_precision_and_wide_leaves_gaps(tmp_path: Path) -> None:
    rows = [(1, "sst", 1 / 3), (1, "para", 0.1 + 0.2), (2, "sts", 2.0 / 7)]
    path = tmp_path / "c.csv"
    path.write_text(rows_to_csv(rows))
    assert read_rows(path) == rows and read_rows(path, upto=1) == rows[:2]
    assert read_rows(tmp_path / "missing.csv") == []
    table = wide(CurveRecorder(path, 0, rows).frame())
    assert list(table.columns) == ["step", "sst", "para", "sts"]
    assert table["sts"].isna().tolist() == [True, False] and table["sst"].isna().tolist() == [False, True]


def test_learning_curve_png_is_written(tmp_path: Path) -> None:
    steps = {"sst": torch.arange(1, 14).numpy(), "sts": torch.arange(2, 9).numpy()}
    losses = {"sst": torch.linspace(2, 1, 13).numpy(), "sts": torch.linspace(5, 3, 7).numpy()}
    path = learning_curve_png(steps, losses, tmp_path / "curves.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
