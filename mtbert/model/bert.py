"""BERT encoder with HF-compatible parameter names and two attention paths.

The module tree mirrors ``transformers.BertModel`` so checkpoints load by name, with one
exception: each layer's query/key/value projections are fused into a single
``attention.self.qkv`` Linear(H, 3H) (see ``load_hf.FUSED_PARAMS`` for the rename table).

Attention runs either through ``F.scaled_dot_product_attention`` (fused, the default) or an
explicit softmax(QK^T / sqrt(d) + mask) V ("eager"). Both read the same weights; eager is
used when ``attn_impl="eager"`` or when attention probabilities are requested.
On CUDA the fused path leaves cuDNN's attention backend out (`cuda_sdpa_backends`): its per-shape
setup costs more than length-bucketed batches save.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint

ATTN_IMPLS: tuple[str, ...] = ("sdpa", "eager")

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    # HF "gelu" is the exact erf form; "gelu_new" and "gelu_pytorch_tanh" are the tanh form.
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}

_REQUIRED_HF_KEYS: tuple[str, ...] = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
)


@dataclass(frozen=True)
class BertConfig:
    """Architecture hyperparameters, named as in HF ``config.json``."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    hidden_act: str = "gelu"
    pad_token_id: int = 0
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(
                f"hidden_act {self.hidden_act!r} is not supported; valid: {sorted(ACTIVATIONS)}"
            )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")

    @property
    def head_dim(self) -> int:
        """Per-head width d = H / heads."""
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_hf_dict(cls, d: dict) -> BertConfig:
        """Build from an HF ``config.json`` dict, ignoring keys this encoder does not use.

        Raises:
            ValueError: a required key is missing, or a value is unsupported (including a
                ``position_embedding_type`` other than "absolute").
        """
        missing = [k for k in _REQUIRED_HF_KEYS if k not in d]
        if missing:
            raise ValueError(f"BERT config is missing required keys: {missing}")
        pos_type = d.get("position_embedding_type", "absolute")
        if pos_type != "absolute":
            raise ValueError(
                f"position_embedding_type {pos_type!r} is not supported; valid: ['absolute']"
            )
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known and v is not None})

    def to_hf_dict(self) -> dict:
        """HF ``config.json`` dict that ``transformers.BertConfig`` accepts."""
        return {"model_type": "bert", "architectures": ["BertModel"], **asdict(self)}


@dataclass
class BertOutput:
    """Encoder outputs.

    Attributes:
        last_hidden_state: (B, T, H) final layer states.
        pooler_output: (B, H) tanh(dense(last_hidden_state[:, 0])).
        attentions: per layer (B, heads, T, T) probabilities, only when requested.
    """

    last_hidden_state: Tensor
    pooler_output: Tensor
    attentions: tuple[Tensor, ...] | None = None


@dataclass(frozen=True)
class AttnContext:
    """Per-forward attention inputs, built once and shared by every layer.

    Attributes:
        batch: B.
        seq_len: T.
        bias: additive (B, 1, 1, T) padding bias, or None when nothing is padded.
        eager: use the explicit softmax path (and return probabilities).
        rows: (N,) batch index of each real token when hidden states are packed to
            (N, H); None when they stay (B, T, H).
        cols: (N,) position of each packed token.
    """

    batch: int
    seq_len: int
    bias: Tensor | None
    eager: bool
    rows: Tensor | None = None
    cols: Tensor | None = None

    @property
    def packed(self) -> bool:
        """Whether hidden states are (N, H) real tokens only."""
        return self.rows is not None


