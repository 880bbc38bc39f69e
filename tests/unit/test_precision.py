"""train.precision: auto picks bf16 only where the device has bf16 units; fit and prediction resolve it.

The hardware probe is replaced by a fixed answer, so each case runs the same on any CPU.
"""

from __future__ import annotations

import logging

import pytest
import torch

from mtbert import precision
from mtbert.batching import TokenizedTask
from mtbert.config import ModelConfig, TrainConfig, load_config
from mtbert.evaluate import raw_outputs
from mtbert.model.bert import BertModel
from mtbert.model.multitask import MultitaskBert
from mtbert.optim import build_optimizer
from mtbert.pipeline.project import with_precision
from mtbert.train import fit
from tests.conftest import REPO_ROOT
from tests.tiny import TINY_BERT_NO_DROPOUT

CPU = torch.device("cpu")


@pytest.fixture
def units(monkeypatch: pytest.MonkeyPatch):
    """Set whether 'this CPU' has bf16 units (and forget which lines were logged already)."""
    monkeypatch.setattr(precision, "_said", set())

    def set_units(has: bool) -> None:
        monkeypatch.setattr(precision, "cpu_has_bf16", lambda: has)
    return set_units


@pytest.mark.parametrize(("has", "want"), [(True, "bf16"), (False, "fp32")])
def test_auto_is_bf16_exactly_where_the_cpu_has_bf16_units(units, has: bool, want: str) -> None:
    units(has)
    assert precision.resolve_precision("auto", CPU) == want
    assert precision.resolve_precision("auto", CPU, inference=True) == want
    assert precision.resolve_precision("fp32", CPU) == "fp32"


def test_explicit_bf16_without_units_trains_in_bf16_with_a_warning_and_predicts_in_fp32(
        units, caplog: pytest.LogCaptureFixture) -> None:
    units(False)
    with caplog.at_level(logging.INFO, logger="mtbert"):
        assert precision.resolve_precision("bf16", CPU) == "bf16"
        assert "emulated" in caplog.text
        assert precision.resolve_precision("bf16", CPU, inference=True) == "fp32"
        for _ in range(3):  # once per task or trial: each line is said once per process
            precision.resolve_precision("bf16", CPU)
            precision.resolve_precision("bf16", CPU, inference=True)
    assert [r.levelname for r in caplog.records] == ["WARNING", "INFO"]


def test_unknown_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="fp16"):
        precision.resolve_precision("fp16", CPU)


def test_params_yaml_defaults_to_auto_and_a_stage_records_what_it_resolved(units) -> None:
    cfg = load_config(REPO_ROOT / "params.yaml", [])
    assert cfg.train.precision == "auto"
    units(True)
    assert with_precision(cfg, CPU).train.precision == "bf16"  # what the trained model's config keeps
    units(False)
    assert with_precision(cfg, CPU).train.precision == "fp32"


def _data() -> dict[str, TokenizedTask]:
    g = torch.Generator().manual_seed(5)
    return {task: TokenizedTask(task, [tuple(([1, *torch.randint(5, 99, (n,), generator=g).tolist(), 2],
                                              [0] * (n + 2)) for _ in range(1 if task == "sst" else 2))
                                       for n in torch.randint(1, 6, (rows,), generator=g).tolist()],
                                [float(i % 2) for i in range(rows)])
            for task, rows in (("sst", 9), ("para", 9), ("sts", 9))}


def _trained(precision_name: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = MultitaskBert(BertModel(TINY_BERT_NO_DROPOUT), ModelConfig(pair_encoding="bi"))
    fit(model, _data(), build_optimizer(model, "mtbert", 1e-3, 0.0),
        TrainConfig(epochs=1, batch_size=4, precision=precision_name), seed=3)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_fit_with_auto_trains_as_the_precision_it_resolves_to(units) -> None:
    units(False)
    auto_without, fp32 = _trained("auto"), _trained("fp32")
    assert all(torch.equal(auto_without[k], fp32[k]) for k in fp32)  # auto here is exactly fp32
    units(True)
    auto_with, bf16 = _trained("auto"), _trained("bf16")
    assert all(torch.equal(auto_with[k], bf16[k]) for k in bf16)  # and here exactly bf16
    assert not all(torch.equal(bf16[k], fp32[k]) for k in fp32)  # which is not fp32


def test_prediction_with_auto_follows_the_units(units) -> None:
    torch.manual_seed(0)
    model = MultitaskBert(BertModel(TINY_BERT_NO_DROPOUT), ModelConfig(pair_encoding="bi")).eval()
    data = _data()["sst"]
    units(False)
    assert torch.equal(torch.from_numpy(raw_outputs(model, data, 4, "auto")),
                       torch.from_numpy(raw_outputs(model, data, 4, "fp32")))
    units(True)
    assert torch.equal(torch.from_numpy(raw_outputs(model, data, 4, "auto")),
                       torch.from_numpy(raw_outputs(model, data, 4, "bf16")))
