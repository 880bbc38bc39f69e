"""The multitask model: one BERT encoder shared by the SST, Quora and STS heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtbert.batching import Encoded
from mtbert.config import ModelConfig
from mtbert.model.bert import BertConfig, BertModel
from mtbert.model.load_hf import load_pretrained_bert
from mtbert.model.heads import (
    CosineSimilarityHead,
    ParaphraseHead,
    SentimentHead,
    SharedPairLayer,
    SimilarityHead,
    bi_pair_features,
    pool,
    pooled_dim,
)
from mtbert.tasks import TASKS, check_task


class MultitaskBert(nn.Module):
    """Shared encoder plus one head per task in `tasks` (default: all).

    `forward(task, enc)` returns sst logits (B, 5), a para logit (B,), or an sts score (B,) on the
    0..5 scale. For bi-encoding, `enc` holds 2B rows (first sentences, then second sentences).
    A model built for a subset of the tasks has no heads (attribute None) for the others.
    """

    def __init__(self, encoder: BertModel, cfg: ModelConfig, tasks: tuple[str, ...] = TASKS) -> None:
        super().__init__()
        self.cfg = cfg
        for task in tasks:
            check_task(task)
        if not tasks:
            raise ValueError(f"a model needs at least one task of: {', '.join(TASKS)}")
        self.tasks = tuple(t for t in TASKS if t in tasks)
        self.encoder = encoder
        dim = pooled_dim(encoder.config.hidden_size, cfg.pooling)
        bi = cfg.pair_encoding == "bi"
        pair_dim = 4 * dim if bi else dim
        para_dim = pair_dim + (1 if cfg.para_head == "cosine_features" else 0)
        has = set(self.tasks)
        # Heads are built in this order whatever the subset: with all tasks, the initial weights
        # draw from the generator exactly as before `tasks` existed.
        self.sst_head = SentimentHead(dim, cfg.head_dropout) if "sst" in has else None
        self.shared_pair = (SharedPairLayer(pair_dim, cfg.head_dropout)
                            if cfg.shared_pair_layer and has & {"para", "sts"} else None)
        self.para_head = ParaphraseHead(para_dim, cfg.head_dropout) if "para" in has else None
        self.sts_head: nn.Module | None = None
        if "sts" in has:
            self.sts_head = (CosineSimilarityHead() if cfg.sts_head == "cosine"
                             else SimilarityHead(pair_dim, cfg.head_dropout))

    def embed(self, enc: Encoded, inputs_embeds: Tensor | None = None) -> Tensor:
        """Pooled sentence (or cross-encoded pair) vectors: (B, T) ids -> (B, D)."""
        out = self.encoder(
            input_ids=None if inputs_embeds is not None else enc.input_ids,
            attention_mask=enc.attention_mask,
            token_type_ids=enc.token_type_ids,
            inputs_embeds=inputs_embeds,
        )
        return pool(out.last_hidden_state, out.pooler_output, enc.attention_mask, self.cfg.pooling)

    def forward(self, task: str, enc: Encoded, inputs_embeds: Tensor | None = None) -> Tensor:
        if check_task(task) not in self.tasks:
            raise ValueError(f"this model has no {task} head; it was built for: {', '.join(self.tasks)}")
        pooled = self.embed(enc, inputs_embeds)
        if task == "sst":
            return self.sst_head(pooled)
        if self.cfg.pair_encoding == "cross":
            return self._pair_head(task, pooled, cosine=None)
        u, v = pooled.chunk(2, dim=0)  # (2B, D) -> (B, D), (B, D)
        if task == "sts" and self.cfg.sts_head == "cosine":
            return self.sts_head(u, v)
        return self._pair_head(task, bi_pair_features(u, v), F.cosine_similarity(u, v, dim=-1))

    def _pair_head(self, task: str, feats: Tensor, cosine: Tensor | None) -> Tensor:
        if self.shared_pair is not None:
            feats = self.shared_pair(feats)
        if task == "sts":
            return self.sts_head(feats)
        if self.cfg.para_head == "cosine_features":
            # The cosine goes in after the shared layer so that the head always sees it unchanged.
            feats = torch.cat([feats, cosine.unsqueeze(-1)], dim=-1)
        return self.para_head(feats)


def build_multitask(cfg: ModelConfig, init_from: str | None = None,
                    tasks: tuple[str, ...] = TASKS) -> MultitaskBert:
    """A new multitask model on a pretrained encoder (`init_from` overrides the checkpoint), with
    heads for `tasks` (`train.tasks`)."""
    encoder = load_pretrained_bert(init_from or cfg.checkpoint, attn_impl=cfg.attn_impl,
                                   dropout=cfg.encoder_dropout, max_length=cfg.max_length)
    encoder.unpad = cfg.unpad
    return MultitaskBert(encoder, cfg, tasks)


def multitask_from_state(bert_config: BertConfig, cfg: ModelConfig, state: dict[str, Tensor],
                         tasks: tuple[str, ...] = TASKS) -> MultitaskBert:
    """Rebuild a trained model from its saved encoder shape, config, tasks and weights (strict)."""
    model = MultitaskBert(BertModel(bert_config, attn_impl=cfg.attn_impl, unpad=cfg.unpad), cfg, tasks)
    model.load_state_dict(state, strict=True)
    return model
