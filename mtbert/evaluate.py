"""Inference and dev-set evaluation for the three tasks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mtbert.batching import Encoded, TokenizedTask, collate, make_batches
from mtbert.fileio import atomic_write_text
from mtbert.metrics import accuracy, confusion_matrix, overall_score, pearson, spearman
from mtbert.model.multitask import MultitaskBert
from mtbert.precision import resolve_precision

# A progress hook: called after each batch with the number of rows that batch held, so the
# calls of one run sum to its row count. Edges turn it into a progress bar; the core never prints.
RowHook = Callable[[int], None]
# Given the number of rows about to be predicted, returns the hook for them (e.g. a bar's update).
ProgressStart = Callable[[int], RowHook]


@dataclass
class TaskPredictions:
    """Predictions for one task, in frame row order.

    `labels` are class ids (sst 0..4, para 0/1) or scores (sts, clipped to 0..5); `scores` are the
    raw outputs (sst: max softmax probability, para: probability of duplicate, sts: unclipped).
    """

    task: str
    labels: np.ndarray
    scores: np.ndarray


def predict(model: MultitaskBert, data: TokenizedTask, batch_size: int,
            precision: str = "fp32", on_batch: RowHook | None = None) -> TaskPredictions:
    """Run the model over every row of `data` in length-sorted batches; return rows in order.

    `on_batch`, if given, is called after each batch with the number of rows it held.
    """
    return _to_predictions(data.task, raw_outputs(model, data, batch_size, precision, on_batch))


def raw_outputs(model: MultitaskBert, data: TokenizedTask, batch_size: int,
                precision: str = "fp32", on_batch: RowHook | None = None) -> np.ndarray:
    """The head outputs of every row of `data` in row order, in eval mode without grad.

    Returns:
        float32 (N, 5) sst logits, (N, 1) para logits or (N, 1) sts scores (unclipped).
    """
    return map_rows(model, data, batch_size, lambda enc: model(data.task, enc),
                    5 if data.task == "sst" else 1, precision, on_batch)


@torch.inference_mode()
def map_rows(model: torch.nn.Module, data: TokenizedTask, batch_size: int,
             forward: Callable[[Encoded], torch.Tensor], width: int, precision: str = "fp32",
             on_batch: RowHook | None = None) -> np.ndarray:
    """`forward` over every row of `data` in length-sorted batches (eval mode, no grad, bf16
    autocast if `precision` resolves to it on the model's device); float32 (N, width) in row order."""
    model.eval()
    device = next(model.parameters()).device
    lengths = data.lengths()
    order = sorted(range(len(lengths)), key=lengths.__getitem__)  # similar lengths -> little padding
    batches = make_batches([lengths[i] for i in order], batch_size, shuffle=False, bucket=False)
    outputs = np.zeros((len(lengths), width), dtype=np.float32)
    bf16 = resolve_precision(precision, device, inference=True) == "bf16"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    for batch_pos in batches:
        rows = [order[i] for i in batch_pos]
        batch = collate(data, rows).to(device)
        with autocast:
            out = forward(batch.enc).float()
        outputs[rows] = out.reshape(len(rows), -1).cpu().numpy()
        if on_batch is not None:
            on_batch(len(rows))
    return outputs


def _to_predictions(task: str, outputs: np.ndarray) -> TaskPredictions:
    if task == "sst":
        probs = torch.softmax(torch.from_numpy(outputs), dim=-1).numpy()
        return TaskPredictions(task, probs.argmax(-1), probs.max(-1))
    raw = outputs[:, 0]
    if task == "para":
        prob = 1.0 / (1.0 + np.exp(-raw))
        return TaskPredictions(task, (prob > 0.5).astype(np.int64), prob)
    return TaskPredictions(task, np.clip(raw, 0.0, 5.0), raw)


def task_metrics(pred: TaskPredictions, gold: np.ndarray) -> dict[str, float]:
    """Dev metrics of one task, named as logged: accuracy, or pearson and spearman."""
    if pred.task == "sts":
        return {"pearson": pearson(pred.labels, gold), "spearman": spearman(pred.labels, gold)}
    return {"accuracy": accuracy(pred.labels, gold)}


def summary_metrics(per_task: dict[str, dict[str, float]]) -> dict[str, float]:
    """Flatten to `dev/<task>/<metric>` names plus `dev/overall` when all three tasks are present."""
    flat = {f"dev/{task}/{name}": value for task, m in per_task.items() for name, value in m.items()}
    if {"sst", "para", "sts"} <= set(per_task):
        flat["dev/overall"] = overall_score(per_task["sst"]["accuracy"], per_task["para"]["accuracy"],
                                            per_task["sts"]["pearson"])
    return flat


def sst_confusion(pred: TaskPredictions, gold: np.ndarray) -> np.ndarray:
    return confusion_matrix(pred.labels, gold, num_classes=5)


# Column headers of the course's prediction files (the starter's spelling, typo included).
PREDICTION_HEADERS = {
    "sst": "Predicted_Sentiment",
    "para": "Predicted_Is_Paraphrase",
    "sts": "Predicted_Similiarity",
}


def write_course_predictions(path: str | Path, ids: pd.Series, pred: TaskPredictions) -> Path:
    """Write predictions in the course's output format (`id \t Predicted_X` header, `id , value`)."""
    lines = [f"id \t {PREDICTION_HEADERS[pred.task]} \n"]
    lines += [f"{i} , {v} \n" for i, v in zip(ids.tolist(), pred.labels.tolist())]
    return atomic_write_text(path, "".join(lines))
