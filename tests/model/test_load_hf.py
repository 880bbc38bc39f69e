"""Checkpoint loading: HF parity oracles (tiny random and real MiniLM) and strict key checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from huggingface_hub.errors import LocalEntryNotFoundError
from safetensors.torch import save_file

from mtbert.model import load_hf
from mtbert.model.bert import BertConfig, BertModel
from mtbert.model.load_hf import (
    DEFAULT_CHECKPOINT,
    POOLER_KEYS,
    bert_state_dict_to_hf,
    load_bert_config,
    load_pretrained_bert,
    load_tokenizer,
    read_state_dict,
    resolve_checkpoint,
)
from tests.tiny import TINY_BERT

TOL = 1e-5
TINY = TINY_BERT  # tests/tiny.py
SENTENCES = [
    "The movie was surprisingly good, and the soundtrack was even better.",
    "Terrible.",
    "How do I learn to cook Italian food at home without spending a fortune on equipment?",
    "A man is playing a guitar.",
    "Is it raining in London today, or is the forecast wrong again?",
]


# ---------------------------------------------------------------- helpers


def tiny_hf_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """HF-named state dict of a seeded tiny model."""
    torch.manual_seed(seed)
    return bert_state_dict_to_hf(BertModel(TINY).state_dict())


def write_checkpoint(path: Path, state: dict[str, torch.Tensor], config: BertConfig = TINY) -> Path:
    """A checkpoint directory with config.json and model.safetensors."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config.to_hf_dict()), encoding="utf-8")
    save_file({k: v.contiguous() for k, v in state.items()}, str(path / "model.safetensors"))
    return path


