"""Typed configuration: `params.yaml` read into nested frozen dataclasses.

`params.yaml` is the single source of truth. Every section is a frozen dataclass; loading rejects
unknown keys and wrong types and validates ranges and option names, always naming the dotted key
path (`train.lr`). A profile (`profile: quick`) is a set of dotted overrides kept in the same file,
applied before command-line overrides (`train.lr=2e-5`). Code changes config with
`dataclasses.replace` (see `with_overrides`), never by mutation.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mtbert.tasks import TASKS

POOLINGS = ("cls", "mean", "max", "mean_max")
PAIR_ENCODINGS = ("cross", "bi")
STS_HEADS = ("regression", "cosine")
PARA_HEADS = ("linear", "cosine_features")
STS_LOSSES = ("mse", "cosine")
SAMPLERS = ("sequential", "round_robin", "proportional", "annealed", "even")
OPTIMIZERS = ("mtbert", "torch")
SCHEDULES = ("linear", "constant", "cosine")
ATTN_IMPLS = ("sdpa", "eager")
ON_ERROR = ("fail", "skip")
PRECISIONS = ("fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")
TRAIN_SOURCES = ("raw", "augmented")


class ConfigError(ValueError):
    """A bad value in params.yaml or an override; the message starts with the dotted key path."""


@dataclass(frozen=True)
class PerTask:
    """One optional number per task (sizes, caps)."""

    sst: int | None = None
    para: int | None = None
    sts: int | None = None

    def get(self, task: str) -> int | None:
        return getattr(self, task)


@dataclass(frozen=True)
class PerTaskFloat:
    """One float per task (loss scales)."""

    sst: float = 1.0
    para: float = 1.0
    sts: float = 1.0

    def get(self, task: str) -> float:
        return getattr(self, task)


@dataclass(frozen=True)
class DataConfig:
    source: str = "../shared/data"
    raw_dir: str = "data"
    prepared_dir: str = "artifacts/prepared"
    augmented_dir: str = "artifacts/augmented"
    on_error: str = "skip"
    train_source: str = "raw"
    train_size: PerTask = field(default_factory=PerTask)
    resample_to: PerTask = field(default_factory=PerTask)
    dev_size: PerTask = field(default_factory=PerTask)


@dataclass(frozen=True)
class ModelConfig:
    checkpoint: str = "minilm"
    pooling: str = "cls"
    pair_encoding: str = "cross"
    sts_head: str = "regression"
    para_head: str = "linear"
    shared_pair_layer: bool = False
    head_dropout: float = 0.1
    encoder_dropout: float | None = None
    attn_impl: str = "sdpa"
    unpad: bool = True
    max_length: int = 128


@dataclass(frozen=True)
class SmartConfig:
    enabled: bool = False
    weight: float = 1.0
    noise_var: float = 1e-5
    step_size: float = 1e-3
    epsilon: float = 1e-6
    bregman_weight: float = 1.0  # mu of the Bregman proximal term; 0 turns it off
    bregman_beta: float = 0.99  # EMA momentum of the proximal teacher's parameters


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1
    batch_size: int = 32
    max_tokens: int = 0
    bucket: bool = True
    lr: float = 5e-5
    head_lr_scale: float = 1.0
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    schedule: str = "linear"
    optimizer: str = "mtbert"
    sampler: str = "round_robin"
    alpha_start: float = 1.0
    alpha_end: float = 0.2
    loss_scale: PerTaskFloat = field(default_factory=PerTaskFloat)
    sts_loss: str = "mse"
    pcgrad: bool = False
    smart: SmartConfig = field(default_factory=SmartConfig)
    grad_clip: float = 1.0
    device: str = "auto"
    precision: str = "fp32"
    threads: int = 0
    checkpoint_every: int = 200
    out_dir: str = "artifacts/model"
    init_from: str | None = None


@dataclass(frozen=True)
class MlmConfig:
    enabled: bool = False
    epochs: int = 1
    batch_size: int = 32
    lr: float = 5e-5
    mask_prob: float = 0.15
    max_sentences: int | None = None
    out_dir: str = "artifacts/mlm"


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = 128
    out_dir: str = "artifacts/eval"
    metrics_file: str = "metrics.json"
    predict_test: bool = True


@dataclass(frozen=True)
class AugmentConfig:
    sick: bool = True
    eda_tasks: tuple[str, ...] = ("sst",)
    eda_copies: int = 1
    synonym_rate: float = 0.1
    insert_rate: float = 0.1
    swap_rate: float = 0.1
    delete_rate: float = 0.1
    wordnet_dir: str = "/usr/share/wordnet"


@dataclass(frozen=True)
class TuneConfig:
    n_trials: int = 6
    storage: str = "sqlite:///artifacts/optuna.db"
    study_name: str = "mtbert"
    sampler_seed: int = 7
    lr_min: float = 1e-5
    lr_max: float = 2e-4
    dropout_min: float = 0.0
    dropout_max: float = 0.3
    loss_scale_min: float = 0.1
    loss_scale_max: float = 1.0
    timeout_s: int = 0
    out_file: str = "artifacts/tune/best_params.yaml"
    report_every: int = 0
    report_dev_size: int = 256
    heartbeat_s: int = 30
    grace_s: int = 120


@dataclass(frozen=True)
class RegisterConfig:
    experiment: str = "mtbert"
    model_name: str = "mtbert"
    champion_alias: str = "champion"
    challenger_alias: str = "challenger"


@dataclass(frozen=True)
class Config:
    seed: int = 1234
    profile: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    mlm: MlmConfig = field(default_factory=MlmConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    register: RegisterConfig = field(default_factory=RegisterConfig)


# ---------------------------------------------------------------------------------------------
# Building dataclasses from plain data, with the key path in every error.


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check `value` against the annotation `tp`, converting where YAML is loose (int -> float)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, path)
            except ConfigError:
                continue
        raise ConfigError(f"{path}: expected {tp}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return _build(tp, value, path)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        (item_tp, _) = typing.get_args(tp)
        return tuple(_coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value))
    if tp is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:  # YAML 1.1 reads "5e-5" as a string; accept numeric strings for floats only.
            number = float(value)
        except ValueError:
            number = None
        if number is not None and not math.isfinite(number):  # nan passes every range check
            raise ConfigError(f"{path}: expected a finite number, got {value!r}")
        if number is not None:
            return number
    if tp in (int, str, bool) and isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"{where}{unknown[0]}: unknown key; valid keys here: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else key
        kwargs[key] = _coerce(value, hints[key], path)
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Parse `train.lr=2e-5` (leading dashes allowed) into ("train.lr", 2e-5) using YAML scalars."""
    body = text.lstrip("-")
    if "=" not in body:
        raise ConfigError(f"{text}: override must look like section.key=value")
    key, raw = body.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"{text}: override must look like section.key=value")
    try:
        return key, yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{key}: cannot parse value {raw!r} ({problem})") from None


