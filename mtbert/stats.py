"""Comparison statistics: spread over seeds and paired bootstrap intervals of metric differences.

Two systems evaluated on the same dev rows are compared by resampling the rows with replacement
(the same resampled rows for both systems: a paired bootstrap) and reading the 2.5th and 97.5th
percentiles of the metric difference. The overall score resamples each task's rows independently
and combines the three differences with the overall formula. Everything is vectorized over
resamples and seeded, so the same inputs give the same interval.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from mtbert.metrics import accuracy, overall_score, pearson
from mtbert.tasks import TASK_SPECS, TASKS

METRICS: tuple[str, ...] = ("accuracy", "pearson")
MAX_BLOCK_ELEMENTS = 1 << 22  # resampled indices held at once: 32 MB of int64


@dataclass(frozen=True)
class SeedSummary:
    """Mean and sample standard deviation (ddof = 1; NaN for one seed) of a metric over seeds."""

    mean: float
    sd: float
    n: int


@dataclass(frozen=True)
class Interval:
    """A difference A - B on the full rows, and its paired bootstrap percentile interval."""

    estimate: float
    low: float
    high: float
    level: float
    n_resamples: int

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def seed_summary(values: Sequence[float]) -> SeedSummary:
    """Mean and sample sd of one metric over runs that differ only in their seed."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"need a non-empty 1-D sequence of values; got shape {array.shape}")
    sd = float(array.std(ddof=1)) if array.size > 1 else math.nan
    return SeedSummary(float(array.mean()), sd, int(array.size))


