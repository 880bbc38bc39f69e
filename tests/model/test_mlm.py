"""MLM head (HF oracle, weight tying), BERT masking statistics and the MLM loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import transformers
from transformers.models.bert.modeling_bert import BertLMPredictionHead

from mtbert.model.bert import BertModel
from mtbert.model.mlm import IGNORE_INDEX, MlmHead, mask_tokens, mlm_loss
from tests.tiny import TINY_BERT

TINY = TINY_BERT  # tests/tiny.py
MASK_ID = 3
SIGMAS = 5.0


def special_batch(bsz: int, seq_len: int, vocab: int, seed: int) -> tuple[torch.Tensor, ...]:
    """(ids, special_tokens_mask, attention_mask): [CLS] x.. [SEP] [PAD].. rows."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, seq_len + 1, (bsz,), generator=g)
    pos = torch.arange(seq_len)[None, :]
    attention = (pos < lengths[:, None]).long()
    ids = torch.randint(5, vocab, (bsz, seq_len), generator=g) * attention
    ids[:, 0] = 101 % vocab
    ids[torch.arange(bsz), lengths - 1] = 102 % vocab
    special = ((pos == 0) | (pos == lengths[:, None] - 1) | (attention == 0)).long()
    return ids, special, attention


def within(observed: int, trials: int, p: float) -> bool:
    """|observed/trials - p| within SIGMAS binomial standard deviations."""
    sigma = math.sqrt(p * (1 - p) / trials)
    return abs(observed / trials - p) <= SIGMAS * sigma


# ---------------------------------------------------------------- head


def test_head_shapes_and_tied_weights() -> None:
    torch.manual_seed(0)
    encoder = BertModel(TINY)
    head = MlmHead(TINY, encoder.word_embeddings())
    assert head.decoder.weight is encoder.word_embeddings().weight
    hidden = torch.randn(13, 7, TINY.hidden_size)
    logits = head(hidden)
    assert logits.shape == (13, 7, TINY.vocab_size)
    assert head(hidden[0]).shape == (7, TINY.vocab_size)
    logits.logsumexp(-1).sum().backward()
    assert encoder.word_embeddings().weight.grad is not None
    # One shared tensor: a combined module counts it once.
    params = list(torch.nn.ModuleList([encoder, head]).parameters())
    assert len(params) == len({id(p) for p in params})


def test_head_matches_transformers() -> None:
    torch.manual_seed(1)
    embeddings = torch.nn.Embedding(TINY.vocab_size, TINY.hidden_size)
    ours = MlmHead(TINY, embeddings)
    with torch.no_grad():
        ours.decoder.bias.normal_()
        ours.transform.LayerNorm.weight.normal_()
    theirs = BertLMPredictionHead(transformers.BertConfig(**TINY.to_hf_dict()))
    # Outside a PreTrainedModel nothing ties HF's decoder to the embeddings, so copy.
    state = {
        "transform.dense.weight": ours.transform.dense.weight,
        "transform.dense.bias": ours.transform.dense.bias,
        "transform.LayerNorm.weight": ours.transform.LayerNorm.weight,
        "transform.LayerNorm.bias": ours.transform.LayerNorm.bias,
        "decoder.weight": embeddings.weight,
        "decoder.bias": ours.decoder.bias,
        "bias": ours.decoder.bias,
    }
    theirs.load_state_dict({k: v.detach() for k, v in state.items()}, strict=True)
    with torch.no_grad():
        hidden = torch.randn(13, 7, TINY.hidden_size)
        assert (ours(hidden) - theirs(hidden)).abs().max().item() < 1e-5


# ---------------------------------------------------------------- masking


def test_masking_proportions() -> None:
    vocab = 1000  # large, so a random replacement rarely equals the original or [MASK]
    ids, special, attention = special_batch(512, 64, vocab, seed=0)
    g = torch.Generator().manual_seed(123)
    masked, labels = mask_tokens(ids, special, MASK_ID, vocab, g)
    eligible = special == 0
    selected = labels != IGNORE_INDEX
    n_eligible, n_selected = int(eligible.sum()), int(selected.sum())
    assert n_eligible > 10_000
    assert within(n_selected, n_eligible, 0.15)
    as_mask = int((selected & (masked == MASK_ID)).sum())
    unchanged = int((selected & (masked == ids)).sum())
    replaced = int((selected & (masked != ids) & (masked != MASK_ID)).sum())
    assert as_mask + unchanged + replaced == n_selected
    assert within(as_mask, n_selected, 0.8)
    assert within(unchanged, n_selected, 0.1)
    assert within(replaced, n_selected, 0.1)
    # Unselected positions are untouched; labels hold the original ids.
    assert torch.equal(masked[~selected], ids[~selected])
    assert torch.equal(labels[selected], ids[selected])


def test_masking_never_touches_special_or_padding() -> None:
    ids, special, attention = special_batch(256, 32, 99, seed=1)
    masked, labels = mask_tokens(ids, special, MASK_ID, 99, torch.Generator().manual_seed(0), 0.5)
    assert (labels[special == 1] == IGNORE_INDEX).all()
    assert torch.equal(masked[special == 1], ids[special == 1])
    assert (labels[attention == 0] == IGNORE_INDEX).all()


def test_attention_mask_guards_unmarked_padding() -> None:
    ids, special, attention = special_batch(256, 32, 99, seed=2)
    only_cls_sep = special * attention  # a special mask that forgot the padding
    g = torch.Generator().manual_seed(0)
    _, loose = mask_tokens(ids, only_cls_sep, MASK_ID, 99, g, 0.5)
    assert (loose[attention == 0] != IGNORE_INDEX).any()  # shows the guard is needed
    g = torch.Generator().manual_seed(0)
    _, labels = mask_tokens(ids, only_cls_sep, MASK_ID, 99, g, 0.5, attention_mask=attention)
    assert (labels[attention == 0] == IGNORE_INDEX).all()


def test_masking_is_seeded_and_pure() -> None:
    ids, special, _ = special_batch(64, 16, 99, seed=3)
    before = ids.clone()
    a = mask_tokens(ids, special, MASK_ID, 99, torch.Generator().manual_seed(7))
    b = mask_tokens(ids, special, MASK_ID, 99, torch.Generator().manual_seed(7))
    c = mask_tokens(ids, special, MASK_ID, 99, torch.Generator().manual_seed(8))
    assert torch.equal(ids, before)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_masking_rejects_bad_probability() -> None:
    ids, special, _ = special_batch(4, 8, 99, seed=4)
    with pytest.raises(ValueError, match="mlm_probability"):
        mask_tokens(ids, special, MASK_ID, 99, torch.Generator(), 1.5)


# ---------------------------------------------------------------- loss


def test_mlm_loss_matches_cross_entropy_on_selected() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(13, 7, 99, generator=g)
    labels = torch.full((13, 7), IGNORE_INDEX)
    labels[2, 3], labels[5, 0], labels[12, 6] = 4, 50, 98
    picked = labels != IGNORE_INDEX
    expected = F.cross_entropy(logits[picked], labels[picked])
    assert torch.allclose(mlm_loss(logits, labels), expected)
    assert torch.allclose(mlm_loss(logits[picked], labels[picked]), expected)


def test_mlm_loss_with_nothing_selected_is_zero() -> None:
    logits = torch.randn(2, 3, 99, requires_grad=True)
    loss = mlm_loss(logits, torch.full((2, 3), IGNORE_INDEX))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all()
