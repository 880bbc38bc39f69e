"""AdamW with decoupled weight decay, optimizer construction, and the LR schedule.

`AdamW` is our own implementation (the minBERT assignment); `build_optimizer` can also
return `torch.optim.AdamW`, which is the oracle it is tested against and the fast path
on GPU.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from mtbert.config import TrainConfig

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


# AdamW makes eight elementwise passes over four tensors per parameter. Done tensor by tensor,
# each pass streams the whole tensor through memory (the 47 MB word-embedding table eight times,
# plus a fresh 47 MB square-root buffer that the OS must page in on every step). Done on blocks
# of this many elements (2 MB per fp32 tensor), a block's tensors stay in cache across the
# eight passes: MiniLM's step took 49 ms instead of 116 ms on 2 CPU threads (docs/performance.md).
BLOCK_ELEMENTS = 1 << 19


def _pieces(quad: tuple[torch.Tensor, ...], size: int) -> Iterator[tuple[torch.Tensor, ...]]:
    """(param, grad, exp_avg, exp_avg_sq) as is, or as flat views of at most `size` elements."""
    param, grad, exp_avg, exp_avg_sq = quad
    if param.numel() <= size or not all(t.is_contiguous() for t in (param, exp_avg, exp_avg_sq)):
        yield quad
        return
    flat = (param.view(-1), grad.reshape(-1), exp_avg.view(-1), exp_avg_sq.view(-1))
    for start in range(0, param.numel(), size):
        yield tuple(t[start:start + size] for t in flat)


def _blocks(tensors: tuple[list[torch.Tensor], ...], size: int) -> Iterator[tuple[list[torch.Tensor], ...]]:
    """Regroup (params, grads, exp_avgs, exp_avg_sqs) lists into blocks of about `size` elements.

    Large tensors are cut into views (updating a view updates the tensor); small ones are
    gathered until a block is full.
    """
    block: tuple[list[torch.Tensor], ...] = ([], [], [], [])
    filled = 0
    for quad in zip(*tensors):
        for piece in _pieces(quad, size):
            if filled and filled + piece[0].numel() > size:
                yield block
                block, filled = ([], [], [], []), 0
            for dest, tensor in zip(block, piece):
                dest.append(tensor)
            filled += piece[0].numel()
    if block[0]:
        yield block


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
            for step, tensors in self._gather(group).items():
                for block in _blocks(tensors, BLOCK_ELEMENTS):
                    self._update(step, *block, group=group)
        return loss

    def _gather(self, group: dict[str, Any]) -> dict[int, tuple[list[torch.Tensor], ...]]:
        """The group's parameters with gradients, their gradients and moments, by step count.

        Parameters share a step count unless some of them skipped steps without a gradient;
        each distinct count is updated as one batch of tensors.
        """
        by_step: dict[int, tuple[list[torch.Tensor], ...]] = {}
        for param in group["params"]:
            if param.grad is None:
                continue
            if param.grad.is_sparse:
                raise RuntimeError("AdamW does not support sparse gradients")
            state = self.state[param]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["step"] += 1
            lists = by_step.setdefault(state["step"], ([], [], [], []))
            for dest, tensor in zip(lists, (param, param.grad, state["exp_avg"], state["exp_avg_sq"])):
                dest.append(tensor)
        return by_step

    def _update(self, step: int, params: list[torch.Tensor], grads: list[torch.Tensor],
                exp_avgs: list[torch.Tensor], exp_avg_sqs: list[torch.Tensor],
                group: dict[str, Any]) -> None:
        """Apply the AdamW update in place to tensors that all reached `step`.

        One `torch._foreach_*` call per operation over the block's tensors: the same
        arithmetic, in the same order, as a per-parameter loop.
        """
        beta1, beta2 = group["betas"]
        lr = group["lr"]
        # Decay before the Adam step, as torch does, so the two agree to rounding.
        torch._foreach_mul_(params, 1.0 - lr * group["weight_decay"])
        torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)

        step_size = lr
        denom = torch._foreach_sqrt(exp_avg_sqs)
        if group["correct_bias"]:
            step_size = lr / (1.0 - beta1**step)
            torch._foreach_div_(denom, math.sqrt(1.0 - beta2**step))
        torch._foreach_add_(denom, group["eps"])
        torch._foreach_addcdiv_(params, exp_avgs, denom, value=-step_size)


def parameter_groups(model: nn.Module, weight_decay: float,
                     lr_scale: Callable[[str], float] | None = None) -> list[dict[str, Any]]:
    """Split trainable parameters into groups by weight decay and learning-rate scale.

    Biases and LayerNorm weights (every parameter with fewer than 2 dimensions) are not
    decayed: shrinking a LayerNorm gain or a bias toward 0 is not a useful prior. Each group
    carries an `lr_scale` (from `lr_scale(parameter_name)`, default 1.0) that the training loop
    multiplies into the scheduled learning rate, e.g. to train freshly initialised heads faster.

    Args:
        model: module whose trainable parameters to group.
        weight_decay: decay for matrices and embeddings.
        lr_scale: maps a parameter name to its learning-rate multiplier.

    Returns:
        Non-empty parameter-group dicts for a `torch.optim.Optimizer`.
    """
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            key = (param.ndim >= 2, lr_scale(name) if lr_scale else 1.0)
            groups.setdefault(key, []).append(param)
    return [{"params": params, "weight_decay": weight_decay if decay else 0.0, "lr_scale": scale}
            for (decay, scale), params in sorted(groups.items(), key=lambda kv: (not kv[0][0], kv[0][1]))]


ENCODER_PREFIX = "encoder."  # MultitaskBert's encoder; every other parameter belongs to a head
_LAYER = re.compile(r"encoder\.layer\.(\d+)\.")


def layer_depth(name: str, num_layers: int) -> int:
    """Depth of an encoder parameter (its name inside `BertModel`) for layer-wise lr decay.

    Embeddings are at depth 0, `encoder.layer.<i>` at i + 1, and the pooler, which sits on top of
    the last layer, at `num_layers` + 1 (as ELECTRA's task-specific parameters).

    Raises:
        ValueError: for a name that is none of these, or a layer index >= `num_layers`.
    """
    if name.startswith("embeddings."):
        return 0
    if name.startswith("pooler."):
        return num_layers + 1
    match = _LAYER.match(name)
    if match is None or int(match.group(1)) >= num_layers:
        raise ValueError(f"{name!r} is not an embedding, layer (< {num_layers}) or pooler parameter")
    return int(match.group(1)) + 1


def lr_scale_fn(num_layers: int, cfg: TrainConfig) -> Callable[[str], float]:
    """Learning-rate multiplier by `MultitaskBert` parameter name, for `build_optimizer(lr_scale=)`.

    Heads (names outside `encoder.`) train at `cfg.head_lr_scale`. With layer-wise decay d =
    `cfg.layer_decay` (BAM! and ELECTRA use 0.9 and 0.8), encoder layer i of L (0-based) trains at
    d ** (L - i), the embeddings at d ** (L + 1) and the pooler at 1: the lower a layer, the more
    general its features and the less it should move. d = 1 gives every encoder parameter 1.0.

    Args:
        num_layers: L, the encoder's `num_hidden_layers`.
        cfg: the train section (head_lr_scale, layer_decay).

    Returns:
        name -> multiplier; it raises ValueError for an encoder name it cannot place.
    """
    def scale(name: str) -> float:
        if not name.startswith(ENCODER_PREFIX):
            return cfg.head_lr_scale
        depth = layer_depth(name[len(ENCODER_PREFIX):], num_layers)
        return cfg.layer_decay ** (num_layers + 1 - depth)

    return scale


def build_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    weight_decay: float,
    fused: bool | None = None,
    lr_scale: Callable[[str], float] | None = None,
) -> torch.optim.Optimizer:
    """Build an AdamW optimizer with no weight decay on biases and LayerNorm weights.

    Args:
        model: module to optimize (only parameters with `requires_grad`).
        name: one of OPTIMIZERS: "mtbert" (our AdamW) or "torch" (`torch.optim.AdamW`).
        lr: learning rate.
        weight_decay: decay for parameters with 2 or more dimensions.
        lr_scale: per-parameter learning-rate multiplier by name (see `parameter_groups`).
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
    groups = parameter_groups(model, weight_decay, lr_scale)
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
