"""train_step: loss scaling, PCGrad, SMART, the STS cosine loss, and a real training smoke test."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from mtbert.batching import Batch, Encoded, TokenizedTask, collate, tokenize_frame
from mtbert.config import ModelConfig, PerTaskFloat, SmartConfig, TrainConfig
from mtbert.data import read_split
from mtbert.model.bert import BertModel
from mtbert.model.multitask import MultitaskBert, build_multitask
from mtbert.model.load_hf import load_tokenizer
from mtbert.optim import build_optimizer
from mtbert.pcgrad import flat_grads, pcgrad
from mtbert.train import Callback, FitContext, batch_loss, fit, train_step
from tests.tiny import TINY_BERT_NO_DROPOUT

B, T = 5, 7
TINY = TINY_BERT_NO_DROPOUT  # tests/tiny.py
# No clipping: it would rescale the gradients these tests compare.
PLAIN = TrainConfig(grad_clip=0.0)


class RecordingSGD(torch.optim.SGD):
    """SGD that keeps a copy of every parameter's gradient at each step."""

    def __init__(self, params, lr: float = 0.1) -> None:
        super().__init__(params, lr=lr)
        self.seen: list[list[torch.Tensor]] = []

    def step(self, closure=None):  # noqa: D401 - torch's signature
        self.seen.append([torch.zeros_like(p) if p.grad is None else p.grad.clone()
                          for g in self.param_groups for p in g["params"]])
        return super().step(closure)


def make_model(seed: int = 0, **model_options: object) -> MultitaskBert:
    torch.manual_seed(seed)
    cfg = dataclasses.replace(ModelConfig(head_dropout=0.0), **model_options)
    return MultitaskBert(BertModel(TINY), cfg)


def make_batch(task: str, seed: int, labels: list[float] | None = None, bi: bool = False) -> Batch:
    """B examples of `task`; a bi-encoded pair batch holds 2B rows (first, then second sentences)."""
    g = torch.Generator().manual_seed(seed)
    n = 2 * B if bi else B
    lengths = torch.randint(2, T + 1, (n,), generator=g)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    ids = torch.randint(5, 99, (n, T), generator=g) * mask
    if labels is None:
        high = {"sst": 5, "para": 2, "sts": 6}[task]
        labels = torch.randint(0, high, (B,), generator=g).tolist()
    dtype = torch.float32 if task == "sts" else torch.long
    return Batch(task, Encoded(ids, mask, torch.zeros_like(ids)), torch.tensor(labels, dtype=dtype),
                 list(range(B)))


def three_batches() -> list[Batch]:
    return [make_batch("sst", 1), make_batch("para", 2), make_batch("sts", 3)]


