"""Weight averaging: an exponential moving average (EMA) of the weights, kept by a callback.

The average is a copy of the trainable parameters that follows the model after every optimizer
step, avg <- decay * avg + (1 - decay) * w. Evaluating or saving the averaged weights often beats
the last weights at no training cost (Polyak averaging). The copy costs one model's memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from mtbert.callbacks import Callback, FitContext
from mtbert.config import EmaConfig


class WeightEma(Callback):
    """EMA of a model's trainable parameters, updated by `fit` after every step.

    The average starts as a copy of the weights after step max(`start_step`, 1) and is updated
    after every later step: avg_s = decay * avg_(s-1) + (1 - decay) * w_s. Buffers (none of our
    models' buffers are trained) are left alone. Put this callback before the checkpoint callback,
    so that a checkpoint at step s holds the average up to step s.

    Args:
        decay: weight of the running average, in [0, 1).
        start_step: the optimizer step (1-based count of steps done) whose weights start the average.
    """

    def __init__(self, decay: float = 0.999, start_step: int = 0) -> None:
        if not 0.0 <= decay < 1.0 or start_step < 0:
            raise ValueError(f"need 0 <= decay < 1 and start_step >= 0; got {decay}, {start_step}")
        self.decay = decay
        self.start_step = start_step
        self.num_updates = 0  # steps folded into the average, the first one included
        self.shadow: dict[str, Tensor] = {}

    @classmethod
    def from_config(cls, cfg: EmaConfig) -> WeightEma:
        return cls(cfg.decay, cfg.start_step)

    def on_step(self, ctx: FitContext, metrics: dict[str, float]) -> None:
        if ctx.state.global_step >= self.start_step:
            self.update(ctx.model)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current weights into the average (the first call copies them)."""
        params = _trainable(model)
        if not self.shadow:
            self.shadow = {name: p.detach().clone() for name, p in params.items()}
        else:
            self._check_names(params)
            for name, p in params.items():
                if self.shadow[name].device != p.device:  # loaded from a checkpoint elsewhere
                    self.shadow[name] = self.shadow[name].to(p.device)
            names = list(params)
            # avg + (1 - decay) * (w - avg) = decay * avg + (1 - decay) * w, one kernel per block
            torch._foreach_lerp_([self.shadow[n] for n in names],
                                 [params[n].detach() for n in names], 1.0 - self.decay)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the model's trainable parameters with the average (e.g. before saving)."""
        if not self.shadow:
            raise ValueError("the average is empty: no step has reached train.ema.start_step")
        params = _trainable(model)
        self._check_names(params)
        for name, p in params.items():
            p.copy_(self.shadow[name])

    @contextlib.contextmanager
    def swapped_in(self, model: nn.Module) -> Iterator[nn.Module]:
        """Within the block, `model` holds the averaged weights; its own weights come back after."""
        backup = {name: p.detach().clone() for name, p in _trainable(model).items()}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, p in _trainable(model).items():
                    p.copy_(backup[name])

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must keep to resume the average exactly."""
        return {"decay": self.decay, "start_step": self.start_step,
                "num_updates": self.num_updates,
                "shadow": {name: t.detach().clone() for name, t in self.shadow.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (state["decay"], state["start_step"]) != (self.decay, self.start_step):
            raise ValueError(f"checkpoint's EMA has decay {state['decay']}, start_step "
                             f"{state['start_step']}; this run has {self.decay}, {self.start_step}")
        self.num_updates = int(state["num_updates"])
        self.shadow = {name: t.detach().clone() for name, t in state["shadow"].items()}

    def _check_names(self, params: dict[str, nn.Parameter]) -> None:
        if set(params) != set(self.shadow):
            diff = sorted(set(params) ^ set(self.shadow))
            raise ValueError(f"the model's parameters differ from the average's: {diff[:5]}")


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}
