"""SMART smoothness-inducing adversarial regularizer (Jiang et al., 2020).

The regularizer is the divergence between the model's output on the clean embeddings
and on adversarially perturbed embeddings, where the perturbation is found by a few
steps of normalized gradient ascent on that divergence. Following the reference
implementations (mt-dnn's adversarial training and smart-pytorch), each ascent step
renormalizes the perturbation to unit inf-norm per token, with `epsilon` as a numerical
stabilizer; the paper's explicit projection onto an epsilon-ball is not used. Because
the perturbation then has entries up to 1, `embeds` should be the LayerNorm-ed output
of the embedding layer (entries of order 1), as in mt-dnn, not raw word vectors.

The paper's second half, momentum Bregman proximal point optimization, is here as
`BregmanTeacher` (a slowly moving EMA copy of the parameters, theta~) and
`bregman_divergence` (the same symmetric divergence between the current model's outputs
and theta~'s outputs on the same batch). The training loop adds mu * D_Breg to the loss
and updates the teacher after each optimizer step (mtbert/train.py).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SMART_KINDS: tuple[str, ...] = ("classification", "regression")


def symmetric_kl(logits: Tensor, other_logits: Tensor) -> Tensor:
    """KL(p || q) + KL(q || p) of two batches of logits (B, C), mean over the batch.

    Written as sum (p - q)(log p - log q): each term is >= 0 even in floating point,
    because exp is monotone, so the result never dips below zero from rounding.
    """
    log_p = F.log_softmax(logits.float(), dim=-1)
    log_q = F.log_softmax(other_logits.float(), dim=-1)
    return ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum(dim=-1).mean()


def _divergence(out: Tensor, reference: Tensor, kind: str) -> Tensor:
    """Symmetric KL for classification logits, MSE for regression scores."""
    if out.shape != reference.shape:
        raise ValueError(
            f"perturbed output {tuple(out.shape)} and clean output {tuple(reference.shape)} differ"
        )
    if kind == "classification":
        return symmetric_kl(out, reference)
    return F.mse_loss(out.float(), reference.float())


def _ascent_step(noise: Tensor, loss: Tensor, step_size: float, epsilon: float) -> Tensor:
    """One normalized gradient-ascent step on the perturbation (B, T, H)."""
    if loss.requires_grad:
        (grad,) = torch.autograd.grad(loss, noise, allow_unused=True)
    else:
        grad = None
    if grad is None:  # the output does not depend on the embeddings
        grad = torch.zeros_like(noise)
    step = noise.detach() + step_size * grad
    # Per-token inf-norm over the hidden dimension, as in mt-dnn's norm_level=0.
    return step / (step.abs().amax(dim=-1, keepdim=True) + epsilon)


def _check_args(kind: str, noise_var: float, step_size: float, epsilon: float, num_steps: int) -> None:
    """Raise ValueError on an unknown kind or out-of-range hyperparameters."""
    if kind not in SMART_KINDS:
        raise ValueError(f"unknown SMART kind {kind!r}; valid kinds: {', '.join(SMART_KINDS)}")
    if noise_var < 0 or step_size <= 0 or epsilon <= 0 or num_steps < 0:
        raise ValueError(
            "need noise_var >= 0, step_size > 0, epsilon > 0 and num_steps >= 0; got "
            f"noise_var={noise_var}, step_size={step_size}, epsilon={epsilon}, num_steps={num_steps}"
        )


def smart_adversarial_loss(
    forward_fn: Callable[[Tensor], Tensor],
    embeds: Tensor,
    clean_out: Tensor,
    kind: str,
    noise_var: float = 1e-5,
    step_size: float = 1e-3,
    epsilon: float = 1e-6,
    num_steps: int = 1,
) -> Tensor:
    """SMART smoothness loss: divergence between clean and adversarial outputs.

    The perturbation starts as Gaussian noise with variance `noise_var` and takes
    `num_steps` normalized ascent steps on the divergence, computed on a detached copy of
    `embeds` against a detached `clean_out`. The returned loss is the divergence at the
    final perturbation, which is itself treated as a constant: gradients flow into the
    model parameters through `forward_fn`, into `embeds` (if it requires grad), and into
    `clean_out` (pass `clean_out.detach()` to stop them there), never into the noise.

    Args:
        forward_fn: maps embeddings (B, T, H) to the model output: logits (B, C) for
            "classification", scores (B,) or (B, 1) for "regression".
        embeds: clean embeddings, (B, T, H).
        clean_out: forward_fn's output on the clean embeddings.
        kind: one of SMART_KINDS; picks symmetric KL or MSE.
        noise_var: variance of the initial Gaussian perturbation.
        step_size: ascent step size.
        epsilon: stabilizer in the inf-norm normalization.
        num_steps: ascent steps; 0 uses the random perturbation as is.

    Returns:
        Scalar loss, >= 0.
    """
    _check_args(kind, noise_var, step_size, epsilon, num_steps)
    detached = embeds.detach()
    noise = torch.randn_like(detached) * noise_var**0.5
    reference = clean_out.detach()
    for _ in range(num_steps):
        noise.requires_grad_(True)
        loss = _divergence(forward_fn(detached + noise), reference, kind)
        noise = _ascent_step(noise, loss, step_size, epsilon)
    return _divergence(forward_fn(embeds + noise.detach()), clean_out, kind)


def bregman_divergence(out: Tensor, teacher_out: Tensor, kind: str) -> Tensor:
    """SMART's Bregman divergence D_Breg(theta, theta~) on one batch.

    The same divergence as the adversarial term (symmetric KL of logits (B, C) for
    "classification", mean squared error of scores (B,) for "regression") between the
    current model's output and the teacher's. The teacher's output is a constant target:
    gradients flow only into `out`.
    """
    if kind not in SMART_KINDS:
        raise ValueError(f"unknown SMART kind {kind!r}; valid kinds: {', '.join(SMART_KINDS)}")
    return _divergence(out, teacher_out.detach(), kind)


class BregmanTeacher:
    """The slowly moving parameters theta~ of SMART's momentum Bregman proximal point step.

    Holds one frozen copy of the model (no gradients). After each optimizer step,
    `update` sets theta~ <- (1 - beta) theta + beta theta~ for every floating-point
    parameter and buffer (other buffers are copied). beta = 0 makes theta~ the previous
    iterate (vanilla proximal point); beta = 1 keeps it at the starting weights.
    """

    def __init__(self, model: nn.Module, beta: float) -> None:
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"need 0 <= beta <= 1, got beta={beta}")
        self.beta = beta
        self.module = copy.deepcopy(model)  # theta~_0 = theta_0
        self.module.requires_grad_(False)

    def _pairs(self, model: nn.Module) -> list[tuple[Tensor, Tensor]]:
        mine = [*self.module.parameters(), *self.module.buffers()]
        theirs = [*model.parameters(), *model.buffers()]
        if len(mine) != len(theirs):
            raise ValueError("the teacher and the model have different parameters")
        return list(zip(mine, theirs))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """theta~ <- (1 - beta) theta + beta theta~, in place, from `model`'s current weights."""
        for slow, fast in self._pairs(model):
            if slow.is_floating_point():
                slow.mul_(self.beta).add_(fast.detach(), alpha=1.0 - self.beta)
            else:
                slow.copy_(fast)