def step_grads(model: MultitaskBert, batches: list[Batch], cfg: TrainConfig,
               seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The gradients train_step hands to the optimizer, by parameter name, and its metrics."""
    optimizer = RecordingSGD(model.parameters())
    metrics = train_step(model, batches, optimizer, cfg, step_seed=seed)
    names = [n for n, _ in model.named_parameters()]
    return dict(zip(names, optimizer.seen[0])), metrics


def grad_norm(grads: dict[str, torch.Tensor], prefix: str) -> float:
    return float(sum(g.abs().sum() for n, g in grads.items() if n.startswith(prefix)))


# ---------------------------------------------------------------------------------------------
# Loss scaling


def test_loss_scale_zero_gives_that_head_no_gradient() -> None:
    cfg = dataclasses.replace(PLAIN, loss_scale=PerTaskFloat(sst=1.0, para=0.0, sts=1.0))
    grads, metrics = step_grads(make_model(), three_batches(), cfg)
    assert grad_norm(grads, "para_head") == 0.0
    assert grad_norm(grads, "sst_head") > 0 and grad_norm(grads, "sts_head") > 0
    assert metrics["train/para/loss"] > 0  # the loss is still computed and logged, unscaled


def test_loss_scale_multiplies_the_gradient() -> None:
    batches = three_batches()
    base, _ = step_grads(make_model(), batches, PLAIN)
    cfg = dataclasses.replace(PLAIN, loss_scale=PerTaskFloat(sst=2.5, para=1.0, sts=1.0))
    scaled, _ = step_grads(make_model(), batches, cfg)
    for name in ("sst_head.out.weight", "para_head.out.weight", "sts_head.out.weight"):
        factor = 2.5 if name.startswith("sst") else 1.0
        torch.testing.assert_close(scaled[name], factor * base[name])


# ---------------------------------------------------------------------------------------------
# PCGrad


def separate_grads(model: MultitaskBert, batches: list[Batch], cfg: TrainConfig) -> list[torch.Tensor]:
    params = list(model.parameters())
    out = []
    for batch in batches:
        model.zero_grad(set_to_none=True)
        batch_loss(model, batch, cfg).backward()
        out.append(flat_grads(params))
    model.zero_grad(set_to_none=True)
    return out


def conflicts(grads: list[torch.Tensor]) -> float:
    pairs = [(i, j) for i in range(len(grads)) for j in range(i + 1, len(grads))]
    return sum(float(grads[i] @ grads[j]) < 0 for i, j in pairs) / len(pairs)


@pytest.mark.parametrize("case", ["three_tasks", "no_conflict", "conflict"])
def test_pcgrad_changes_the_update_only_when_gradients_conflict(case: str) -> None:
    if case == "three_tasks":
        batches = three_batches()
    elif case == "no_conflict":  # the same batch twice: identical gradients never conflict
        batches = [make_batch("sst", 4)] * 2
    else:  # the same sentences with opposite labels pull the shared weights apart
        batches = [make_batch("sst", 5, labels=[0] * B), make_batch("sst", 5, labels=[4] * B)]
    cfg = dataclasses.replace(PLAIN, pcgrad=True)
    expected = separate_grads(make_model(), batches, PLAIN)
    fraction = conflicts(expected)
    if case == "conflict":
        assert fraction == 1.0  # precondition of this case
    surgery, metrics = step_grads(make_model(), batches, cfg, seed=11)
    plain, _ = step_grads(make_model(), batches, PLAIN)
    assert metrics["train/pcgrad_conflict_fraction"] == pytest.approx(fraction)
    assembled = torch.cat([g.reshape(-1) for g in surgery.values()])
    oracle = pcgrad(expected, torch.Generator().manual_seed(11)).grad
    torch.testing.assert_close(assembled, oracle, atol=1e-6, rtol=1e-5)
    summed = torch.cat([g.reshape(-1) for g in plain.values()])
    if fraction == 0.0:
        torch.testing.assert_close(assembled, summed, atol=1e-6, rtol=1e-5)
    else:
        assert not torch.allclose(assembled, summed, atol=1e-6, rtol=1e-5)


def test_no_pcgrad_metric_without_pcgrad() -> None:
    _, metrics = step_grads(make_model(), three_batches(), PLAIN)
    assert "train/pcgrad_conflict_fraction" not in metrics


# ---------------------------------------------------------------------------------------------
# SMART and the STS cosine loss


@pytest.mark.parametrize("task", ["sst", "para", "sts"])
def test_smart_term_is_finite_positive_and_added_to_the_loss(task: str) -> None:
    smart = dataclasses.replace(PLAIN, smart=SmartConfig(enabled=True, weight=0.7))
    batch = make_batch(task, 6)
    model = make_model()
    clean = batch_loss(model, batch, PLAIN).item()
    torch.manual_seed(0)
    _, metrics = step_grads(model, [batch], smart)
    term = metrics[f"train/{task}/smart"]
    assert math.isfinite(term) and term > 0
    assert metrics[f"train/{task}/loss"] == pytest.approx(clean + 0.7 * term, rel=1e-5)


def test_smart_perturbs_after_the_embedding_layernorm() -> None:
    # The transformer layers see clean embeddings plus a perturbation of max-abs <= 1 per token;
    # perturbing raw word vectors (entries ~0.02 here) by that much would change them far more.
    model = make_model()
    seen: list[torch.Tensor] = []
    model.encoder.encoder.register_forward_hook(lambda _m, args, _o: seen.append(args[0].detach()))
    cfg = dataclasses.replace(PLAIN, smart=SmartConfig(enabled=True))
    batch_loss(model, make_batch("sst", 7), cfg)
    clean, perturbed = seen[0], seen[-1]
    assert len(seen) == 3  # clean, one ascent step, the adversarial forward
    shift = (perturbed - clean).abs().amax(-1)
    assert (shift > 0.5).all() and (shift <= 1.0 + 1e-4).all()


def test_cosine_sts_loss_compares_cosine_with_label_over_five() -> None:
    model = make_model(pair_encoding="bi", pooling="mean", sts_head="cosine").eval()
    batch = make_batch("sts", 8, bi=True)
    cfg = dataclasses.replace(PLAIN, sts_loss="cosine")
    with torch.no_grad():
        cosine = model("sts", batch.enc) / 5.0  # the head scores 5 cos(u, v)
        loss = batch_loss(model, batch, cfg)
    torch.testing.assert_close(loss, ((cosine - batch.labels / 5.0) ** 2).mean())


# ---------------------------------------------------------------------------------------------
# fit and the training smoke test


def test_fit_runs_the_planned_steps_and_calls_back() -> None:
    class Recorder(Callback):
        def __init__(self) -> None:
            self.steps: list[int] = []
            self.epochs: list[int] = []

        def on_step(self, ctx: FitContext, metrics: dict[str, float]) -> None:
            self.steps.append(ctx.state.global_step)

        def on_epoch_end(self, ctx: FitContext) -> None:
            self.epochs.append(ctx.state.epoch)

    g = torch.Generator().manual_seed(9)
    data = {task: TokenizedTask(task, [tuple(([1, *torch.randint(5, 99, (n,), generator=g).tolist(), 2],
                                              [0] * (n + 2)) for _ in range(1 if task == "sst" else 2))
                                       for n in torch.randint(1, 5, (rows,), generator=g).tolist()],
                                [float(i % 2) for i in range(rows)])
            for task, rows in (("sst", 11), ("para", 17), ("sts", 7))}
    cfg = TrainConfig(epochs=2, batch_size=4, sampler="round_robin")
    model = make_model(pair_encoding="bi")
    recorder = Recorder()
    state = fit(model, data, build_optimizer(model, "mtbert", 1e-3, 0.0), cfg, seed=3, callbacks=[recorder])
    assert state.global_step == state.total_steps == 2 * 5  # para: ceil(17 / 4) steps per epoch
    assert recorder.steps == list(range(1, 11)) and recorder.epochs == [1, 2]


@pytest.fixture(scope="module")
def real_batches(data_dir: Path) -> dict[str, Batch]:
    """One fixed batch of 8 real training examples per task, cross-encoded for MiniLM."""
    tokenizer = load_tokenizer("minilm")
    batches = {}
    for task in ("sst", "para", "sts"):
        frame = read_split(data_dir, task, "train", on_error="skip").frame.head(8)
        data = tokenize_frame(tokenizer, frame, task, "cross", max_length=48)
        batches[task] = collate(data, list(range(len(frame))))
    return batches


def test_multitask_loss_goes_down_on_real_examples(real_batches: dict[str, Batch]) -> None:
    torch.manual_seed(0)
    model = build_multitask(ModelConfig(head_dropout=0.0, encoder_dropout=0.0))
    cfg = TrainConfig(grad_clip=1.0)
    optimizer = build_optimizer(model, "mtbert", 2e-4, 0.0)
    batches = list(real_batches.values())

    def losses() -> dict[str, float]:
        model.eval()
        with torch.no_grad():
            return {b.task: batch_loss(model, b, cfg).item() for b in batches}

    before = losses()
    for step in range(10):
        train_step(model, batches, optimizer, cfg, step_seed=step)
    after = losses()
    for task in before:
        assert after[task] < 0.8 * before[task], (task, before, after)
    assert sum(after.values()) < 0.5 * sum(before.values()), (before, after)