# ---------------------------------------------------------------------------------------------
# Semantic validation: ranges and option names.


def _check_choice(path: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"{path}: {value!r} is not valid; choose one of: {', '.join(valid)}")


def _check_range(path: str, value: float, low: float, high: float, high_open: bool = True) -> None:
    ok = low <= value < high if high_open else low <= value <= high
    if not ok:
        bracket = ")" if high_open else "]"
        raise ConfigError(f"{path}: {value} is outside [{low}, {high}{bracket}")


def validate(cfg: Config) -> Config:
    """Raise ConfigError for the first bad value; return `cfg` unchanged otherwise."""
    m, t, d = cfg.model, cfg.train, cfg.data
    for path, value, valid in [
        ("model.pooling", m.pooling, POOLINGS),
        ("model.pair_encoding", m.pair_encoding, PAIR_ENCODINGS),
        ("model.sts_head", m.sts_head, STS_HEADS),
        ("model.para_head", m.para_head, PARA_HEADS),
        ("model.attn_impl", m.attn_impl, ATTN_IMPLS),
        ("train.sampler", t.sampler, SAMPLERS),
        ("train.optimizer", t.optimizer, OPTIMIZERS),
        ("train.schedule", t.schedule, SCHEDULES),
        ("train.sts_loss", t.sts_loss, STS_LOSSES),
        ("train.precision", t.precision, PRECISIONS),
        ("train.device", t.device, DEVICES),
        ("data.on_error", d.on_error, ON_ERROR),
        ("data.train_source", d.train_source, TRAIN_SOURCES),
    ]:
        _check_choice(path, value, valid)
    for i, task in enumerate(cfg.augment.eda_tasks):
        _check_choice(f"augment.eda_tasks[{i}]", task, TASKS)
    _check_range("model.head_dropout", m.head_dropout, 0.0, 1.0)
    if m.encoder_dropout is not None:
        _check_range("model.encoder_dropout", m.encoder_dropout, 0.0, 1.0)
    for path, value in [("train.lr", t.lr), ("mlm.lr", cfg.mlm.lr), ("tune.lr_min", cfg.tune.lr_min)]:
        if value <= 0:
            raise ConfigError(f"{path}: must be > 0, got {value}")
    for path, value in [("train.epochs", t.epochs), ("train.batch_size", t.batch_size),
                        ("eval.batch_size", cfg.eval.batch_size), ("model.max_length", m.max_length)]:
        if value < 1:
            raise ConfigError(f"{path}: must be >= 1, got {value}")
    if t.head_lr_scale <= 0:
        raise ConfigError(f"train.head_lr_scale: must be > 0, got {t.head_lr_scale}")
    _check_range("train.warmup_ratio", t.warmup_ratio, 0.0, 1.0)
    _check_range("mlm.mask_prob", cfg.mlm.mask_prob, 0.0, 1.0)
    _check_range("train.smart.bregman_beta", t.smart.bregman_beta, 0.0, 1.0, high_open=False)
    for task in TASKS:
        if t.loss_scale.get(task) < 0:
            raise ConfigError(f"train.loss_scale.{task}: must be >= 0")
    _validate_non_negative(cfg)
    _validate_combinations(cfg)
    return cfg


