"""Data-parallel training without processes: the shard math, and ranks simulated by threads whose
all-reduce sums through shared memory, against one process on the same batches."""

from __future__ import annotations

import copy
import dataclasses
import threading
from dataclasses import dataclass, field

import pytest
import torch

from mtbert.batching import TokenizedTask
from mtbert.config import ModelConfig, SmartConfig, TrainConfig
from mtbert.distributed import SINGLE, Dist, RankLost, _collective
from mtbert.model.bert import BertModel
from mtbert.model.multitask import MultitaskBert
from mtbert.optim import build_optimizer
from mtbert.train import Callback, FitContext, batch_loss, fit, loss_metric_keys, make_teacher
from tests.unit.test_train import make_batch
from tests.tiny import TINY_BERT_NO_DROPOUT

TINY = TINY_BERT_NO_DROPOUT  # tests/tiny.py


class Exchange:
    """Shared memory for `world` thread ranks: a sum all-reduce in rank order (the same on all)."""

    def __init__(self, world: int) -> None:
        self.barrier = threading.Barrier(world, timeout=120)
        self.slots: list[torch.Tensor | None] = [None] * world

    def reduce_(self, rank: int, tensor: torch.Tensor, op: str) -> None:
        self.slots[rank] = tensor.clone()
        self.barrier.wait()
        stacked = torch.stack(self.slots)  # type: ignore[arg-type]
        out = {"sum": lambda: stacked.sum(0), "max": lambda: stacked.amax(0),
               "min": lambda: stacked.amin(0)}[op]()
        self.barrier.wait()  # nobody writes the next round's slot before everyone has read
        tensor.copy_(out)


