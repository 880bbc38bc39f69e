"""Tests for mtbert.smart on tiny models: sign, constant-model zero, useful gradients.

The second half covers the Bregman proximal point step: the EMA teacher, the divergence, and
the term inside train_step / fit (zero at theta == theta~, pulls toward theta~, exact resume).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from mtbert.batching import Batch, Encoded, TokenizedTask
from mtbert.checkpoint import TEACHER_KEY, load_checkpoint, restore_rng, save_checkpoint
from mtbert.config import ModelConfig, SmartConfig, TrainConfig
from mtbert.model.bert import BertConfig, BertModel
from mtbert.model.multitask import MultitaskBert
from mtbert.optim import build_optimizer
from mtbert.smart import (
    SMART_KINDS,
    BregmanTeacher,
    bregman_divergence,
    smart_adversarial_loss,
    symmetric_kl,
)
from mtbert.train import Callback, FitContext, TrainState, _bregman_term, batch_loss, fit, make_teacher, train_step

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


# ---------------------------------------------------------------------------------------------
# Bregman proximal point: the EMA teacher and the divergence on tiny heads


class Counted(nn.Module):
    """A TinyHead plus an integer buffer (copied, never averaged) and a float buffer (averaged)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = TinyHead("classification")
        self.register_buffer("steps", torch.tensor([3, 5]))
        self.register_buffer("scale", torch.randn(C))