def additive_padding_mask(attention_mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """Turn a (B, T) 1/0 key mask into an additive (B, 1, 1, T) bias, or None if unneeded.

    Uses the dtype's finite minimum rather than -inf so that a row whose keys are all
    padding gets a uniform softmax instead of NaN in both attention paths.
    """
    if attention_mask is None:
        return None
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must be (B, T), got shape {tuple(attention_mask.shape)}")
    # No padding: passing no mask lets SDPA pick its fastest kernel. The check is
    # data-dependent, so skip it while tracing for torch.compile.
    if not torch.compiler.is_compiling() and bool(attention_mask.all()):
        return None
    keep = attention_mask[:, None, None, :].to(torch.bool)
    zero = torch.zeros((), dtype=dtype, device=attention_mask.device)
    return torch.where(keep, zero, torch.finfo(dtype).min)


def first_positions(hidden: Tensor, ctx: AttnContext) -> Tensor:
    """Hidden states at position 0 of each sequence: (B, T, H) or packed (N, H) -> (B, H).

    Packed rows whose position 0 is padding get zeros, as the padded grid holds there.
    """
    if not ctx.packed:
        return hidden[:, 0]
    is_first = ctx.cols == 0
    grid = hidden.new_zeros(ctx.batch, hidden.shape[-1])
    return grid.index_put_((ctx.rows[is_first],), hidden[is_first])


def eager_attention(
    q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, dropout_p: float
) -> tuple[Tensor, Tensor]:
    """Explicit softmax(QK^T / sqrt(d) + bias) V.

    Args:
        q, k, v: (B, heads, T, d).
        bias: additive (B, 1, 1, T) or None.
        dropout_p: dropout on the probabilities (0 in eval).

    Returns:
        context (B, heads, T, d) and probabilities after dropout (B, heads, T, T).
    """
    scores = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)  # (B, h, T, T)
    if bias is not None:
        scores = scores + bias
    probs = F.dropout(scores.softmax(dim=-1), p=dropout_p, training=dropout_p > 0.0)
    return torch.matmul(probs, v), probs


