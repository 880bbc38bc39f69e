"""The multitask model on a tiny random encoder: pair layouts, head wiring, shared layer, dropout."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from mtbert.batching import Encoded
from mtbert.config import ModelConfig
from mtbert.model.bert import BertModel
from mtbert.model.heads import bi_pair_features, pool
from mtbert.model.multitask import MultitaskBert
from tests.tiny import TINY_BERT_NO_DROPOUT

B, T = 5, 7
TINY = TINY_BERT_NO_DROPOUT  # tests/tiny.py


def make_model(**model_options: object) -> MultitaskBert:
    torch.manual_seed(0)
    cfg = dataclasses.replace(ModelConfig(head_dropout=0.0), **model_options)
    return MultitaskBert(BertModel(TINY), cfg).eval()


def make_enc(rows: int, seed: int = 1) -> Encoded:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, T + 1, (rows,), generator=g)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    ids = torch.randint(5, 99, (rows, T), generator=g) * mask
    return Encoded(ids, mask, torch.zeros_like(ids))


def capture_input(module: torch.nn.Module) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    module.register_forward_hook(lambda _m, args, _out: seen.append(args[0].detach()))
    return seen


def sentence_vectors(model: MultitaskBert, enc: Encoded) -> torch.Tensor:
    out = model.encoder(input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                        token_type_ids=enc.token_type_ids)
    return pool(out.last_hidden_state, out.pooler_output, enc.attention_mask, model.cfg.pooling)


@pytest.mark.parametrize("pooling", ["cls", "mean", "mean_max"])
def test_bi_encoder_heads_see_u_v_absdiff_product(pooling: str) -> None:
    model = make_model(pair_encoding="bi", pooling=pooling)
    enc = make_enc(2 * B)  # rows 0..B-1: first sentences; B..2B-1: second sentences
    seen_para, seen_sts = capture_input(model.para_head), capture_input(model.sts_head)
    with torch.no_grad():
        para, sts = model("para", enc), model("sts", enc)
        vectors = sentence_vectors(model, enc)
    u, v = vectors[:B], vectors[B:]
    assert para.shape == sts.shape == (B,)
    torch.testing.assert_close(seen_para[0], bi_pair_features(u, v))
    torch.testing.assert_close(seen_sts[0], bi_pair_features(u, v))
    # Swapping which half is "first" changes the features (u and v have fixed slots).
    swapped = Encoded(*(torch.cat([t[B:], t[:B]]) for t in (enc.input_ids, enc.attention_mask,
                                                            enc.token_type_ids)))
    with torch.no_grad():
        model("para", swapped)
    torch.testing.assert_close(seen_para[1], bi_pair_features(v, u))


def test_cosine_sts_head_is_five_cos_of_the_two_sentence_vectors() -> None:
    model = make_model(pair_encoding="bi", pooling="mean", sts_head="cosine")
    enc = make_enc(2 * B)
    with torch.no_grad():
        score = model("sts", enc)
        vectors = sentence_vectors(model, enc)
    torch.testing.assert_close(score, 5.0 * F.cosine_similarity(vectors[:B], vectors[B:], dim=-1))
    assert sum(p.numel() for p in model.sts_head.parameters()) == 0


def test_cross_encoder_runs_one_row_per_pair() -> None:
    model = make_model()
    enc = make_enc(B)
    seen = capture_input(model.para_head)
    with torch.no_grad():
        assert model("para", enc).shape == (B,)
        assert model("sts", enc).shape == (B,)
        assert model("sst", enc).shape == (B, 5)
    torch.testing.assert_close(seen[0], sentence_vectors(model, enc))


def test_cosine_features_append_the_cosine_to_the_para_features() -> None:
    model = make_model(pair_encoding="bi", pooling="mean", para_head="cosine_features")
    enc = make_enc(2 * B)
    seen = capture_input(model.para_head)
    with torch.no_grad():
        model("para", enc)
        vectors = sentence_vectors(model, enc)
    u, v = vectors[:B], vectors[B:]
    torch.testing.assert_close(seen[0][:, :-1], bi_pair_features(u, v))
    torch.testing.assert_close(seen[0][:, -1], F.cosine_similarity(u, v, dim=-1))


@pytest.mark.parametrize("encoding", ["cross", "bi"])
def test_shared_pair_layer_is_used_by_para_and_sts_only(encoding: str) -> None:
    model = make_model(pair_encoding=encoding, shared_pair_layer=True)
    assert model.shared_pair is not None
    calls: list[int] = []
    model.shared_pair.register_forward_hook(lambda _m, args, _o: calls.append(args[0].shape[0]))
    rows = 2 * B if encoding == "bi" else B
    model("sst", make_enc(B))
    assert calls == []
    for task in ("para", "sts"):
        model.zero_grad()
        model(task, make_enc(rows)).sum().backward()
        grad = model.shared_pair.dense.weight.grad
        assert grad is not None and grad.abs().sum() > 0, task
    assert calls == [B, B]
    assert make_model(pair_encoding=encoding).shared_pair is None


def test_head_dropout_rate_reaches_every_head() -> None:
    model = make_model(head_dropout=0.37, shared_pair_layer=True)
    rates = {name: m.p for name, m in model.named_modules()
             if isinstance(m, torch.nn.Dropout) and not name.startswith("encoder")}
    assert rates == {"sst_head.dropout": 0.37, "para_head.dropout": 0.37, "sts_head.dropout": 0.37,
                     "shared_pair.dropout": 0.37}
    enc = make_enc(B)
    with torch.no_grad():
        evaluated = model.eval()("sst", enc)
        trained = model.train()("sst", enc)  # the encoder has no dropout: only the head differs
    assert not torch.allclose(trained, evaluated)
    plain = make_model(head_dropout=0.0)
    with torch.no_grad():
        torch.testing.assert_close(plain.train()("sst", enc), plain.eval()("sst", enc))


def test_unpad_option_reaches_the_encoder_and_keeps_predictions() -> None:
    from mtbert.model.multitask import multitask_from_state

    packed = make_model(pooling="mean")
    plain = multitask_from_state(TINY, dataclasses.replace(packed.cfg, unpad=False),
                                 packed.state_dict()).eval()
    assert packed.encoder.unpad and not plain.encoder.unpad
    enc = make_enc(2 * B, seed=3)
    with torch.no_grad():
        for task in ("sst", "para", "sts"):
            torch.testing.assert_close(plain(task, enc), packed(task, enc), atol=1e-5, rtol=1e-4)