def _move(model: nn.Module, seed: int, size: float = 0.1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if t.is_floating_point():
                t.add_(size * torch.randn(t.shape, generator=g))
            else:
                t.add_(7)


def _flat(model: nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for t in [*model.parameters(), *model.buffers()]]


@pytest.mark.parametrize("beta", [0.0, 0.75, 0.99, 1.0])
def test_ema_update_follows_the_formula(beta: float) -> None:
    torch.manual_seed(6)
    model = Counted()
    teacher = BregmanTeacher(model, beta)
    assert all(not p.requires_grad for p in teacher.module.parameters())
    assert all(torch.equal(a, b) for a, b in zip(_flat(teacher.module), _flat(model)))
    for seed in (1, 2):  # two updates, so theta~_{t-1} != theta_{t-1} on the second
        previous = _flat(teacher.module)
        _move(model, seed)
        teacher.update(model)
        for slow, old, fast in zip(_flat(teacher.module), previous, _flat(model)):
            if fast.is_floating_point():
                torch.testing.assert_close(slow, (1 - beta) * fast + beta * old, rtol=1e-6, atol=1e-7)
            else:
                assert torch.equal(slow, fast)
    # The teacher owns its storage: moving the model afterwards leaves it alone.
    before = _flat(teacher.module)
    _move(model, 3)
    assert all(torch.equal(a, b) for a, b in zip(_flat(teacher.module), before))


def test_teacher_rejects_bad_beta_and_another_model() -> None:
    with pytest.raises(ValueError, match="beta"):
        BregmanTeacher(TinyHead("regression"), 1.5)
    teacher = BregmanTeacher(TinyHead("regression"), 0.5)
    with pytest.raises(ValueError, match="different parameters"):
        teacher.update(Counted())


@pytest.mark.parametrize("kind", SMART_KINDS)
def test_bregman_divergence_zero_positive_and_teacher_is_constant(kind: str) -> None:
    torch.manual_seed(7)
    model, embeds = TinyHead(kind), torch.randn(B, T, H)
    teacher = BregmanTeacher(model, 0.9)
    assert bregman_divergence(model(embeds), teacher.module(embeds), kind).item() == 0.0
    _move(model, 4)
    target = teacher.module(embeds).detach().requires_grad_(True)
    loss = bregman_divergence(model(embeds), target, kind)
    assert loss.item() > 0
    loss.backward()
    assert target.grad is None  # the teacher's output is a constant target
    with pytest.raises(ValueError, match="classification, regression"):
        bregman_divergence(model(embeds), target, "ranking")


def _distance(model: nn.Module, teacher: BregmanTeacher) -> float:
    pairs = zip(model.parameters(), teacher.module.parameters())
    return sum(float((p - q).detach().pow(2).sum()) for p, q in pairs)


@pytest.mark.parametrize("kind", SMART_KINDS)
def test_a_gradient_step_on_the_term_pulls_toward_the_teacher(kind: str) -> None:
    torch.manual_seed(8)
    model, embeds = TinyHead(kind), torch.randn(B, T, H)
    teacher = BregmanTeacher(model, 0.9)
    _move(model, 5, size=0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    before = bregman_divergence(model(embeds), teacher.module(embeds), kind)
    gap = _distance(model, teacher)
    before.backward()
    optimizer.step()
    after = bregman_divergence(model(embeds), teacher.module(embeds), kind)
    assert after.item() < before.item()
    assert _distance(model, teacher) < gap


# ---------------------------------------------------------------------------------------------
# The Bregman term in the training loop (tiny multitask BERT with dropout on)

# Odd sizes; dropout on, so "zero at theta == theta~" also checks the teacher replays the masks.
TINY = BertConfig(vocab_size=97, hidden_size=24, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=37, max_position_embeddings=16)
BREG = TrainConfig(grad_clip=0.0, smart=SmartConfig(enabled=True, weight=0.3, bregman_weight=0.7,
                                                    bregman_beta=0.6))
NB, NT = 5, 7


def _bert(seed: int = 0) -> MultitaskBert:
    torch.manual_seed(seed)
    return MultitaskBert(BertModel(TINY), ModelConfig(head_dropout=0.2))


def _batch(task: str, seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, NT + 1, (NB,), generator=g)
    mask = (torch.arange(NT)[None, :] < lengths[:, None]).long()
    ids = torch.randint(5, 97, (NB, NT), generator=g) * mask
    labels = torch.randint(0, {"sst": 5, "para": 2, "sts": 6}[task], (NB,), generator=g)
    labels = labels.float() if task == "sts" else labels
    return Batch(task, Encoded(ids, mask, torch.zeros_like(ids)), labels, list(range(NB)))


def _with(cfg: TrainConfig, **smart: object) -> TrainConfig:
    return dataclasses.replace(cfg, smart=dataclasses.replace(cfg.smart, **smart))


@pytest.mark.parametrize("task", ["sst", "para", "sts"])
def test_term_is_zero_at_the_teacher_and_leaves_the_random_stream_alone(task: str) -> None:
    model, batch = _bert(), _batch(task, 1)
    model.train()
    teacher = make_teacher(model, BREG)
    results = {}
    for name, cfg in (("on", BREG), ("off", _with(BREG, bregman_weight=0.0))):
        torch.manual_seed(5)
        metrics: dict[str, float] = {}
        loss = batch_loss(model, batch, cfg, metrics, teacher)
        results[name] = (loss.item(), metrics, torch.get_rng_state())
    (on, on_metrics, on_rng), (off, off_metrics, off_rng) = results["on"], results["off"]
    assert on_metrics[f"train/{task}/bregman"] == pytest.approx(0.0, abs=1e-12)
    assert on == pytest.approx(off, abs=1e-6)
    assert torch.equal(on_rng, off_rng)  # the teacher's forward does not advance the generator
    assert f"train/{task}/bregman" not in off_metrics


@pytest.mark.parametrize("task", ["sst", "para", "sts"])
def test_term_is_positive_after_a_step_and_added_to_the_loss(task: str) -> None:
    model, batch = _bert(), _batch(task, 2)
    teacher = make_teacher(model, BREG)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    before = _flat(teacher.module)
    train_step(model, [batch], optimizer, BREG, step_seed=0, teacher=teacher)
    for slow, old, fast in zip(_flat(teacher.module), before, _flat(model)):  # updated after the step
        torch.testing.assert_close(slow, 0.4 * fast + 0.6 * old, rtol=1e-6, atol=1e-7)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(9)
    metrics = train_step(model, [batch], optimizer, BREG, step_seed=1, teacher=teacher)
    term = metrics[f"train/{task}/bregman"]
    assert math.isfinite(term) and term > 0
    model.load_state_dict(weights)  # back to before the step; the same dropout masks and noise:
    torch.manual_seed(9)
    model.train()
    without = batch_loss(model, batch, _with(BREG, bregman_weight=0.0)).item()
    assert metrics[f"train/{task}/loss"] == pytest.approx(without + 0.7 * term, rel=1e-5)


def test_disabled_term_leaves_loss_and_gradients_identical() -> None:
    batches = [_batch("sst", 3), _batch("para", 4), _batch("sts", 5)]
    off = _with(BREG, bregman_weight=0.0)
    runs = []
    for cfg, use_teacher in ((off, True), (off, False)):
        model = _bert()
        torch.manual_seed(2)
        metrics = train_step(model, batches, torch.optim.SGD(model.parameters(), lr=0.1), cfg, 0,
                             make_teacher(model, BREG) if use_teacher else None)
        runs.append((_flat(model), metrics))
    (w_teacher, m_teacher), (w_plain, m_plain) = runs
    assert m_teacher == m_plain and not any("bregman" in k for k in m_plain)
    assert all(torch.equal(a, b) for a, b in zip(w_teacher, w_plain))


def test_term_gradient_pulls_a_multitask_model_toward_the_teacher() -> None:
    model, batch = _bert(), _batch("sst", 6)
    model.eval()  # no dropout: compare the same function before and after the step
    teacher = make_teacher(model, BREG)
    _move(model, 6, size=0.05)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    gap = _distance(model, teacher)
    before = _bregman_term(model, teacher, batch, model("sst", batch.enc), (torch.get_rng_state(), None))
    before.backward()
    optimizer.step()
    after = _bregman_term(model, teacher, batch, model("sst", batch.enc), (torch.get_rng_state(), None))
    assert 0 < after.item() < before.item()
    assert _distance(model, teacher) < gap


def _tiny_data() -> dict[str, TokenizedTask]:
    g = torch.Generator().manual_seed(9)
    # Cross-encoded: one (ids, token types) sequence per row.
    return {task: TokenizedTask(task, [(([1, *torch.randint(5, 97, (n,), generator=g).tolist(), 2],
                                         [0] * (n + 2)),)
                                       for n in torch.randint(1, 5, (rows,), generator=g).tolist()],
                                [float(i % 2) for i in range(rows)])
            for task, rows in (("sst", 11), ("para", 9), ("sts", 7))}


class _Kill(Callback):
    """Saves a checkpoint (with the teacher fit hands over) at step `at`, then dies like a SIGKILL."""

    def __init__(self, at: int, path: Path | None) -> None:
        self.at, self.path = at, path
        self.seen: list[float] = []

    def on_step(self, ctx: FitContext, metrics: dict[str, float]) -> None:
        self.seen.append(sum(v for k, v in metrics.items() if k.endswith("/bregman")))
        if ctx.state.global_step == self.at:
            assert ctx.teacher is not None
            save_checkpoint(self.path, model=ctx.model, optimizer=ctx.optimizer, state=ctx.state,
                            config={}, teacher=ctx.teacher.module)
            raise KeyboardInterrupt


def _run(cfg: TrainConfig, kill_at: int,
         path: Path | None) -> tuple[MultitaskBert, BregmanTeacher, list[float]]:
    model = _bert(1)
    optimizer = build_optimizer(model, "mtbert", 1e-3, 0.01)
    teacher = make_teacher(model, cfg)
    killer = _Kill(kill_at, path)
    torch.manual_seed(4)
    try:
        fit(model, _tiny_data(), optimizer, cfg, seed=3, callbacks=[killer], teacher=teacher)
    except KeyboardInterrupt:
        pass
    return model, teacher, killer.seen


def test_resumed_fit_with_the_teacher_is_bitwise_exact(tmp_path: Path) -> None:
    cfg = dataclasses.replace(BREG, epochs=2, batch_size=4)
    straight, straight_teacher, seen = _run(cfg, kill_at=-1, path=None)
    assert len(seen) == 6 and all(v > 0 for v in seen[1:])  # 3 steps an epoch; the term is logged
    _run(cfg, kill_at=4, path=tmp_path / "ckpt.pt")
    payload = load_checkpoint(tmp_path / "ckpt.pt")
    model = _bert(2)  # other weights: everything must come from the checkpoint
    optimizer = build_optimizer(model, "mtbert", 1e-3, 0.01)
    teacher = make_teacher(model, cfg)
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    teacher.module.load_state_dict(payload[TEACHER_KEY])
    restore_rng(payload)
    state = TrainState(**payload["state"])
    with pytest.raises(ValueError, match="needs the checkpoint's teacher"):
        fit(model, _tiny_data(), optimizer, cfg, seed=3, state=dataclasses.replace(state))
    fit(model, _tiny_data(), optimizer, cfg, seed=3, state=state, teacher=teacher)
    assert all(torch.equal(a, b) for a, b in zip(_flat(model), _flat(straight)))
    assert all(torch.equal(a, b) for a, b in zip(_flat(teacher.module), _flat(straight_teacher.module)))


def test_fit_makes_a_teacher_when_none_is_given() -> None:
    class Seen(Callback):
        def __init__(self) -> None:
            self.terms: list[float] = []

        def on_step(self, ctx: FitContext, metrics: dict[str, float]) -> None:
            self.terms += [v for k, v in metrics.items() if k.endswith("/bregman")]

    seen = Seen()
    model = _bert()
    fit(model, _tiny_data(), build_optimizer(model, "mtbert", 1e-3, 0.0),
        dataclasses.replace(BREG, batch_size=4), seed=3, callbacks=[seen])
    assert len(seen.terms) == 9  # 3 round-robin steps of 3 tasks
    assert seen.terms[:3] == pytest.approx([0.0] * 3, abs=1e-12)  # theta~_0 = theta_0
    assert all(v > 0 for v in seen.terms[3:])