class BertEmbeddings(nn.Module):
    """Word + token-type + position embeddings, then LayerNorm and dropout."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        h = config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, h, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, h)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, h)
        self.LayerNorm = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        input_ids: Tensor | None,
        token_type_ids: Tensor | None,
        inputs_embeds: Tensor | None,
    ) -> Tensor:
        """Embed (B, T) ids, or take (B, T, H) word embeddings as given; returns (B, T, H)."""
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        seq_len = inputs_embeds.shape[1]
        max_len = self.position_embeddings.num_embeddings
        if seq_len > max_len:
            raise ValueError(f"sequence length {seq_len} exceeds max_position_embeddings {max_len}")
        # Slicing/broadcasting the tables avoids gathers when positions are 0..T-1 and
        # token types default to 0 (HF's behaviour without token_type_ids).
        if token_type_ids is None:
            emb = inputs_embeds + self.token_type_embeddings.weight[0]
        else:
            emb = inputs_embeds + self.token_type_embeddings(token_type_ids)
        emb = emb + self.position_embeddings.weight[:seq_len]
        return self.dropout(self.LayerNorm(emb))


# SDPA backends on CUDA; cuDNN's is left out. Length bucketing gives nearly every batch its own
# (B, T) shape, and before the first call on a shape cuDNN attention builds an execution graph on
# the host. Measured on an H200 (torch 2.11, cuDNN 9.19; benchmarks/device/2026-11-30): forward +
# backward on a new shape took 351 ms on average with PyTorch's default backends (cuDNN alone:
# 144 ms) and 0.9 ms without cuDNN; the quick profile's 94 training steps took 35 s with it and 9 s
# without. Flash and memory-efficient attention need no per-shape setup. MTBERT_SDPA_CUDNN=1 puts
# cuDNN back among the candidates (PyTorch's own choice).
@functools.cache
def cuda_sdpa_backends() -> tuple[SDPBackend, ...]:
    """The SDPA backends attention may use on CUDA (PyTorch picks among them by its priority)."""
    ours = (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH)
    return (SDPBackend.CUDNN_ATTENTION, *ours) if os.environ.get("MTBERT_SDPA_CUDNN") == "1" else ours


def sdpa(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, dropout_p: float) -> Tensor:
    """``F.scaled_dot_product_attention`` with an additive mask; on CUDA, among `cuda_sdpa_backends`."""
    if q.device.type != "cuda":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p)
    with sdpa_kernel(list(cuda_sdpa_backends())):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p)


class BertSelfAttention(nn.Module):
    """Multi-head self-attention with a fused QKV projection."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.dropout_p = config.attention_probs_dropout_prob
        # One (H -> 3H) matmul instead of three; rows ordered [query; key; value].
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)

    def forward(self, hidden: Tensor, ctx: AttnContext) -> tuple[Tensor, Tensor | None]:
        """Attend over (B, T, H) or packed (N, H) hidden states.

        Returns:
            context shaped like ``hidden`` and, on the eager path, probabilities
            (B, heads, T, T).
        """
        bsz, seq_len, width = ctx.batch, ctx.seq_len, hidden.shape[-1]
        qkv = self.qkv(hidden)  # (B, T, 3H) or (N, 3H)
        if ctx.packed:
            # Attention needs the (B, T) grid; pad rows are zero and masked as keys.
            grid = qkv.new_zeros(bsz, seq_len, 3 * width)
            qkv = grid.index_put_((ctx.rows, ctx.cols), qkv)
        # (B, T, 3H) -> (3, B, heads, T, d) as views: no copies before attention.
        qkv = qkv.view(bsz, seq_len, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        p = self.dropout_p if self.training else 0.0
        probs = None
        if ctx.eager:
            out, probs = eager_attention(q, k, v, ctx.bias, p)
        else:
            out = sdpa(q, k, v, ctx.bias, p)
        out = out.transpose(1, 2)  # (B, T, heads, d), a view
        if ctx.packed:
            # One gather copies the real tokens out: (N, heads, d) -> (N, H).
            return out[ctx.rows, ctx.cols].reshape(-1, width), probs
        return out.reshape(bsz, seq_len, width), probs

    def cls_context(self, hidden: Tensor, first: Tensor, ctx: AttnContext) -> Tensor:
        """Attention output at the first position only: (B, T, H) or (N, H), (B, H) -> (B, H).

        Keys and values still come from every token; the query is the first position's alone,
        so the query projection and the attention rows of the other positions are skipped.
        """
        bsz, seq_len, width = ctx.batch, ctx.seq_len, hidden.shape[-1]
        q = F.linear(first, self.qkv.weight[:width], self.qkv.bias[:width])  # (B, H)
        kv = F.linear(hidden, self.qkv.weight[width:], self.qkv.bias[width:])  # (B, T, 2H) or (N, 2H)
        if ctx.packed:
            kv = kv.new_zeros(bsz, seq_len, 2 * width).index_put_((ctx.rows, ctx.cols), kv)
        k, v = kv.view(bsz, seq_len, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q = q.view(bsz, self.num_heads, 1, self.head_dim)  # (B, heads, 1, d)
        p = self.dropout_p if self.training else 0.0
        if ctx.eager:
            out, _ = eager_attention(q, k, v, ctx.bias, p)
        else:
            out = sdpa(q, k, v, ctx.bias, p)
        return out.reshape(bsz, width)


class BertSelfOutput(nn.Module):
    """Projection after attention, dropout, residual, LayerNorm (post-LN)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden: Tensor, residual: Tensor) -> Tensor:
        """(B, T, H), (B, T, H) -> (B, T, H)."""
        return self.LayerNorm(self.dropout(self.dense(hidden)) + residual)


class BertAttention(nn.Module):
    """Self-attention followed by its output block (HF names ``self`` and ``output``)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config)

    def forward(self, hidden: Tensor, ctx: AttnContext) -> tuple[Tensor, Tensor | None]:
        """(B, T, H) or (N, H) -> same shape, and optional (B, heads, T, T) probabilities."""
        context, probs = self.self(hidden, ctx)
        return self.output(context, hidden), probs


class BertIntermediate(nn.Module):
    """First feed-forward projection H -> FFN with the configured activation."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACTIVATIONS[config.hidden_act]

    def forward(self, hidden: Tensor) -> Tensor:
        """(B, T, H) -> (B, T, FFN)."""
        return self.act(self.dense(hidden))


class BertLayerOutput(nn.Module):
    """Second feed-forward projection FFN -> H, dropout, residual, LayerNorm.

    HF calls this class ``BertOutput``; that name is taken here by the return dataclass.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden: Tensor, residual: Tensor) -> Tensor:
        """(B, T, FFN), (B, T, H) -> (B, T, H)."""
        return self.LayerNorm(self.dropout(self.dense(hidden)) + residual)


