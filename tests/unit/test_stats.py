"""mtbert.stats: seed summaries and paired bootstrap intervals, on cases with known answers and
against a slow reference loop."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mtbert.metrics import accuracy, overall_score, pearson
from mtbert.stats import (
    paired_bootstrap,
    paired_bootstrap_overall,
    resample_indices,
    seed_summary,
)

N = 37  # dev rows


def systems(seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Gold and two systems' predictions for the three tasks, on different row counts."""
    rng = np.random.default_rng(seed)
    gold = {"sst": rng.integers(0, 5, N), "para": rng.integers(0, 2, N + 6), "sts": rng.random(N - 8) * 5}
    a = {"sst": np.where(rng.random(N) < 0.6, gold["sst"], rng.integers(0, 5, N)),
         "para": np.where(rng.random(N + 6) < 0.8, gold["para"], 1 - gold["para"]),
         "sts": gold["sts"] + rng.normal(0, 1.0, N - 8)}
    b = {"sst": rng.integers(0, 5, N), "para": rng.integers(0, 2, N + 6),
         "sts": gold["sts"] + rng.normal(0, 2.0, N - 8)}
    return {"gold": gold, "a": a, "b": b}


def test_seed_summary_mean_and_sample_sd() -> None:
    s = seed_summary([0.70, 0.72, 0.74])
    assert s.n == 3 and math.isclose(s.mean, 0.72) and math.isclose(s.sd, 0.02)
    assert math.isnan(seed_summary([0.5]).sd)
    with pytest.raises(ValueError):
        seed_summary([])


@pytest.mark.parametrize("metric", ["accuracy", "pearson"])
def test_identical_systems_give_a_zero_interval(metric: str) -> None:
    s = systems()
    task = "sts" if metric == "pearson" else "sst"
    result = paired_bootstrap(metric, s["a"][task], s["a"][task], s["gold"][task], n_resamples=200)
    assert (result.estimate, result.low, result.high) == (0.0, 0.0, 0.0)
    assert not result.excludes_zero()


def test_always_right_against_always_wrong_differs_by_exactly_1() -> None:
    gold = np.arange(N) % 5
    result = paired_bootstrap("accuracy", gold, (gold + 1) % 5, gold, n_resamples=300, seed=4)
    assert (result.estimate, result.low, result.high) == (1.0, 1.0, 1.0)
    assert result.n_resamples == 300 and result.excludes_zero()


@pytest.mark.parametrize("metric,task", [("accuracy", "para"), ("pearson", "sts")])
def test_vectorized_resampling_matches_a_slow_reference_loop(metric: str, task: str) -> None:
    s = systems(1)
    a, b, g = s["a"][task], s["b"][task], s["gold"][task]
    result = paired_bootstrap(metric, a, b, g, n_resamples=250, seed=9, level=0.9)
    fn = accuracy if metric == "accuracy" else pearson
    diffs = [fn(a[idx], g[idx]) - fn(b[idx], g[idx])
             for block in resample_indices(len(g), 250, np.random.default_rng(9)) for idx in block]
    low, high = np.percentile(diffs, [5.0, 95.0])
    assert math.isclose(result.estimate, fn(a, g) - fn(b, g))
    assert math.isclose(result.low, low, abs_tol=1e-12) and math.isclose(result.high, high, abs_tol=1e-12)


def test_resample_indices_come_in_memory_bounded_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mtbert.stats.MAX_BLOCK_ELEMENTS", 3 * N)
    blocks = list(resample_indices(N, 11, np.random.default_rng(0)))
    assert [b.shape for b in blocks] == [(3, N)] * 3 + [(2, N)]
    assert all(b.min() >= 0 and b.max() < N for b in blocks)


def test_same_seed_same_interval_other_seed_other_interval() -> None:
    s = systems(2)
    args = ("pearson", s["a"]["sts"], s["b"]["sts"], s["gold"]["sts"])
    assert paired_bootstrap(*args, seed=3) == paired_bootstrap(*args, seed=3)
    assert paired_bootstrap(*args, seed=3) != paired_bootstrap(*args, seed=4)


