"""Masked-language-model head, BERT token masking and MLM loss (further pretraining)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtbert.model.bert import ACTIVATIONS, BertConfig

IGNORE_INDEX = -100


class _Activation(nn.Module):
    """Wraps an ``ACTIVATIONS`` entry so it can sit in ``nn.Sequential``."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.fn = ACTIVATIONS[name]

    def forward(self, x: Tensor) -> Tensor:
        """Elementwise; any shape."""
        return self.fn(x)


class MlmHead(nn.Module):
    """HF ``BertLMPredictionHead``: dense + activation + LayerNorm, then a decoder whose
    weight is tied to the word embeddings, plus a per-token output bias.

    Names follow HF under ``cls.predictions.``: ``transform.dense``, ``transform.LayerNorm``
    and ``decoder`` (its weight is the embedding table, its bias HF's ``bias``).

    Args:
        config: encoder config (hidden size, activation, LayerNorm eps).
        word_embeddings: the encoder's (V, H) table, shared, not copied.
    """

    def __init__(self, config: BertConfig, word_embeddings: nn.Embedding) -> None:
        super().__init__()
        h = config.hidden_size
        self.transform = nn.Sequential()
        self.transform.add_module("dense", nn.Linear(h, h))
        self.transform.add_module("act", _Activation(config.hidden_act))
        self.transform.add_module("LayerNorm", nn.LayerNorm(h, eps=config.layer_norm_eps))
        vocab = word_embeddings.num_embeddings
        self.decoder = nn.Linear(h, vocab)
        # Tie: the same Parameter object, so updates through either path are shared.
        self.decoder.weight = word_embeddings.weight
        nn.init.normal_(self.transform.dense.weight, std=config.initializer_range)
        nn.init.zeros_(self.transform.dense.bias)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, hidden: Tensor) -> Tensor:
        """(..., H) -> (..., V) logits.

        Any leading shape works: pass ``hidden[labels != IGNORE_INDEX]`` (N, H) to skip
        the (B, T, V) projection at positions that are not scored.
        """
        return self.decoder(self.transform(hidden))


def mask_tokens(
    input_ids: Tensor,
    special_tokens_mask: Tensor,
    mask_token_id: int,
    vocab_size: int,
    generator: torch.Generator,
    mlm_probability: float = 0.15,
    *,
    attention_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """BERT masking: select ``mlm_probability`` of eligible tokens; of those, 80% become
    [MASK], 10% a uniformly random token, 10% stay unchanged.

    Args:
        input_ids: (B, T) token ids; not modified.
        special_tokens_mask: (B, T), nonzero at [CLS]/[SEP]/[PAD] etc. (HF tokenizers'
            ``return_special_tokens_mask=True`` marks padding too). Never selected.
        mask_token_id: id of [MASK].
        vocab_size: random replacements are drawn from [0, vocab_size).
        generator: source of randomness, on the same device as ``input_ids``.
        mlm_probability: selection probability per eligible token.
        attention_mask: optional (B, T); positions where it is 0 are never selected,
            even if ``special_tokens_mask`` forgot to mark them.

    Returns:
        masked_inputs (B, T) and labels (B, T): the original id at selected positions,
        ``IGNORE_INDEX`` elsewhere.
    """
    if not 0.0 < mlm_probability < 1.0:
        raise ValueError(f"mlm_probability must be in (0, 1), got {mlm_probability}")
    eligible = special_tokens_mask == 0
    if attention_mask is not None:
        eligible &= attention_mask != 0
    selected = _coin(input_ids, mlm_probability, generator) & eligible
    labels = torch.where(selected, input_ids, IGNORE_INDEX)
    # 80% of selected -> [MASK]; half of the remaining 20% -> random token.
    to_mask = _coin(input_ids, 0.8, generator) & selected
    to_random = _coin(input_ids, 0.5, generator) & selected & ~to_mask
    random_ids = torch.randint(
        vocab_size, input_ids.shape, generator=generator, device=input_ids.device
    ).to(input_ids.dtype)
    masked = torch.where(to_mask, mask_token_id, input_ids)
    return torch.where(to_random, random_ids, masked), labels


def _coin(like: Tensor, p: float, generator: torch.Generator) -> Tensor:
    """Boolean tensor shaped like ``like``, each entry True with probability ``p``."""
    probs = torch.full(like.shape, p, device=like.device)
    return torch.bernoulli(probs, generator=generator).bool()


def mlm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy over positions whose label is not ``IGNORE_INDEX``.

    Args:
        logits: (..., V), e.g. (B, T, V) or (N, V).
        labels: (...) matching the leading dims of ``logits``.

    Returns:
        Scalar loss; 0 (still connected to ``logits``) when nothing is labelled, instead
        of the NaN that an empty mean would give.
    """
    flat_labels = labels.reshape(-1)
    if not bool((flat_labels != IGNORE_INDEX).any()):
        return logits.sum() * 0.0
    flat_logits = logits.reshape(-1, logits.shape[-1])
    return F.cross_entropy(flat_logits.float(), flat_labels, ignore_index=IGNORE_INDEX)
