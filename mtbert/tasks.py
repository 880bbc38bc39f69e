"""Task names and their static facts: the one place that says what `sst`, `para` and `sts` are."""

from __future__ import annotations

from dataclasses import dataclass

TASKS: tuple[str, ...] = ("sst", "para", "sts")
# The names of the class ids of the classification tasks: SST-5 as the course data labels it,
# Quora's two classes. `mtbert predict`, the Python API and the model card use these.
LABEL_NAMES: dict[str, tuple[str, ...]] = {
    "sst": ("negative", "somewhat negative", "neutral", "somewhat positive", "positive"),
    "para": ("not duplicate", "duplicate"),
}


@dataclass(frozen=True)
class TaskSpec:
    """Static description of one task.

    Attributes:
        name: short task name used in params keys, metric names and file names.
        is_pair: whether an example holds two sentences.
        num_labels: classes for classification, 1 for regression.
        metric: name of the headline dev metric.
    """

    name: str
    is_pair: bool
    num_labels: int
    metric: str


TASK_SPECS: dict[str, TaskSpec] = {
    "sst": TaskSpec("sst", is_pair=False, num_labels=5, metric="accuracy"),
    "para": TaskSpec("para", is_pair=True, num_labels=2, metric="accuracy"),
    "sts": TaskSpec("sts", is_pair=True, num_labels=1, metric="pearson"),
}


def check_task(name: str) -> str:
    """Return `name` if it is a known task, else raise ValueError listing the valid names."""
    if name not in TASK_SPECS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    return name
