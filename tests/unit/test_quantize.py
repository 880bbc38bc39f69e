"""Dynamic int8 prediction: a copy whose linear layers are int8, close to the fp32 model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mtbert.config import ModelConfig
from mtbert.model.bert import BertModel
from mtbert.model.multitask import MultitaskBert
from mtbert.model.quantize import apply_quantization, quantize_int8
from tests.tiny import TINY_BERT


def _model() -> nn.Module:
    torch.manual_seed(0)
    return MultitaskBert(BertModel(TINY_BERT), ModelConfig()).eval()


def test_int8_copy_quantizes_every_linear_and_leaves_the_model_alone() -> None:
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    quantized = quantize_int8(model)
    assert not any(type(m) is nn.Linear for m in quantized.modules())
    assert any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in quantized.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert any(type(m) is nn.Linear for m in model.modules())


def test_int8_outputs_stay_close_to_fp32() -> None:
    model = _model()
    quantized = quantize_int8(model)
    x = torch.randn(4, 7, model.encoder.config.hidden_size)
    dense = next(m for m in model.modules() if type(m) is nn.Linear)
    qdense = dict(quantized.named_modules())[next(n for n, m in model.named_modules() if m is dense)]
    ref, out = dense(x), qdense(x)
    assert (out - ref).abs().max() <= 0.05 * ref.abs().max()


def test_unknown_quantization_is_refused() -> None:
    with pytest.raises(ValueError, match="int8"):
        apply_quantization(_model(), "int4")
    model = _model()
    assert apply_quantization(model, "none") is model
