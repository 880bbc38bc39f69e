"""Task schedules for one epoch of multitask training.

A schedule is a list of steps; each step is a tuple of task names whose batches are
combined into one optimizer step. Schedules are deterministic: the random generator is
seeded from (seed, epoch), so the same arguments give the same schedule and every epoch
gets a different order.

Where a schedule asks a task for more batches than it has (round_robin, proportional,
annealed), the trainer cycles that task's iterator; where it asks for fewer, the rest of
that task's data is unseen this epoch.
"""

from __future__ import annotations

import numpy as np

from mtbert.tasks import TASKS, check_task

SAMPLERS: tuple[str, ...] = ("sequential", "round_robin", "proportional", "annealed", "even")

Schedule = list[tuple[str, ...]]


def _active_tasks(num_batches: dict[str, int]) -> list[str]:
    """Tasks with at least one batch, in TASKS order; validates names and counts."""
    for task, count in num_batches.items():
        check_task(task)
        if count < 0:
            raise ValueError(f"num_batches[{task!r}]={count}; must be >= 0")
    return [task for task in TASKS if num_batches.get(task, 0) > 0]


def annealed_alpha(epoch: int, num_epochs: int, alpha_start: float = 1.0, alpha_end: float = 0.2) -> float:
    """Sampling exponent for a 0-based epoch, annealed linearly (Stickland & Murray, 2019).

    alpha = alpha_start - (alpha_start - alpha_end) * epoch / (num_epochs - 1), which with
    the defaults is the paper's 1 - 0.8 (e - 1) / (E - 1) for 1-based e. A single-epoch
    run uses alpha_start.

    Raises:
        ValueError: if num_epochs < 1 or epoch is outside [0, num_epochs).
    """
    if num_epochs < 1 or not 0 <= epoch < num_epochs:
        raise ValueError(
            f"need num_epochs >= 1 and 0 <= epoch < num_epochs; got epoch={epoch}, num_epochs={num_epochs}"
        )
    if num_epochs == 1:
        return alpha_start
    return alpha_start - (alpha_start - alpha_end) * epoch / (num_epochs - 1)


def task_probabilities(num_batches: dict[str, int], alpha: float) -> dict[str, float]:
    """Probability of drawing each task, p_i proportional to N_i ** alpha.

    alpha = 1 samples in proportion to dataset size, alpha = 0 uniformly. Tasks with 0
    batches are left out.

    Args:
        num_batches: batches per task, N_i.
        alpha: exponent, >= 0.

    Returns:
        Probabilities of the tasks with batches, in TASKS order, summing to 1.

    Raises:
        ValueError: on unknown tasks, negative counts, negative alpha, or no batches.
    """
    if alpha < 0:
        raise ValueError(f"alpha={alpha}; must be >= 0")
    tasks = _active_tasks(num_batches)
    if not tasks:
        raise ValueError("no task has any batches")
    weights = np.array([num_batches[task] for task in tasks], dtype=np.float64) ** alpha
    weights /= weights.sum()
    return {task: float(weight) for task, weight in zip(tasks, weights)}


def _draw(num_batches: dict[str, int], alpha: float, rng: np.random.Generator) -> Schedule:
    """sum(N_i) single-task steps drawn independently with p_i proportional to N_i ** alpha."""
    probabilities = task_probabilities(num_batches, alpha)
    tasks = list(probabilities)
    total = sum(num_batches[task] for task in tasks)
    draws = rng.choice(len(tasks), size=total, p=list(probabilities.values()))
    return [(tasks[index],) for index in draws]


def _even(tasks: list[str], num_batches: dict[str, int], rng: np.random.Generator) -> Schedule:
    """Every batch of every task exactly once, shuffled together."""
    steps = [(task,) for task in tasks for _ in range(num_batches[task])]
    return [steps[index] for index in rng.permutation(len(steps))]


def build_schedule(
    name: str,
    num_batches: dict[str, int],
    epoch: int,
    num_epochs: int,
    seed: int,
    alpha_start: float = 1.0,
    alpha_end: float = 0.2,
) -> Schedule:
    """Build the task schedule for one epoch.

    Samplers (tasks with 0 batches are left out everywhere):
        sequential: all batches of each task in TASKS order, one task per step.
        round_robin: every step holds one batch of every task; max(N_i) steps, so each
            example of the largest task is seen once per epoch and smaller tasks cycle.
            (min(N_i) would leave most of Quora unseen for a whole epoch.)
        proportional: sum(N_i) one-task steps, each drawn with p_i proportional to N_i.
        annealed: like proportional with p_i proportional to N_i ** alpha, alpha from
            `annealed_alpha(epoch, num_epochs, alpha_start, alpha_end)`.
        even: each task exactly N_i times, one per step, shuffled together.

    Args:
        name: one of SAMPLERS.
        num_batches: batches per task in one pass over its data.
        epoch: 0-based epoch index, in [0, num_epochs).
        num_epochs: number of epochs in the run.
        seed: non-negative run seed; the generator is seeded from (seed, epoch).
        alpha_start: annealed exponent in the first epoch.
        alpha_end: annealed exponent in the last epoch.

    Returns:
        List of steps, each a tuple of task names; empty if no task has batches.

    Raises:
        ValueError: on an unknown sampler or task, or out-of-range arguments.
    """
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid samplers: {', '.join(SAMPLERS)}")
    if seed < 0:
        raise ValueError(f"seed={seed}; must be >= 0")
    alpha = annealed_alpha(epoch, num_epochs, alpha_start, alpha_end)
    tasks = _active_tasks(num_batches)
    if not tasks:
        return []
    rng = np.random.default_rng((seed, epoch))
    if name == "sequential":
        return [(task,) for task in tasks for _ in range(num_batches[task])]
    if name == "round_robin":
        return [tuple(tasks)] * max(num_batches[task] for task in tasks)
    if name == "proportional":
        return _draw(num_batches, 1.0, rng)
    if name == "annealed":
        return _draw(num_batches, alpha, rng)
    return _even(tasks, num_batches, rng)
