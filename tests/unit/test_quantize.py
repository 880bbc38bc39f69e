"""Dynamic int8 prediction: a copy whose linear layers are int8, close to the fp32 model."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from mtbert.config import ConfigError, ModelConfig, load_config
from mtbert.errors import UserError
from mtbert.model.bert import BertModel
from mtbert.model.multitask import MultitaskBert
from mtbert.model.quantize import apply_quantization, quantize_int8
from mtbert.model.trained import load_trained
from mtbert.pipeline.serving import predict_file
from tests.tiny import TINY_BERT

REPO = Path(__file__).resolve().parents[2]


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


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained-model folder as the train stage writes it, tiny (the fuzz test's)."""
    from tests.unit.test_predict_fuzz import model_dir as fuzz_model_dir

    return fuzz_model_dir.__wrapped__(tmp_path_factory)


def test_load_trained_quantizes_on_request_and_predict_file_uses_it(model_dir: Path, tmp_path: Path) -> None:
    plain, _, _ = load_trained(model_dir)
    quantized, _, _ = load_trained(model_dir, quantize="int8")
    assert any(type(m) is nn.Linear for m in plain.modules())
    assert not any(type(m) is nn.Linear for m in quantized.modules())
    rows = tmp_path / "in.csv"
    rows.write_text("id,sentence\na,a great film\nb,not good at all\n")
    for quantize in ("none", "int8"):
        out = tmp_path / f"{quantize}.csv"
        assert predict_file(model_dir, "sst", rows, out, output_format="csv", quantize=quantize) == 2
        assert pd.read_csv(out)["id"].tolist() == ["a", "b"]


def test_int8_on_a_gpu_device_is_refused_in_one_line(model_dir: Path) -> None:
    with pytest.raises(UserError, match="CPU only") as err:
        load_trained(model_dir, device="cuda", quantize="int8")
    assert err.value.field == "eval.quantize"


def test_config_refuses_an_unknown_quantization() -> None:
    with pytest.raises(ConfigError, match="eval.quantize"):
        load_config(REPO / "params.yaml", ["eval.quantize=int4"])
