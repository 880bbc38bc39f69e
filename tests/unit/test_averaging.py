"""mtbert.averaging.WeightEma: the EMA formula by hand, start step, checkpoint round trip, swapping."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mtbert.averaging import WeightEma
from mtbert.callbacks import FitContext, TrainState
from mtbert.config import ConfigError, EmaConfig


class Tiny(nn.Module):
    """Odd shapes, a frozen parameter and a buffer, in float64 for an exact hand computation."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(7, 3).double()
        self.frozen = nn.Parameter(torch.ones(5, dtype=torch.float64), requires_grad=False)
        self.register_buffer("count", torch.zeros(2))


def set_weights(model: Tiny, value: float) -> None:
    with torch.no_grad():
        model.linear.weight.fill_(value)
        model.linear.bias.fill_(-value)


def run_steps(ema: WeightEma, model: Tiny, values: list[float], first_step: int = 1) -> None:
    """Pretend `fit` took steps that left the weights at `values`, calling back after each."""
    ctx = FitContext(model, torch.optim.SGD(model.parameters(), lr=0.1), TrainState())
    for step, value in enumerate(values, start=first_step):
        set_weights(model, value)
        ctx.state.global_step = step
        ema.on_step(ctx, {})


def test_ema_matches_the_hand_computation() -> None:
    model, decay = Tiny(), 0.9
    ema = WeightEma(decay)
    run_steps(ema, model, [1.0, 2.0, 4.0])
    # avg_1 = w_1; avg_s = d * avg_(s-1) + (1 - d) * w_s
    by_hand = decay * (decay * 1.0 + (1 - decay) * 2.0) + (1 - decay) * 4.0  # 1.561
    assert ema.num_updates == 3
    assert torch.allclose(ema.shadow["linear.weight"], torch.full((3, 7), by_hand, dtype=torch.float64))
    assert torch.allclose(ema.shadow["linear.bias"], torch.full((3,), -by_hand, dtype=torch.float64))
    assert set(ema.shadow) == {"linear.weight", "linear.bias"}  # frozen params and buffers left out


def test_start_step_starts_from_that_steps_weights() -> None:
    model, decay = Tiny(), 0.5
    ema = WeightEma(decay, start_step=3)
    run_steps(ema, model, [10.0, 20.0, 1.0, 3.0])
    assert ema.num_updates == 2
    assert torch.allclose(ema.shadow["linear.weight"], torch.full((3, 7), 0.5 * 1.0 + 0.5 * 3.0,
                                                                  dtype=torch.float64))


def test_state_dict_round_trip_continues_exactly() -> None:
    whole, model = WeightEma(0.8), Tiny()
    run_steps(whole, model, [1.0, 2.0, 3.0, 5.0])
    first = WeightEma(0.8)
    run_steps(first, model, [1.0, 2.0])
    resumed = WeightEma(0.8)
    resumed.load_state_dict(first.state_dict())
    run_steps(resumed, model, [3.0, 5.0], first_step=3)
    assert resumed.num_updates == whole.num_updates == 4
    for name, tensor in whole.shadow.items():
        assert torch.equal(resumed.shadow[name], tensor)
    with pytest.raises(ValueError, match="decay"):
        WeightEma(0.7).load_state_dict(first.state_dict())


def test_state_dict_is_a_snapshot() -> None:
    ema, model = WeightEma(0.5), Tiny()
    run_steps(ema, model, [1.0])
    saved = ema.state_dict()
    run_steps(ema, model, [3.0], first_step=2)
    assert torch.equal(saved["shadow"]["linear.weight"], torch.ones(3, 7, dtype=torch.float64))


def test_copy_to_and_swapped_in() -> None:
    ema, model = WeightEma(0.5), Tiny()
    run_steps(ema, model, [1.0, 3.0])  # average 2, model 3
    with ema.swapped_in(model):
        assert torch.all(model.linear.weight == 2.0)
    assert torch.all(model.linear.weight == 3.0)
    ema.copy_to(model)
    assert torch.all(model.linear.weight == 2.0) and torch.all(model.linear.bias == -2.0)
    with pytest.raises(ValueError, match="empty"):
        WeightEma().copy_to(model)


def test_bad_arguments_and_config() -> None:
    with pytest.raises(ValueError):
        WeightEma(1.0)
    with pytest.raises(ValueError):
        WeightEma(0.9, start_step=-1)
    with pytest.raises(ConfigError, match="^train.ema.decay"):
        EmaConfig(decay=1.0)
    ema = WeightEma.from_config(EmaConfig(decay=0.99, start_step=7))
    assert (ema.decay, ema.start_step) == (0.99, 7)
