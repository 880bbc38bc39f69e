"""Unit tests for the BERT encoder on tiny, odd, distinct sizes (no weights, no network)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mtbert.model.bert import (
    ACTIVATIONS,
    BertConfig,
    BertModel,
    additive_padding_mask,
)

B, T, H, HEADS, FFN, V = 13, 7, 32, 4, 37, 99
TOL = 1e-5

TINY = BertConfig(
    vocab_size=V,
    hidden_size=H,
    num_hidden_layers=2,
    num_attention_heads=HEADS,
    intermediate_size=FFN,
    max_position_embeddings=16,
)


def make_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """Padded batch (B, T): various lengths, one full row, pad id 0 after each sentence."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    lengths[1] = 1
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()  # (B, T)
    ids = torch.randint(1, V, (B, T), generator=g) * mask
    types = torch.randint(0, 2, (B, T), generator=g) * mask
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def make_model(attn_impl: str = "sdpa", unpad: bool = False, seed: int = 0) -> BertModel:
    """Tiny model with seeded random weights, in eval mode."""
    torch.manual_seed(seed)
    return BertModel(TINY, attn_impl=attn_impl, unpad=unpad).eval()


def real(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, H) -> (N, H) rows at real tokens."""
    return x[mask.bool()]


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("unpad", [False, True])
def test_sdpa_matches_eager_on_padded_batch(unpad: bool) -> None:
    batch = make_batch()
    model = make_model(unpad=unpad)
    with torch.no_grad():
        fused = model(**batch)
        model.attn_impl = "eager"
        explicit = model(**batch)
    assert batch["attention_mask"].eq(0).any(), "the batch must contain padding"
    assert max_diff(fused.last_hidden_state, explicit.last_hidden_state) < TOL
    assert max_diff(fused.pooler_output, explicit.pooler_output) < TOL
    assert fused.last_hidden_state.shape == (B, T, H)
    assert fused.pooler_output.shape == (B, H)
    assert fused.attentions is None


def test_padding_mask_is_applied() -> None:
    # Guards the tests above: without the mask, real-token outputs must change.
    batch = make_batch()
    model = make_model()
    with torch.no_grad():
        masked = model(**batch).last_hidden_state
        unmasked = model(batch["input_ids"], None, batch["token_type_ids"]).last_hidden_state
    mask = batch["attention_mask"]
    assert max_diff(real(masked, mask), real(unmasked, mask)) > 1e-3


@pytest.mark.parametrize("attn_impl", ["sdpa", "eager"])
def test_packed_matches_padded_on_real_tokens(attn_impl: str) -> None:
    batch = make_batch()
    mask = batch["attention_mask"]
    model = make_model(attn_impl)
    with torch.no_grad():
        padded = model(**batch)
        model.unpad = True
        packed = model(**batch)
    on_real = real(padded.last_hidden_state, mask), real(packed.last_hidden_state, mask)
    assert max_diff(*on_real) < TOL
    assert max_diff(padded.pooler_output, packed.pooler_output) < TOL
    # Packed mode leaves padding positions at zero.
    assert packed.last_hidden_state[mask == 0].abs().max().item() == 0.0


@pytest.mark.parametrize("attn_impl", ["sdpa", "eager"])
@pytest.mark.parametrize("unpad", [False, True])
def test_inputs_embeds_matches_input_ids(attn_impl: str, unpad: bool) -> None:
    batch = make_batch()
    model = make_model(attn_impl, unpad)
    embeds = model.word_embeddings()(batch["input_ids"])  # (B, T, H)
    with torch.no_grad():
        from_ids = model(**batch)
        from_embeds = model(
            inputs_embeds=embeds,
            attention_mask=batch["attention_mask"],
            token_type_ids=batch["token_type_ids"],
        )
    assert max_diff(from_ids.last_hidden_state, from_embeds.last_hidden_state) < TOL
    assert max_diff(from_ids.pooler_output, from_embeds.pooler_output) < TOL


def test_inputs_embeds_are_used() -> None:
    batch = make_batch()
    model = make_model()
    embeds = model.word_embeddings()(batch["input_ids"])
    with torch.no_grad():
        a = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"])
        # Random, not constant: LayerNorm would cancel a constant shift.
        noise = 0.1 * torch.randn(embeds.shape, generator=torch.Generator().manual_seed(1))
        b = model(inputs_embeds=embeds + noise, attention_mask=batch["attention_mask"])
    assert max_diff(a.pooler_output, b.pooler_output) > 1e-4


@pytest.mark.parametrize("attn_impl", ["sdpa", "eager"])
@pytest.mark.parametrize("unpad", [False, True])
def test_appending_padding_changes_nothing(attn_impl: str, unpad: bool) -> None:
    batch = make_batch()
    extra = 4
    longer = {k: torch.nn.functional.pad(v, (0, extra)) for k, v in batch.items()}
    model = make_model(attn_impl, unpad)
    with torch.no_grad():
        short_out = model(**batch)
        long_out = model(**longer)
    mask = batch["attention_mask"]
    long_real = real(long_out.last_hidden_state[:, :T], mask)
    assert max_diff(real(short_out.last_hidden_state, mask), long_real) < TOL
    assert max_diff(short_out.pooler_output, long_out.pooler_output) < TOL


def test_all_ones_mask_equals_no_mask() -> None:
    batch = make_batch()
    ones = torch.ones(B, T, dtype=torch.long)
    model = make_model()
    with torch.no_grad():
        a = model(batch["input_ids"], ones).last_hidden_state
        b = model(batch["input_ids"], None).last_hidden_state
    assert max_diff(a, b) == 0.0
    assert additive_padding_mask(ones, torch.float32) is None


@pytest.mark.parametrize("attn_impl", ["sdpa", "eager"])
@pytest.mark.parametrize("unpad", [False, True])
def test_fully_padded_row_gives_no_nan(attn_impl: str, unpad: bool) -> None:
    batch = make_batch()
    batch["attention_mask"][2] = 0
    batch["input_ids"][2] = 0
    model = make_model(attn_impl, unpad)
    with torch.no_grad():
        out = model(**batch)
    assert torch.isfinite(out.last_hidden_state).all()
    assert torch.isfinite(out.pooler_output).all()


def test_additive_mask_shape_and_values() -> None:
    mask = make_batch()["attention_mask"]
    bias = additive_padding_mask(mask, torch.float32)
    assert bias.shape == (B, 1, 1, T)
    assert (bias[:, 0, 0][mask == 1] == 0).all()
    assert (bias[:, 0, 0][mask == 0] == torch.finfo(torch.float32).min).all()


@pytest.mark.parametrize("unpad", [False, True])
def test_output_attentions(unpad: bool) -> None:
    batch = make_batch()
    mask = batch["attention_mask"]
    model = make_model("sdpa", unpad)
    with torch.no_grad():
        plain = model(**batch)
        out = model(**batch, output_attentions=True)
    assert out.attentions is not None and len(out.attentions) == TINY.num_hidden_layers
    for probs in out.attentions:
        assert probs.shape == (B, HEADS, T, T)
        assert torch.allclose(probs.sum(-1), torch.ones(B, HEADS, T), atol=1e-5)
        # No probability mass on padded keys.
        assert probs.masked_select((mask == 0)[:, None, None, :]).abs().max().item() == 0.0
    # The eager fallback gives the same states as the fused path.
    assert max_diff(plain.last_hidden_state, out.last_hidden_state) < TOL


@pytest.mark.parametrize("unpad", [False, True])
def test_gradients_reach_every_parameter(unpad: bool) -> None:
    batch = make_batch()
    model = make_model(unpad=unpad).train()
    out = model(**batch)
    loss = real(out.last_hidden_state, batch["attention_mask"]).pow(2).mean()
    (loss + out.pooler_output.sum()).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_dropout_active_only_in_train_mode() -> None:
    batch = make_batch()
    model = make_model()
    with torch.no_grad():
        assert max_diff(model(**batch).pooler_output, model(**batch).pooler_output) == 0.0
        model.train()
        assert max_diff(model(**batch).pooler_output, model(**batch).pooler_output) > 1e-4


def test_fused_qkv_and_hf_names() -> None:
    names = set(make_model().state_dict())
    assert "encoder.layer.1.attention.self.qkv.weight" in names
    assert "embeddings.LayerNorm.weight" in names
    assert "encoder.layer.0.output.dense.weight" in names
    assert "pooler.dense.bias" in names
    qkv = make_model().state_dict()["encoder.layer.0.attention.self.qkv.weight"]
    assert qkv.shape == (3 * H, H)


def test_rejects_bad_inputs() -> None:
    batch = make_batch()
    model = make_model()
    embeds = torch.zeros(B, T, H)
    with pytest.raises(ValueError, match="exactly one"):
        model(batch["input_ids"], inputs_embeds=embeds)
    with pytest.raises(ValueError, match="exactly one"):
        model()
    too_long = torch.ones(1, TINY.max_position_embeddings + 1, dtype=torch.long)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(too_long)
    with pytest.raises(ValueError, match="sdpa"):
        BertModel(TINY, attn_impl="flash")


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="multiple"):
        dataclasses.replace(TINY, num_attention_heads=5)
    with pytest.raises(ValueError, match="gelu"):
        dataclasses.replace(TINY, hidden_act="swishy")
    with pytest.raises(ValueError, match="hidden_dropout_prob"):
        dataclasses.replace(TINY, hidden_dropout_prob=1.5)


def test_config_from_hf_dict() -> None:
    extra = {"model_type": "bert", "use_cache": True, "classifier_dropout": None}
    d = {**dataclasses.asdict(TINY), **extra}
    assert BertConfig.from_hf_dict(d) == TINY
    assert BertConfig.from_hf_dict(TINY.to_hf_dict()) == TINY
    with pytest.raises(ValueError, match="intermediate_size"):
        BertConfig.from_hf_dict({k: v for k, v in d.items() if k != "intermediate_size"})
    with pytest.raises(ValueError, match="absolute"):
        BertConfig.from_hf_dict({**d, "position_embedding_type": "relative_key"})
    with pytest.raises(ValueError, match="gelu"):
        BertConfig.from_hf_dict({**d, "hidden_act": "nope"})


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_supported_activations_build(act: str) -> None:
    model = BertModel(dataclasses.replace(TINY, hidden_act=act)).eval()
    with torch.no_grad():
        out = model(**make_batch())
    assert torch.isfinite(out.last_hidden_state).all()


def test_autocast_bf16_runs_close_to_fp32() -> None:
    batch = make_batch()
    model = make_model(unpad=True)
    with torch.no_grad():
        ref = model(**batch).pooler_output
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(**batch).pooler_output
    assert torch.isfinite(low).all()
    assert max_diff(ref, low.float()) < 0.05


def test_cuda_attention_leaves_cudnn_out_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """cuDNN attention builds a graph per (B, T) shape on the host (hundreds of ms each, measured on
    an H200): length-bucketed batches keep it out; MTBERT_SDPA_CUDNN=1 brings it back."""
    from torch.nn.attention import SDPBackend

    from mtbert.model.bert import cuda_sdpa_backends

    try:
        monkeypatch.delenv("MTBERT_SDPA_CUDNN", raising=False)
        cuda_sdpa_backends.cache_clear()
        assert SDPBackend.CUDNN_ATTENTION not in cuda_sdpa_backends()
        assert {SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION} <= set(cuda_sdpa_backends())
        monkeypatch.setenv("MTBERT_SDPA_CUDNN", "1")
        cuda_sdpa_backends.cache_clear()
        assert cuda_sdpa_backends()[0] == SDPBackend.CUDNN_ATTENTION
    finally:
        cuda_sdpa_backends.cache_clear()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_sdpa_matches_eager_with_padding() -> None:
    torch.manual_seed(0)
    model = BertModel(TINY).cuda().eval()
    batch = {k: v.cuda() for k, v in make_batch().items()}
    with torch.no_grad():
        fused = model(**batch).last_hidden_state
        eager = model(**batch, output_attentions=True).last_hidden_state
    real = batch["attention_mask"].bool()
    assert torch.allclose(fused[real], eager[real], atol=1e-4)


@pytest.mark.parametrize("unpad", [False, True])
def test_recomputing_wide_batches_gives_the_same_gradients(unpad: bool) -> None:
    """Activation checkpointing replays the forward's random state: the same dropout masks, so
    bit-identical outputs and gradients, with dropout on."""
    torch.manual_seed(0)
    keep = BertModel(TINY, unpad=unpad).train()
    recompute = BertModel(TINY, unpad=unpad, recompute_tokens=B * T - 1).train()
    recompute.load_state_dict(keep.state_dict())
    batch = make_batch()
    results = []
    for model in (keep, recompute):
        torch.manual_seed(123)
        out = model(**batch).last_hidden_state
        out.pow(2).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((out.detach(), grads, torch.rand(1)))  # the RNG after: not disturbed
    (out_a, grads_a, rng_a), (out_b, grads_b, rng_b) = results
    assert torch.equal(out_a, out_b) and torch.equal(rng_a, rng_b)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 0
    assert all(torch.equal(grads_a[n], grads_b[n]) for n in grads_a)


def test_recompute_only_for_batches_wider_than_the_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    import mtbert.model.bert as bert

    calls: list[int] = []
    real = bert.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(bert, "checkpoint", counting)
    model = BertModel(TINY, recompute_tokens=B * T).train()
    model(**make_batch()).last_hidden_state.sum().backward()  # B x T positions: not wider
    assert calls == []
    model.recompute_tokens = B * T - 1
    model(**make_batch()).last_hidden_state.sum().backward()
    assert len(calls) == TINY.num_hidden_layers
    calls.clear()
    with torch.no_grad():  # scoring and eval mode never recompute: nothing is kept for a backward
        model(**make_batch())
    model.eval()
    model(**make_batch())
    assert calls == []