@dataclass(frozen=True)
class ThreadDist(Dist):
    exchange: Exchange | None = field(default=None, compare=False)

    def all_reduce_(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        self.exchange.reduce_(self.rank, tensor, op)
        return tensor

    def barrier(self) -> None:
        self.exchange.barrier.wait()


def run_ranks(world: int, work) -> list:
    """`work(dist)` on `world` thread ranks; their results in rank order (errors re-raised)."""
    exchange = Exchange(world)
    results: list = [None] * world
    errors: list[BaseException] = []

    def target(rank: int) -> None:
        try:
            results[rank] = work(ThreadDist(rank, world, rank, exchange=exchange))
        except BaseException as err:  # noqa: BLE001 - handed to the main thread
            errors.append(err)
            exchange.barrier.abort()

    threads = [threading.Thread(target=target, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


# ---------------------------------------------------------------------------------------------
# Who a process is, and its rows


def test_shard_gives_each_rank_a_contiguous_slice_and_covers_the_batch() -> None:
    for world in (1, 2, 3, 4):
        for n in range(0, 10):
            rows = list(range(100, 100 + n))
            slices = [Dist(r, world).shard(rows) for r in range(world)]
            assert sum(slices, []) == rows
            sizes = [len(s) for s in slices]
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    assert Dist(2, 3).shard([7, 8]) == [] and Dist(1, 3).shard([7, 8]) == [8]


def test_from_env_reads_torchrun_and_defaults_to_one_process() -> None:
    assert Dist.from_env({}) == SINGLE and not SINGLE.enabled and SINGLE.is_main
    dist = Dist.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (dist.rank, dist.world_size, dist.local_rank, dist.enabled) == (3, 4, 1, True)
    with pytest.raises(ValueError, match="RANK=4 WORLD_SIZE=4"):
        Dist.from_env({"RANK": "4", "WORLD_SIZE": "4"})


def test_one_process_collectives_return_their_input_untouched() -> None:
    t = torch.tensor([1.5, -2.0])
    assert SINGLE.all_reduce_(t) is t and t.tolist() == [1.5, -2.0]
    a, b = torch.ones(2, 3), torch.zeros(4)
    assert SINGLE.all_reduce_flat([a, b])[0] is a
    SINGLE.barrier()
    assert SINGLE.same_everywhere("x") and SINGLE.spread(5) == (5, 5) and SINGLE.any(True)


def test_a_failed_collective_is_reported_as_a_lost_rank() -> None:
    gloo = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error "
            "[127.0.0.1]:38309: Connection reset by peer\nException raised from ...")
    with pytest.raises(RankLost) as caught:
        with _collective("all_reduce"):
            raise RuntimeError(gloo)
    assert str(caught.value) == ("all_reduce failed: Read error [127.0.0.1]:38309: Connection reset "
                                 "by peer")


def test_thread_ranks_agree_on_flags_and_spread() -> None:
    def work(d: Dist) -> tuple:
        flat = d.all_reduce_flat([torch.ones(2), torch.full((1,), float(d.rank))])
        return (d.any(d.rank == 2), d.spread(10 * d.rank), d.same_everywhere("same"),
                d.same_everywhere(f"r{d.rank}"), [t.tolist() for t in flat])

    out = run_ranks(3, work)
    assert all(o == (True, (0, 20), True, False, [[3.0, 3.0], [3.0]]) for o in out)


# ---------------------------------------------------------------------------------------------
# Training: W thread ranks end where one process ends


def task_data(rows: dict[str, int]) -> dict[str, TokenizedTask]:
    """Random tokenized rows, bi-encoded pairs (two sequences per para/sts row) of odd lengths."""
    g = torch.Generator().manual_seed(9)
    labels = {"sst": lambda i: float(i % 5), "para": lambda i: float(i % 2), "sts": lambda i: i % 6 * 0.9}
    return {task: TokenizedTask(task, [tuple(([1, *torch.randint(5, 99, (n,), generator=g).tolist(), 2],
                                              [0] * (n + 2)) for _ in range(1 if task == "sst" else 2))
                                       for n in torch.randint(1, 6, (count,), generator=g).tolist()],
                                [labels[task](i) for i in range(count)])
            for task, count in rows.items()}


class Losses(Callback):
    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []

    def on_step(self, ctx: FitContext, metrics: dict[str, float]) -> None:
        self.steps.append(dict(metrics))


def train(cfg: TrainConfig, data: dict[str, TokenizedTask], model: MultitaskBert,
          dist: Dist = SINGLE) -> tuple[dict[str, torch.Tensor], list[dict[str, float]]]:
    model = copy.deepcopy(model)
    losses = Losses()
    fit(model, data, build_optimizer(model, "mtbert", 1e-3, 0.01), cfg, seed=3,
        callbacks=[losses], teacher=make_teacher(model, cfg), dist=dist)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, losses.steps


CASES = {
    # round robin: three tasks a step (sts cycles); 2 ranks split 4-row batches and the 3-row tail
    "plain": (2, dict(sampler="round_robin"), {"sst": 11, "para": 9, "sts": 7}),
    "pcgrad": (2, dict(sampler="round_robin", pcgrad=True), {"sst": 11, "para": 9, "sts": 7}),
    # one task a step: the other heads get no gradient (AdamW skips them); 1-row batches leave
    # two of three ranks with an empty slice
    "one task a step, empty slices": (3, dict(sampler="sequential"), {"sst": 9, "para": 5, "sts": 6}),
    # SMART's Bregman term and its EMA teacher (the adversarial term's weight 0: its noise differs)
    "bregman": (2, dict(sampler="round_robin", smart=SmartConfig(enabled=True, weight=0.0)),
                {"sst": 6, "para": 5, "sts": 4}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_ranks_end_with_the_weights_and_losses_of_one_process(case: str) -> None:
    world, options, rows = CASES[case]
    cfg = dataclasses.replace(TrainConfig(epochs=2, batch_size=4, grad_clip=1.0), **options)
    torch.manual_seed(0)
    model = MultitaskBert(BertModel(TINY), ModelConfig(head_dropout=0.0, pair_encoding="bi"))
    data = task_data(rows)
    want, want_steps = train(cfg, data, model)
    ranks = run_ranks(world, lambda dist: train(cfg, data, model, dist))
    for name, value in want.items():
        for weights, _ in ranks:
            torch.testing.assert_close(weights[name], value, atol=1e-6, rtol=1e-5, msg=name)
        assert torch.equal(ranks[0][0][name], ranks[-1][0][name]), f"ranks differ in {name}"
    assert want["encoder.embeddings.word_embeddings.weight"].ne(model.state_dict()[
        "encoder.embeddings.word_embeddings.weight"]).any()  # it trained
    for got_steps in (steps for _, steps in ranks):
        assert len(got_steps) == len(want_steps)
        for got, expected in zip(got_steps, want_steps):
            loss_keys = [k for k in expected if not k.endswith("/smart")]  # smart: random noise
            assert set(got) == set(expected)
            assert [got[k] for k in loss_keys] == pytest.approx([expected[k] for k in loss_keys],
                                                                rel=1e-5, abs=1e-6)


def test_loss_metric_keys_are_what_batch_loss_records() -> None:
    cfg = TrainConfig(smart=SmartConfig(enabled=True))
    torch.manual_seed(0)
    model = MultitaskBert(BertModel(TINY), ModelConfig(head_dropout=0.0))
    teacher = make_teacher(model, cfg)
    for task in ("sst", "para", "sts"):
        metrics: dict[str, float] = {}
        batch_loss(model, make_batch(task, 1), cfg, metrics, teacher)
        assert [f"train/{task}/loss", *metrics] == loss_metric_keys(task, cfg, teacher, None)
