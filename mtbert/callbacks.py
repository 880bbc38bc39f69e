"""What the training loops hand to their callbacks: where training stands and the live objects.

Kept apart from the loop (`mtbert.train`) so that callbacks at the edges (MLflow logging,
progress bars) depend on this small module, not on the training code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from mtbert.smart import BregmanTeacher


@dataclass
class TrainState:
    """Where training stands; saved in every checkpoint."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    total_steps: int = 0


@dataclass
class FitContext:
    """What callbacks are handed (as minGPT hands its trainer): the live model and optimizer.

    Attributes:
        model: the model being trained (in train mode between steps; a callback that switches it
            to eval mode need not switch it back: every step starts with `model.train()`).
        optimizer: its optimizer.
        state: where training stands.
        teacher: SMART's EMA teacher, when the Bregman term is on.
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    state: TrainState
    teacher: BregmanTeacher | None = None


class Callback:
    """Hooks called by `fit`; subclasses override what they need."""

    def on_step(self, ctx: FitContext, metrics: dict[str, float]) -> None:
        """After each optimizer step; `metrics` holds the step's losses."""

    def on_epoch_end(self, ctx: FitContext) -> None:
        """After each epoch (ctx.state.epoch already counts it)."""

    def on_eval(self, ctx: FitContext, metrics: dict[str, float]) -> None:
        """After `fit`'s dev evaluation (its `evaluate`) at step ctx.state.global_step."""


# The live model -> dev metrics (named as the evaluate stage logs them: `dev/<task>/<metric>`).
Evaluate = Callable[[torch.nn.Module], dict[str, float]]