class BertLayer(nn.Module):
    """One transformer block: attention, then feed-forward."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertLayerOutput(config)

    def forward(self, hidden: Tensor, ctx: AttnContext) -> tuple[Tensor, Tensor | None]:
        """(B, T, H) or (N, H) -> same shape, and optional (B, heads, T, T) probabilities."""
        attn_out, probs = self.attention(hidden, ctx)
        return self.output(self.intermediate(attn_out), attn_out), probs

    def cls_forward(self, hidden: Tensor, ctx: AttnContext) -> Tensor:
        """This layer's output at the first position only: (B, T, H) or (N, H) -> (B, H)."""
        first = first_positions(hidden, ctx)  # (B, H)
        context = self.attention.self.cls_context(hidden, first, ctx)
        attn_out = self.attention.output(context, first)
        out = self.output(self.intermediate(attn_out), attn_out)
        if ctx.packed:  # padding holds zeros on the packed path: keep that for position 0 too
            real = torch.zeros(ctx.batch, dtype=torch.bool, device=out.device)
            real[ctx.rows[ctx.cols == 0]] = True
            out = out.masked_fill(~real[:, None], 0.0)
        return out


class BertEncoder(nn.Module):
    """Stack of ``num_hidden_layers`` BertLayers."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(
        self, hidden: Tensor, ctx: AttnContext, keep_probs: bool, cls_only: bool = False,
        recompute: bool = False,
    ) -> tuple[Tensor, tuple[Tensor, ...] | None]:
        """Run all layers on (B, T, H) or packed (N, H) states with one shared context.

        With `cls_only` the last layer runs for the first position only and (B, H) comes back.
        With `recompute` each full layer keeps only its input for the backward pass and runs again
        there (activation checkpointing, with the forward's random state: the same dropout masks,
        so the same gradients).
        """
        all_probs: list[Tensor] = []
        layers = self.layer[:-1] if cls_only else self.layer
        for layer in layers:
            if recompute:
                hidden, probs = checkpoint(layer, hidden, ctx, use_reentrant=False)
            else:
                hidden, probs = layer(hidden, ctx)
            if keep_probs:
                all_probs.append(probs)
        if cls_only:
            hidden = self.layer[-1].cls_forward(hidden, ctx)  # (B, H)
        return hidden, (tuple(all_probs) if keep_probs else None)


class BertPooler(nn.Module):
    """tanh(dense(h_[CLS])), as in BERT's next-sentence pretraining."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: Tensor) -> Tensor:
        """(B, T, H) -> (B, H)."""
        return torch.tanh(self.dense(hidden[:, 0]))