def _validate_non_negative(cfg: Config) -> None:
    """Counts and sizes where a negative value would fail mid-run (0 keeps its documented meaning)."""
    d, t = cfg.data, cfg.train
    checks = [(f"data.{name}.{task}", getattr(d, name).get(task))
              for name in ("train_size", "resample_to", "dev_size") for task in TASKS]
    checks += [("train.checkpoint_every", t.checkpoint_every), ("train.max_tokens", t.max_tokens),
               ("train.threads", t.threads), ("train.grad_clip", t.grad_clip),
               ("train.smart.bregman_weight", t.smart.bregman_weight),
               ("augment.eda_copies", cfg.augment.eda_copies)]
    for path, value in checks:
        if value is not None and value < 0:
            raise ConfigError(f"{path}: must be >= 0, got {value}")


def _validate_combinations(cfg: Config) -> None:
    m, t = cfg.model, cfg.train
    if m.sts_head == "cosine" and m.pair_encoding != "bi":
        raise ConfigError("model.sts_head: 'cosine' compares two sentence embeddings; it needs "
                          "model.pair_encoding: bi")
    if m.para_head == "cosine_features" and m.pair_encoding != "bi":
        raise ConfigError("model.para_head: 'cosine_features' needs model.pair_encoding: bi")
    if t.sts_loss == "cosine" and m.sts_head != "cosine":
        raise ConfigError("train.sts_loss: 'cosine' is the Sentence-BERT loss on a cosine head; "
                          "it needs model.sts_head: cosine")
    if t.pcgrad and t.sampler != "round_robin":
        raise ConfigError("train.pcgrad: gradient surgery needs all task gradients in one step; "
                          "use train.sampler: round_robin")


# ---------------------------------------------------------------------------------------------
# Loading.


def config_from_dict(raw: dict[str, Any], overrides: list[str] | None = None) -> Config:
    """Build a validated Config from a params mapping, its profile and dotted overrides."""
    tree = _deep_copy(raw)
    profiles = tree.pop("profiles", {}) or {}
    parsed = [parse_override(o) for o in overrides or []]
    profile = dict(parsed).get("profile", tree.get("profile"))
    if profile is not None:
        if profile not in profiles:
            valid = ", ".join(sorted(profiles)) or "(none defined)"
            raise ConfigError(f"profile: unknown profile {profile!r}; defined profiles: {valid}")
        for key, value in (profiles[profile] or {}).items():
            _set_dotted(tree, key, value)
    for key, value in parsed:
        _set_dotted(tree, key, value)
    return validate(_build(Config, tree))


def load_config(path: str | Path = "params.yaml", overrides: list[str] | None = None) -> Config:
    """Read params.yaml (or another file) into a validated Config."""
    path = Path(path)
    with path.open() as fh:
        raw = yaml.safe_load(fh) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    try:
        return config_from_dict(raw, overrides)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def with_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """Return a copy of `cfg` with dotted keys replaced (used by Optuna trials), re-validated."""
    tree = to_dict(cfg)
    for key, value in overrides.items():
        _set_dotted(tree, key, value)
    return validate(_build(Config, tree))


def to_dict(cfg: Any) -> dict[str, Any]:
    """The resolved config as plain data (tuples as lists), for logging and checkpoints."""
    def convert(value: Any) -> Any:
        if isinstance(value, tuple):
            return [convert(v) for v in value]
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        return value

    return convert(dataclasses.asdict(cfg))


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 1}} -> {'train.lr': 1}; the form MLflow params take."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            out.update(flatten(value, path))
        else:
            out[path] = value
    return out


def _deep_copy(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _deep_copy(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_deep_copy(v) for v in tree]
    return tree


def config_from_resolved(tree: dict[str, Any]) -> Config:
    """Rebuild a Config saved by `to_dict` (profile already applied), e.g. from a checkpoint."""
    return validate(_build(Config, _deep_copy(tree)))
