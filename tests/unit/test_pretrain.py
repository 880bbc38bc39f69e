"""MLM further pretraining: sentence collection, masking, loss going down, encoder-dir round trip."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from mtbert import pretrain
from mtbert.config import MlmConfig, load_config
from mtbert.model.bert import BertModel
from mtbert.model.load_hf import bert_state_dict_to_hf, load_pretrained_bert, load_tokenizer
from mtbert.model.mlm import IGNORE_INDEX, MlmHead
from mtbert.train import Callback, FitContext
from tests.tiny import TINY_BERT

TINY = TINY_BERT  # tests/tiny.py
PAD, CLS, SEP, MASK = 0, 1, 2, 3
TOKENS = pretrain.MlmTokens(frozenset({PAD, CLS, SEP, MASK}), MASK, PAD, 99)


def repeated_token_sentences(n: int, seed: int) -> list[list[int]]:
    """[CLS] a a ... a [SEP]: a masked token can be read off its neighbours (the context)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(5, 99, (n,), generator=g).tolist()
    lengths = torch.randint(4, 12, (n,), generator=g).tolist()
    return [[CLS, *[a] * length, SEP] for a, length in zip(tokens, lengths)]


def test_collect_sentences_dedupes_both_columns_and_caps_deterministically() -> None:
    frames = {
        "sst": pd.DataFrame({"sentence1": ["Good film.", "Bad film.", "Good film."]}),
        "para": pd.DataFrame({"sentence1": ["Why?", "How?"], "sentence2": ["Bad film.", " Why? "]}),
        "sts": pd.DataFrame({"sentence1": ["A cat."], "sentence2": ["A dog."]}),
    }
    assert pretrain.collect_sentences(frames) == ["Good film.", "Bad film.", "Why?", "How?",
                                                  "A cat.", "A dog."]
    capped = pretrain.collect_sentences(frames, max_sentences=4, seed=3)
    assert len(capped) == 4 and capped == pretrain.collect_sentences(frames, 4, seed=3)
    everything = pretrain.collect_sentences(frames)
    assert capped == [s for s in everything if s in capped]  # a sample in the original order


def test_masked_batch_never_selects_specials_or_padding() -> None:
    seqs = repeated_token_sentences(200, seed=1)
    masked, attention, labels = pretrain.masked_batch(seqs, TOKENS, 0.5, torch.Generator().manual_seed(2))
    width = max(len(s) for s in seqs)
    assert masked.shape == attention.shape == labels.shape == (200, width)
    ids = torch.tensor([s + [PAD] * (width - len(s)) for s in seqs])
    selected = labels != IGNORE_INDEX
    assert not selected[torch.isin(ids, torch.tensor([PAD, CLS, SEP]))].any()
    assert (labels[selected] == ids[selected]).all()
    assert (masked[~selected] == ids[~selected]).all()
    eligible = int((attention.bool() & ~torch.isin(ids, torch.tensor([PAD, CLS, SEP]))).sum())
    assert 0.4 < selected.sum() / eligible < 0.6
    assert 0.7 < (masked[selected] == MASK).float().mean() < 0.9  # 80% of the selected


def test_mlm_loss_goes_down_on_a_small_set() -> None:
    torch.manual_seed(0)
    encoder = BertModel(TINY)
    head = MlmHead(TINY, encoder.word_embeddings())
    train, held_out = repeated_token_sentences(192, seed=3), repeated_token_sentences(64, seed=4)
    before = pretrain.evaluate_mlm(encoder, head, held_out, TOKENS, 0.15, seed=5)
    losses: list[float] = []

    class Record(Callback):
        def on_step(self, ctx: FitContext, metrics: dict[str, float]) -> None:
            losses.append(metrics["mlm/loss"])

    cfg = MlmConfig(epochs=8, batch_size=16, lr=1e-2, mask_prob=0.15)
    state = pretrain.further_pretrain(encoder, head, train, TOKENS, cfg, seed=1, callbacks=[Record()])
    after = pretrain.evaluate_mlm(encoder, head, held_out, TOKENS, 0.15, seed=5)
    assert state.global_step == state.total_steps == len(losses) == 8 * 12
    assert before > 4.4  # about ln(99) for an untrained model
    # Below ln(94), the best a model that ignores the context can do on held-out sentences.
    assert after < math.log(94) - 0.8, (before, after)
    assert sum(losses[-12:]) < sum(losses[:12])
    assert head.decoder.weight is encoder.word_embeddings().weight  # still tied after training