def resample_indices(n_rows: int, n_resamples: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Row indices of `n_resamples` resamples with replacement, in blocks of (b, n_rows) int64.

    Blocks bound memory (Quora dev has 40k rows); they are drawn one after another from `rng`.
    """
    if n_rows < 1 or n_resamples < 1:
        raise ValueError(f"need n_rows >= 1 and n_resamples >= 1; got {n_rows}, {n_resamples}")
    block = max(1, MAX_BLOCK_ELEMENTS // n_rows)
    for start in range(0, n_resamples, block):
        yield rng.integers(0, n_rows, size=(min(block, n_resamples - start), n_rows))


def _rowwise_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each row pair, (R, N) x2 -> (R,); 0 where a row is constant (as `pearson`)."""
    constant = (np.ptp(x, axis=1) == 0) | (np.ptp(y, axis=1) == 0)
    x = x - x.mean(axis=1, keepdims=True)
    y = y - y.mean(axis=1, keepdims=True)
    denom = np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.clip((x * y).sum(axis=1) / denom, -1.0, 1.0)
    return np.where(constant, 0.0, r)


def _metric(metric: str, pred: np.ndarray, gold: np.ndarray) -> float:
    return accuracy(pred, gold) if metric == "accuracy" else pearson(pred, gold)


def _resampled_diffs(metric: str, pred_a: np.ndarray, pred_b: np.ndarray, gold: np.ndarray,
                     n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """metric(A) - metric(B) on each resample of the rows, (n_resamples,)."""
    out = []
    if metric == "accuracy":  # only which rows each system got right matters
        right_a, right_b = (pred_a == gold).astype(np.float64), (pred_b == gold).astype(np.float64)
    for idx in resample_indices(len(gold), n_resamples, rng):
        if metric == "accuracy":
            out.append(right_a[idx].mean(axis=1) - right_b[idx].mean(axis=1))
        else:
            g = gold[idx]
            out.append(_rowwise_pearson(pred_a[idx], g) - _rowwise_pearson(pred_b[idx], g))
    return np.concatenate(out)


def _arrays(metric: str, pred_a: object, pred_b: object, gold: object) -> tuple[np.ndarray, ...]:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid metrics: {', '.join(METRICS)}")
    dtype = np.float64 if metric == "pearson" else None
    arrays = tuple(np.asarray(v, dtype=dtype) for v in (pred_a, pred_b, gold))
    if any(a.ndim != 1 for a in arrays) or len({a.shape for a in arrays}) != 1 or arrays[0].size < 2:
        raise ValueError(f"need three 1-D arrays of the same length >= 2; got {[a.shape for a in arrays]}")
    return arrays


def _interval(estimate: float, diffs: np.ndarray, level: float) -> Interval:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1); got {level}")
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(diffs, [tail, 100.0 - tail])
    return Interval(estimate, float(low), float(high), level, int(diffs.size))


def paired_bootstrap(metric: str, pred_a: Sequence[float] | np.ndarray, pred_b: Sequence[float] | np.ndarray,
                     gold: Sequence[float] | np.ndarray, n_resamples: int = 1000,
                     seed: int | Sequence[int] = 0, level: float = 0.95) -> Interval:
    """Paired bootstrap interval of metric(A) - metric(B) over the same dev rows.

    Args:
        metric: "accuracy" (predicted labels) or "pearson" (predicted scores).
        pred_a: system A's predictions, (N,).
        pred_b: system B's predictions of the same rows, (N,).
        gold: the gold labels or scores, (N,).
        n_resamples: bootstrap resamples.
        seed: seeds the resampling (numpy's `default_rng`); the same seed gives the same interval.
        level: coverage of the percentile interval.
    """
    a, b, g = _arrays(metric, pred_a, pred_b, gold)
    diffs = _resampled_diffs(metric, a, b, g, n_resamples, np.random.default_rng(seed))
    return _interval(_metric(metric, a, g) - _metric(metric, b, g), diffs, level)


def paired_bootstrap_overall(preds_a: Mapping[str, np.ndarray], preds_b: Mapping[str, np.ndarray],
                             gold: Mapping[str, np.ndarray], n_resamples: int = 1000, seed: int = 0,
                             level: float = 0.95) -> dict[str, Interval]:
    """Paired bootstrap intervals of A - B per task and for the overall score.

    Each task's rows are resampled independently, from a generator seeded by (seed, task index);
    the overall difference of a resample is (d_sst + d_para + d_sts / 2) / 3, the difference of
    the overall formula (sst + para + (sts + 1) / 2) / 3.

    Args:
        preds_a: per task (all of TASKS), system A's predicted labels (sst, para) or scores (sts).
        preds_b: the same for system B.
        gold: per task, the gold labels or scores.
        n_resamples, seed, level: as in `paired_bootstrap`.

    Returns:
        Intervals keyed by task name and "overall".
    """
    result: dict[str, Interval] = {}
    diffs: dict[str, np.ndarray] = {}
    scores: dict[str, list[float]] = {"a": [], "b": []}
    for i, task in enumerate(TASKS):
        metric = TASK_SPECS[task].metric
        a, b, g = _arrays(metric, preds_a[task], preds_b[task], gold[task])
        diffs[task] = _resampled_diffs(metric, a, b, g, n_resamples, np.random.default_rng((seed, i)))
        scores["a"].append(_metric(metric, a, g))
        scores["b"].append(_metric(metric, b, g))
        result[task] = _interval(scores["a"][-1] - scores["b"][-1], diffs[task], level)
    # overall_score is linear: the difference of two scores is the formula applied to the
    # differences, without its constant term.
    combined = (diffs["sst"] + diffs["para"] + diffs["sts"] / 2.0) / 3.0
    estimate = overall_score(*scores["a"]) - overall_score(*scores["b"])
    result["overall"] = _interval(estimate, combined, level)
    return result


# ---------------------------------------------------------------------------------------------
# Several seeds per system


def _seed_mean_diffs(metric: str, preds_a: np.ndarray, preds_b: np.ndarray, gold: np.ndarray,
                     n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """On each resample of the rows: mean over A's seeds of the metric minus the same for B.

    preds_a (Sa, N) and preds_b (Sb, N) hold each seed's predictions of the same N rows.
    """
    out = []
    if metric == "accuracy":
        right_a = (preds_a == gold[None, :]).astype(np.float64)
        right_b = (preds_b == gold[None, :]).astype(np.float64)
    for idx in resample_indices(len(gold), n_resamples, rng):
        if metric == "accuracy":
            a = np.mean([r[idx].mean(axis=1) for r in right_a], axis=0)
            b = np.mean([r[idx].mean(axis=1) for r in right_b], axis=0)
        else:
            g = gold[idx]
            a = np.mean([_rowwise_pearson(p[idx], g) for p in preds_a], axis=0)
            b = np.mean([_rowwise_pearson(p[idx], g) for p in preds_b], axis=0)
        out.append(a - b)
    return np.concatenate(out)


def paired_bootstrap_seeds(preds_a: Mapping[str, np.ndarray], preds_b: Mapping[str, np.ndarray],
                           gold: Mapping[str, np.ndarray], n_resamples: int = 1000, seed: int = 0,
                           level: float = 0.95) -> dict[str, Interval]:
    """Paired bootstrap of the seed-averaged difference A - B per task and overall.

    Like `paired_bootstrap_overall`, but each system is given by several seeds' predictions,
    (S, N) per task (S may differ between A and B): the statistic of a resample is the mean over
    seeds of the metric on those rows, so the interval covers both row sampling and what the
    seeds average out. Tasks absent from either side are left out, and so is "overall" then.
    """
    result: dict[str, Interval] = {}
    diffs: dict[str, np.ndarray] = {}
    estimates: dict[str, float] = {}
    for i, task in enumerate(TASKS):
        if task not in preds_a or task not in preds_b:
            continue
        metric = TASK_SPECS[task].metric
        dtype = np.float64 if metric == "pearson" else None
        a, b = (np.atleast_2d(np.asarray(p[task], dtype=dtype)) for p in (preds_a, preds_b))
        g = np.asarray(gold[task], dtype=dtype)
        if a.shape[1] != g.size or b.shape[1] != g.size or g.size < 2:
            raise ValueError(f"{task}: predictions {a.shape}, {b.shape} do not match {g.size} gold rows")
        diffs[task] = _seed_mean_diffs(metric, a, b, g, n_resamples, np.random.default_rng((seed, i)))
        estimates[task] = (float(np.mean([_metric(metric, r, g) for r in a]))
                           - float(np.mean([_metric(metric, r, g) for r in b])))
        result[task] = _interval(estimates[task], diffs[task], level)
    if set(diffs) == set(TASKS):
        combined = (diffs["sst"] + diffs["para"] + diffs["sts"] / 2.0) / 3.0
        estimate = (estimates["sst"] + estimates["para"] + estimates["sts"] / 2.0) / 3.0
        result["overall"] = _interval(estimate, combined, level)
    return result
