"""Tests for mtbert.samplers: lengths, alternation, proportions, determinism."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from mtbert.samplers import SAMPLERS, annealed_alpha, build_schedule, task_probabilities
from mtbert.tasks import TASKS

# Distinct, uneven sizes (Quora is by far the largest in the real data too).
NUM_BATCHES = {"sst": 301, "para": 1999, "sts": 97}
TOTAL = sum(NUM_BATCHES.values())


def _counts(schedule: list[tuple[str, ...]]) -> Counter:
    return Counter(task for step in schedule for task in step)


def _assert_binomial(count: int, n: int, p: float) -> None:
    """count ~ Binomial(n, p): within 5 standard deviations (false alarm ~ 6e-7)."""
    sd = math.sqrt(n * p * (1 - p))
    assert abs(count - n * p) <= 5 * sd, (count, n * p, sd)


def test_sequential_is_blocks_in_task_order() -> None:
    schedule = build_schedule("sequential", NUM_BATCHES, epoch=0, num_epochs=3, seed=0)
    expected = [(t,) for t in TASKS for _ in range(NUM_BATCHES[t])]
    assert schedule == expected


def test_round_robin_alternates_with_max_length() -> None:
    schedule = build_schedule("round_robin", NUM_BATCHES, epoch=0, num_epochs=3, seed=0)
    assert len(schedule) == max(NUM_BATCHES.values())
    assert all(step == TASKS for step in schedule)


@pytest.mark.parametrize("name", ["proportional", "annealed", "even"])
def test_single_task_samplers_have_total_length(name: str) -> None:
    schedule = build_schedule(name, NUM_BATCHES, epoch=1, num_epochs=3, seed=0)
    assert len(schedule) == TOTAL
    assert all(len(step) == 1 for step in schedule)


def test_even_uses_each_task_exactly_its_batches() -> None:
    schedule = build_schedule("even", NUM_BATCHES, epoch=0, num_epochs=1, seed=5)
    assert _counts(schedule) == Counter(NUM_BATCHES)
    assert schedule != build_schedule("sequential", NUM_BATCHES, epoch=0, num_epochs=1, seed=5)


def test_proportional_frequencies_match_sizes() -> None:
    schedule = build_schedule("proportional", NUM_BATCHES, epoch=0, num_epochs=2, seed=1)
    counts = _counts(schedule)
    for task, n in NUM_BATCHES.items():
        _assert_binomial(counts[task], TOTAL, n / TOTAL)


@pytest.mark.parametrize("epoch", [0, 1, 2, 3])
def test_annealed_frequencies_follow_n_to_alpha(epoch: int) -> None:
    # alpha_end=0: alpha goes 1, 2/3, 1/3, 0 over 4 epochs.
    alpha = 1 - epoch / 3
    schedule = build_schedule("annealed", NUM_BATCHES, epoch, num_epochs=4, seed=2, alpha_end=0.0)
    counts = _counts(schedule)
    norm = sum(n**alpha for n in NUM_BATCHES.values())
    for task, n in NUM_BATCHES.items():
        _assert_binomial(counts[task], TOTAL, n**alpha / norm)


def test_annealed_last_epoch_with_alpha_end_zero_is_uniform() -> None:
    schedule = build_schedule("annealed", NUM_BATCHES, epoch=4, num_epochs=5, seed=3, alpha_end=0.0)
    counts = _counts(schedule)
    for task in TASKS:
        _assert_binomial(counts[task], TOTAL, 1 / 3)
    # sts has 97 batches but is drawn about 800 times: the trainer must cycle it.
    assert counts["sts"] > 3 * NUM_BATCHES["sts"]


def test_annealed_alpha_schedule() -> None:
    assert annealed_alpha(0, 5, 1.0, 0.2) == pytest.approx(1.0)
    assert annealed_alpha(4, 5, 1.0, 0.2) == pytest.approx(0.2)
    # The paper's 1 - 0.8 (e - 1) / (E - 1) with 1-based e = epoch + 1.
    for e in range(1, 6):
        assert annealed_alpha(e - 1, 5) == pytest.approx(1 - 0.8 * (e - 1) / 4)
    assert annealed_alpha(0, 1, 0.7, 0.2) == 0.7
    with pytest.raises(ValueError):
        annealed_alpha(5, 5, 1.0, 0.2)


def test_task_probabilities() -> None:
    probs = task_probabilities({"sst": 4, "para": 16, "sts": 0}, alpha=0.5)
    assert list(probs) == ["sst", "para"]
    assert probs["sst"] == pytest.approx(2 / 6) and probs["para"] == pytest.approx(4 / 6)
    with pytest.raises(ValueError):
        task_probabilities({"sst": 0}, alpha=1.0)
    with pytest.raises(ValueError):
        task_probabilities({"sst": 3}, alpha=-1.0)


@pytest.mark.parametrize("name", SAMPLERS)
def test_tasks_without_batches_are_left_out(name: str) -> None:
    schedule = build_schedule(name, {"sst": 7, "para": 0, "sts": 3}, epoch=0, num_epochs=2, seed=0)
    assert set(_counts(schedule)) == {"sst", "sts"}
    assert build_schedule(name, {"sst": 0}, epoch=0, num_epochs=1, seed=0) == []


@pytest.mark.parametrize("name", ["proportional", "annealed", "even"])
def test_schedules_are_deterministic_per_seed_and_epoch(name: str) -> None:
    def make(seed: int, epoch: int) -> list[tuple[str, ...]]:
        return build_schedule(name, NUM_BATCHES, epoch=epoch, num_epochs=3, seed=seed)

    assert make(0, 1) == make(0, 1)
    assert make(0, 1) != make(1, 1)
    assert make(0, 1) != make(0, 2)


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="sequential, round_robin, proportional, annealed, even"):
        build_schedule("uniform", NUM_BATCHES, epoch=0, num_epochs=1, seed=0)
    with pytest.raises(ValueError, match="valid tasks"):
        build_schedule("even", {"qqp": 3}, epoch=0, num_epochs=1, seed=0)
    with pytest.raises(ValueError):
        build_schedule("even", {"sst": -1}, epoch=0, num_epochs=1, seed=0)
    with pytest.raises(ValueError):
        build_schedule("even", NUM_BATCHES, epoch=3, num_epochs=3, seed=0)
    with pytest.raises(ValueError):
        build_schedule("even", NUM_BATCHES, epoch=0, num_epochs=1, seed=-1)
