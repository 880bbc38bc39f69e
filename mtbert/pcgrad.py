"""PCGrad: gradient surgery for multitask learning (Yu et al., 2020).

When two task gradients conflict (negative dot product), each is projected onto the
normal plane of the other before they are summed, so that no task's step directly
undoes another's. This module is a pure function from per-task gradients to one
combined gradient, plus helpers to move gradients between parameters and flat vectors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class PCGradResult:
    """Outcome of one PCGrad combination.

    Attributes:
        grad: combined gradient, (D,).
        num_conflicts: unordered task pairs whose ORIGINAL gradients have a negative dot
            product; independent of the random projection order, so it is a stable
            quantity to log.
        num_pairs: unordered task pairs, K * (K - 1) / 2.
    """

    grad: Tensor
    num_conflicts: int
    num_pairs: int


def project_conflicting(grad: Tensor, others: list[Tensor]) -> Tensor:
    """Project `grad` against each of `others` in the given order where they conflict.

    For each g_j in order: if g . g_j < 0, g <- g - (g . g_j) / ||g_j||^2 g_j. After the
    step for g_j, g . g_j >= 0 (it is 0 if a projection happened); later steps may
    make it negative again, so only the last g_j is guaranteed to be non-conflicting
    when there are more than two tasks.

    Args:
        grad: one task's gradient, (D,).
        others: the other tasks' original gradients, each (D,).

    Returns:
        The projected gradient, (D,), a new tensor.
    """
    projected = grad.clone()
    for other in others:
        # Branch-free (min(dot, 0) instead of `if dot < 0`) so a CUDA run does not sync
        # with the host per pair. A zero g_j has dot == 0, so the coefficient is 0; the
        # clamp keeps 0 / 0 from producing NaN.
        dot = torch.dot(projected, other).clamp_max(0.0)
        norm_sq = torch.dot(other, other).clamp_min(torch.finfo(other.dtype).tiny)
        projected = projected - (dot / norm_sq) * other
    return projected


def _count_conflicts(stacked: Tensor) -> int:
    """Unordered pairs with a negative dot product among the rows of (K, D) `stacked`."""
    gram = stacked @ stacked.T  # (K, K)
    upper = torch.triu(torch.ones_like(gram, dtype=torch.bool), diagonal=1)
    return int((gram[upper] < 0).sum())


def pcgrad(grads: list[Tensor], generator: torch.Generator | None = None) -> PCGradResult:
    """Combine per-task gradients with PCGrad.

    Each task's gradient is projected against the ORIGINAL gradients of the other tasks,
    in an order drawn at random per task (as in the paper's Algorithm 1 and reference
    code), and the projected gradients are summed.

    Args:
        grads: K per-task flattened gradients, each (D,), same dtype and device.
        generator: CPU generator for the projection order; the global RNG if None.

    Returns:
        PCGradResult with the summed projected gradient (D,) and conflict counts.

    Raises:
        ValueError: if grads is empty or the gradients are not all 1-D of one size.
    """
    if not grads:
        raise ValueError("pcgrad needs at least one gradient")
    if any(g.ndim != 1 or g.shape != grads[0].shape for g in grads):
        raise ValueError(f"grads must all be 1-D of one size; got shapes {[tuple(g.shape) for g in grads]}")
    num_tasks = len(grads)
    total = torch.zeros_like(grads[0])
    for i, grad in enumerate(grads):
        others = [j for j in range(num_tasks) if j != i]
        order = torch.randperm(len(others), generator=generator).tolist()
        total += project_conflicting(grad, [grads[others[k]] for k in order])
    stacked = torch.stack(grads)
    return PCGradResult(
        grad=total,
        num_conflicts=_count_conflicts(stacked),
        num_pairs=num_tasks * (num_tasks - 1) // 2,
    )


def flat_grads(params: list[nn.Parameter]) -> Tensor:
    """Concatenate the gradients of `params` into one vector, zeros where grad is None.

    Args:
        params: parameters in a fixed order (the same order for every task).

    Returns:
        Flat gradient, (D,) with D = total number of elements, a new tensor.
    """
    if not params:
        raise ValueError("flat_grads needs at least one parameter")
    pieces = [
        p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), dtype=p.dtype, device=p.device)
        for p in params
    ]
    return torch.cat(pieces)


def assign_flat_grad(params: list[nn.Parameter], flat: Tensor) -> None:
    """Write a flat gradient (D,) back into `.grad` of `params`, in the flat_grads order.

    Raises:
        ValueError: if flat's length is not the total number of parameter elements.
    """
    expected = sum(p.numel() for p in params)
    if flat.ndim != 1 or flat.numel() != expected:
        raise ValueError(f"flat gradient has shape {tuple(flat.shape)}; expected ({expected},)")
    offset = 0
    for p in params:
        chunk = flat[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
        if p.grad is None:
            p.grad = chunk.to(dtype=p.dtype).clone()
        else:
            p.grad.copy_(chunk)
