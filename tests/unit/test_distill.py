"""mtbert.distill: teacher annealing schedule, distill losses, targets aligned through batching,
teacher outputs, and the integration into batch_loss / fit."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtbert.batching import TokenizedTask, collate, make_batches
from mtbert.callbacks import Callback, FitContext
from mtbert.config import ConfigError, DistillConfig, ModelConfig, TrainConfig
from mtbert.distill import (
    average_teachers,
    distill_loss,
    lam_at,
    mix,
    soften,
    teacher_outputs,
    with_targets,
)
from mtbert.losses import task_loss
from mtbert.model.bert import BertModel
from mtbert.model.multitask import MultitaskBert
from mtbert.optim import build_optimizer
from mtbert.train import batch_loss, fit
from tests.tiny import TINY_BERT_NO_DROPOUT

B = 13
TINY = TINY_BERT_NO_DROPOUT  # tests/tiny.py


def tiny_task(task: str, rows: int, seed: int, bi: bool = True) -> TokenizedTask:
    """`rows` rows of distinct lengths 1..6 (+2 special tokens); pair tasks bi-encoded if `bi`."""
    g = torch.Generator().manual_seed(seed)
    n_seg = 2 if bi and task != "sst" else 1
    segments = [tuple(([1, *torch.randint(5, 99, (n,), generator=g).tolist(), 2], [0] * (n + 2))
                      for _ in range(n_seg))
                for n in torch.randint(1, 7, (rows,), generator=g).tolist()]
    high = {"sst": 5, "para": 2, "sts": 6}[task]
    labels = [float(x) for x in torch.randint(0, high, (rows,), generator=g).tolist()]
    return TokenizedTask(task, segments, labels)


def random_targets(task: str, rows: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if task == "sst":
        return rng.dirichlet(np.ones(5), size=rows).astype(np.float32)
    return (rng.random(rows) * (5.0 if task == "sts" else 1.0)).astype(np.float32)


def tiny_model(seed: int = 0) -> MultitaskBert:
    torch.manual_seed(seed)
    return MultitaskBert(BertModel(TINY), ModelConfig(head_dropout=0.0, pair_encoding="bi"))


# --- lam schedule -----------------------------------------------------------------------------

def test_linear_lam_is_1_at_the_first_step_0_at_the_last_and_linear_between() -> None:
    total = 11
    lams = [lam_at(s, total, "linear") for s in range(total)]
    assert lams[0] == 1.0 and lams[-1] == 0.0
    assert np.allclose(np.diff(lams), -1.0 / (total - 1))
    assert lam_at(total + 3, total, "linear") == 0.0
    assert lam_at(0, 1, "linear") == 1.0


def test_constant_lam_and_bad_arguments() -> None:
    assert {lam_at(s, 7, "constant", 0.3) for s in range(9)} == {0.3}
    for args in [(0, 7, "cubic"), (-1, 7, "linear"), (0, 0, "linear"), (0, 7, "constant", 1.5)]:
        with pytest.raises(ValueError):
            lam_at(*args)


# --- losses -----------------------------------------------------------------------------------

def student_and_teacher(task: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    if task == "sst":
        return torch.randn(B, 5, generator=g), torch.softmax(torch.randn(B, 5, generator=g), -1)
    if task == "para":
        return torch.randn(B, generator=g), torch.rand(B, generator=g)
    return 5 * torch.rand(B, generator=g), 5 * torch.rand(B, generator=g)


def test_temperature_1_is_plain_soft_cross_entropy() -> None:
    z, q = student_and_teacher("sst")
    expected = -(q * F.log_softmax(z, -1)).sum(-1).mean()
    assert torch.allclose(distill_loss("sst", z, q, 1.0), expected)
    z, p = student_and_teacher("para")
    s = torch.sigmoid(z)
    expected = -(p * torch.log(s) + (1 - p) * torch.log(1 - s)).mean()
    assert torch.allclose(distill_loss("para", z, p, 1.0), expected, atol=1e-6)


@pytest.mark.parametrize("temperature", [0.5, 2.0, 7.0])
def test_temperature_softens_teacher_logits_as_hinton(temperature: float) -> None:
    g = torch.Generator().manual_seed(3)
    z, t = torch.randn(B, 5, generator=g), torch.randn(B, 5, generator=g)
    # soften(softmax(t), T) == softmax(t / T): the teacher's logits divided by T.
    assert torch.allclose(soften(torch.softmax(t, -1), temperature), torch.softmax(t / temperature, -1),
                          atol=1e-6)
    expected = -(torch.softmax(t / temperature, -1) * F.log_softmax(z / temperature, -1)).sum(-1).mean()
    assert torch.allclose(distill_loss("sst", z, torch.softmax(t, -1), temperature),
                          temperature**2 * expected, atol=1e-5)
    zp, tp = torch.randn(B, generator=g), torch.randn(B, generator=g)
    expected = F.binary_cross_entropy_with_logits(zp / temperature, torch.sigmoid(tp / temperature))
    assert torch.allclose(distill_loss("para", zp, torch.sigmoid(tp), temperature),
                          temperature**2 * expected, atol=1e-5)


def test_high_temperature_targets_approach_uniform() -> None:
    _, q = student_and_teacher("sst")
    assert torch.allclose(soften(q, 1e4), torch.full_like(q, 0.2), atol=1e-3)


def test_sts_distill_is_the_task_regression_loss_against_the_teacher_score() -> None:
    pred, score = student_and_teacher("sts")
    assert torch.equal(distill_loss("sts", pred, score, 3.0), F.mse_loss(pred, score))
    assert torch.allclose(distill_loss("sts", pred / 5, score, 1.0, "cosine"), F.mse_loss(pred / 5, score / 5))


@pytest.mark.parametrize("task", ["sst", "para", "sts"])
def test_mix_is_gold_at_lam_0_and_teacher_at_lam_1(task: str) -> None:
    out, targets = student_and_teacher(task)
    labels = torch.randint(0, 2, (B,)).float() if task != "sst" else torch.randint(0, 5, (B,))
    gold = task_loss(task, out, labels)
    teacher = distill_loss(task, out, targets, 2.0)
    assert torch.equal(mix(gold, teacher, 0.0), gold)
    assert torch.equal(mix(gold, teacher, 1.0), teacher)
    assert torch.allclose(mix(gold, teacher, 0.25), 0.25 * teacher + 0.75 * gold)


def test_distill_loss_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="sst"):
        distill_loss("sst", torch.zeros(B, 5), torch.zeros(B))
    with pytest.raises(ValueError, match="para"):
        distill_loss("para", torch.zeros(B), torch.zeros(B + 1))


# --- targets travel with the rows ---------------------------------------------------------------

@pytest.mark.parametrize("task", ["sst", "para", "sts"])
@pytest.mark.parametrize("max_tokens", [0, 23])
def test_targets_stay_aligned_after_shuffling_and_bucketing(task: str, max_tokens: int) -> None:
    rows = 37
    data = with_targets(tiny_task(task, rows, seed=1), random_targets(task, rows, seed=2))
    batches = make_batches(data.lengths(), 4, max_tokens=max_tokens, shuffle=True, bucket=True, seed=11)
    assert sorted(r for b in batches for r in b) == list(range(rows))
    assert [r for b in batches for r in b] != list(range(rows))  # the rows really moved
    for positions in batches:
        batch = collate(data, positions)
        assert batch.targets is not None and batch.targets.dtype == torch.float32
        assert torch.equal(batch.targets, torch.from_numpy(data.targets[positions]))
        # Each target sits next to its own row's tokens and label.
        for k, r in enumerate(positions):
            ids = data.segments[r][0][0]
            assert batch.enc.input_ids[k, :len(ids)].tolist() == ids
            assert batch.labels[k].item() == data.labels[r]


def test_batches_without_targets_have_none_and_with_targets_checks_shape() -> None:
    data = tiny_task("sst", 7, seed=1)
    assert collate(data, [3, 1]).targets is None
    with pytest.raises(ValueError, match=r"\(7, 5\)"):
        with_targets(data, np.zeros(7))
    assert data.targets is None  # with_targets copies


# --- teacher outputs ------------------------------------------------------------------------------

@pytest.mark.parametrize("task", ["sst", "para", "sts"])
def test_teacher_outputs_are_per_row_in_row_order_and_in_eval_mode(task: str) -> None:
    torch.manual_seed(0)
    model = MultitaskBert(BertModel(dataclasses.replace(TINY, hidden_dropout_prob=0.3)),
                          ModelConfig(head_dropout=0.3, pair_encoding="bi", sts_head="regression"))
    data = tiny_task(task, 11, seed=4)
    out = teacher_outputs(model, data, batch_size=3)
    assert out.shape == ((11, 5) if task == "sst" else (11,)) and out.dtype == np.float32
    with torch.no_grad():  # one row at a time, eval mode: the reference
        model.eval()
        ref = [model(task, collate(data, [r]).enc)[0] for r in range(11)]
    if task == "sst":
        expected = torch.stack([torch.softmax(z, -1) for z in ref]).numpy()
        assert np.allclose(out.sum(-1), 1.0, atol=1e-6)
    elif task == "para":
        expected = torch.sigmoid(torch.stack(ref)).numpy()
    else:
        expected = torch.stack(ref).clamp(0, 5).numpy()
    assert np.allclose(out, expected, atol=1e-5)
    # Eval mode whatever mode the teacher was left in: dropout would make a second pass differ.
    assert np.array_equal(teacher_outputs(model.train(), data, batch_size=3), out)


def test_average_teachers_is_the_mean_and_checks_shapes() -> None:
    a, b = random_targets("sst", 7, 1), random_targets("sst", 7, 2)
    assert np.allclose(average_teachers([a, b]), (a + b) / 2)
    assert np.array_equal(average_teachers([a]), a)
    with pytest.raises(ValueError):
        average_teachers([a, a[:3]])
    with pytest.raises(ValueError):
        average_teachers([])


# --- batch_loss and fit -------------------------------------------------------------------------

DISTILL = TrainConfig(grad_clip=0.0, distill=DistillConfig(enabled=True, temperature=2.0,
                                                            teachers=("teacher-a", "teacher-b")))


@pytest.mark.parametrize("task", ["sst", "para", "sts"])
def test_batch_loss_mixes_gold_and_teacher_by_lam(task: str) -> None:
    model = tiny_model()
    data = with_targets(tiny_task(task, 9, seed=3), random_targets(task, 9, seed=4))
    batch = collate(data, [4, 0, 7, 2, 8])
    plain = batch_loss(model, batch, TrainConfig(grad_clip=0.0))
    metrics: dict[str, float] = {}
    assert torch.equal(batch_loss(model, batch, DISTILL, metrics, distill_lam=0.0), plain)
    assert metrics[f"train/{task}/gold"] == plain.item()
    teacher = batch_loss(model, batch, DISTILL, distill_lam=1.0)
    with torch.no_grad():
        out = model(task, batch.enc)
    assert torch.allclose(teacher, distill_loss(task, out, batch.targets, 2.0))
    half = batch_loss(model, batch, DISTILL, distill_lam=0.5)
    assert torch.allclose(half, 0.5 * (plain + teacher))
    # A task outside train.distill.tasks keeps its gold loss.
    others = tuple(t for t in ("sst", "para", "sts") if t != task)
    only_others = dataclasses.replace(DISTILL, distill=dataclasses.replace(DISTILL.distill, tasks=others))
    assert torch.equal(batch_loss(model, batch, only_others, distill_lam=1.0), plain)


def test_targets_without_distill_change_nothing() -> None:
    model = tiny_model()
    data = tiny_task("sst", 9, seed=3)
    rows = [4, 0, 7]
    cfg = TrainConfig(grad_clip=0.0)
    plain = batch_loss(model, collate(data, rows), cfg)
    with_t = batch_loss(model, collate(with_targets(data, random_targets("sst", 9, 1)), rows), cfg)
    assert torch.equal(plain, with_t)


def test_fit_distills_and_logs_lam_and_needs_targets() -> None:
    data = {t: tiny_task(t, n, seed=i) for i, (t, n) in enumerate((("sst", 11), ("para", 7), ("sts", 5)))}
    cfg = dataclasses.replace(DISTILL, batch_size=4, epochs=1)
    model = tiny_model()
    with pytest.raises(ValueError, match="teacher targets"):
        fit(model, data, build_optimizer(model, "mtbert", 1e-3, 0.0), cfg, seed=1)
    data = {t: with_targets(d, random_targets(t, len(d), 9)) for t, d in data.items()}

    lams: list[float] = []

    class Record(Callback):
        def on_step(self, ctx: FitContext, metrics: dict[str, float]) -> None:
            lams.append(metrics["train/distill_lam"])
            assert {"train/sst/distill", "train/para/distill", "train/sts/distill"} <= set(metrics)

    state = fit(model, data, build_optimizer(model, "mtbert", 1e-3, 0.0), cfg, seed=1, callbacks=[Record()])
    assert state.global_step == 3 and lams == [1.0, 0.5, 0.0]


def test_distill_config_validates() -> None:
    for kwargs, path in [({"schedule": "cubic"}, "schedule"), ({"lam": 1.5}, "lam"),
                         ({"temperature": 0.0}, "temperature"), ({"tasks": ("sst", "nli")}, "tasks"),
                         ({"enabled": True}, "teachers")]:
        with pytest.raises(ConfigError, match=f"^train.distill.{path}"):
            DistillConfig(**kwargs)


def test_distill_config_takes_teacher_folders_or_seeds_not_both() -> None:
    assert DistillConfig(enabled=True, teacher_seeds=(1, 2)).teacher_seeds == (1, 2)
    for kwargs, path in [({"teachers": ("a",), "teacher_seeds": (1,)}, "teacher_seeds"),
                         ({"teacher_seeds": (1, 1)}, "teacher_seeds")]:
        with pytest.raises(ConfigError, match=f"^train.distill.{path}"):
            DistillConfig(**kwargs)

