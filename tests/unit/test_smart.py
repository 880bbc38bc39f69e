"""Tests for mtbert.smart on tiny models: sign, constant-model zero, useful gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mtbert.smart import SMART_KINDS, smart_adversarial_loss, symmetric_kl

B, T, H, C = 13, 7, 11, 5


class TinyHead(nn.Module):
    """Mean-pool over tokens, then a linear layer: (B, T, H) -> (B, C) or (B,)."""

    def __init__(self, kind: str, constant: bool = False) -> None:
        super().__init__()
        self.kind, self.constant = kind, constant
        self.linear = nn.Linear(H, C if kind == "classification" else 1)

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        pooled = embeds.mean(dim=1)  # (B, H)
        if self.constant:  # ignores its input; still depends on its parameters
            pooled = torch.zeros_like(pooled)
        out = self.linear(pooled)
        return out if self.kind == "classification" else out[:, 0]


def _loss(model: TinyHead, embeds: torch.Tensor, num_steps: int = 1) -> torch.Tensor:
    torch.manual_seed(0)
    return smart_adversarial_loss(model, embeds, model(embeds), model.kind, num_steps=num_steps)


@pytest.mark.parametrize("kind", SMART_KINDS)
@pytest.mark.parametrize("num_steps", [0, 1, 2])
def test_loss_is_non_negative_with_finite_nonzero_param_grads(kind: str, num_steps: int) -> None:
    torch.manual_seed(1)
    model, embeds = TinyHead(kind), torch.randn(B, T, H)
    loss = _loss(model, embeds, num_steps)
    assert loss.ndim == 0 and loss >= 0
    loss.backward()
    grad = model.linear.weight.grad
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("kind", SMART_KINDS)
def test_constant_model_gives_zero(kind: str) -> None:
    torch.manual_seed(2)
    model = TinyHead(kind, constant=True)
    loss = _loss(model, torch.randn(B, T, H), num_steps=2)
    assert loss.item() == pytest.approx(0.0, abs=1e-12)


def test_ascent_increases_the_divergence() -> None:
    # The adversarial perturbation should hurt more than the initial random one.
    torch.manual_seed(3)
    model, embeds = TinyHead("regression"), torch.randn(B, T, H)
    assert _loss(model, embeds, num_steps=1) > _loss(model, embeds, num_steps=0)


def test_gradient_reaches_embeddings_not_noise() -> None:
    torch.manual_seed(4)
    model = TinyHead("classification")
    embeds = torch.randn(B, T, H, requires_grad=True)
    _loss(model, embeds).backward()
    assert embeds.grad is not None and torch.isfinite(embeds.grad).all()


def test_symmetric_kl_properties() -> None:
    torch.manual_seed(5)
    p, q = torch.randn(B, C), torch.randn(B, C)
    assert symmetric_kl(p, p) == 0
    assert symmetric_kl(p, q) > 0
    torch.testing.assert_close(symmetric_kl(p, q), symmetric_kl(q, p))
    log_p, log_q = p.log_softmax(-1), q.log_softmax(-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1) + (log_q.exp() * (log_q - log_p)).sum(-1)
    torch.testing.assert_close(symmetric_kl(p, q), kl.mean())


def test_bad_arguments_raise() -> None:
    model, embeds = TinyHead("regression"), torch.randn(B, T, H)
    with pytest.raises(ValueError, match="classification, regression"):
        smart_adversarial_loss(model, embeds, model(embeds), "ranking")
    with pytest.raises(ValueError):
        smart_adversarial_loss(model, embeds, model(embeds), "regression", num_steps=-1)
    with pytest.raises(ValueError):
        smart_adversarial_loss(model, embeds, model(embeds)[:, None], "regression")