def padded(tokenizer: transformers.PreTrainedTokenizerBase) -> dict[str, torch.Tensor]:
    enc = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    return {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


class _Payload:
    """Unpickling this calls ``open(path, "w")``: an observable side effect."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (open, (str(self.path), "w"))


# ---------------------------------------------------------------- MiniLM oracle


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    return resolve_checkpoint(DEFAULT_CHECKPOINT)


@pytest.fixture(scope="module")
def minilm_batch(minilm_dir: Path) -> dict[str, torch.Tensor]:
    return padded(load_tokenizer(str(minilm_dir)))


@pytest.fixture(scope="module")
def hf_outputs(minilm_dir: Path, minilm_batch: dict[str, torch.Tensor]) -> dict[str, object]:
    """transformers.BertModel outputs for each attention implementation."""
    outs = {}
    for impl in ("sdpa", "eager"):
        model = transformers.BertModel.from_pretrained(str(minilm_dir), attn_implementation=impl)
        with torch.no_grad():
            outs[impl] = model.eval()(**minilm_batch)
    return outs


def test_minilm_checkpoint_contents(minilm_dir: Path) -> None:
    config = load_bert_config(minilm_dir)
    shape = (config.hidden_size, config.num_hidden_layers, config.num_attention_heads)
    assert shape == (384, 6, 12)
    assert (config.intermediate_size, config.vocab_size, config.hidden_act) == (1536, 30522, "gelu")
    state = read_state_dict(minilm_dir)
    assert set(POOLER_KEYS) <= set(state)
    assert "embeddings.position_ids" in state  # ignored on load


@pytest.mark.parametrize("attn_impl", ["sdpa", "eager"])
def test_minilm_matches_transformers(
    attn_impl: str, minilm_batch: dict[str, torch.Tensor], hf_outputs: dict[str, object]
) -> None:
    mask = minilm_batch["attention_mask"].bool()
    lengths = mask.sum(1)
    assert len(set(lengths.tolist())) == len(SENTENCES) and (~mask).any()
    model = load_pretrained_bert(DEFAULT_CHECKPOINT, attn_impl=attn_impl).eval()
    ref, ref_sdpa = hf_outputs[attn_impl], hf_outputs["sdpa"]
    model.unpad = False
    with torch.no_grad():
        ours = model(**minilm_batch)
        model.unpad = True
        packed = model(**minilm_batch)
    # Same attention path as HF: every position, padding included.
    assert max_diff(ours.last_hidden_state, ref.last_hidden_state) < TOL
    assert max_diff(ours.pooler_output, ref.pooler_output) < TOL
    # Packed mode and either path against HF's default (sdpa), on real tokens.
    for out in (ours, packed):
        assert max_diff(out.last_hidden_state[mask], ref_sdpa.last_hidden_state[mask]) < TOL
        assert max_diff(out.pooler_output, ref_sdpa.pooler_output) < TOL


def test_tokenizer_from_vocab_only(minilm_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "vocab.txt").write_bytes((minilm_dir / "vocab.txt").read_bytes())
    from_json = padded(load_tokenizer(str(minilm_dir)))
    from_vocab = padded(load_tokenizer(str(tmp_path)))
    assert torch.equal(from_json["input_ids"], from_vocab["input_ids"])
    assert from_json["input_ids"][0, 0].item() == 101  # [CLS]


def test_dropout_override() -> None:
    model = load_pretrained_bert(DEFAULT_CHECKPOINT, dropout=0.0)
    assert model.config.hidden_dropout_prob == 0.0
    assert model.config.attention_probs_dropout_prob == 0.0


# ---------------------------------------------------------------- tiny oracle


def test_tiny_random_model_matches_transformers() -> None:
    """Odd sizes make a QKV-split or transpose bug fail loudly."""
    torch.manual_seed(3)
    ours = BertModel(TINY, unpad=False).eval()
    hf_config = transformers.BertConfig(**TINY.to_hf_dict())
    hf = transformers.BertModel(hf_config).eval()
    hf.load_state_dict(bert_state_dict_to_hf(ours.state_dict()), strict=True)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, TINY.vocab_size, (13, 7), generator=g)
    mask = torch.ones(13, 7, dtype=torch.long)
    mask[3:, 5:] = 0
    mask[7:, 2:] = 0
    types = torch.randint(0, 2, (13, 7), generator=g)
    with torch.no_grad():
        a = ours(ids, mask, types)
        b = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
    assert max_diff(a.last_hidden_state, b.last_hidden_state) < TOL
    assert max_diff(a.pooler_output, b.pooler_output) < TOL


# ---------------------------------------------------------------- strict loading


def test_roundtrip_loads_every_tensor(tmp_path: Path) -> None:
    state = tiny_hf_state()
    model = load_pretrained_bert(str(write_checkpoint(tmp_path / "ck", state)))
    assert model.config == TINY
    for name, tensor in bert_state_dict_to_hf(model.state_dict()).items():
        assert torch.equal(tensor, state[name]), name


@pytest.mark.parametrize(
    "key",
    [
        "encoder.layer.1.attention.self.value.bias",
        "embeddings.LayerNorm.weight",
        "pooler.dense.weight",
    ],
)
def test_missing_key_is_named(tmp_path: Path, key: str) -> None:
    state = tiny_hf_state()
    del state[key]
    path = write_checkpoint(tmp_path / "ck", state)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        load_pretrained_bert(str(path))


def test_missing_pooler_allowed_only_when_listed(tmp_path: Path) -> None:
    state = {k: v for k, v in tiny_hf_state().items() if not k.startswith("pooler.")}
    path = write_checkpoint(tmp_path / "ck", state)
    with pytest.raises(ValueError, match=r"pooler\.dense\.bias"):
        load_pretrained_bert(str(path))
    model = load_pretrained_bert(str(path), allow_missing=POOLER_KEYS)
    assert model.pooler.dense.weight.shape == (TINY.hidden_size, TINY.hidden_size)
    with pytest.raises(ValueError, match="not_a_key"):
        load_pretrained_bert(str(path), allow_missing=("not_a_key",))


def test_unexpected_key_is_named(tmp_path: Path) -> None:
    state = {**tiny_hf_state(), "classifier.weight": torch.zeros(5, 32)}
    path = write_checkpoint(tmp_path / "ck", state)
    with pytest.raises(ValueError, match=r"classifier\.weight"):
        load_pretrained_bert(str(path))


@pytest.mark.parametrize(
    ("key", "shape"),
    [
        ("encoder.layer.0.attention.self.query.weight", (32, 31)),
        ("encoder.layer.1.intermediate.dense.bias", (36,)),
    ],
)
def test_wrong_shape_is_named(tmp_path: Path, key: str, shape: tuple[int, ...]) -> None:
    state = tiny_hf_state()
    state[key] = torch.zeros(shape)
    path = write_checkpoint(tmp_path / "ck", state)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        load_pretrained_bert(str(path))


def test_all_problems_reported_together(tmp_path: Path) -> None:
    state = tiny_hf_state()
    del state["embeddings.word_embeddings.weight"]
    state["extra.thing"] = torch.zeros(1)
    state["pooler.dense.bias"] = torch.zeros(3)
    with pytest.raises(ValueError) as err:
        load_pretrained_bert(str(write_checkpoint(tmp_path / "ck", state)))
    for key in ("embeddings.word_embeddings.weight", "extra.thing", "pooler.dense.bias"):
        assert key in str(err.value)


def test_pytorch_bin_with_prefix_legacy_names_and_heads(tmp_path: Path) -> None:
    """bert-base-uncased style: ``bert.`` prefix, gamma/beta LayerNorms, cls.* heads."""
    state = tiny_hf_state()
    legacy = {}
    for name, tensor in state.items():
        if "LayerNorm" in name:
            name = name.replace(".weight", ".gamma").replace(".bias", ".beta")
        legacy["bert." + name] = tensor
    legacy["cls.predictions.bias"] = torch.zeros(TINY.vocab_size)
    legacy["cls.predictions.transform.dense.weight"] = torch.zeros(32, 32)
    legacy["cls.seq_relationship.weight"] = torch.zeros(2, 32)
    legacy["bert.embeddings.position_ids"] = torch.arange(16)[None]
    path = tmp_path / "ck"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(TINY.to_hf_dict()), encoding="utf-8")
    torch.save(legacy, path / "pytorch_model.bin")
    model = BertModel(TINY)
    report = load_hf.load_bert_state(model, read_state_dict(path))
    assert "cls.seq_relationship.weight" in report.ignored
    assert "embeddings.position_ids" in report.ignored
    for name, tensor in bert_state_dict_to_hf(model.state_dict()).items():
        assert torch.equal(tensor, state[name]), name
    assert load_pretrained_bert(str(path)).config == TINY


def test_malicious_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ck"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(TINY.to_hf_dict()), encoding="utf-8")
    marker = tmp_path / "pwned"
    torch.save({"embeddings.word_embeddings.weight": _Payload(marker)}, path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="refusing"):
        load_pretrained_bert(str(path))
    assert not marker.exists()


def test_malicious_pickle_payload_is_live(tmp_path: Path) -> None:
    # Control for the test above: an unrestricted load does run the payload.
    marker = tmp_path / "pwned"
    torch.save({"w": _Payload(marker)}, tmp_path / "bad.bin")
    torch.load(tmp_path / "bad.bin", weights_only=False)
    assert marker.exists()


def test_safetensors_preferred_over_bin(tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path / "ck", tiny_hf_state())
    torch.save({"w": _Payload(tmp_path / "pwned")}, path / "pytorch_model.bin")
    load_pretrained_bert(str(path))
    assert not (tmp_path / "pwned").exists()


def test_no_weights_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        read_state_dict(tmp_path)


# ---------------------------------------------------------------- resolving names


def test_resolve_checkpoint_paths(minilm_dir: Path, tmp_path: Path) -> None:
    assert (minilm_dir / "config.json").is_file()
    assert resolve_checkpoint(str(tmp_path)) == tmp_path
    with pytest.raises(FileNotFoundError):
        resolve_checkpoint(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError):
        resolve_checkpoint("./no/such/dir")


def test_hub_failure_explains_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fail(repo_id: str, **kwargs: object) -> str:
        calls.append((repo_id, kwargs))
        raise LocalEntryNotFoundError("offline")

    monkeypatch.setattr(load_hf, "snapshot_download", fail)
    with pytest.raises(FileNotFoundError, match="local checkpoint directory"):
        resolve_checkpoint("bert-base-uncased")
    assert calls[0][0] == "bert-base-uncased"
    assert "config.json" in calls[0][1]["allow_patterns"]


def test_hub_id_uses_snapshot_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write_checkpoint(tmp_path / "snap", tiny_hf_state())
    shutil.copy(resolve_checkpoint(DEFAULT_CHECKPOINT) / "vocab.txt", tmp_path / "snap")
    monkeypatch.setattr(load_hf, "snapshot_download", lambda repo_id, **kw: str(tmp_path / "snap"))
    assert resolve_checkpoint("org/tiny-bert") == tmp_path / "snap"
    assert load_pretrained_bert("org/tiny-bert").config == TINY
