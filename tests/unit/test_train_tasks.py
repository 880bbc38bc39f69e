"""train.tasks: a run on a subset of the tasks takes the same code path and trains only those."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mtbert.batching import TokenizedTask
from mtbert.config import ConfigError, ModelConfig, TrainConfig
from mtbert.evaluate import summary_metrics
from mtbert.model.bert import BertModel
from mtbert.model.multitask import MultitaskBert, multitask_from_state
from mtbert.optim import build_optimizer
from mtbert.samplers import SAMPLERS, build_schedule
from mtbert.tasks import TASKS
from mtbert.train import epoch_plan, fit, total_steps
from tests.tiny import TINY_BERT_NO_DROPOUT

TINY = TINY_BERT_NO_DROPOUT  # tests/tiny.py
BI = ModelConfig(head_dropout=0.0, pair_encoding="bi", shared_pair_layer=True)
ROWS = {"sst": 11, "para": 17, "sts": 7}


def task_data() -> dict[str, TokenizedTask]:
    g = torch.Generator().manual_seed(9)
    data = {}
    for task, rows in ROWS.items():
        n_seg = 1 if task == "sst" else 2
        segments = [tuple(([1, *torch.randint(5, 99, (n,), generator=g).tolist(), 2], [0] * (n + 2))
                          for _ in range(n_seg)) for n in torch.randint(1, 5, (rows,), generator=g).tolist()]
        data[task] = TokenizedTask(task, segments, [float(i % 2) for i in range(rows)])
    return data


def params_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("task", TASKS)
def test_one_task_fit_trains_only_that_head(task: str) -> None:
    torch.manual_seed(0)
    model = MultitaskBert(BertModel(TINY), BI)
    before = params_of(model)
    cfg = TrainConfig(tasks=(task,), batch_size=4, grad_clip=0.0)
    data = task_data()  # all three tasks given; train.tasks picks one
    state = fit(model, data, build_optimizer(model, "mtbert", 1e-3, 0.01), cfg, seed=3)
    assert state.global_step == -(-ROWS[task] // 4)  # one pass over that task's batches
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    untouched = {f"{t}_head" for t in TASKS if t != task} | ({"shared_pair"} if task == "sst" else set())
    assert any(name.startswith("encoder.") for name in changed)
    assert any(name.startswith(f"{task}_head.") for name in changed)
    assert not any(name.split(".")[0] in untouched for name in changed), changed


def test_one_task_run_plans_the_same_batches_as_that_task_in_a_full_run() -> None:
    data = task_data()
    full = TrainConfig(batch_size=4, sampler="even")
    one = dataclasses.replace(full, tasks=("para",))
    schedule, batches = epoch_plan(data, one, seed=5, epoch=0)
    assert set(batches) == {"para"} and schedule == [("para",)] * len(batches["para"])
    assert batches["para"] == epoch_plan(data, full, seed=5, epoch=0)[1]["para"]
    assert total_steps(data, one, seed=5) == len(batches["para"])


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_handles_a_single_task(sampler: str) -> None:
    for epoch in range(3):
        schedule = build_schedule(sampler, {"sts": 6}, epoch, 3, seed=1)
        assert schedule == [("sts",)] * 6


def test_fit_refuses_data_without_any_requested_task() -> None:
    torch.manual_seed(0)
    model = MultitaskBert(BertModel(TINY), BI)
    data = {"sst": task_data()["sst"]}
    with pytest.raises(ValueError, match="no training data"):
        fit(model, data, build_optimizer(model, "mtbert", 1e-3, 0.0), TrainConfig(tasks=("sts",)), seed=1)


def test_model_for_a_subset_builds_only_those_heads_and_refuses_the_others() -> None:
    torch.manual_seed(0)
    model = MultitaskBert(BertModel(TINY), BI, tasks=("para",))
    heads = {name.split(".")[0] for name, _ in model.named_parameters() if not name.startswith("encoder.")}
    assert heads == {"para_head", "shared_pair"} and model.sst_head is None and model.sts_head is None
    with pytest.raises(ValueError, match="no sst head"):
        model("sst", None)
    rebuilt = multitask_from_state(TINY, BI, model.state_dict(), tasks=("para",))
    assert rebuilt.tasks == ("para",)
    with pytest.raises(RuntimeError):  # a full model expects the other heads' weights
        multitask_from_state(TINY, BI, model.state_dict())
    only_sst = MultitaskBert(BertModel(TINY), BI, tasks=("sst",))
    assert only_sst.shared_pair is None and only_sst.tasks == ("sst",)
    with pytest.raises(ValueError):
        MultitaskBert(BertModel(TINY), BI, tasks=())


def test_all_tasks_build_the_same_initial_weights_as_before() -> None:
    torch.manual_seed(4)
    default = MultitaskBert(BertModel(TINY), BI)
    torch.manual_seed(4)
    explicit = MultitaskBert(BertModel(TINY), BI, tasks=("sts", "sst", "para"))  # order is TASKS'
    assert explicit.tasks == TASKS
    assert list(params_of(default)) == list(params_of(explicit))
    assert all(torch.equal(a, b) for a, b in zip(params_of(default).values(), params_of(explicit).values()))


def test_summary_metrics_of_a_subset_has_no_overall() -> None:
    flat = summary_metrics({"sts": {"pearson": 0.8, "spearman": 0.7}})
    assert flat == {"dev/sts/pearson": 0.8, "dev/sts/spearman": 0.7}


def test_train_tasks_config_validates() -> None:
    assert TrainConfig().tasks == TASKS
    assert TrainConfig(tasks=("sts",)).tasks == ("sts",)
    for tasks, message in [((), "at least one"), (("sst", "nli"), "nli"), (("sst", "sst"), "twice")]:
        with pytest.raises(ConfigError, match=f"^train.tasks.*{message}"):
            TrainConfig(tasks=tasks)
    with pytest.raises(ConfigError, match="^train.layer_decay"):
        TrainConfig(layer_decay=1.5)
