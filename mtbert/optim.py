"""AdamW with decoupled weight decay, optimizer construction, and the LR schedule.

`AdamW` is our own implementation (the minBERT assignment); `build_optimizer` can also
return `torch.optim.AdamW`, which is the oracle it is tested against and the fast path
on GPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

OPTIMIZERS: tuple[str, ...] = ("mtbert", "torch")
LR_SCHEDULES: tuple[str, ...] = ("linear", "constant", "cosine")


def _check_hyperparameters(
    lr: float, betas: tuple[float, float], eps: float, weight_decay: float
) -> None:
    """Raise ValueError naming the first invalid AdamW hyperparameter."""
    if not lr > 0.0:
        raise ValueError(f"invalid learning rate lr={lr}; must be > 0")
    for index, beta in enumerate(betas):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"invalid betas[{index}]={beta}; must be in [0, 1)")
    if not eps > 0.0:
        raise ValueError(f"invalid eps={eps}; must be > 0")
    if not weight_decay >= 0.0:
        raise ValueError(f"invalid weight_decay={weight_decay}; must be >= 0")


class AdamW(torch.optim.Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019).

    Matches `torch.optim.AdamW` (amsgrad=False): the decay is applied to the parameter
    directly (`p -= lr * weight_decay * p`) instead of being added to the gradient, so
    it is not rescaled by the adaptive denominator.

    Args:
        params: parameters or parameter-group dicts.
        lr: learning rate, > 0.
        betas: decay rates of the first and second moment estimates, each in [0, 1).
        eps: term added to the denominator for numerical stability, > 0.
        weight_decay: decoupled weight decay coefficient, >= 0.
        correct_bias: whether to apply Adam's bias correction (the original BERT
            optimizer did not).

    Raises:
        ValueError: if a hyperparameter is out of range.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        correct_bias: bool = True,
    ) -> None:
        _check_hyperparameters(lr, betas, eps, weight_decay)
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "correct_bias": correct_bias,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """Take one optimization step; `closure` re-evaluates the loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    self._update(param, group)
        return loss

    def _update(self, param: torch.Tensor, group: dict[str, Any]) -> None:
        """Apply the AdamW update to one parameter in place."""
        grad = param.grad
        if grad.is_sparse:
            raise RuntimeError("AdamW does not support sparse gradients")
        state = self.state[param]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["step"] += 1
        beta1, beta2 = group["betas"]
        lr = group["lr"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]

        # Decay before the Adam step, as torch does, so the two agree to rounding.
        param.mul_(1.0 - lr * group["weight_decay"])
        exp_avg.lerp_(grad, 1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)

        step_size = lr
        denom = exp_avg_sq.sqrt()
        if group["correct_bias"]:
            step_size = lr / (1.0 - beta1 ** state["step"])
            denom.div_(math.sqrt(1.0 - beta2 ** state["step"]))
        param.addcdiv_(exp_avg, denom.add_(group["eps"]), value=-step_size)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Split trainable parameters into a decayed and a non-decayed group.

    Biases and LayerNorm weights (every parameter with fewer than 2 dimensions) are not
    decayed: shrinking a LayerNorm gain or a bias toward 0 is not a useful prior.

    Args:
        model: module whose trainable parameters to group.
        weight_decay: decay for matrices and embeddings.

    Returns:
        Non-empty parameter-group dicts for a `torch.optim.Optimizer`.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.ndim >= 2]
    no_decay = [p for p in trainable if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]


def build_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    weight_decay: float,
    fused: bool | None = None,
) -> torch.optim.Optimizer:
    """Build an AdamW optimizer with no weight decay on biases and LayerNorm weights.

    Args:
        model: module to optimize (only parameters with `requires_grad`).
        name: one of OPTIMIZERS: "mtbert" (our AdamW) or "torch" (`torch.optim.AdamW`).
        lr: learning rate.
        weight_decay: decay for parameters with 2 or more dimensions.
        fused: only for "torch". None uses the fused kernel exactly when every
            parameter is on CUDA; True requires that; False never fuses. Ignored by
            "mtbert", which has no fused kernel.

    Returns:
        The optimizer.

    Raises:
        ValueError: on an unknown name, bad hyperparameters, or fused=True with
            parameters off CUDA.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid optimizers: {', '.join(OPTIMIZERS)}")
    groups = parameter_groups(model, weight_decay)
    if name == "mtbert":
        return AdamW(groups, lr=lr, weight_decay=weight_decay)
    _check_hyperparameters(lr, (0.9, 0.999), 1e-8, weight_decay)
    all_cuda = all(p.is_cuda for group in groups for p in group["params"])
    if fused and not all_cuda:
        raise ValueError("fused=True needs every parameter on CUDA")
    use_fused = all_cuda if fused is None else fused
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=use_fused or None)


def lr_at(
    step: int,
    total_steps: int,
    peak_lr: float,
    warmup_steps: int,
    schedule: str = "linear",
) -> float:
    """Learning rate at an optimizer step: a pure function of the step.

    Linear warmup from 0 to `peak_lr` over `warmup_steps`, then "linear" decay to 0 at
    `total_steps`, "constant" at `peak_lr`, or "cosine" decay to 0 at `total_steps`.
    Steps past `total_steps` keep the end value.

    Args:
        step: 0-based optimizer step, >= 0.
        total_steps: number of optimizer steps in the run, > 0.
        peak_lr: learning rate at the end of warmup, >= 0.
        warmup_steps: steps of linear warmup, in [0, total_steps].
        schedule: one of LR_SCHEDULES.

    Returns:
        The learning rate.

    Raises:
        ValueError: on an unknown schedule or out-of-range arguments.
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; valid schedules: {', '.join(LR_SCHEDULES)}")
    if step < 0 or total_steps <= 0 or peak_lr < 0 or not 0 <= warmup_steps <= total_steps:
        raise ValueError(
            f"need step >= 0, total_steps > 0, peak_lr >= 0 and 0 <= warmup_steps <= total_steps; "
            f"got step={step}, total_steps={total_steps}, peak_lr={peak_lr}, warmup_steps={warmup_steps}"
        )
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    if schedule == "constant":
        return peak_lr
    if step >= total_steps:
        progress = 1.0
    else:  # here total_steps > warmup_steps, so the division is defined
        progress = (step - warmup_steps) / (total_steps - warmup_steps)
    if schedule == "linear":
        return peak_lr * (1.0 - progress)
    return peak_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