def test_overall_combines_the_per_task_resamples_with_the_overall_formula() -> None:
    s = systems(3)
    result = paired_bootstrap_overall(s["a"], s["b"], s["gold"], n_resamples=400, seed=5)
    scores = {k: overall_score(accuracy(s[k]["sst"], s["gold"]["sst"]), accuracy(s[k]["para"], s["gold"]["para"]),
                               pearson(s[k]["sts"], s["gold"]["sts"])) for k in ("a", "b")}
    assert math.isclose(result["overall"].estimate, scores["a"] - scores["b"])
    # Per-task intervals use the generators (seed, task index), as the overall's components do.
    assert result["sts"] == paired_bootstrap("pearson", s["a"]["sts"], s["b"]["sts"], s["gold"]["sts"],
                                             n_resamples=400, seed=(5, 2))
    # Reference: per resample, the overall score of A minus that of B, each task resampled alone.
    metric_fns = {"sst": accuracy, "para": accuracy, "sts": pearson}
    per_task = {}
    for i, task in enumerate(("sst", "para", "sts")):
        a, b, g = s["a"][task], s["b"][task], s["gold"][task]
        blocks = resample_indices(len(g), 400, np.random.default_rng((5, i)))
        per_task[task] = [(metric_fns[task](a[idx], g[idx]), metric_fns[task](b[idx], g[idx]))
                          for block in blocks for idx in block]
    diffs = [overall_score(*(per_task[t][r][0] for t in ("sst", "para", "sts")))
             - overall_score(*(per_task[t][r][1] for t in ("sst", "para", "sts"))) for r in range(400)]
    low, high = np.percentile(diffs, [2.5, 97.5])
    assert math.isclose(result["overall"].low, low, abs_tol=1e-12)
    assert math.isclose(result["overall"].high, high, abs_tol=1e-12)


def test_overall_of_identical_systems_is_zero() -> None:
    s = systems(4)
    result = paired_bootstrap_overall(s["a"], s["a"], s["gold"], n_resamples=100)
    assert {(r.low, r.high) for r in result.values()} == {(0.0, 0.0)}


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="metric"):
        paired_bootstrap("f1", [0, 1], [0, 1], [0, 1])
    with pytest.raises(ValueError, match="same length"):
        paired_bootstrap("accuracy", [0, 1, 1], [0, 1], [0, 1])
    with pytest.raises(ValueError, match="level"):
        paired_bootstrap("accuracy", [0, 1], [0, 1], [0, 1], level=1.0)


def test_seed_bootstrap_with_one_seed_equals_the_plain_one() -> None:
    from mtbert.stats import paired_bootstrap_overall, paired_bootstrap_seeds

    rng = np.random.default_rng(3)
    gold = {"sst": rng.integers(0, 5, 41), "para": rng.integers(0, 2, 37), "sts": rng.random(29) * 5}
    a = {"sst": rng.integers(0, 5, 41), "para": rng.integers(0, 2, 37), "sts": gold["sts"] + rng.random(29)}
    b = {"sst": rng.integers(0, 5, 41), "para": rng.integers(0, 2, 37), "sts": rng.random(29) * 5}
    plain = paired_bootstrap_overall(a, b, gold, n_resamples=200, seed=5)
    seeds = paired_bootstrap_seeds({t: v[None, :] for t, v in a.items()},
                                   {t: v[None, :] for t, v in b.items()}, gold, n_resamples=200, seed=5)
    for key in ("sst", "para", "sts", "overall"):
        assert seeds[key].estimate == pytest.approx(plain[key].estimate)
        assert (seeds[key].low, seeds[key].high) == pytest.approx((plain[key].low, plain[key].high))


def test_seed_bootstrap_averages_seeds() -> None:
    from mtbert.stats import paired_bootstrap_seeds

    gold = {"sst": np.array([0, 1, 2, 3, 4, 0, 1, 2])}
    right, wrong = gold["sst"], (gold["sst"] + 1) % 5
    # A: one seed all right, one all wrong (mean accuracy .5); B: always wrong (0).
    out = paired_bootstrap_seeds({"sst": np.stack([right, wrong])}, {"sst": wrong[None, :]}, gold,
                                 n_resamples=100)
    assert out["sst"].estimate == pytest.approx(0.5)
    assert out["sst"].low == pytest.approx(0.5) and out["sst"].high == pytest.approx(0.5)
    assert "overall" not in out  # only sst was given
