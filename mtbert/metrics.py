"""Evaluation metrics: accuracy, Pearson and Spearman correlation, confusion matrix.

Inputs may be lists, numpy arrays or tensors (moved to CPU); outputs are Python floats
or numpy arrays.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.stats import rankdata

ArrayLike = Sequence[float] | np.ndarray | torch.Tensor


def _to_numpy(values: ArrayLike) -> np.ndarray:
    """1-D numpy array from a list, array or tensor, (N,) or (N, 1)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        # numpy has no bfloat16; float32 holds every bf16/fp16 value exactly.
        if values.dtype in (torch.bfloat16, torch.float16):
            values = values.float()
        values = values.numpy()
    array = np.asarray(values)
    if array.ndim == 2 and array.shape[1] == 1:  # a (N, 1) regression head output
        array = array[:, 0]
    if array.ndim != 1:
        raise ValueError(f"expected a 1-D sequence; got shape {array.shape}")
    return array


def _pair(pred: ArrayLike, gold: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Convert and check that pred and gold are non-empty and of equal length."""
    pred_array, gold_array = _to_numpy(pred), _to_numpy(gold)
    if pred_array.shape != gold_array.shape or pred_array.size == 0:
        raise ValueError(
            "pred and gold must be non-empty and of equal length; "
            f"got {pred_array.size} and {gold_array.size}"
        )
    return pred_array, gold_array


def accuracy(pred: ArrayLike, gold: ArrayLike) -> float:
    """Fraction of positions where the predicted label equals the gold label.

    Args:
        pred: predicted labels, (N,).
        gold: gold labels, (N,).
    """
    pred_array, gold_array = _pair(pred, gold)
    return float(np.mean(pred_array == gold_array))


def pearson(pred: ArrayLike, gold: ArrayLike) -> float:
    """Pearson correlation of pred and gold, (N,) each with N >= 2.

    Returns 0.0, not NaN, when either input is constant: the correlation is undefined
    there, and a regression head that has collapsed to a constant is the common case.
    0.0 ("no linear relationship") keeps best-checkpoint comparisons, the overall score
    and tuning objectives well defined, where NaN would compare False against everything.
    """
    pred_array, gold_array = _pair(pred, gold)
    if pred_array.size < 2:
        raise ValueError("pearson needs at least 2 points")
    x, y = pred_array.astype(np.float64), gold_array.astype(np.float64)
    # Test constancy directly: centering a constant can leave rounding residue that
    # would otherwise produce an arbitrary correlation.
    if np.ptp(x) == 0.0 or np.ptp(y) == 0.0:
        return 0.0
    x, y = x - x.mean(), y - y.mean()
    denom = np.sqrt(np.dot(x, x) * np.dot(y, y))
    return float(np.clip(np.dot(x, y) / denom, -1.0, 1.0))


def spearman(pred: ArrayLike, gold: ArrayLike) -> float:
    """Spearman rank correlation (ties get average ranks), (N,) each with N >= 2.

    Like `pearson`, returns 0.0 when either input is constant.
    """
    pred_array, gold_array = _pair(pred, gold)
    return pearson(rankdata(pred_array), rankdata(gold_array))


def confusion_matrix(pred: ArrayLike, gold: ArrayLike, num_classes: int) -> np.ndarray:
    """Counts of (gold, predicted) label pairs.

    Args:
        pred: predicted labels in [0, num_classes), (N,).
        gold: gold labels in [0, num_classes), (N,).
        num_classes: number of classes C.

    Returns:
        Integer matrix (C, C); rows are gold labels, columns predicted labels.

    Raises:
        ValueError: if a label is not an integer in [0, num_classes).
    """
    pred_array, gold_array = _pair(pred, gold)
    for name, array in (("pred", pred_array), ("gold", gold_array)):
        if not np.all(np.equal(np.mod(array, 1), 0)) or array.min() < 0 or array.max() >= num_classes:
            raise ValueError(f"{name} labels must be integers in [0, {num_classes})")
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (gold_array.astype(np.int64), pred_array.astype(np.int64)), 1)
    return matrix


def overall_score(sst_acc: float, para_acc: float, sts_pearson: float) -> float:
    """Course leaderboard score: (sst_acc + para_acc + (sts_pearson + 1) / 2) / 3.

    The STS correlation is mapped from [-1, 1] to [0, 1] so the three terms share a scale.
    """
    return (sst_acc + para_acc + (sts_pearson + 1.0) / 2.0) / 3.0
