"""The evaluate stage: dev metrics, prediction files (dev and test) and plots of the trained model.

`evaluate_model` is the work (tuning trials and ablation configurations call it); `run` is the
stage: it also logs the metrics and outputs to the model's training run in MLflow.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from mtbert.batching import tokenize_frame
from mtbert.checkpoint import META_FILE, MODEL_FILE
from mtbert.config import Config
from mtbert.errors import UserError
from mtbert.evaluate import (
    ProgressStart,
    RowHook,
    predict,
    sst_confusion,
    summary_metrics,
    task_metrics,
    write_course_predictions,
)
from mtbert.fileio import atomic_write_text, sha256_file
from mtbert.model.multitask import MultitaskBert
from mtbert.model.trained import describe, load_trained, settings_for_model
from mtbert.pipeline import model_card, tracking
from mtbert.pipeline.project import (
    apply_threads,
    dev_frame,
    model_lock,
    prepared_path,
    resolve_device,
    unsent_path,
    with_precision,
)
from mtbert.plots import confusion_png, scatter_png

EVALUATED_FILE = "evaluated_model.json"  # the sha256 of the weights the metrics were measured on


def trained_settings(cfg: Config, explicit: Collection[str]) -> tuple[Config, str]:
    """The config `mtbert evaluate` runs with, and the line that says so.

    What the model in `train.out_dir` was trained and measured with (its profile, dev sizes,
    max_length, ...: `mtbert.model.trained.TRAINED_KEYS`) comes from its saved config, not from
    params.yaml, unless set on the command line (`explicit`, dotted keys); runtime settings
    (threads, device, paths, batch size) are `cfg`'s.
    """
    settings = settings_for_model(cfg, cfg.train.out_dir, explicit)
    return settings.cfg, describe(settings, "evaluate", dev_sizes=True)


def evaluate_model(cfg: Config, progress: ProgressStart | None = None) -> dict[str, float]:
    """Dev metrics, prediction files (dev and test) and plots for the model in `train.out_dir`
    (locked meanwhile: it cannot be retrained under the evaluation). See `_evaluate_model`."""
    with model_lock(cfg, "evaluate"):
        return _evaluate_model(cfg, progress)


def _evaluate_model(cfg: Config, progress: ProgressStart | None = None) -> dict[str, float]:
    """Dev metrics, prediction files (dev and test) and plots for the model in `train.out_dir`.

    `progress`, if given, is called once with the number of rows to predict and returns the hook
    called after each batch (see `mtbert.evaluate.RowHook`).
    """
    apply_threads(cfg)
    device = resolve_device(cfg.train.device)
    cfg = with_precision(cfg, device, inference=True)
    model, tokenizer, trained_cfg = load_trained(cfg.train.out_dir, str(device), cfg.eval.quantize)
    check_finite_weights(model, cfg.train.out_dir)
    # The tasks the model has heads for (a single-task model is scored on its task alone).
    frames = {task: dev_frame(cfg, task) for task in model.tasks}  # read once: counted, then scored
    hook = progress(eval_row_count(cfg, frames)) if progress else None
    out = Path(cfg.eval.out_dir)
    (out / "predictions").mkdir(parents=True, exist_ok=True)
    per_task: dict[str, dict[str, float]] = {}
    for task, frame in frames.items():
        data = tokenize_frame(tokenizer, frame, task, trained_cfg.model.pair_encoding,
                              cfg.model.max_length)
        pred = predict(model, data, cfg.eval.batch_size, cfg.train.precision, on_batch=hook)
        write_course_predictions(out / "predictions" / f"{task}-dev-output.csv", frame["id"], pred)
        gold = frame["label"].to_numpy()
        per_task[task] = task_metrics(pred, gold)
        _task_plots(task, pred, gold, per_task[task], out)
        if cfg.eval.predict_test:
            _predict_test(cfg, trained_cfg, model, tokenizer, task, out, hook)
    metrics = summary_metrics(per_task)
    bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
    if bad:
        raise UserError(f"non-finite dev metrics {bad}", path=cfg.train.out_dir,
                        fix="the model's predictions are broken: retrain it")
    atomic_write_text(out / cfg.eval.metrics_file, json.dumps(metrics, indent=2, sort_keys=True))
    atomic_write_text(out / EVALUATED_FILE, json.dumps(
        {"model_sha256": sha256_file(Path(cfg.train.out_dir) / MODEL_FILE)}))
    return metrics


def trained_step(model_dir: str | Path) -> int:
    """The training step the model in `model_dir` was saved at (0 if its metadata lacks it)."""
    try:
        meta = json.loads((Path(model_dir) / META_FILE).read_text())
        return int(meta["train_state"]["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def read_evaluated(eval_dir: str | Path) -> str | None:
    """The sha256 of the weights the dev metrics in `eval_dir` were measured on, if recorded."""
    path = Path(eval_dir) / EVALUATED_FILE
    return json.loads(path.read_text())["model_sha256"] if path.exists() else None


def check_finite_weights(model: torch.nn.Module, model_dir: str | Path) -> None:
    """Refuse weights holding NaN or inf: every prediction of such a model is meaningless."""
    bad = [name for name, tensor in model.state_dict().items()
           if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        raise UserError(f"{len(bad)} weight tensors hold NaN or inf (first: {bad[0]})",
                        path=Path(model_dir) / MODEL_FILE, field="weights",
                        fix="the training diverged: retrain, e.g. with a lower train.lr")


def eval_row_count(cfg: Config, dev_frames: dict[str, pd.DataFrame]) -> int:
    """How many rows `evaluate` predicts: the dev rows it scores plus, if asked, the test rows
    (counted from the test files' metadata, without reading them)."""
    total = 0
    for task in dev_frames:
        total += len(dev_frames[task])
        test = prepared_path(cfg, task, "test")
        if cfg.eval.predict_test and test.exists():
            total += pq.read_metadata(test).num_rows
    return total


def _task_plots(task: str, pred: Any, gold: np.ndarray, metrics: dict[str, float], out: Path) -> None:
    if task == "sst":
        counts = sst_confusion(pred, gold)
        atomic_write_text(out / "sst-confusion.csv",
                          pd.DataFrame(counts).to_csv(index_label="gold\\pred"))
        confusion_png(counts, out / "sst-confusion.png")
    elif task == "sts":
        scatter_png(pred.labels, gold, metrics["pearson"], metrics["spearman"], out / "sts-scatter.png")


def _predict_test(cfg: Config, trained_cfg: Config, model: MultitaskBert, tokenizer: Any, task: str,
                  out: Path, hook: RowHook | None = None) -> None:
    path = prepared_path(cfg, task, "test")
    if not path.exists():
        return
    frame = pd.read_parquet(path)
    data = tokenize_frame(tokenizer, frame, task, trained_cfg.model.pair_encoding,
                          cfg.model.max_length)
    pred = predict(model, data, cfg.eval.batch_size, cfg.train.precision, on_batch=hook)
    write_course_predictions(out / "predictions" / f"{task}-test-output.csv", frame["id"], pred)



def run(cfg: Config, run_id: str | None = None, progress: ProgressStart | None = None) -> dict[str, float]:
    """The evaluate stage: `evaluate_model`, its metrics and outputs logged to the model's training
    run (`run_id`, default: the run recorded in `train.out_dir`)."""
    metrics = evaluate_model(cfg, progress=progress)
    # The model folder's card with these metrics (the folder is the train stage's output: not there).
    model_card.write_eval_card(cfg.train.out_dir, cfg.eval.out_dir, metrics, cfg.eval.metrics_file)
    with tracking.tracked_run(cfg, "evaluate", fallback=unsent_path(cfg),
                              run_id=run_id or tracking.load_run_id(cfg.train.out_dir)) as tracked:
        # At the last training step, after the dev curves' points there (scored on fewer rows):
        # MLflow's runs table shows a metric's value at its highest step, the latest one on a tie.
        tracked.log_metrics(metrics, trained_step(cfg.train.out_dir))
        out = Path(cfg.eval.out_dir)
        tracked.log_artifacts([out], "eval")
    return metrics
