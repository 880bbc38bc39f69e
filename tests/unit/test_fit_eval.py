"""fit's dev evaluation hook: when it scores, what callbacks get, and that it changes no training."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mtbert.batching import TokenizedTask
from mtbert.config import ModelConfig, TrainConfig
from mtbert.model.bert import BertModel
from mtbert.model.multitask import MultitaskBert
from mtbert.optim import build_optimizer
from mtbert.train import Callback, DevScorer, FitContext, fit
from tests.tiny import TINY_BERT

EVAL_KEYS = {"dev/sst/accuracy", "dev/para/accuracy", "dev/sts/pearson", "dev/sts/spearman",
             "dev/overall"}


def rows(seed: int, sizes: tuple[tuple[str, int], ...]) -> dict[str, TokenizedTask]:
    """Bi-encoded random rows per task, labels in each task's range."""
    g = torch.Generator().manual_seed(seed)

    def seq(n: int) -> tuple[list[int], list[int]]:
        return [1, *torch.randint(5, 99, (n,), generator=g).tolist(), 2], [0] * (n + 2)

    high = {"sst": 5, "para": 2, "sts": 6}
    return {task: TokenizedTask(task, [tuple(seq(n) for _ in range(1 if task == "sst" else 2))
                                       for n in torch.randint(1, 6, (count,), generator=g).tolist()],
                                [float(i % high[task]) for i in range(count)])
            for task, count in sizes}


TRAIN = (("sst", 11), ("para", 17), ("sts", 7))  # round robin, batch 4: 5 steps per epoch
DEV = (("sst", 9), ("para", 13), ("sts", 6))


class Recorder(Callback):
    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []
        self.evals: list[dict[str, float]] = []

    def on_step(self, ctx: FitContext, metrics: dict[str, float]) -> None:
        self.events.append(("step", ctx.state.global_step))

    def on_epoch_end(self, ctx: FitContext) -> None:
        self.events.append(("epoch", ctx.state.global_step))

    def on_eval(self, ctx: FitContext, metrics: dict[str, float]) -> None:
        assert not ctx.model.training  # scored in eval mode
        self.events.append(("eval", ctx.state.global_step))
        self.evals.append(metrics)


def train(eval_every: int, scorer: bool, epochs: int = 2) -> tuple[MultitaskBert, Recorder]:
    torch.manual_seed(0)  # TINY_BERT has dropout: the evaluation must not move the random stream
    model = MultitaskBert(BertModel(TINY_BERT), dataclasses.replace(ModelConfig(), pair_encoding="bi"))
    cfg = TrainConfig(epochs=epochs, batch_size=4, sampler="round_robin", eval_every=eval_every)
    recorder = Recorder()
    evaluate = DevScorer(rows(5, DEV), batch_size=4) if scorer else None
    fit(model, rows(9, TRAIN), build_optimizer(model, "mtbert", 1e-3, 0.0), cfg, seed=3,
        callbacks=[recorder], evaluate=evaluate)
    return model, recorder


def evals(recorder: Recorder) -> list[int]:
    return [step for kind, step in recorder.events if kind == "eval"]


def test_scores_at_each_epoch_end_by_default_before_the_epoch_callbacks() -> None:
    _, recorder = train(eval_every=0, scorer=True)
    assert evals(recorder) == [5, 10]
    at = recorder.events.index(("eval", 5))
    assert recorder.events[at - 1] == ("step", 5) and recorder.events[at + 1] == ("epoch", 5)
    assert all(set(m) == EVAL_KEYS for m in recorder.evals)  # the evaluate stage's names
    assert all(0.0 <= m["dev/sst/accuracy"] <= 1.0 for m in recorder.evals)


def test_scores_every_n_steps_and_once_at_an_epoch_end_that_falls_on_one() -> None:
    _, recorder = train(eval_every=2, scorer=True)
    assert evals(recorder) == [2, 4, 5, 6, 8, 10]  # step 10 is scored once, not twice


def test_training_is_the_same_with_and_without_scoring() -> None:
    with_eval, recorder = train(eval_every=1, scorer=True)
    without, _ = train(eval_every=1, scorer=False)
    assert len(evals(recorder)) == 10
    for (name, a), (_, b) in zip(with_eval.state_dict().items(), without.state_dict().items()):
        assert torch.equal(a, b), name


def test_dev_scorer_matches_an_oracle_on_a_constant_model() -> None:
    class Constant(torch.nn.Module):
        """Predicts sst class 2, para 'yes', sts 3.0 (one output per row)."""

        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, task: str, enc) -> torch.Tensor:
            n = enc.input_ids.shape[0] // (2 if task != "sst" else 1)
            if task == "sst":
                return torch.tensor([[0.0, 0.0, 9.0, 0.0, 0.0]]).repeat(n, 1)
            return torch.full((n,), 5.0 if task == "para" else 3.0)

    data = rows(5, DEV)
    metrics = DevScorer({t: data[t] for t in ("sst", "para")}, batch_size=4)(Constant())
    sst_gold, para_gold = data["sst"].labels, data["para"].labels
    assert metrics["dev/sst/accuracy"] == pytest.approx(sum(y == 2 for y in sst_gold) / len(sst_gold))
    assert metrics["dev/para/accuracy"] == pytest.approx(sum(y == 1 for y in para_gold) / len(para_gold))
    assert "dev/overall" not in metrics  # only with all three tasks, as in the evaluate stage
