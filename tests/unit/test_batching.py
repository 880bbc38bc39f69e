"""Tokenization layouts (cross and bi pairs), padding and the batch maker."""

from __future__ import annotations

import random
from collections import Counter

import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mtbert.batching import collate, make_batches, pad, padding_fraction, tokenize_frame
from mtbert.model.load_hf import load_tokenizer

PAIRS = pd.DataFrame({
    "id": ["a", "b", "c"],
    "sentence1": ["A man plays a guitar.", "Is it raining in London today?", "Terrible."],
    "sentence2": ["Someone is playing an instrument on a stage.", "Rain?", "The film was awful, truly."],
    "label": [3.8, 1.0, 4.2],
})


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("minilm")


def test_cross_encoding_types_are_0_for_cls_s1_sep_and_1_for_s2_sep(tokenizer) -> None:
    data = tokenize_frame(tokenizer, PAIRS, "sts", "cross", max_length=64)
    for (seg,), s1, s2 in zip(data.segments, PAIRS["sentence1"], PAIRS["sentence2"]):
        ids, types = seg
        first = tokenizer(s1, add_special_tokens=False)["input_ids"]
        second = tokenizer(s2, add_special_tokens=False)["input_ids"]
        cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
        assert ids == [cls, *first, sep, *second, sep]
        assert types == [0] * (len(first) + 2) + [1] * (len(second) + 1)


def test_bi_encoding_collates_first_sentences_then_second(tokenizer) -> None:
    data = tokenize_frame(tokenizer, PAIRS.assign(label=[1, 0, 0]), "para", "bi", max_length=64)
    assert all(len(seg) == 2 for seg in data.segments)
    rows = [2, 0]
    batch = collate(data, rows)
    assert batch.enc.input_ids.shape[0] == 2 * len(rows)
    assert (batch.enc.token_type_ids == 0).all()  # each sentence is its own sequence
    decoded = [tokenizer.decode(ids[mask.bool()], skip_special_tokens=True)
               for ids, mask in zip(batch.enc.input_ids, batch.enc.attention_mask)]
    expected = [PAIRS["sentence1"][r] for r in rows] + [PAIRS["sentence2"][r] for r in rows]
    assert decoded == [s.lower() for s in expected]
    assert batch.labels.dtype == torch.long and batch.labels.tolist() == [0, 1]


def test_sts_labels_are_float_and_sst_is_single_sentence(tokenizer) -> None:
    sts = collate(tokenize_frame(tokenizer, PAIRS, "sts", "bi", 64), [0, 1])
    assert sts.labels.dtype == torch.float32 and sts.labels.tolist() == pytest.approx([3.8, 1.0])
    sst_frame = pd.DataFrame({"id": ["x"], "sentence1": ["Great fun."], "label": [4]})
    sst = tokenize_frame(tokenizer, sst_frame, "sst", "bi", 64)
    assert len(sst.segments[0]) == 1  # pair encoding does not apply to single sentences


def test_truncation_respects_max_length(tokenizer) -> None:
    data = tokenize_frame(tokenizer, PAIRS, "sts", "cross", max_length=9)
    assert max(data.lengths()) == 9


def test_pad_masks_and_pads_to_the_longest() -> None:
    enc = pad([([5, 6, 7], [0, 0, 1]), ([8], [0])], pad_id=0)
    assert enc.input_ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert enc.attention_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert enc.token_type_ids.tolist() == [[0, 0, 1], [0, 0, 0]]


def _random_lengths(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(3, 60) for _ in range(n)]


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 400), batch_size=st.integers(1, 37), max_tokens=st.sampled_from([0, 64, 200]),
       shuffle=st.booleans(), bucket=st.booleans(), seed=st.integers(0, 10))
def test_every_row_is_in_exactly_one_batch(n: int, batch_size: int, max_tokens: int, shuffle: bool,
                                           bucket: bool, seed: int) -> None:
    lengths = _random_lengths(n, seed)
    batches = make_batches(lengths, batch_size, max_tokens=max_tokens, shuffle=shuffle, bucket=bucket,
                           seed=seed)
    assert all(batches)
    assert Counter(r for b in batches for r in b) == Counter(range(n))
    if not max_tokens:
        assert all(len(b) <= batch_size for b in batches)


@pytest.mark.parametrize("max_tokens", [61, 128, 512])
def test_max_tokens_bounds_rows_times_longest(max_tokens: int) -> None:
    lengths = _random_lengths(997, 1) + [70]  # one row longer than the smallest budget
    batches = make_batches(lengths, 32, max_tokens=max_tokens, seed=3)
    for b in batches:
        longest = max(lengths[r] for r in b)
        assert len(b) * longest <= max_tokens or len(b) == 1


def test_bucketing_reduces_padding() -> None:
    lengths = _random_lengths(2000, 2)
    plain = make_batches(lengths, 16, bucket=False, seed=4)
    bucketed = make_batches(lengths, 16, bucket=True, seed=4)
    assert padding_fraction(bucketed, lengths) < 0.5 * padding_fraction(plain, lengths)
    assert padding_fraction(plain, lengths) > 0.2  # the comparison is not between two near-zeros


def test_same_seed_same_batches_other_seed_other_batches() -> None:
    lengths = _random_lengths(500, 5)
    assert make_batches(lengths, 13, seed=7) == make_batches(lengths, 13, seed=7)
    assert make_batches(lengths, 13, seed=7) != make_batches(lengths, 13, seed=8)


def test_without_shuffle_or_bucketing_order_is_kept() -> None:
    lengths = _random_lengths(50, 6)
    batches = make_batches(lengths, 13, shuffle=False, bucket=False)
    assert batches == [list(range(i, min(i + 13, 50))) for i in range(0, 50, 13)]
