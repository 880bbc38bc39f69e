"""Tests for mtbert.metrics against scipy and sklearn."""

from __future__ import annotations

import numpy as np
import pytest
import sklearn.metrics
import torch
from scipy import stats

from mtbert.metrics import accuracy, confusion_matrix, overall_score, pearson, spearman


def _data(seed: int, n: int = 53) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    gold = rng.uniform(0, 5, n)
    return gold + rng.normal(0, 1.5, n), gold


@pytest.mark.parametrize("seed", range(3))
def test_correlations_match_scipy(seed: int) -> None:
    pred, gold = _data(seed)
    assert pearson(pred, gold) == pytest.approx(stats.pearsonr(pred, gold)[0], abs=1e-12)
    assert spearman(pred, gold) == pytest.approx(stats.spearmanr(pred, gold)[0], abs=1e-12)


def test_spearman_with_ties_matches_scipy() -> None:
    pred = [1, 2, 2, 3, 3, 3, 0, 5]
    gold = [0.5, 1.0, 1.0, 2.0, 4.0, 4.0, 0.0, 5.0]
    assert spearman(pred, gold) == pytest.approx(stats.spearmanr(pred, gold)[0], abs=1e-12)


def test_accepts_lists_tensors_and_column_vectors() -> None:
    pred, gold = _data(7)
    expected = pearson(pred, gold)
    assert pearson(list(pred), list(gold)) == pytest.approx(expected)
    assert pearson(torch.tensor(pred), torch.tensor(gold)) == pytest.approx(expected)
    column = torch.tensor(pred, dtype=torch.bfloat16).reshape(-1, 1)
    assert pearson(column, gold) == pytest.approx(expected, abs=1e-2)


def test_constant_input_gives_zero_not_nan() -> None:
    gold = [0.0, 1.0, 2.5, 4.0]
    assert pearson([2.5] * 4, gold) == 0.0
    assert spearman([2.5] * 4, gold) == 0.0
    assert pearson(gold, [1.0] * 4) == 0.0
    assert pearson(np.full(11, 0.1, dtype=np.float32), np.arange(11.0)) == 0.0


def test_perfect_correlations() -> None:
    x = np.arange(10.0)
    assert pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert pearson(x, -x) == pytest.approx(-1.0)
    assert spearman(x, np.exp(x)) == pytest.approx(1.0)


def test_accuracy_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    gold, pred = rng.integers(0, 5, 41), rng.integers(0, 5, 41)
    assert accuracy(pred, gold) == pytest.approx(sklearn.metrics.accuracy_score(gold, pred))
    assert accuracy(torch.tensor(pred), torch.tensor(gold)) == pytest.approx(accuracy(pred, gold))


def test_confusion_matrix_matches_sklearn_rows_gold() -> None:
    rng = np.random.default_rng(1)
    gold, pred = rng.integers(0, 5, 67), rng.integers(0, 4, 67)  # class 4 never predicted
    matrix = confusion_matrix(pred, gold, num_classes=5)
    np.testing.assert_array_equal(matrix, sklearn.metrics.confusion_matrix(gold, pred, labels=range(5)))
    assert matrix.shape == (5, 5) and matrix.sum() == 67
    np.testing.assert_array_equal(confusion_matrix([1], [0], 2), [[0, 1], [0, 0]])


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError):
        accuracy([1, 2], [1])
    with pytest.raises(ValueError):
        accuracy([], [])
    with pytest.raises(ValueError):
        pearson([1.0], [2.0])
    with pytest.raises(ValueError):
        confusion_matrix([0, 5], [0, 1], num_classes=5)
    with pytest.raises(ValueError):
        confusion_matrix([0.5], [0], num_classes=2)


def test_overall_score_course_definition() -> None:
    assert overall_score(0.5, 0.8, 0.6) == pytest.approx((0.5 + 0.8 + 0.8) / 3)
    assert overall_score(1.0, 1.0, 1.0) == pytest.approx(1.0)
    assert overall_score(0.0, 0.0, -1.0) == pytest.approx(0.0)
