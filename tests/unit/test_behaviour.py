"""The behavioural gate (mtbert/behaviour.py) with hand-made predictors that pass and fail each check."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pytest

from mtbert import behaviour

ALL_PASS = {"invariance": 0.9, "direction": 0.7, "symmetry": 1.0}


def negation_aware(task: str, first: Sequence[str], second: Sequence[str] | None) -> np.ndarray:
    """sst: 1 when " not " is in the sentence, else 3; pairs: a symmetric score."""
    if task == "sst":
        return np.array([1 if " not " in s else 3 for s in first])
    return np.array([0.3 + 0.01 * (len(a) + len(b)) % 1 for a, b in zip(first, second, strict=True)])


def constant(task: str, first: Sequence[str], second: Sequence[str] | None) -> np.ndarray:
    return np.full(len(first), 2 if task == "sst" else 0.5)


def name_sensitive(task: str, first: Sequence[str], second: Sequence[str] | None) -> np.ndarray:
    """sst: 4 when the sentence names John, else 0."""
    return np.array([4 if "John" in s else 0 for s in first]) if task == "sst" else constant(task, first, second)


def negation_raises(task: str, first: Sequence[str], second: Sequence[str] | None) -> np.ndarray:
    return np.array([4 if " not " in s else 2 for s in first]) if task == "sst" else constant(task, first, second)


def order_sensitive(task: str, first: Sequence[str], second: Sequence[str] | None) -> np.ndarray:
    """para: the share of the first sentence in the pair's length (order matters); sts symmetric."""
    if task == "sst":
        return negation_aware(task, first, second)
    if task == "sts":
        return np.full(len(first), 2.5)
    return np.array([len(a) / (len(a) + len(b)) for a, b in zip(first, second, strict=True)])


def by_name(result: behaviour.GateResult) -> dict[str, behaviour.CheckResult]:
    return {check.name: check for check in result.checks}


def test_a_model_that_respects_every_property_passes() -> None:
    result = behaviour.run_gate(negation_aware, ["sst", "para", "sts"], "bi", ALL_PASS)

    checks = by_name(result)
    assert result.ok
    assert [c.rate for c in result.checks] == [1.0, 1.0, 1.0]
    assert checks["invariance"].total == len(behaviour.invariance_cases()) > 40
    assert checks["direction"].total == len(behaviour.SUBJECTS) * len(behaviour.POSITIVE)
    assert checks["symmetry"].total == 2 * len(behaviour.PAIRS)
    assert result.summary() == ("passed: invariance 1.00 >= 0.90, direction 1.00 >= 0.70, "
                                "symmetry 1.00 >= 1.00")


def test_a_constant_model_is_invariant_and_symmetric_but_fails_direction() -> None:
    result = behaviour.run_gate(constant, ["sst", "para", "sts"], "bi", ALL_PASS)

    checks = by_name(result)
    assert not result.ok
    assert (checks["invariance"].rate, checks["direction"].rate, checks["symmetry"].rate) == (1.0, 0.0, 1.0)
    assert not checks["direction"].ok and checks["invariance"].ok
    assert "direction 0.00 < 0.70" in result.summary() and result.summary().startswith("failed: ")
    failure = checks["direction"].failures[0]
    assert failure == {"sentence": "The movie is good.", "negated": "The movie is not good.",
                       "class": 2, "negated_class": 2}
    assert len(checks["direction"].failures) == behaviour.SHOWN_FAILURES


def test_name_sensitive_model_fails_invariance() -> None:
    checks = by_name(behaviour.run_gate(name_sensitive, ["sst"], "bi", ALL_PASS))

    names = len(behaviour.NAME_TEMPLATES) * (len(behaviour.NAMES) - 1)
    assert checks["invariance"].passed == checks["invariance"].total - names  # every name swap fails
    assert not checks["invariance"].ok
    assert checks["invariance"].failures[0]["perturbed"].startswith("Maria")


