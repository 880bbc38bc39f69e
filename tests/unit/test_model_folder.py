"""The trained model folder the train stage writes (`_save_trained`) and its card, with and
without the Hugging Face copy of the encoder (`train.export_hf`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from mtbert.callbacks import TrainState
from mtbert.config import Config, with_overrides
from mtbert.curves import CurveRecorder
from mtbert.model.bert import BertConfig, BertModel
from mtbert.model.load_hf import load_tokenizer
from mtbert.model.multitask import MultitaskBert
from mtbert.pipeline import model_card
from mtbert.pipeline.stages import train as train_stage


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("minilm")


def _tiny(tokenizer) -> tuple[MultitaskBert, BertConfig]:
    torch.manual_seed(0)
    enc = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1,
                     num_attention_heads=2, intermediate_size=24, max_position_embeddings=40)
    return MultitaskBert(BertModel(enc), Config().model), enc


def test_export_hf_off_writes_no_encoder_copy_and_removes_an_earlier_one(tmp_path: Path, monkeypatch,
                                                                          tokenizer) -> None:
    """A folder trained with export_hf false must not keep an encoder/ an earlier run exported:
    it would hold other weights than model.safetensors."""
    monkeypatch.chdir(tmp_path)
    model, _ = _tiny(tokenizer)
    state = TrainState(epoch=1, step_in_epoch=1, global_step=1, total_steps=1)
    for export in (True, False, True):
        cfg = with_overrides(Config(), {"train.out_dir": "model", "train.export_hf": export})
        curves = CurveRecorder(tmp_path / "curves.csv", 1, [(1, "sst", 1.5)])
        train_stage._save_trained(cfg, (model, tokenizer), state, curves, None)
        assert (tmp_path / "model" / "model.safetensors").exists()
        assert (tmp_path / "model" / "encoder" / "config.json").exists() == export
        assert (tmp_path / "model" / "encoder").exists() == export


def test_the_card_shows_the_encoder_copy_only_where_there_is_one(tokenizer) -> None:
    _, enc = _tiny(tokenizer)
    state = TrainState(epoch=1, step_in_epoch=1, global_step=1, total_steps=1)
    cards = {}
    for export in (True, False):
        cfg = Config()
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, export_hf=export))
        cards[export] = model_card.render_card(cfg, enc, state, 1000, {})
    for card in cards.values():
        assert 'mtbert.load("artifacts/model")' in card and "`encode` returns the pooled vectors" in card
    assert 'AutoModel.from_pretrained("artifacts/model/encoder")' in cards[True]
    assert "encoder/` holds the encoder" in cards[True]
    assert "AutoModel" not in cards[False] and "encoder/`" not in cards[False]
    assert "`train.export_hf: false`: no Hugging Face copy of the encoder" in cards[False]
