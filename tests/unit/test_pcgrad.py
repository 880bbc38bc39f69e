"""Tests for mtbert.pcgrad: what projection guarantees, pass-through, counting, safety."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mtbert.pcgrad import assign_flat_grad, flat_grads, pcgrad, project_conflicting

D = 37


def _conflicting_pair(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two random gradients with a negative dot product."""
    generator = torch.Generator().manual_seed(seed)
    g1 = torch.randn(D, generator=generator, dtype=torch.float64)
    g2 = -0.5 * g1 + 0.3 * torch.randn(D, generator=generator, dtype=torch.float64)
    assert torch.dot(g1, g2) < 0
    return g1, g2


@pytest.mark.parametrize("seed", range(5))
def test_two_tasks_no_conflict_remains(seed: int) -> None:
    g1, g2 = _conflicting_pair(seed)
    p1, p2 = project_conflicting(g1, [g2]), project_conflicting(g2, [g1])
    # Each projected gradient is orthogonal to the other original one...
    assert torch.dot(p1, g2).abs() < 1e-10 and torch.dot(p2, g1).abs() < 1e-10
    # ...and, for two tasks, the projected pair no longer conflicts either:
    # p1 . p2 = -(g1 . g2)(1 - cos^2) >= 0.
    assert torch.dot(p1, p2) >= 0
    result = pcgrad([g1, g2])
    torch.testing.assert_close(result.grad, p1 + p2)
    assert (result.num_conflicts, result.num_pairs) == (1, 1)


def test_projection_does_not_increase_norm() -> None:
    generator = torch.Generator().manual_seed(0)
    grads = [torch.randn(D, generator=generator, dtype=torch.float64) for _ in range(4)]
    for i, g in enumerate(grads):
        projected = project_conflicting(g, grads[:i] + grads[i + 1 :])
        assert projected.norm() <= g.norm() + 1e-12


def test_three_tasks_last_projection_holds_earlier_may_not() -> None:
    # With 3+ tasks, only the LAST gradient projected against is guaranteed
    # non-conflicting: a later projection can reintroduce an earlier conflict.
    g = torch.tensor([1.0, 0.0], dtype=torch.float64)
    a = torch.tensor([-1.0, 1.0], dtype=torch.float64)  # conflicts with g
    b = torch.tensor([-1.0, -3.0], dtype=torch.float64)  # conflicts with g after the a-step
    projected = project_conflicting(g, [a, b])
    assert torch.dot(projected, b) >= -1e-12
    assert torch.dot(projected, a) < 0
    # Against random triples the guarantee for the last one always holds.
    generator = torch.Generator().manual_seed(1)
    for _ in range(50):
        g0, g1, g2 = (torch.randn(5, generator=generator, dtype=torch.float64) for _ in range(3))
        assert torch.dot(project_conflicting(g0, [g1, g2]), g2) >= -1e-12


def test_non_conflicting_grads_pass_through_unchanged() -> None:
    generator = torch.Generator().manual_seed(2)
    base = torch.randn(D, generator=generator).abs()
    grads = [base * torch.rand(D, generator=generator) for _ in range(3)]  # all positive
    result = pcgrad(grads, generator=generator)
    assert torch.equal(result.grad, grads[0] + grads[1] + grads[2])
    assert (result.num_conflicts, result.num_pairs) == (0, 3)


def test_conflict_counting_uses_original_pairs() -> None:
    e1, e2 = torch.eye(2, dtype=torch.float64)
    grads = [e1, -e1 + 0.1 * e2, e2]  # only pair (0, 1) conflicts
    result = pcgrad(grads, generator=torch.Generator().manual_seed(0))
    assert (result.num_conflicts, result.num_pairs) == (1, 3)
    assert pcgrad([e1]).num_pairs == 0


def test_zero_gradient_is_safe() -> None:
    g1, _ = _conflicting_pair(3)
    zero = torch.zeros(D, dtype=torch.float64)
    result = pcgrad([g1, zero, -g1])
    assert torch.isfinite(result.grad).all()
    assert pcgrad([zero, zero]).grad.abs().sum() == 0
    assert torch.equal(project_conflicting(g1, [zero]), g1)


def test_random_order_is_seeded() -> None:
    generator = torch.Generator().manual_seed(4)
    grads = [torch.randn(D, generator=generator) for _ in range(3)]
    first = pcgrad(grads, generator=torch.Generator().manual_seed(9)).grad
    second = pcgrad(grads, generator=torch.Generator().manual_seed(9)).grad
    assert torch.equal(first, second)


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError):
        pcgrad([])
    with pytest.raises(ValueError):
        pcgrad([torch.zeros(3), torch.zeros(4)])


def test_flat_grads_round_trip() -> None:
    linear, norm = nn.Linear(5, 3), nn.LayerNorm(3)
    params = list(linear.parameters()) + list(norm.parameters())
    linear(torch.randn(2, 5)).sum().backward()  # norm's grads stay None
    flat = flat_grads(params)
    assert flat.shape == (5 * 3 + 3 + 3 + 3,)
    assert torch.equal(flat[:15], linear.weight.grad.reshape(-1))
    assert torch.equal(flat[18:], torch.zeros(6))

    target = torch.arange(flat.numel(), dtype=torch.float32)
    assign_flat_grad(params, target)
    assert torch.equal(flat_grads(params), target)
    assert norm.weight.grad is not None
    with pytest.raises(ValueError):
        assign_flat_grad(params, target[:-1])
