"""Tests for mtbert.losses: values against hand-written formulas, shapes, dispatch."""

from __future__ import annotations

import pytest
import torch

from mtbert.losses import STS_LOSSES, para_loss, sst_loss, sts_loss, task_loss

B = 13


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def test_sst_loss_is_cross_entropy(generator: torch.Generator) -> None:
    logits = torch.randn(B, 5, generator=generator)
    labels = torch.randint(0, 5, (B,), generator=generator)
    expected = -torch.log_softmax(logits, dim=-1)[torch.arange(B), labels].mean()
    torch.testing.assert_close(sst_loss(logits, labels), expected)


def test_para_loss_binary_logit_shapes_agree(generator: torch.Generator) -> None:
    logits = torch.randn(B, generator=generator)
    labels = torch.randint(0, 2, (B,), generator=generator)
    p = torch.sigmoid(logits)
    expected = -(labels * p.log() + (1 - labels) * (1 - p).log()).mean()
    torch.testing.assert_close(para_loss(logits, labels), expected)
    torch.testing.assert_close(para_loss(logits[:, None], labels), expected)


def test_para_loss_two_class_equals_bce_on_logit_difference(generator: torch.Generator) -> None:
    logits = torch.randn(B, 2, generator=generator)
    labels = torch.randint(0, 2, (B,), generator=generator)
    torch.testing.assert_close(para_loss(logits, labels), para_loss(logits[:, 1] - logits[:, 0], labels))


def test_sts_mse_on_the_0_to_5_scale(generator: torch.Generator) -> None:
    pred = 5 * torch.rand(B, generator=generator)
    labels = 5 * torch.rand(B, generator=generator)
    expected = ((pred - labels) ** 2).mean()
    torch.testing.assert_close(sts_loss(pred, labels), expected)
    torch.testing.assert_close(sts_loss(pred[:, None], labels, "mse"), expected)


def test_sts_cosine_compares_against_labels_over_5(generator: torch.Generator) -> None:
    cosine = 2 * torch.rand(B, generator=generator) - 1
    labels = 5 * torch.rand(B, generator=generator)
    torch.testing.assert_close(sts_loss(cosine, labels, "cosine"), ((cosine - labels / 5) ** 2).mean())
    assert sts_loss(labels / 5, labels, "cosine") == 0


def test_losses_backpropagate(generator: torch.Generator) -> None:
    logits = torch.randn(B, 5, generator=generator, requires_grad=True)
    sst_loss(logits, torch.zeros(B, dtype=torch.long)).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_task_loss_dispatches(generator: torch.Generator) -> None:
    sst_logits = torch.randn(B, 5, generator=generator)
    sst_labels = torch.randint(0, 5, (B,), generator=generator)
    assert torch.equal(task_loss("sst", sst_logits, sst_labels), sst_loss(sst_logits, sst_labels))
    para_logits, para_labels = torch.randn(B, generator=generator), torch.ones(B)
    assert torch.equal(task_loss("para", para_logits, para_labels), para_loss(para_logits, para_labels))
    pred, labels = torch.rand(B, generator=generator), 5 * torch.rand(B, generator=generator)
    for kind in STS_LOSSES:
        assert torch.equal(task_loss("sts", pred, labels, kind), sts_loss(pred, labels, kind))


def test_bad_options_and_shapes_raise() -> None:
    with pytest.raises(ValueError, match="mse, cosine"):
        sts_loss(torch.zeros(B), torch.zeros(B), kind="l1")
    with pytest.raises(ValueError, match="mse, cosine"):
        task_loss("sst", torch.zeros(B, 5), torch.zeros(B, dtype=torch.long), sts_loss_kind="l1")
    with pytest.raises(ValueError, match="sst, para, sts"):
        task_loss("qqp", torch.zeros(B), torch.zeros(B))
    with pytest.raises(ValueError):
        sst_loss(torch.zeros(B, 3), torch.zeros(B, dtype=torch.long))
    with pytest.raises(ValueError):
        para_loss(torch.zeros(B, 3), torch.zeros(B))
    with pytest.raises(ValueError):
        sts_loss(torch.zeros(B + 1), torch.zeros(B))
