"""Pooling and heads: padding never leaks into mean/max, pair features, cosine head, dropout."""

from __future__ import annotations

import pytest
import torch

from mtbert.model.bert import BertConfig, BertModel
from mtbert.model.heads import (
    POOLINGS,
    CosineSimilarityHead,
    ParaphraseHead,
    SentimentHead,
    SharedPairLayer,
    SimilarityHead,
    bi_pair_features,
    pool,
    pooled_dim,
)

B, T, H = 13, 7, 32
TINY = BertConfig(vocab_size=99, hidden_size=H, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=37, max_position_embeddings=16,
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def _mask(lengths: list[int], width: int) -> torch.Tensor:
    return (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()


def _lengths() -> list[int]:
    return [1 + (i * 5) % T for i in range(B)]  # 1..7, every row a different padding amount


@pytest.mark.parametrize("mode", ["mean", "max", "mean_max"])
def test_pad_positions_do_not_change_the_pooled_vector(mode: str) -> None:
    torch.manual_seed(0)
    hidden, mask = torch.randn(B, T, H), _mask(_lengths(), T)
    pooler = torch.randn(B, H)
    reference = pool(hidden, pooler, mask, mode)
    # Huge values at pad positions: any leak into the mean or the max shows.
    noisy = torch.where(mask[..., None].bool(), hidden, torch.full_like(hidden, 1e4))
    torch.testing.assert_close(pool(noisy, pooler, mask, mode), reference)
    # Appending more padding columns changes nothing either.
    padded = torch.cat([noisy, torch.full((B, 3, H), -1e4)], dim=1)
    wider = torch.cat([mask, torch.zeros(B, 3, dtype=torch.long)], dim=1)
    torch.testing.assert_close(pool(padded, pooler, wider, mode), reference)


def test_mean_and_max_equal_the_reduction_over_real_tokens() -> None:
    torch.manual_seed(1)
    lengths = _lengths()
    # All-negative states: a max that let zeroed padding in would return 0.
    hidden, mask = -torch.rand(B, T, H) - 0.5, _mask(lengths, T)
    mean, maxed = pool(hidden, hidden[:, 0], mask, "mean"), pool(hidden, hidden[:, 0], mask, "max")
    for i, n in enumerate(lengths):
        torch.testing.assert_close(mean[i], hidden[i, :n].mean(0))
        torch.testing.assert_close(maxed[i], hidden[i, :n].amax(0))
    assert (maxed < 0).all()
    both = pool(hidden, hidden[:, 0], mask, "mean_max")
    torch.testing.assert_close(both, torch.cat([mean, maxed], dim=-1))
    assert both.shape == (B, pooled_dim(H, "mean_max")) == (B, 2 * H)


def test_cls_returns_the_pooler_output_and_unknown_modes_raise() -> None:
    hidden, pooler, mask = torch.randn(B, T, H), torch.randn(B, H), torch.ones(B, T)
    assert pool(hidden, pooler, mask, "cls") is pooler
    with pytest.raises(ValueError, match=", ".join(POOLINGS)):
        pool(hidden, pooler, mask, "first")


@pytest.mark.parametrize("unpad", [True, False])
@pytest.mark.parametrize("mode", ["mean", "max"])
def test_encoder_pooling_is_unchanged_by_extra_padding(mode: str, unpad: bool) -> None:
    # Through a real (tiny) encoder: with unpad=False, pad positions hold real (nonzero) states.
    torch.manual_seed(2)
    encoder = BertModel(TINY, unpad=unpad).eval()
    lengths = [3, 5, 2, 7, 4]
    ids = torch.randint(5, 99, (len(lengths), 7)) * _mask(lengths, 7)
    wide_ids = torch.cat([ids, torch.zeros(len(lengths), 4, dtype=torch.long)], dim=1)

    def pooled(token_ids: torch.Tensor) -> torch.Tensor:
        mask = _mask(lengths, token_ids.shape[1])
        out = encoder(input_ids=token_ids, attention_mask=mask)
        return pool(out.last_hidden_state, out.pooler_output, mask, mode)

    with torch.no_grad():
        torch.testing.assert_close(pooled(wide_ids), pooled(ids), atol=1e-5, rtol=1e-5)


def test_bi_pair_features_are_u_v_absdiff_product() -> None:
    torch.manual_seed(3)
    u, v = torch.randn(B, 11), torch.randn(B, 11)
    feats = bi_pair_features(u, v)
    assert feats.shape == (B, 44)
    torch.testing.assert_close(feats[:, :11], u)
    torch.testing.assert_close(feats[:, 11:22], v)
    torch.testing.assert_close(feats[:, 22:33], (u - v).abs())
    torch.testing.assert_close(feats[:, 33:], u * v)


def test_cosine_head_is_five_times_the_cosine() -> None:
    torch.manual_seed(4)
    u, v = torch.randn(B, H), torch.randn(B, H)
    expected = 5.0 * (u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1))
    torch.testing.assert_close(CosineSimilarityHead()(u, v), expected)
    torch.testing.assert_close(CosineSimilarityHead()(u, u), torch.full((B,), 5.0))
    torch.testing.assert_close(CosineSimilarityHead()(u, -u), torch.full((B,), -5.0))


@pytest.mark.parametrize("make", [lambda p: SentimentHead(H, p), lambda p: ParaphraseHead(H, p),
                                  lambda p: SimilarityHead(H, p), lambda p: SharedPairLayer(H, p)])
def test_head_dropout_is_applied_in_training_only(make) -> None:
    torch.manual_seed(5)
    x = torch.randn(B, H)
    head = make(0.5)
    head.eval()
    evaluated = head(x)
    torch.testing.assert_close(head(x), evaluated)  # eval is deterministic
    head.train()
    assert not torch.allclose(head(x), evaluated)
    no_dropout = make(0.0)
    no_dropout.load_state_dict(head.state_dict())
    torch.testing.assert_close(no_dropout.train()(x), no_dropout.eval()(x))
    torch.testing.assert_close(no_dropout(x), evaluated)


def test_head_shapes() -> None:
    x = torch.randn(B, H)
    assert SentimentHead(H, 0.1)(x).shape == (B, 5)
    assert ParaphraseHead(H, 0.1)(x).shape == (B,)
    assert SimilarityHead(H, 0.1)(x).shape == (B,)
    assert SharedPairLayer(H, 0.1)(x).shape == (B, H)