def test_typo_sensitive_model_fails_invariance() -> None:
    def exact(task: str, first: Sequence[str], second: Sequence[str] | None) -> np.ndarray:
        known = set(behaviour.TYPO_SENTENCES)  # class 4 for the clean sentences only
        return np.array([4 if s in known else 3 if s.startswith(tuple(behaviour.NAMES)) else 0
                         for s in first])

    check = behaviour.check_invariance(exact, 0.9)
    assert check.total - check.passed == len(behaviour.TYPO_SENTENCES)


def test_negation_that_raises_sentiment_fails_direction() -> None:
    check = behaviour.check_direction(negation_raises, 0.5)
    assert (check.passed, check.ok) == (0, False)


def test_order_sensitive_pair_head_fails_symmetry_and_small_differences_pass() -> None:
    check = behaviour.check_symmetry(order_sensitive, 1.0, ["para", "sts"])
    assert not check.ok and check.rate < 1.0
    assert {f["task"] for f in check.failures} == {"para"}

    def nearly(task: str, first: Sequence[str], second: Sequence[str] | None) -> np.ndarray:
        # within tolerance: a difference of half the allowed one
        return np.array([0.5 + (behaviour.SYMMETRY_TOLERANCE[task] / 2 if a < b else 0.0)
                         for a, b in zip(first, second, strict=True)])

    assert behaviour.check_symmetry(nearly, 1.0, ["para", "sts"]).rate == 1.0


def test_threshold_decides_at_the_boundary() -> None:
    check = behaviour.CheckResult("direction", 7, 10, 0.7)
    assert check.ok and check.rate == pytest.approx(0.7)
    assert not behaviour.CheckResult("direction", 6, 10, 0.7).ok


def test_symmetry_skipped_for_cross_encoding_with_reason() -> None:
    calls: list[str] = []

    def spy(task: str, first: Sequence[str], second: Sequence[str] | None) -> np.ndarray:
        calls.append(task)
        return order_sensitive(task, first, second)

    result = behaviour.run_gate(spy, ["sst", "para", "sts"], "cross", ALL_PASS)

    symmetry = by_name(result)["symmetry"]
    assert symmetry.skipped == behaviour.CROSS_SKIP and "order" in symmetry.skipped
    assert symmetry.ok and symmetry.rate is None
    assert set(calls) == {"sst"}  # no pair was predicted
    assert result.ok and "symmetry skipped" in result.summary()
    assert "behaviour/symmetry/pass_rate" not in result.metrics()


def test_checks_without_their_heads_are_skipped() -> None:
    result = behaviour.run_gate(order_sensitive, ["sts"], "bi", ALL_PASS)
    checks = by_name(result)
    assert checks["invariance"].skipped == checks["direction"].skipped == "the model has no sst head"
    assert checks["symmetry"].total == len(behaviour.PAIRS)  # sts only
    sst_only = by_name(behaviour.run_gate(constant, ["sst"], "bi", ALL_PASS))
    assert sst_only["symmetry"].skipped == "the model has no para or sts head"


def test_metrics_and_json_record_every_check() -> None:
    result = behaviour.run_gate(constant, ["sst", "para", "sts"], "bi", ALL_PASS)

    assert result.metrics() == {"behaviour/invariance/pass_rate": 1.0, "behaviour/direction/pass_rate": 0.0,
                                "behaviour/symmetry/pass_rate": 1.0, "behaviour/passed": 0.0}
    shown = json.loads(json.dumps(result.to_dict()))
    assert shown["passed"] is False and [c["name"] for c in shown["checks"]] == list(behaviour.CHECKS)
    assert shown["checks"][1]["failures"][0]["negated"] == "The movie is not good."


def test_typo_swaps_two_inner_letters_of_the_longest_word() -> None:
    assert behaviour.typo("A warm, funny and clever film.") == "A warm, funny and cleevr film."
    assert behaviour.typo("It is an awful waste of time.") == "It is an awufl waste of time."
    assert behaviour.typo("The acting is excellent.") == "The acting is excelelnt."  # not the ll
    assert behaviour.typo("Ok, so so.") == "Ok, so so."  # no word long enough
    for sentence in behaviour.TYPO_SENTENCES:
        changed = behaviour.typo(sentence)
        assert changed != sentence and sorted(changed) == sorted(sentence)
