"""Behavioural tests of a trained model (CheckList, Made-With-ML): the registry's promotion gate.

Three checks on fixed, built-in sentences, each a pass rate over its cases:

- invariance: the sst class does not change when a person's name is replaced or a word gets a
  small typo (adjacent letters swapped);
- direction: negation lowers sentiment: the sst class of "X is not good." is below that of
  "X is good.";
- symmetry: the para probability and the sts score of (a, b) equal those of (b, a), within
  `SYMMETRY_TOLERANCE`. Only a bi-encoder can promise this; a cross-encoder reads the pair as one
  sequence, so the check is skipped for it, with that reason.

The module is pure: it takes a predict callable (`Predict`) and returns a `GateResult`; loading the
model and logging the result are the pipeline's (`mtbert.pipeline.registry`).

Measured pass rates (invariance / direction / symmetry): the quick profile's model .90 / .97 / 1.0,
the tiny profile's .56 / .64 / 1.0; params.yaml's thresholds (.8 / .8 / 1.0) pass the first and
fail the second.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

CHECKS = ("invariance", "direction", "symmetry")
SHOWN_FAILURES = 5  # failing cases kept per check (the JSON artifact), enough to see a pattern

# Predict(task, sentence1, sentence2) -> (N,) values: sst class ids 0..4, para probability of
# duplicate, sts similarity score. sentence2 is None for sst.
Predict = Callable[[str, Sequence[str], Sequence[str] | None], np.ndarray]

# |f(a, b) - f(b, a)| allowed: para is a probability (0..1), sts a score on 0..5. The bi-encoder's
# cosine sts head is symmetric exactly; its para head reads [u, v, |u-v|, u*v], where u and v have
# their own weights, so order moves it a little: at most .026 on the quick model, .040 on the tiny.
SYMMETRY_TOLERANCE = {"para": 0.05, "sts": 0.1}
CROSS_SKIP = ("cross-encoding reads the pair as one sequence ([CLS] s1 [SEP] s2): its outputs "
              "depend on the order by construction")

NAMES = ("John", "Maria", "Ahmed", "Mei", "Olga", "Kwame")
NAME_TEMPLATES = (
    "{name} thought the movie was wonderful.",
    "{name} found the film dull and far too long.",
    "I watched it with {name} and we both loved every minute.",
    "{name} says the plot is a complete mess.",
    "The performance by {name} is warm, funny and clever.",
    "{name} gives a flat, lifeless performance.",
    "{name} is the best thing in this charming comedy.",
    "Even {name} cannot save this boring script.",
)
TYPO_SENTENCES = (
    "A warm, funny and clever film.",
    "Dull, lifeless and far too long.",
    "The acting is excellent and the story is moving.",
    "A tedious mess with a terrible ending.",
    "One of the most beautiful films of the year.",
    "The jokes are stale and the characters are boring.",
    "An honest, touching and delightful story.",
    "It is an awful waste of time.",
)
SUBJECTS = ("The movie", "This film", "The acting", "The story", "The soundtrack", "The ending")
POSITIVE = ("good", "great", "wonderful", "funny", "beautiful", "brilliant")
PAIRS = (
    ("How can I lose weight fast?", "What is the quickest way to lose weight?"),
    ("What is the capital of France?", "How do I cook rice?"),
    ("A woman is slicing an onion.", "A woman cuts an onion."),
    ("Two dogs play in the snow.", "A cat sleeps on a sofa."),
    ("How do I learn to code in Python?", "What is the best way to learn Python?"),
    ("A man is playing a guitar.", "A man plays the guitar on stage."),
    ("Why is the sky blue?", "What makes the sky look blue?"),
    ("The stock market fell sharply today.", "Children are swimming in a lake."),
)


def typo(sentence: str) -> str:
    """`sentence` with two inner letters of its longest word swapped ("wonderful" -> "wondreful").

    A word's first and last letters are kept, as readers skim past such typos."""
    words = sentence.split(" ")
    i = max(range(len(words)), key=lambda k: (len(words[k].strip(".,!?")), -k))
    word, length = words[i], len(words[i].strip(".,!?"))
    # from the middle on, the first two neighbours that differ ("excellent": not the double l)
    j = next((k for k in range(length // 2, length - 2) if word[k] != word[k + 1]), None)
    if length < 4 or j is None:
        return sentence
    words[i] = word[:j] + word[j + 1] + word[j] + word[j + 2:]
    return " ".join(words)


def invariance_cases() -> list[tuple[str, str]]:
    """(original, perturbed) sentences whose sst class must be equal: names replaced, typos."""
    cases = [(t.format(name=NAMES[0]), t.format(name=name)) for t in NAME_TEMPLATES for name in NAMES[1:]]
    return cases + [(s, typo(s)) for s in TYPO_SENTENCES]


def direction_cases() -> list[tuple[str, str]]:
    """("X is good.", "X is not good.") pairs: the second one's sst class must be lower."""
    return [(f"{s} is {a}.", f"{s} is not {a}.") for s in SUBJECTS for a in POSITIVE]


@dataclass(frozen=True)
class CheckResult:
    """One check: how many cases passed, the threshold, and failing examples.

    Attributes:
        name: one of CHECKS.
        passed, total: cases that passed, cases run (0 when skipped).
        min_pass: the pass rate needed.
        skipped: why the check did not run (None: it ran).
        failures: up to SHOWN_FAILURES failing cases, as plain dicts (for the JSON artifact).
    """

    name: str
    passed: int
    total: int
    min_pass: float
    skipped: str | None = None
    failures: tuple[dict[str, Any], ...] = ()

    @property
    def rate(self) -> float | None:
        return None if self.skipped or not self.total else self.passed / self.total

    @property
    def ok(self) -> bool:
        return self.skipped is not None or (self.rate is not None and self.rate >= self.min_pass)

    def summary(self) -> str:
        if self.skipped:
            return f"{self.name} skipped"
        sign = ">=" if self.ok else "<"
        return f"{self.name} {self.rate:.2f} {sign} {self.min_pass:.2f}"


@dataclass(frozen=True)
class GateResult:
    """All checks; the gate passes when every check that ran reached its threshold."""

    checks: tuple[CheckResult, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def summary(self) -> str:
        """One line, e.g. "failed: invariance 0.95 >= 0.90, direction 0.20 < 0.70, symmetry skipped"."""
        return ("passed" if self.ok else "failed") + ": " + ", ".join(c.summary() for c in self.checks)

    def metrics(self) -> dict[str, float]:
        """`behaviour/<check>/pass_rate` of each check that ran, and `behaviour/passed` (1 or 0)."""
        out = {f"behaviour/{c.name}/pass_rate": c.rate for c in self.checks if c.rate is not None}
        return {**out, "behaviour/passed": float(self.ok)}

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.ok, "summary": self.summary(), "checks": [
            {"name": c.name, "passed": c.passed, "total": c.total, "pass_rate": c.rate,
             "min_pass": c.min_pass, "ok": c.ok, "skipped": c.skipped, "failures": list(c.failures)}
            for c in self.checks]}


def _result(name: str, ok: np.ndarray, cases: list[dict[str, Any]], min_pass: float) -> CheckResult:
    failures = tuple(case for case, good in zip(cases, ok, strict=True) if not good)[:SHOWN_FAILURES]
    return CheckResult(name, int(ok.sum()), len(cases), min_pass, failures=failures)


def check_invariance(predict: Predict, min_pass: float) -> CheckResult:
    """sst class unchanged by replacing a name or adding a typo."""
    cases = invariance_cases()
    before = np.asarray(predict("sst", [a for a, _ in cases], None))
    after = np.asarray(predict("sst", [b for _, b in cases], None))
    shown = [{"original": a, "perturbed": b, "class": int(x), "perturbed_class": int(y)}
             for (a, b), x, y in zip(cases, before, after, strict=True)]
    return _result("invariance", before == after, shown, min_pass)


def check_direction(predict: Predict, min_pass: float) -> CheckResult:
    """Negation lowers the sst class: class("X is not good.") < class("X is good.")."""
    cases = direction_cases()
    plain = np.asarray(predict("sst", [a for a, _ in cases], None))
    negated = np.asarray(predict("sst", [b for _, b in cases], None))
    shown = [{"sentence": a, "negated": b, "class": int(x), "negated_class": int(y)}
             for (a, b), x, y in zip(cases, plain, negated, strict=True)]
    return _result("direction", negated < plain, shown, min_pass)


def check_symmetry(predict: Predict, min_pass: float, tasks: Sequence[str]) -> CheckResult:
    """para probabilities and sts scores equal for (a, b) and (b, a), within SYMMETRY_TOLERANCE."""
    ok: list[bool] = []
    shown: list[dict[str, Any]] = []
    first, second = [a for a, _ in PAIRS], [b for _, b in PAIRS]
    for task in (t for t in ("para", "sts") if t in tasks):
        forward = np.asarray(predict(task, first, second), dtype=float)
        backward = np.asarray(predict(task, second, first), dtype=float)
        for (a, b), x, y in zip(PAIRS, forward, backward, strict=True):
            ok.append(bool(abs(x - y) <= SYMMETRY_TOLERANCE[task]))
            shown.append({"task": task, "sentence1": a, "sentence2": b, "forward": float(x),
                          "backward": float(y)})
    return _result("symmetry", np.array(ok, dtype=bool), shown, min_pass)


def run_gate(predict: Predict, tasks: Sequence[str], pair_encoding: str,
             min_pass: Mapping[str, float]) -> GateResult:
    """Run every check the model can take.

    Args:
        predict: the model as a `Predict` callable.
        tasks: the tasks the model has heads for; a check whose tasks are missing is skipped.
        pair_encoding: "bi" or "cross" (symmetry is skipped for "cross").
        min_pass: pass rate needed per check name (CHECKS).
    """
    checks = []
    if "sst" in tasks:
        checks += [check_invariance(predict, min_pass["invariance"]),
                   check_direction(predict, min_pass["direction"])]
    else:
        checks += [CheckResult(name, 0, 0, min_pass[name], skipped="the model has no sst head")
                   for name in ("invariance", "direction")]
    if pair_encoding == "cross":
        checks.append(CheckResult("symmetry", 0, 0, min_pass["symmetry"], skipped=CROSS_SKIP))
    elif not {"para", "sts"} & set(tasks):
        checks.append(CheckResult("symmetry", 0, 0, min_pass["symmetry"],
                                  skipped="the model has no para or sts head"))
    else:
        checks.append(check_symmetry(predict, min_pass["symmetry"], tasks))
    return GateResult(tuple(checks))
