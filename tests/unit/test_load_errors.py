"""Broken checkpoint directories: a UserError naming the file, never a traceback from a library."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mtbert.config import ModelConfig
from mtbert.errors import MissingFileError, UserError
from mtbert.model.bert import BertModel
from mtbert.model.load_hf import (
    PretrainedLoadError,
    bert_state_dict_to_hf,
    load_pretrained_bert,
    load_tokenizer,
    resolve_checkpoint,
)
from mtbert.model.multitask import build_multitask
from tests.tiny import TINY_BERT

TINY = TINY_BERT  # tests/tiny.py
GPT2_CONFIG = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_embd": 768,
               "n_head": 12, "n_layer": 12, "n_positions": 1024, "vocab_size": 50257}


def _state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return bert_state_dict_to_hf(BertModel(TINY).state_dict())


def _checkpoint(path: Path, state: dict[str, torch.Tensor] | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(TINY.to_hf_dict()), encoding="utf-8")
    weights = _state() if state is None else state
    save_file({k: v.contiguous() for k, v in weights.items()}, str(path / "model.safetensors"))
    return path


def _error(call, *args, **kwargs) -> UserError:
    with pytest.raises(UserError) as caught:
        call(*args, **kwargs)
    assert "\n" not in str(caught.value)
    return caught.value


def test_missing_checkpoint_dir(tmp_path: Path) -> None:
    err = _error(load_pretrained_bert, str(tmp_path / "no-such-ck"))
    assert isinstance(err, MissingFileError) and isinstance(err, FileNotFoundError)
    assert str(err).startswith(f"{tmp_path / 'no-such-ck'}: checkpoint directory does not exist")
    assert str(_error(resolve_checkpoint, str(_checkpoint(tmp_path / "ck") / "config.json"))) \
        .endswith("config.json: checkpoint directory is not a directory (name a checkpoint "
                  "directory or 'minilm')")


def test_missing_config_and_weights(tmp_path: Path) -> None:
    ck = _checkpoint(tmp_path / "ck")
    (ck / "model.safetensors").unlink()
    assert str(_error(load_pretrained_bert, str(ck))).startswith(
        f"{ck}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")
    (ck / "config.json").unlink()
    assert str(_error(load_pretrained_bert, str(ck))) == \
        f"{ck / 'config.json'}: no config.json in the checkpoint directory"


def test_config_json_of_a_non_bert_model(tmp_path: Path) -> None:
    ck = _checkpoint(tmp_path / "ck")
    (ck / "config.json").write_text(json.dumps(GPT2_CONFIG))
    err = _error(load_pretrained_bert, str(ck))
    assert isinstance(err, PretrainedLoadError)
    assert str(err).startswith(f"{ck / 'config.json'}: model_type: 'gpt2' is not a BERT model")
    del GPT2_CONFIG["model_type"]
    (ck / "config.json").write_text(json.dumps(GPT2_CONFIG))
    assert str(_error(load_pretrained_bert, str(ck))).startswith(
        f"{ck / 'config.json'}: BERT config is missing required keys")


def test_invalid_config_json_names_the_line(tmp_path: Path) -> None:
    ck = _checkpoint(tmp_path / "ck")
    (ck / "config.json").write_text('{\n  "hidden_size": 32,\n  "vocab_size": 99\n  "x": 1\n}\n')
    assert str(_error(load_pretrained_bert, str(ck))).startswith(
        f"{ck / 'config.json'}:4: invalid JSON (Expecting ',' delimiter")


@pytest.fixture
def tokenizer_dir(tmp_path: Path) -> Path:
    """A copy of the MiniLM tokenizer files."""
    source, dest = resolve_checkpoint("minilm"), tmp_path / "tok"
    dest.mkdir()
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(source / name, dest / name)
    return dest


def test_corrupt_tokenizer_json(tokenizer_dir: Path) -> None:
    file = tokenizer_dir / "tokenizer.json"
    file.write_text(file.read_text()[:5000])  # cut mid-file, as by a failed download
    assert str(_error(load_tokenizer, str(tokenizer_dir))).startswith(f"{file}:")
    file.write_text('{"version": "1.0", "model": {"type": "Nonsense"}}')
    err = _error(load_tokenizer, str(tokenizer_dir))
    assert isinstance(err, PretrainedLoadError) and str(err).startswith(f"{file}: invalid tokenizer")
    file.unlink()
    (tokenizer_dir / "vocab.txt").unlink()
    assert str(_error(load_tokenizer, str(tokenizer_dir))) == \
        f"{tokenizer_dir}: no tokenizer.json or vocab.txt in the checkpoint directory"


def test_truncated_safetensors(tmp_path: Path) -> None:
    ck = _checkpoint(tmp_path / "ck")
    weights = ck / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    err = _error(load_pretrained_bert, str(ck))
    assert isinstance(err, PretrainedLoadError)
    assert str(err).startswith(f"{weights}: truncated or invalid safetensors file")


def test_truncated_pytorch_bin(tmp_path: Path) -> None:
    ck = _checkpoint(tmp_path / "ck")
    (ck / "model.safetensors").unlink()
    torch.save(_state(), ck / "pytorch_model.bin")
    data = (ck / "pytorch_model.bin").read_bytes()
    (ck / "pytorch_model.bin").write_bytes(data[: len(data) // 3])
    assert str(_error(load_pretrained_bert, str(ck))).startswith(
        f"{ck / 'pytorch_model.bin'}: truncated or corrupt weights")


def test_shape_mismatch_and_key_problems_name_the_weights_file(tmp_path: Path) -> None:
    state = _state()
    state["encoder.layer.1.intermediate.dense.bias"] = torch.zeros(36)
    del state["pooler.dense.weight"]
    state["classifier.weight"] = torch.zeros(2, 32)
    ck = _checkpoint(tmp_path / "ck", state)
    message = str(_error(load_pretrained_bert, str(ck)))
    assert message.startswith(f"{ck / 'model.safetensors'}: weights do not match the BERT encoder: ")
    assert "missing keys ['pooler.dense.weight']" in message
    assert "unexpected keys ['classifier.weight']" in message
    assert "shape mismatches ['encoder.layer.1.intermediate.dense.bias: checkpoint (36,) vs " \
           "model (37,)']" in message


def test_max_length_beyond_the_position_embeddings(tmp_path: Path) -> None:
    ck = _checkpoint(tmp_path / "ck")
    assert load_pretrained_bert(str(ck), max_length=16).config.max_position_embeddings == 16
    expected = (f"{ck / 'config.json'}: model.max_length: 17 is more than the 16 position "
                "embeddings of this checkpoint (set model.max_length to at most 16)")
    assert str(_error(load_pretrained_bert, str(ck), max_length=17)) == expected
    cfg = ModelConfig(checkpoint=str(ck), max_length=17, pooling="mean", pair_encoding="bi",
                      sts_head="cosine")
    assert str(_error(build_multitask, cfg)) == expected
