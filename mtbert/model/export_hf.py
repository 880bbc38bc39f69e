"""The trained encoder in the Hugging Face layout, loadable by `transformers` and `sentence-transformers`.

`save_hf_encoder` writes one folder (the train stage: `<model_dir>/encoder/`) holding

* `config.json` (`model_type: bert`, `architectures: [BertModel]`) and `model.safetensors` with HF's
  `BertModel` names (our fused QKV split back by `load_hf.bert_state_dict_to_hf`), so
  `transformers.AutoModel.from_pretrained(folder)` gives our last hidden states;
* the tokenizer files (`tokenizer.json`, `tokenizer_config.json`, `vocab.txt`, and
  `special_tokens_map.json` when this transformers version writes one);
* sentence-transformers' files: `modules.json`, `sentence_bert_config.json` and `1_Pooling/` (plus
  `2_Dense/` for `cls`), so `SentenceTransformer(folder)` returns the vectors our heads see
  (`MultitaskBert.embed`, `mtbert.inference.TrainedModel.encode`):

  ==========  ================================================================================
  pooling     sentence-transformers modules
  ==========  ================================================================================
  mean        Transformer, Pooling(mean)
  max         Transformer, Pooling(max)
  cls         Transformer, Pooling(cls), Dense(H->H, tanh) holding BERT's pooler: our `cls` is
              `pooler_output` = tanh(dense(h_[CLS])), not the raw [CLS] state
  mean_max    Transformer, Pooling(`pooling_mode: ["mean", "max"]`): [mean; max], 2H wide, the
              order ours has. This list form needs sentence-transformers >= 6; older versions
              read only the legacy booleans, which would give [max; mean].
  ==========  ================================================================================

The folder is written to a temporary sibling and renamed into place: a reader sees the old
folder or the new one, never half of one.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from mtbert.model.bert import BertModel
from mtbert.model.heads import POOLINGS, pooled_dim
from mtbert.model.load_hf import bert_state_dict_to_hf

ENCODER_DIR = "encoder"  # inside a trained model folder
_TANH = "torch.nn.modules.activation.Tanh"
_LEGACY_FLAGS = {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens",
                 "max": "pooling_mode_max_tokens"}


def pooling_config(pooling: str, hidden: int) -> dict[str, Any]:
    """sentence-transformers' `1_Pooling/config.json` for one of our `model.pooling` values."""
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; valid: {', '.join(POOLINGS)}")
    config: dict[str, Any] = {"word_embedding_dimension": hidden}
    config.update({flag: pooling == name for name, flag in _LEGACY_FLAGS.items()})
    config["pooling_mode_mean_sqrt_len_tokens"] = False
    if pooling == "mean_max":  # the legacy flags would concatenate max first; the list keeps ours
        config["pooling_mode"] = ["mean", "max"]
    return config


def st_modules(pooling: str) -> list[dict[str, Any]]:
    """`modules.json`: the Transformer, the Pooling and, for `cls`, the pooler as a tanh Dense."""
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if pooling == "cls":
        modules.append({"idx": 2, "name": "2", "path": "2_Dense",
                        "type": "sentence_transformers.models.Dense"})
    return modules


def _write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _write_vocab(path: Path, vocab: dict[str, int]) -> None:
    """WordPiece's `vocab.txt` (one token a line, line number = id), for readers of the slow format."""
    tokens = sorted(vocab, key=vocab.__getitem__)
    if [vocab[t] for t in tokens] != list(range(len(tokens))):
        raise ValueError("the tokenizer's vocabulary ids are not 0..n-1; no vocab.txt can hold them")
    path.write_text("".join(f"{t}\n" for t in tokens), encoding="utf-8")


def _write_folder(folder: Path, encoder: BertModel, tokenizer: Any, pooling: str,
                  max_length: int) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    save_file(bert_state_dict_to_hf(state), str(folder / "model.safetensors"), metadata={"format": "pt"})
    _write_json(folder / "config.json", {**encoder.config.to_hf_dict(), "dtype": "float32",
                                         "position_embedding_type": "absolute"})
    tokenizer.save_pretrained(str(folder))
    if not (folder / "vocab.txt").exists():  # transformers 5 writes tokenizer.json only
        _write_vocab(folder / "vocab.txt", tokenizer.get_vocab())
    if not (folder / "special_tokens_map.json").exists():
        _write_json(folder / "special_tokens_map.json",
                    {k: str(v) for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)})
    hidden = encoder.config.hidden_size
    _write_json(folder / "modules.json", st_modules(pooling))
    _write_json(folder / "sentence_bert_config.json", {"max_seq_length": max_length,
                                                       "do_lower_case": False})
    _write_json(folder / "1_Pooling" / "config.json", pooling_config(pooling, hidden))
    if pooling == "cls":
        _write_json(folder / "2_Dense" / "config.json", {
            "in_features": hidden, "out_features": pooled_dim(hidden, pooling), "bias": True,
            "activation_function": _TANH})
        save_file({"linear.weight": state["pooler.dense.weight"], "linear.bias": state["pooler.dense.bias"]},
                  str(folder / "2_Dense" / "model.safetensors"), metadata={"format": "pt"})


def save_hf_encoder(out_dir: str | Path, encoder: BertModel, tokenizer: Any, pooling: str,
                    max_length: int) -> Path:
    """Write `encoder` (with `tokenizer`) to `out_dir` in the HF and sentence-transformers layout.

    Args:
        out_dir: the folder to (re)place, e.g. `<model_dir>/encoder`.
        encoder: the trained BERT encoder (any device).
        tokenizer: its tokenizer (a `PreTrainedTokenizerFast`).
        pooling: `model.pooling` (one of `mtbert.model.heads.POOLINGS`).
        max_length: `model.max_length`, sentence-transformers' `max_seq_length`.

    Returns:
        `out_dir`.
    """
    pooling_config(pooling, encoder.config.hidden_size)  # refuse an unknown pooling before writing
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    old = out.parent / f".{out.name}.old"
    try:
        _write_folder(tmp, encoder, tokenizer, pooling, max_length)
        tmp.chmod(0o755)  # mkdtemp makes 0700 folders
        shutil.rmtree(old, ignore_errors=True)
        if out.exists():
            out.rename(old)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return out
