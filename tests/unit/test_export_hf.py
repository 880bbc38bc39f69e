"""The encoder folder (`mtbert.model.export_hf`) read by the real transformers and sentence-transformers:
same hidden states as our encoder, same sentence vectors as `TrainedModel.encode`, for every pooling.

Random tiny encoders with odd sizes (hidden 36, 2 layers, 4 heads, FFN 37) on the default backbone's
tokenizer: a transposed or mis-split QKV tensor fails loudly.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoModel

from mtbert.config import Config, ModelConfig
from mtbert.inference import TrainedModel
from mtbert.model.bert import BertConfig, BertModel
from mtbert.model.export_hf import pooling_config, save_hf_encoder
from mtbert.model.heads import POOLINGS
from mtbert.model.load_hf import load_tokenizer
from mtbert.model.multitask import MultitaskBert

SENTENCES = ["A gripping, funny and moving film.", "Dull.",
             "How do I learn Python quickly, and which book should I read first?", "ok"]
MAX_LENGTH = 24


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("minilm")


def tiny_model(tokenizer, pooling: str, seed: int = 3) -> TrainedModel:
    torch.manual_seed(seed)
    bert = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=36, num_hidden_layers=2,
                                num_attention_heads=4, intermediate_size=37, max_position_embeddings=40,
                                hidden_act="gelu"))
    cfg = Config(model=dataclasses.replace(ModelConfig(), pooling=pooling, max_length=MAX_LENGTH))
    return TrainedModel(MultitaskBert(bert, cfg.model), tokenizer, cfg)


def test_automodel_gives_our_hidden_states(tmp_path: Path, tokenizer) -> None:
    ours = tiny_model(tokenizer, "mean")
    folder = save_hf_encoder(tmp_path / "encoder", ours.model.encoder, tokenizer, "mean", MAX_LENGTH)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "bert" and config["architectures"] == ["BertModel"]
    hf = AutoModel.from_pretrained(str(folder)).eval()
    assert type(hf).__name__ == "BertModel"
    enc = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.inference_mode():
        theirs = hf(**enc).last_hidden_state
        mine = ours.model.encoder(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    real = enc["attention_mask"].bool()  # our padding positions are zeros, HF's are meaningless
    assert torch.allclose(theirs[real], mine.last_hidden_state[real], atol=1e-5)
    assert torch.allclose(hf(**enc).pooler_output, mine.pooler_output, atol=1e-5)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_sentence_transformers_gives_our_vectors(tmp_path: Path, tokenizer, pooling: str) -> None:
    ours = tiny_model(tokenizer, pooling)
    folder = save_hf_encoder(tmp_path / "encoder", ours.model.encoder, tokenizer, pooling, MAX_LENGTH)
    st = SentenceTransformer(str(folder), device="cpu")
    theirs = st.encode(SENTENCES, convert_to_numpy=True, batch_size=3)
    mine = ours.encode(SENTENCES, batch_size=3)
    width = 36 * (2 if pooling == "mean_max" else 1)
    assert mine.shape == theirs.shape == (len(SENTENCES), width)
    np.testing.assert_allclose(theirs, mine, atol=1e-5)


def test_files_sentence_transformers_and_transformers_expect(tmp_path: Path, tokenizer) -> None:
    ours = tiny_model(tokenizer, "cls")
    folder = save_hf_encoder(tmp_path / "encoder", ours.model.encoder, tokenizer, "cls", MAX_LENGTH)
    for name in ("config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json",
                 "special_tokens_map.json",
                 "tokenizer.json", "modules.json", "sentence_bert_config.json", "1_Pooling/config.json",
                 "2_Dense/config.json", "2_Dense/model.safetensors"):
        assert (folder / name).is_file(), name
    assert json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"] == MAX_LENGTH
    assert not list(tmp_path.glob(".encoder.*")), "temporary folders left behind"


def test_rewriting_replaces_the_folder_whole(tmp_path: Path, tokenizer) -> None:
    folder = save_hf_encoder(tmp_path / "encoder", tiny_model(tokenizer, "cls").model.encoder,
                             tokenizer, "cls", MAX_LENGTH)
    save_hf_encoder(folder, tiny_model(tokenizer, "mean").model.encoder, tokenizer, "mean", MAX_LENGTH)
    assert not (folder / "2_Dense").exists()  # nothing of the cls export is left
    assert json.loads((folder / "1_Pooling" / "config.json").read_text())["pooling_mode_mean_tokens"]


def test_an_unknown_pooling_is_refused_before_anything_is_written(tmp_path: Path, tokenizer) -> None:
    with pytest.raises(ValueError, match="unknown pooling 'sum'; valid: cls, mean, max, mean_max"):
        save_hf_encoder(tmp_path / "encoder", tiny_model(tokenizer, "mean").model.encoder, tokenizer,
                        "sum", MAX_LENGTH)
    assert list(tmp_path.iterdir()) == []
    assert pooling_config("mean_max", 8)["pooling_mode"] == ["mean", "max"]