@pytest.fixture(scope="module")
def minilm_mlm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MiniLM after two MLM steps on a few sentences, written as an encoder directory."""
    torch.manual_seed(0)
    tokenizer = load_tokenizer("minilm")
    encoder = load_pretrained_bert("minilm")
    head, loaded = pretrain.load_mlm_head("minilm", encoder)
    assert not loaded  # MiniLM ships no MLM head: a fresh one is trained
    seqs = pretrain.tokenize_sentences(tokenizer, ["A man plays a guitar.", "The film was dull.",
                                                   "Why is the sky blue?", "Two dogs run."], 32)
    pretrain.further_pretrain(encoder, head, seqs, pretrain.mlm_tokens(tokenizer),
                              MlmConfig(batch_size=2, lr=1e-3), seed=0)
    out = tmp_path_factory.mktemp("mlm") / "encoder"
    pretrain.save_encoder(out, encoder, head, tokenizer, {"note": "test"})
    torch.save({"encoder": encoder.state_dict(), "head": head.state_dict()}, out.parent / "expected.pt")
    return out


def test_encoder_dir_round_trips_through_load_pretrained_bert(minilm_mlm_dir: Path) -> None:
    expected = torch.load(minilm_mlm_dir.parent / "expected.pt")
    reloaded = load_pretrained_bert(str(minilm_mlm_dir)).state_dict()
    assert reloaded.keys() == expected["encoder"].keys()
    for name, tensor in expected["encoder"].items():
        assert torch.equal(reloaded[name], tensor), name
    original = load_pretrained_bert("minilm").state_dict()
    assert not torch.equal(original["encoder.layer.0.attention.self.qkv.weight"],
                           reloaded["encoder.layer.0.attention.self.qkv.weight"])  # it did train
    assert json.loads((minilm_mlm_dir / "mlm.json").read_text()) == {"note": "test"}
    assert load_tokenizer(str(minilm_mlm_dir))("A test.")["input_ids"] == \
        load_tokenizer("minilm")("A test.")["input_ids"]


def test_encoder_dir_has_hf_names_and_loads_in_transformers(minilm_mlm_dir: Path) -> None:
    import transformers

    names = set(load_file(str(minilm_mlm_dir / "model.safetensors")))
    assert "encoder.layer.0.attention.self.query.weight" in names  # HF's split QKV, not ours
    assert not any("qkv" in n for n in names)
    assert set(pretrain.HEAD_HF_NAMES.values()) <= names
    theirs = transformers.BertModel.from_pretrained(str(minilm_mlm_dir)).eval()
    ours = load_pretrained_bert(str(minilm_mlm_dir)).eval()
    enc = load_tokenizer(str(minilm_mlm_dir))(["A man plays a guitar."], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=enc["input_ids"]).last_hidden_state,
                                   theirs(input_ids=enc["input_ids"]).last_hidden_state,
                                   atol=1e-4, rtol=1e-4)


def test_saved_mlm_head_is_loaded_back_and_tied(minilm_mlm_dir: Path) -> None:
    expected = torch.load(minilm_mlm_dir.parent / "expected.pt")["head"]
    encoder = load_pretrained_bert(str(minilm_mlm_dir))
    head, loaded = pretrain.load_mlm_head(str(minilm_mlm_dir), encoder)
    assert loaded and head.decoder.weight is encoder.word_embeddings().weight
    for name, tensor in head.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


def test_a_partial_mlm_head_is_an_error(tmp_path: Path) -> None:
    torch.manual_seed(0)
    encoder = BertModel(TINY)
    state = {f"bert.{k}": v for k, v in bert_state_dict_to_hf(encoder.state_dict()).items()}
    state["cls.predictions.transform.dense.weight"] = torch.zeros(32, 32)
    tmp_path.joinpath("config.json").write_text(json.dumps(TINY.to_hf_dict()))
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="cls.predictions.bias"):
        pretrain.load_mlm_head(str(tmp_path), encoder)


def test_pretrain_stage_writes_an_encoder_that_training_starts_from(prepared_project: Path,
                                                                    tmp_path: Path) -> None:
    from mtbert.pipeline.stages.pretrain_mlm import pretrain as pretrain_stage
    from mtbert.model.multitask import build_multitask

    cfg = load_config(prepared_project / "params.yaml", [
        f"data.prepared_dir={prepared_project / 'artifacts/prepared'}", "mlm.max_sentences=40",
        "mlm.batch_size=16", f"mlm.out_dir={tmp_path / 'mlm'}"])
    stats = pretrain_stage(cfg)
    assert stats["mlm/steps"] == 3 and stats["mlm/sentences"] == 40
    assert stats["mlm/dev_loss_after"] < stats["mlm/dev_loss_before"]
    model = build_multitask(cfg.model, init_from=str(tmp_path / "mlm"))
    written = load_pretrained_bert(str(tmp_path / "mlm")).state_dict()
    for name, tensor in model.encoder.state_dict().items():
        assert torch.equal(tensor, written[name]), name
