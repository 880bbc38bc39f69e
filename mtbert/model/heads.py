"""Pooling and the three task heads that sit on the shared encoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

POOLINGS = ("cls", "mean", "max", "mean_max")


def pool(hidden: Tensor, pooler_output: Tensor, attention_mask: Tensor, mode: str) -> Tensor:
    """Reduce token states to one vector per sequence.

    Args:
        hidden: (B, T, H) last hidden states.
        pooler_output: (B, H) tanh(dense([CLS])), BERT's pooler.
        attention_mask: (B, T), 1 for real tokens, 0 for padding.
        mode: one of POOLINGS. Mean and max look at real tokens only, so padding never leaks in.

    Returns:
        (B, H), or (B, 2H) for "mean_max".
    """
    if mode == "cls":
        return pooler_output
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    if mode == "mean":
        return mean
    # Padding gets the dtype's lowest value, never the max; a row of padding only cannot occur.
    big_neg = torch.finfo(hidden.dtype).min
    maxed = hidden.masked_fill(mask == 0, big_neg).amax(1)
    if mode == "max":
        return maxed
    if mode == "mean_max":
        return torch.cat([mean, maxed], dim=-1)
    raise ValueError(f"unknown pooling {mode!r}; valid: {', '.join(POOLINGS)}")


def pooled_dim(hidden_size: int, mode: str) -> int:
    return 2 * hidden_size if mode == "mean_max" else hidden_size


def bi_pair_features(u: Tensor, v: Tensor) -> Tensor:
    """Sentence-BERT pair features [u, v, |u-v|, u*v]. (B, D) x2 -> (B, 4D)."""
    return torch.cat([u, v, (u - v).abs(), u * v], dim=-1)


class SentimentHead(nn.Module):
    """SST-5: dropout then a linear layer to 5 logits. (B, D) -> (B, 5)."""

    def __init__(self, dim: int, dropout: float, num_labels: int = 5) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(dim, num_labels)

    def forward(self, pooled: Tensor) -> Tensor:
        return self.out(self.dropout(pooled))


class ParaphraseHead(nn.Module):
    """Quora: one logit of 'is duplicate' from pair features. (B, F) -> (B,)."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(dim, 1)

    def forward(self, features: Tensor) -> Tensor:
        return self.out(self.dropout(features)).squeeze(-1)


class SimilarityHead(nn.Module):
    """STS: a similarity score on the 0..5 scale, 5 * sigmoid(linear). (B, F) -> (B,).

    A bare linear output starts near 0 while gold scores average about 2.7: the first MSE values
    (~10) then swamp the other tasks' gradients under clipping, and SST stopped learning in our
    quick runs. The sigmoid starts every prediction at 2.5 and keeps it inside the scale.
    """

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(dim, 1)

    def forward(self, features: Tensor) -> Tensor:
        return 5.0 * torch.sigmoid(self.out(self.dropout(features)).squeeze(-1))


class CosineSimilarityHead(nn.Module):
    """STS as Sentence-BERT does it: 5 x cos(u, v), no parameters. (B, D) x2 -> (B,)."""

    def forward(self, u: Tensor, v: Tensor) -> Tensor:
        return 5.0 * F.cosine_similarity(u, v, dim=-1)


class SharedPairLayer(nn.Module):
    """A layer both pair tasks (para, sts) pass their features through: (B, F) -> (B, F)."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, features: Tensor) -> Tensor:
        return self.dropout(F.gelu(self.dense(features)))
