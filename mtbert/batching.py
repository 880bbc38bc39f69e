"""Tokenize once, then batch with dynamic padding and length bucketing.

Rows are tokenized a single time into lists of token ids; a batch is padded only to its own longest
sequence. Bucketing sorts rows by length inside shuffled pools so that a batch holds sequences of
similar length (little padding) while the order of batches stays random.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from mtbert.tasks import TASK_SPECS

POOL_BATCHES = 50  # a bucketing pool holds this many batches: large enough to sort, small enough to stay random


@dataclass
class Encoded:
    """Padded model inputs, all (B, T) int64."""

    input_ids: Tensor
    attention_mask: Tensor
    token_type_ids: Tensor

    def to(self, device: torch.device | str) -> Encoded:
        return Encoded(*(t.to(device, non_blocking=True) for t in
                         (self.input_ids, self.attention_mask, self.token_type_ids)))


@dataclass
class Batch:
    """One task's batch.

    For a bi-encoded pair task, `enc` holds 2B rows: first sentences then second sentences, so the
    encoder runs once over both halves.
    """

    task: str
    enc: Encoded
    labels: Tensor | None  # (B,): int64 for sst/para, float32 for sts
    rows: list[int]  # positions of the examples in their frame
    targets: Tensor | None = None  # teacher outputs of the rows, float32 (B, 5) for sst, (B,) else

    def to(self, device: torch.device | str) -> Batch:
        labels = None if self.labels is None else self.labels.to(device, non_blocking=True)
        targets = None if self.targets is None else self.targets.to(device, non_blocking=True)
        return Batch(self.task, self.enc.to(device), labels, self.rows, targets)

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class TokenizedTask:
    """A task's rows, tokenized once.

    `segments[i]` holds one sequence (single sentence or cross-encoded pair) or two (bi-encoded
    pair); each sequence is (input_ids, token_type_ids). `targets`, if set, holds one teacher output
    per row (see mtbert.distill): `collate` hands a batch the targets of its own rows, so they stay
    aligned however the rows are shuffled or bucketed.
    """

    task: str
    segments: list[tuple[tuple[list[int], list[int]], ...]]
    labels: list[float] | None
    targets: np.ndarray | None = None  # (N, 5) sst class probabilities, (N,) para/sts

    def __len__(self) -> int:
        return len(self.segments)

    def lengths(self) -> list[int]:
        return [max(len(ids) for ids, _ in seg) for seg in self.segments]


def _tokenize(tokenizer, first: list[str], second: list[str] | None, max_length: int):
    out = tokenizer(first, second, truncation=True, max_length=max_length,
                    return_token_type_ids=True, return_attention_mask=False)
    return list(zip(out["input_ids"], out["token_type_ids"]))


def tokenize_frame(tokenizer, frame: pd.DataFrame, task: str, pair_encoding: str,
                   max_length: int) -> TokenizedTask:
    """Tokenize a prepared frame (columns sentence1[, sentence2][, label]) for `task`."""
    first = frame["sentence1"].tolist()
    if not TASK_SPECS[task].is_pair:
        segments = [(s,) for s in _tokenize(tokenizer, first, None, max_length)]
    elif pair_encoding == "cross":
        segments = [(s,) for s in _tokenize(tokenizer, first, frame["sentence2"].tolist(), max_length)]
    else:
        a = _tokenize(tokenizer, first, None, max_length)
        b = _tokenize(tokenizer, frame["sentence2"].tolist(), None, max_length)
        segments = list(zip(a, b))
    labels = frame["label"].astype(float).tolist() if "label" in frame.columns else None
    return TokenizedTask(task, segments, labels)


def pad(seqs: list[tuple[list[int], list[int]]], pad_id: int = 0) -> Encoded:
    """Pad (ids, type_ids) sequences to the longest one. Returns (B, T) tensors."""
    width = max(len(ids) for ids, _ in seqs)
    # One tensor per field from padded lists: a per-row tensor copy costs more than the model's
    # embedding lookup for short sequences.
    input_ids = torch.tensor([ids + [pad_id] * (width - len(ids)) for ids, _ in seqs], dtype=torch.long)
    type_ids = torch.tensor([types + [0] * (width - len(types)) for _, types in seqs], dtype=torch.long)
    lengths = torch.tensor([len(ids) for ids, _ in seqs])
    mask = (torch.arange(width) < lengths[:, None]).long()
    return Encoded(input_ids, mask, type_ids)


def collate(data: TokenizedTask, rows: list[int], pad_id: int = 0) -> Batch:
    """Build the padded batch for `rows` of `data`."""
    n_seg = len(data.segments[rows[0]])
    seqs = [data.segments[r][k] for k in range(n_seg) for r in rows]
    labels = None
    if data.labels is not None:
        values = [data.labels[r] for r in rows]
        dtype = torch.float32 if data.task == "sts" else torch.long
        labels = torch.tensor(values, dtype=dtype)
    targets = None
    if data.targets is not None:
        targets = torch.from_numpy(np.asarray(data.targets, dtype=np.float32)[rows])
    return Batch(data.task, pad(seqs, pad_id), labels, list(rows), targets)


def make_batches(lengths: list[int], batch_size: int, *, max_tokens: int = 0, shuffle: bool = True,
                 bucket: bool = True, seed: int = 0) -> list[list[int]]:
    """Split row positions into batches.

    Args:
        lengths: token length of each row.
        batch_size: rows per batch (ignored when `max_tokens` > 0).
        max_tokens: if > 0, fill each batch until rows x longest length would exceed it.
        shuffle: shuffle rows and batch order (training); else keep order (evaluation).
        bucket: sort by length within pools of POOL_BATCHES batches.
        seed: seed for the shuffle; the same seed gives the same batches.
    """
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(lengths), generator=gen).tolist() if shuffle else list(range(len(lengths)))
    if bucket:
        pool = batch_size * POOL_BATCHES if not max_tokens else max(1, max_tokens // 8) * POOL_BATCHES
        order = [i for start in range(0, len(order), pool)
                 for i in sorted(order[start:start + pool], key=lambda r: lengths[r])]
    batches = _cut(order, lengths, batch_size, max_tokens)
    if shuffle:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]
    return batches


def _cut(order: list[int], lengths: list[int], batch_size: int, max_tokens: int) -> list[list[int]]:
    if not max_tokens:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    batches, current, longest = [], [], 0
    for row in order:
        new_longest = max(longest, lengths[row])
        if current and new_longest * (len(current) + 1) > max_tokens:
            batches.append(current)
            current, new_longest = [], lengths[row]
        current.append(row)
        longest = new_longest
    if current:
        batches.append(current)
    return batches


def padding_fraction(batches: list[list[int]], lengths: list[int]) -> float:
    """Fraction of the padded token slots that are padding."""
    real = sum(lengths[r] for b in batches for r in b)
    slots = sum(len(b) * max(lengths[r] for r in b) for b in batches)
    return 1.0 - real / slots if slots else 0.0
