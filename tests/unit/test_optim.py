"""Tests for mtbert.optim: our AdamW against torch's, optimizer building, LR schedule."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mtbert.config import ModelConfig, TrainConfig
from mtbert.model.bert import BertConfig, BertModel
from mtbert.model.multitask import MultitaskBert
from mtbert.optim import LR_SCHEDULES, OPTIMIZERS, AdamW, build_optimizer, lr_at, lr_scale_fn

# Odd, distinct shapes so a transposed or broadcast update fails loudly; a scalar too.
SHAPES = [(13, 7), (7,), (3, 5, 2), (1,), ()]


class TinyModel(nn.Module):
    """A Linear, a LayerNorm and a 3-D tensor: decayed and non-decayed parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(11, 7)
        self.norm = nn.LayerNorm(7)
        self.table = nn.Parameter(torch.randn(3, 5, 2))


def _make_params(seed: int) -> list[nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(shape, generator=generator)) for shape in SHAPES]


def _run(optimizer: torch.optim.Optimizer, params: list[nn.Parameter], steps: int, seed: int) -> None:
    """Take `steps` steps with random gradients drawn from a seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator)
        optimizer.step()


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_adamw_matches_torch_over_100_steps(weight_decay: float) -> None:
    ours, theirs = _make_params(0), _make_params(0)
    _run(AdamW(ours, lr=1e-2, weight_decay=weight_decay), ours, 100, seed=1)
    _run(torch.optim.AdamW(theirs, lr=1e-2, weight_decay=weight_decay), theirs, 100, seed=1)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert not torch.equal(ours[0], _make_params(0)[0])  # the parameters did move


def test_adamw_without_bias_correction_matches_manual_first_step() -> None:
    (param,) = [nn.Parameter(torch.full((3,), 2.0))]
    optimizer = AdamW([param], lr=0.1, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.5, correct_bias=False)
    param.grad = torch.tensor([1.0, -2.0, 0.0])
    optimizer.step()
    decayed = 2.0 * (1 - 0.1 * 0.5)
    m, v = 0.1 * param.grad, 0.01 * param.grad**2
    expected = decayed - 0.1 * m / (v.sqrt() + 1e-8)
    torch.testing.assert_close(param.detach(), expected)


def test_adamw_skips_params_without_grad() -> None:
    params = _make_params(0)
    before = params[1].detach().clone()
    params[0].grad = torch.ones_like(params[0])
    AdamW(params, lr=0.1).step()
    assert torch.equal(params[1].detach(), before)


@pytest.mark.parametrize(
    ("kwargs", "bad"),
    [
        ({"lr": 0.0}, "lr=0.0"),
        ({"lr": -1e-3}, "lr=-0.001"),
        ({"betas": (1.0, 0.999)}, "betas[0]=1.0"),
        ({"betas": (0.9, -0.1)}, "betas[1]=-0.1"),
        ({"eps": 0.0}, "eps=0.0"),
        ({"weight_decay": -0.1}, "weight_decay=-0.1"),
    ],
)
def test_adamw_rejects_bad_hyperparameters(kwargs: dict, bad: str) -> None:
    with pytest.raises(ValueError, match=bad.replace("[", r"\[").replace("]", r"\]")):
        AdamW(_make_params(0), **kwargs)


def test_state_dict_round_trip_resumes_identically() -> None:
    params = _make_params(0)
    optimizer = AdamW(params, lr=1e-2)
    _run(optimizer, params, 10, seed=2)
    saved_params, saved_state = copy.deepcopy(params), copy.deepcopy(optimizer.state_dict())

    _run(optimizer, params, 10, seed=3)
    resumed = AdamW(saved_params, lr=1e-2)
    resumed.load_state_dict(saved_state)
    _run(resumed, saved_params, 10, seed=3)
    for a, b in zip(params, saved_params):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_build_optimizer_groups_exclude_biases_and_layernorm() -> None:
    model = TinyModel()
    optimizer = build_optimizer(model, "mtbert", lr=1e-3, weight_decay=0.1)
    assert isinstance(optimizer, AdamW)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model.linear.weight), id(model.table)}
    assert {id(p) for p in no_decay["params"]} == {
        id(model.linear.bias),
        id(model.norm.weight),
        id(model.norm.bias),
    }


def test_build_optimizer_skips_frozen_params() -> None:
    model = TinyModel()
    model.table.requires_grad_(False)
    optimizer = build_optimizer(model, "torch", lr=1e-3, weight_decay=0.1)
    assert isinstance(optimizer, torch.optim.AdamW)
    ids = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert id(model.table) not in ids and len(ids) == 4


def test_build_optimizer_names_agree() -> None:
    torch.manual_seed(0)
    model = TinyModel()
    models = {name: copy.deepcopy(model) for name in OPTIMIZERS}
    for name, m in models.items():
        params = list(m.parameters())
        _run(build_optimizer(m, name, lr=1e-2, weight_decay=0.01), params, 20, seed=4)
    for a, b in zip(*(m.parameters() for m in models.values())):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_build_optimizer_rejects_bad_name_and_cpu_fused() -> None:
    with pytest.raises(ValueError, match="mtbert, torch"):
        build_optimizer(TinyModel(), "sgd", lr=1e-3, weight_decay=0.0)
    with pytest.raises(ValueError, match="CUDA"):
        build_optimizer(TinyModel(), "torch", lr=1e-3, weight_decay=0.0, fused=True)
    with pytest.raises(ValueError, match="lr="):
        build_optimizer(TinyModel(), "torch", lr=0.0, weight_decay=0.0)


@pytest.mark.parametrize("schedule", LR_SCHEDULES)
def test_lr_at_warmup_shape(schedule: str) -> None:
    total, warmup, peak = 97, 13, 3e-5
    lrs = [lr_at(step, total, peak, warmup, schedule) for step in range(total + 1)]
    assert lrs[0] == 0.0
    assert lrs[warmup] == pytest.approx(peak)
    assert all(a < b for a, b in zip(lrs[:warmup], lrs[1 : warmup + 1]))
    assert all(a >= b for a, b in zip(lrs[warmup:], lrs[warmup + 1 :]))
    assert max(lrs) == pytest.approx(peak)
    end = peak if schedule == "constant" else 0.0
    assert lrs[total] == pytest.approx(end, abs=1e-15)
    assert lr_at(total + 5, total, peak, warmup, schedule) == pytest.approx(end, abs=1e-15)


def test_lr_at_midpoints() -> None:
    # Halfway through the decay, linear and cosine both sit at half the peak.
    assert lr_at(60, 110, 1.0, 10, "linear") == pytest.approx(0.5)
    assert lr_at(60, 110, 1.0, 10, "cosine") == pytest.approx(0.5)
    assert lr_at(0, 10, 1.0, 0, "linear") == 1.0  # no warmup: start at the peak
    assert lr_at(10, 10, 1.0, 10, "linear") == 0.0  # all warmup: still 0 at the end


def test_lr_at_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="linear, constant, cosine"):
        lr_at(0, 10, 1e-3, 1, "step")
    with pytest.raises(ValueError):
        lr_at(0, 10, 1e-3, 11)
    with pytest.raises(ValueError):
        lr_at(-1, 10, 1e-3, 1)


# --- layer-wise learning-rate decay -------------------------------------------------------------

def _tiny_bert(layers: int) -> BertModel:
    return BertModel(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                                intermediate_size=37, max_position_embeddings=16))


def _multitask_names() -> list[str]:
    model = MultitaskBert(_tiny_bert(3), ModelConfig(pair_encoding="bi", shared_pair_layer=True))
    return [name for name, _ in model.named_parameters()]


def test_layer_decay_multipliers_by_parameter_name() -> None:
    d, layers = 0.9, 3
    scale = lr_scale_fn(layers, TrainConfig(layer_decay=d, head_lr_scale=20.0))
    seen = {}
    for name in _multitask_names():
        if name.startswith("encoder.embeddings."):
            expected = d ** (layers + 1)
        elif name.startswith("encoder.encoder.layer."):
            expected = d ** (layers - int(name.split(".")[3]))
        elif name.startswith("encoder.pooler."):
            expected = 1.0
        else:  # sst_head, para_head, sts_head, shared_pair
            expected = 20.0
        assert scale(name) == pytest.approx(expected), name
        seen[name.split(".")[0] if not name.startswith("encoder.") else name.split(".")[1]] = True
    assert {"embeddings", "encoder", "pooler", "sst_head", "para_head", "shared_pair"} <= set(seen)
    assert scale("encoder.encoder.layer.2.output.dense.weight") == pytest.approx(0.9)
    assert scale("encoder.encoder.layer.0.attention.self.qkv.weight") == pytest.approx(0.9**3)
    with pytest.raises(ValueError):
        scale("encoder.encoder.layer.3.output.dense.weight")  # only layers 0..2
    with pytest.raises(ValueError):
        scale("encoder.mystery.weight")


def test_layer_decay_1_is_the_head_scale_split_bit_for_bit() -> None:
    cfg = TrainConfig(head_lr_scale=20.0)
    old = (lambda name: 1.0 if name.startswith("encoder.") else cfg.head_lr_scale)  # stages' head_lr_scale
    new = lr_scale_fn(3, cfg)
    assert all(type(new(n)) is float and new(n) == old(n) for n in _multitask_names())


def test_layer_decay_groups_reach_the_optimizer() -> None:
    model = MultitaskBert(_tiny_bert(2), ModelConfig())
    optimizer = build_optimizer(model, "mtbert", 1e-3, 0.01, lr_scale=lr_scale_fn(2, TrainConfig(layer_decay=0.5)))
    scales = {group["lr_scale"] for group in optimizer.param_groups}
    assert scales == {1.0, 0.5, 0.25, 0.125}  # heads and pooler, layer 1, layer 0, embeddings
    by_param = {id(p): g["lr_scale"] for g in optimizer.param_groups for p in g["params"]}
    assert by_param[id(model.encoder.embeddings.word_embeddings.weight)] == 0.125
    assert by_param[id(model.encoder.encoder.layer[1].output.dense.weight)] == 0.5