class BertModel(nn.Module):
    """BERT encoder returning a ``BertOutput``.

    Args:
        config: architecture.
        attn_impl: "sdpa" (fused kernel; eager only when probabilities are requested) or
            "eager" (always the explicit path).
        unpad: when the batch has padding, run every Linear/LayerNorm/FFN on the real
            tokens only, packed to (N, H), and scatter them back into the (B, T) grid just
            for attention. Same results on real tokens, less work; padding positions of
            ``last_hidden_state`` are then zero instead of HF's (meaningless) values.

        recompute_tokens: in training, a batch whose (B, T) grid holds more than this many
            positions recomputes each layer's activations in the backward pass instead of
            keeping them (0: never). Same results; the widest batches stop setting the peak memory.

    ``attn_impl``, ``unpad`` and ``recompute_tokens`` are plain attributes and may be changed
    after construction.
    """

    def __init__(self, config: BertConfig, attn_impl: str = "sdpa", unpad: bool = True,
                 recompute_tokens: int = 0) -> None:
        super().__init__()
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl {attn_impl!r} is not supported; valid: {list(ATTN_IMPLS)}")
        self.config = config
        self.attn_impl = attn_impl
        self.unpad = unpad
        self.recompute_tokens = recompute_tokens
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        # HF BERT init: N(0, initializer_range) weights, zero biases, unit LayerNorm.
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def word_embeddings(self) -> nn.Embedding:
        """The (V, H) word-embedding table (perturbed by SMART, tied to the MLM decoder)."""
        return self.embeddings.word_embeddings

    def _context(self, hidden: Tensor, attention_mask: Tensor | None, eager: bool) -> AttnContext:
        """Build the padding bias (and packing indices) once for all layers."""
        bsz, seq_len = hidden.shape[:2]
        device_type = hidden.device.type
        dtype = hidden.dtype
        # Under autocast the scores are in the autocast dtype; building the bias in it
        # avoids a cast in every layer.
        if torch.is_autocast_enabled(device_type):
            dtype = torch.get_autocast_dtype(device_type)
        bias = additive_padding_mask(attention_mask, dtype)  # (B, 1, 1, T) or None
        if bias is None or not self.unpad:
            return AttnContext(bsz, seq_len, bias, eager)
        rows, cols = attention_mask.nonzero(as_tuple=True)  # (N,), (N,)
        return AttnContext(bsz, seq_len, bias, eager, rows, cols)

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        output_attentions: bool = False,
        cls_only: bool = False,
    ) -> BertOutput:
        """Encode a batch.

        Args:
            input_ids: (B, T) token ids; exactly one of this and ``inputs_embeds``.
            attention_mask: (B, T), 1 for real tokens and 0 for padding; None = no padding.
            token_type_ids: (B, T) segment ids; None = all segment 0.
            inputs_embeds: (B, T, H) word embeddings used instead of looking up
                ``input_ids``; position and token-type embeddings are still added.
            output_attentions: also return per-layer (B, heads, T, T) probabilities
                (forces the eager path).
            cls_only: compute only what ``pooler_output`` needs: the last layer's query,
                attention output and feed-forward run on position 0 alone (its keys and
                values still cover every token), about 1/6 less work with 6 layers. The
                pooler output is the same; ``last_hidden_state`` is then (B, 1, H).

        Returns:
            BertOutput with last_hidden_state (B, T, H), or (B, 1, H) with ``cls_only``, and
            pooler_output (B, H).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if cls_only and output_attentions:
            raise ValueError("cls_only and output_attentions cannot be combined")
        hidden = self.embeddings(input_ids, token_type_ids, inputs_embeds)  # (B, T, H)
        eager = output_attentions or self.attn_impl == "eager"
        ctx = self._context(hidden, attention_mask, eager)
        if ctx.packed:
            hidden = hidden[ctx.rows, ctx.cols]  # (N, H)
        recompute = (0 < self.recompute_tokens < ctx.batch * ctx.seq_len
                     and self.training and torch.is_grad_enabled())
        hidden, attentions = self.encoder(hidden, ctx, output_attentions, cls_only, recompute)
        if cls_only:
            hidden = hidden.unsqueeze(1)  # (B, 1, H)
            return BertOutput(hidden, self.pooler(hidden), attentions)
        if ctx.packed:
            grid = hidden.new_zeros(ctx.batch, ctx.seq_len, hidden.shape[-1])
            hidden = grid.index_put_((ctx.rows, ctx.cols), hidden)  # (B, T, H)
        return BertOutput(hidden, self.pooler(hidden), attentions)
