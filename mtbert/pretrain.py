"""Masked-language-model further pretraining of the encoder on the task sentences.

Before multitask fine-tuning, the encoder keeps training on its own pretraining objective over the
sentences of the training sets (in-domain text, no labels): 15% of the tokens are selected, 80% of
those become [MASK], 10% a random token and 10% stay (`mask_tokens`), and an `MlmHead` tied to the
word embeddings predicts the originals. The result is written as an HF-format encoder directory
(config.json, model.safetensors with HF names, tokenizer files) that `load_pretrained_bert` and
`train.init_from` read. The MLM head is stored beside the encoder under HF's `cls.predictions.`
names, which the encoder loader ignores, so a later run can continue from it.

Core module: no tracking, no printing; progress goes to `train.Callback`s.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from mtbert.batching import make_batches
from mtbert.checkpoint import atomic_write, atomic_write_text
from mtbert.config import MlmConfig
from mtbert.model.bert import BertModel
from mtbert.model.load_hf import (
    bert_state_dict_to_hf,
    normalize_hf_keys,
    read_state_dict,
    resolve_checkpoint,
)
from mtbert.model.mlm import MlmHead, mask_tokens, mlm_loss
from mtbert.optim import build_optimizer, lr_at
from mtbert.callbacks import Callback, FitContext, TrainState

MLM_WARMUP_RATIO = 0.1  # linear warmup over the first 10% of the MLM steps, then linear decay
MLM_META_FILE = "mlm.json"
HEAD_PREFIX = "cls.predictions."
# MlmHead parameter -> HF BertForMaskedLM name. The decoder weight is the embedding table (tied,
# not stored); HF keeps the output bias as `cls.predictions.bias`.
HEAD_HF_NAMES: dict[str, str] = {
    "transform.dense.weight": HEAD_PREFIX + "transform.dense.weight",
    "transform.dense.bias": HEAD_PREFIX + "transform.dense.bias",
    "transform.LayerNorm.weight": HEAD_PREFIX + "transform.LayerNorm.weight",
    "transform.LayerNorm.bias": HEAD_PREFIX + "transform.LayerNorm.bias",
    "decoder.bias": HEAD_PREFIX + "bias",
}


@dataclass(frozen=True)
class MlmTokens:
    """The token ids masking needs: specials are never selected; pad fills batches."""

    special_ids: frozenset[int]
    mask_id: int
    pad_id: int
    vocab_size: int


def mlm_tokens(tokenizer: Any) -> MlmTokens:
    """The special ids of an HF tokenizer."""
    return MlmTokens(frozenset(tokenizer.all_special_ids), int(tokenizer.mask_token_id),
                     int(tokenizer.pad_token_id), len(tokenizer))


def collect_sentences(frames: Mapping[str, pd.DataFrame], max_sentences: int | None = None,
                      seed: int = 0) -> list[str]:
    """Unique sentences of the tables (sentence1, and sentence2 where present), first-seen order.

    With `max_sentences`, a seeded random sample of that many (order kept).
    """
    seen: dict[str, None] = {}
    for frame in frames.values():
        for column in ("sentence1", "sentence2"):
            if column in frame.columns:
                seen.update(dict.fromkeys(s.strip() for s in frame[column].astype(str) if s.strip()))
    sentences = list(seen)
    if max_sentences is not None and max_sentences < len(sentences):
        keep = torch.randperm(len(sentences), generator=torch.Generator().manual_seed(seed))
        sentences = [sentences[i] for i in sorted(keep[:max_sentences].tolist())]
    return sentences


def tokenize_sentences(tokenizer: Any, sentences: Sequence[str], max_length: int) -> list[list[int]]:
    """[CLS] sentence [SEP] token ids, truncated to `max_length`."""
    return tokenizer(list(sentences), truncation=True, max_length=max_length,
                     return_attention_mask=False, return_token_type_ids=False)["input_ids"]


def masked_batch(seqs: Sequence[Sequence[int]], tokens: MlmTokens, mask_prob: float,
                 generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Pad `seqs` and mask them. Returns masked ids, attention mask and labels, all (B, T)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), tokens.pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, seq in enumerate(seqs):
        ids[i, : len(seq)] = torch.tensor(seq)
        attention[i, : len(seq)] = 1
    special = torch.isin(ids, torch.tensor(sorted(tokens.special_ids), dtype=torch.long))
    masked, labels = mask_tokens(ids, special.long(), tokens.mask_id, tokens.vocab_size, generator,
                                 mask_prob, attention_mask=attention)
    return masked, attention, labels


def batch_mlm_loss(encoder: BertModel, head: MlmHead, masked: Tensor, attention: Tensor,
                   labels: Tensor) -> Tensor:
    """Mean cross-entropy at the masked positions; the vocabulary projection runs only there."""
    hidden = encoder(input_ids=masked, attention_mask=attention).last_hidden_state  # (B, T, H)
    scored = labels != -100
    return mlm_loss(head(hidden[scored]), labels[scored])  # (N, V) vs (N,)


@torch.no_grad()
def evaluate_mlm(encoder: BertModel, head: MlmHead, sequences: Sequence[Sequence[int]],
                 tokens: MlmTokens, mask_prob: float, seed: int = 0) -> float:
    """MLM loss over `sequences` with a mask fixed by `seed` (comparable before and after training)."""
    encoder.eval()
    device = next(encoder.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    for start in range(0, len(sequences), 64):
        masked, attention, labels = masked_batch(sequences[start:start + 64], tokens, mask_prob, generator)
        n = int((labels != -100).sum())
        if n:
            loss = batch_mlm_loss(encoder, head, masked.to(device), attention.to(device), labels.to(device))
            total, count = total + loss.item() * n, count + n
    return total / max(count, 1)


def further_pretrain(encoder: BertModel, head: MlmHead, sequences: Sequence[Sequence[int]],
                     tokens: MlmTokens, cfg: MlmConfig, *, seed: int, weight_decay: float = 0.01,
                     grad_clip: float = 1.0, callbacks: Sequence[Callback] = ()) -> TrainState:
    """Train encoder and head with MLM for `cfg.epochs` passes over `sequences`.

    Batches are length-bucketed (`make_batches`, reshuffled each epoch from the seed); the optimizer
    is our AdamW with the linear warmup/decay schedule. Callbacks get `mlm/loss` and `mlm/lr`.
    """
    device = next(encoder.parameters()).device
    modules = nn.ModuleList([encoder, head])  # the tied embedding table is one parameter here
    optimizer = build_optimizer(modules, "mtbert", cfg.lr, weight_decay)
    lengths = [len(s) for s in sequences]
    plans = [make_batches(lengths, cfg.batch_size, seed=seed * 1000 + epoch) for epoch in range(cfg.epochs)]
    state = TrainState(total_steps=sum(len(p) for p in plans))
    warmup = int(MLM_WARMUP_RATIO * state.total_steps)
    generator = torch.Generator().manual_seed(seed)
    modules.train()
    ctx = FitContext(modules, optimizer, state)
    for batches in plans:
        for rows in batches:
            lr = lr_at(state.global_step, state.total_steps, cfg.lr, warmup)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = masked_batch([sequences[r] for r in rows], tokens, cfg.mask_prob, generator)
            loss = _mlm_step(modules, optimizer, tuple(t.to(device) for t in batch), grad_clip)
            state.step_in_epoch += 1
            state.global_step += 1
            for cb in callbacks:
                cb.on_step(ctx, {"mlm/loss": loss, "mlm/lr": lr})
        state.epoch += 1
        state.step_in_epoch = 0
        for cb in callbacks:
            cb.on_epoch_end(ctx)
    return state


def _mlm_step(modules: nn.ModuleList, optimizer: torch.optim.Optimizer,
              batch: tuple[Tensor, ...], grad_clip: float) -> float:
    """One optimizer step on a masked batch (ids, attention, labels); returns the loss."""
    encoder, head = modules
    loss = batch_mlm_loss(encoder, head, *batch)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(list(modules.parameters()), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


# ---------------------------------------------------------------------------------------------
# The MLM head in checkpoints, and the encoder directory


def load_mlm_head(checkpoint: str | Path, encoder: BertModel) -> tuple[MlmHead, bool]:
    """The checkpoint's MLM head tied to `encoder`'s embeddings, or a fresh one if it has none.

    Returns the head and whether it was loaded. Raises ValueError on a partial or misshapen head.
    """
    head = MlmHead(encoder.config, encoder.word_embeddings())
    state = normalize_hf_keys(read_state_dict(resolve_checkpoint(str(checkpoint))))
    if "cls.predictions.bias" not in state and "cls.predictions.decoder.bias" in state:
        state["cls.predictions.bias"] = state["cls.predictions.decoder.bias"]
    found = {ours: state[theirs] for ours, theirs in HEAD_HF_NAMES.items() if theirs in state}
    if not found:
        return head, False
    missing = sorted(HEAD_HF_NAMES[k] for k in HEAD_HF_NAMES if k not in found)
    ours = head.state_dict()
    wrong = sorted(k for k, v in found.items() if v.shape != ours[k].shape)
    if missing or wrong:
        raise ValueError(f"{checkpoint}: MLM head incomplete or misshapen; missing {missing}, "
                         f"wrong shapes {wrong}")
    ours.update(found)
    head.load_state_dict(ours, strict=True)
    return head, True


def save_encoder(out_dir: str | Path, encoder: BertModel, head: MlmHead, tokenizer: Any,
                 meta: dict[str, Any]) -> Path:
    """Write an HF-format encoder directory (plus the MLM head and `mlm.json`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = bert_state_dict_to_hf({k: v.detach().cpu() for k, v in encoder.state_dict().items()})
    head_state = head.state_dict()
    state.update({theirs: head_state[ours].detach().cpu() for ours, theirs in HEAD_HF_NAMES.items()})
    state = {k: v.contiguous().clone() for k, v in state.items()}  # no shared storage for safetensors
    atomic_write(out / "model.safetensors", lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
    atomic_write_text(out / "config.json", json.dumps(encoder.config.to_hf_dict(), indent=2))
    tokenizer.save_pretrained(str(out))
    # Written last: its presence marks a complete directory.
    atomic_write_text(out / MLM_META_FILE, json.dumps(meta, indent=2, sort_keys=True))
    return out

