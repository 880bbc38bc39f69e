"""Typed configuration: `params.yaml` read into nested frozen dataclasses.

`params.yaml` is the single source of truth. Every section is a frozen dataclass; loading rejects
unknown keys and wrong types and validates ranges and option names, always naming the dotted key
path (`train.lr`). A profile (`profile: quick`) is a set of dotted overrides kept in the same file,
applied before command-line overrides (`train.lr=2e-5`). Code changes config with
`dataclasses.replace` (see `with_overrides`), never by mutation.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mtbert.errors import UserError
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
PRECISIONS = ("auto", "fp32", "bf16")  # auto: bf16 where the device has bf16 units (mtbert.precision)
QUANTIZATIONS = ("none", "int8")  # prediction on the CPU (mtbert.model.quantize)
DEVICES = ("auto", "cpu", "cuda")
TRAIN_SOURCES = ("raw", "augmented")
DISTILL_SCHEDULES = ("linear", "constant")


_KEY_PATH = re.compile(r"([A-Za-z_]\w*(?:\.\w+|\[\d+\])*): (.*)", re.DOTALL)


class ConfigError(UserError, ValueError):
    """A bad value in params.yaml or an override, naming the dotted key path as its `field`.

    `load_config` adds the file and the key's line: ``params.yaml:57: train.lr: must be > 0``.
    A message in the form ``"train.lr: must be > 0"`` (without keywords) is split into field
    and reason, so ``str(err)`` keeps that text.
    """

    def __init__(self, message: str, *, path: str | Path | None = None, line: int | None = None,
                 field: str | None = None, fix: str | None = None) -> None:
        parts = _KEY_PATH.fullmatch(message) if field is None and path is None else None
        if parts:
            field, message = parts.groups()
        super().__init__(message, path=path, line=line, field=field, fix=fix)


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


def _check_tasks(path: str, tasks: tuple[str, ...], allow_empty: bool) -> None:
    """Raise ConfigError unless `tasks` are distinct names from TASKS (and non-empty if required)."""
    if not tasks and not allow_empty:
        raise ConfigError(f"{path}: needs at least one task of: {', '.join(TASKS)}")
    for i, task in enumerate(tasks):
        _check_choice(f"{path}[{i}]", task, TASKS)
    if len(set(tasks)) != len(tasks):
        raise ConfigError(f"{path}: lists a task twice: {list(tasks)}")


@dataclass(frozen=True)
class DistillConfig:
    """Distillation from teacher outputs with teacher annealing (BAM!, Clark et al. 2019).

    A distilled task's loss is lam * distill + (1 - lam) * gold; lam falls linearly from 1 at the
    first step to 0 at the last ("linear") or stays at `lam` ("constant"). See mtbert.distill.
    """

    enabled: bool = False
    schedule: str = "linear"
    lam: float = 0.5  # the weight of the teacher term with schedule: constant
    temperature: float = 1.0
    tasks: tuple[str, ...] = TASKS  # tasks whose loss mixes in the teacher's outputs
    teachers: tuple[str, ...] = ()  # trained model directories; their outputs are averaged
    # Or the project trains them (the teachers stage): one single-task model per distilled task and
    # seed, in teachers_dir/TASK/seed-S, trained with this config otherwise; several seeds of a task
    # are averaged (an ensemble). Give `teachers` or `teacher_seeds`, not both.
    teacher_seeds: tuple[int, ...] = ()
    teachers_dir: str = "artifacts/teachers"
    outputs_dir: str = "artifacts/teacher"  # the teach stage's cached outputs on the training rows
    # Silver pairs (Augmented SBERT): this many new para / sts pairs of training sentences that are
    # nearest neighbours, labelled by the teachers (mtbert.silver); none for sst (not a pair task)
    silver: PerTask = field(default_factory=PerTask)

    def __post_init__(self) -> None:
        if self.enabled and not (self.teachers or self.teacher_seeds):
            raise ConfigError("train.distill.teachers: distillation needs teacher model directories "
                              "(train.distill.teachers) or seeds to train them with "
                              "(train.distill.teacher_seeds)")
        if self.teachers and self.teacher_seeds:
            raise ConfigError("train.distill.teacher_seeds: give the teachers' directories "
                              "(train.distill.teachers) or seeds to train them with, not both")
        if len(set(self.teacher_seeds)) != len(self.teacher_seeds):
            raise ConfigError(f"train.distill.teacher_seeds: lists a seed twice: {list(self.teacher_seeds)}")
        _check_choice("train.distill.schedule", self.schedule, DISTILL_SCHEDULES)
        _check_range("train.distill.lam", self.lam, 0.0, 1.0, high_open=False)
        if not self.temperature > 0:
            raise ConfigError(f"train.distill.temperature: must be > 0, got {self.temperature}")
        _check_tasks("train.distill.tasks", self.tasks, allow_empty=True)
        if self.silver.sst:
            raise ConfigError("train.distill.silver.sst: silver pairs are for the pair tasks para "
                              "and sts; give sst null")
        for task in ("para", "sts"):
            count = self.silver.get(task)
            if count is not None and count < 0:
                raise ConfigError(f"train.distill.silver.{task}: must be >= 0 (null or 0: none), "
                                  f"got {count}")
            if count and task not in self.tasks:
                raise ConfigError(f"train.distill.silver.{task}: silver pairs need {task} in "
                                  f"train.distill.tasks (the teachers label them)")


@dataclass(frozen=True)
class EmaConfig:
    """An exponential moving average of the weights (mtbert.averaging), saved instead of the
    last weights when enabled."""

    enabled: bool = False
    decay: float = 0.999
    start_step: int = 0  # the average starts from the weights after this step (after step 1 if 0)

    def __post_init__(self) -> None:
        _check_range("train.ema.decay", self.decay, 0.0, 1.0)
        if self.start_step < 0:
            raise ConfigError(f"train.ema.start_step: must be >= 0, got {self.start_step}")


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
    precision: str = "fp32"  # params.yaml sets auto (bf16 where the hardware has bf16 units)
    threads: int = 0
    release_memory_mb: int = 512  # return freed memory to the OS after this much growth (0: never; mtbert.allocator)
    recompute_tokens: int = 0  # batches with more (B x T) positions recompute activations in backward (0: never)
    checkpoint_every: int = 200
    out_dir: str = "artifacts/model"
    export_hf: bool = True  # also write the encoder in the Hugging Face layout to out_dir/encoder
    init_from: str | None = None
    tasks: tuple[str, ...] = TASKS  # the tasks trained (any non-empty subset)
    layer_decay: float = 1.0  # layer-wise lr decay d: layer i of L at lr x d**(L - i); 1 is off
    distill: DistillConfig = field(default_factory=DistillConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    eval_every: int = 0  # steps between dev scores while training; 0: at each epoch end only
    eval_rows: int = 256  # first dev rows per task scored while training; 0: no dev curves

    def __post_init__(self) -> None:
        _check_tasks("train.tasks", self.tasks, allow_empty=False)
        _check_range("train.layer_decay", self.layer_decay, 0.0, 1.0, high_open=False)
        if self.layer_decay == 0:
            raise ConfigError("train.layer_decay: must be > 0 (1 turns it off), got 0")


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
    quantize: str = "none"  # none | int8: dynamic int8 linear layers for evaluate, predict, serve, the API


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
    study_name: str | None = None  # None: mtbert-<profile>-<measurement key digest>
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
class BehaviourMinPass:
    """Pass rate each behavioural check needs (`mtbert.behaviour.CHECKS`)."""

    invariance: float = 0.8
    direction: float = 0.8
    symmetry: float = 1.0


@dataclass(frozen=True)
class BehaviourConfig:
    enabled: bool = True
    min_pass: BehaviourMinPass = field(default_factory=BehaviourMinPass)


@dataclass(frozen=True)
class RegisterConfig:
    experiment: str = "mtbert"
    model_name: str = "mtbert"
    champion_alias: str = "champion"
    challenger_alias: str = "challenger"
    behaviour: BehaviourConfig = field(default_factory=BehaviourConfig)


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
        except (ValueError, OverflowError):  # OverflowError: an int beyond any float
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
    unknown = sorted((key for key in data if key not in names), key=str)  # YAML keys may be numbers
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
    if not isinstance(dotted, str):
        raise ConfigError(f"{dotted!r}: keys must be dotted names like train.lr")
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
        return key, _load_yaml(raw, None)[0] if raw.strip() else None
    except ConfigError as err:
        shown = raw if len(raw) <= 60 else raw[:60] + "..."
        raise ConfigError(f"{key}: cannot parse value {shown!r} ({err.reason})") from None


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
        ("eval.quantize", cfg.eval.quantize, QUANTIZATIONS),
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
    _validate_sizes(cfg)
    if t.head_lr_scale <= 0:
        raise ConfigError(f"train.head_lr_scale: must be > 0, got {t.head_lr_scale}")
    _check_range("train.warmup_ratio", t.warmup_ratio, 0.0, 1.0)
    _check_range("mlm.mask_prob", cfg.mlm.mask_prob, 0.0, 1.0)
    for name, value in dataclasses.asdict(cfg.register.behaviour.min_pass).items():
        _check_range(f"register.behaviour.min_pass.{name}", value, 0.0, 1.0, high_open=False)
    _check_range("train.smart.bregman_beta", t.smart.bregman_beta, 0.0, 1.0, high_open=False)
    for task in TASKS:
        if t.loss_scale.get(task) < 0:
            raise ConfigError(f"train.loss_scale.{task}: must be >= 0")
    _validate_non_negative(cfg)
    _validate_combinations(cfg)
    return cfg


def _validate_sizes(cfg: Config) -> None:
    """Sizes and counts that must be >= 1 where given: 0 rows, batches or epochs is never meant."""
    d, t, m, tune = cfg.data, cfg.train, cfg.mlm, cfg.tune
    for name in ("train_size", "resample_to", "dev_size"):
        for task in TASKS:
            value = getattr(d, name).get(task)
            if value is not None and value < 1:
                raise ConfigError(f"data.{name}.{task}: must be >= 1, got {value}",
                                  fix="use null for all rows")
    checks = [("train.epochs", t.epochs), ("train.batch_size", t.batch_size),
              ("eval.batch_size", cfg.eval.batch_size), ("model.max_length", cfg.model.max_length),
              ("mlm.epochs", m.epochs), ("mlm.batch_size", m.batch_size),
              ("mlm.max_sentences", m.max_sentences), ("tune.n_trials", tune.n_trials),
              ("tune.report_dev_size", tune.report_dev_size), ("tune.heartbeat_s", tune.heartbeat_s),
              ("tune.grace_s", tune.grace_s)]
    for path, value in checks:
        if value is not None and value < 1:
            raise ConfigError(f"{path}: must be >= 1, got {value}")


def _validate_non_negative(cfg: Config) -> None:
    """Counts where a negative value would fail mid-run (0 keeps its documented meaning)."""
    t = cfg.train
    checks = [("train.checkpoint_every", t.checkpoint_every), ("train.max_tokens", t.max_tokens),
              ("train.eval_every", t.eval_every), ("train.eval_rows", t.eval_rows),
              ("train.threads", t.threads), ("train.release_memory_mb", t.release_memory_mb),
              ("train.recompute_tokens", t.recompute_tokens),
              ("train.grad_clip", t.grad_clip),
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
    if not isinstance(profiles, dict):
        raise ConfigError(f"profiles: expected a mapping of profile names, got {profiles!r}")
    parsed = [parse_override(o) for o in overrides or []]
    profile = dict(parsed).get("profile", tree.get("profile"))
    if profile is not None:
        if not isinstance(profile, str):
            raise ConfigError(f"profile: expected str or null, got {profile!r}")
        if profile not in profiles:
            valid = ", ".join(sorted(map(str, profiles))) or "(none defined)"
            raise ConfigError(f"profile: unknown profile {profile!r}; defined profiles: {valid}")
        entries = profiles[profile] or {}
        if not isinstance(entries, dict):
            raise ConfigError(f"profiles.{profile}: expected a mapping of dotted keys like "
                              f"'train.epochs: 1', got {entries!r}")
        for key, value in entries.items():
            _set_dotted(tree, key, value)
    for key, value in parsed:
        _set_dotted(tree, key, value)
    return validate(_build(Config, tree))


def load_config(path: str | Path = "params.yaml", overrides: list[str] | None = None) -> Config:
    """Read params.yaml (or another file) into a validated Config.

    Raises:
        ConfigError: one line naming the file, the line of the bad key where it is in the file
            (or the override that set it) and the dotted key: a missing, unreadable, empty or
            non-mapping file, invalid YAML, an alias bomb, unknown keys, wrong types, bad values.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError("parameters file does not exist", path=path,
                          fix="run in the project folder or pass --params")
    raw, lines = read_yaml_file(path)
    if raw is None or raw == {}:
        raise ConfigError("the parameters file is empty; it must hold the sections (data, model, "
                          "train, ...)", path=path, fix="restore params.yaml from the repository")
    if not isinstance(raw, dict):
        raise ConfigError(f"top level must be a mapping of sections, got a {type(raw).__name__}",
                          path=path, line=1)
    texts = list(overrides or [])
    for text in texts:
        try:
            parse_override(text)
        except ConfigError as err:
            raise ConfigError(err.reason, path=path, field=err.field, fix=err.fix) from None
    try:
        return config_from_dict(raw, texts)
    except ConfigError as err:
        raise _located(err, path, lines, raw, texts) from None


def load_overrides_file(path: str | Path) -> list[str]:
    """Dotted overrides from a YAML mapping (``train.lr: 3.0e-05``) as ``key=value`` strings.

    An empty file gives no overrides. The strings go to `load_config` after any others.

    Raises:
        ConfigError: naming the file: missing, invalid YAML, an alias bomb, or not a mapping of
            dotted keys.
    """
    data, lines = read_yaml_file(path)
    if data is None:
        return []
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping like 'train.lr: 3.0e-05'", path=path, line=1)
    for key, value in data.items():
        if not isinstance(key, str):
            raise ConfigError(f"{key!r} is not a dotted key like train.lr", path=path,
                              line=lines.get(str(key)))
        try:  # names and types here, with this file's line; ranges once params.yaml is merged
            _coerce(value, _field_type(key), key)
        except ConfigError as err:
            raise ConfigError(err.reason, path=path, line=lines.get(key), field=err.field,
                              fix=err.fix) from None
    return [f"{key}={json.dumps(value, default=str)}" for key, value in data.items()]


def _field_type(dotted: str) -> Any:
    """The annotation of the Config field that the dotted key names (`train.smart.weight`).

    Raises:
        ConfigError: no such key, or a key inside a value that is not a section.
    """
    tp: Any = Config
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        where = ".".join(parts[:i])
        if not dataclasses.is_dataclass(tp):
            raise ConfigError(f"{dotted}: {where} is not a section")
        hints = typing.get_type_hints(tp)
        if part not in hints:
            raise ConfigError(f"{dotted}: unknown key; valid keys here: {', '.join(sorted(hints))}")
        tp = hints[part]
    return tp


def _located(err: ConfigError, path: Path, lines: dict[str, int], raw: dict[str, Any],
             overrides: list[str]) -> ConfigError:
    """`err` with the params file, and the line of its key or the override that set it."""
    keys = _key_chain(err.field) if err.field else []
    setters = [(text, parse_override(text)[0]) for text in overrides]
    for text, key in reversed(setters):  # the last override applied wins
        if key in keys:
            return ConfigError(f"{err.reason} (set by override {text!r})", path=path,
                               field=err.field, fix=err.fix)
    profile = dict(parse_override(t) for t in overrides).get("profile", raw.get("profile"))
    entries = (raw.get("profiles") or {}).get(profile) if isinstance(profile, str) else None
    if isinstance(entries, dict) and any(key in entries for key in keys):
        keys = [f"profiles.{profile}.{key}" for key in keys]
    line = next((lines[key] for key in keys if key in lines), None)
    return ConfigError(err.reason, path=path, line=line, field=err.field, fix=err.fix)


def _key_chain(field: str) -> list[str]:
    """`augment.eda_tasks[1]` -> [`augment.eda_tasks[1]`, `augment.eda_tasks`, `augment`]."""
    chain = [field]
    while (parent := re.sub(r"(\.[^.\[]+|\[\d+\])$", "", chain[-1])) != chain[-1]:
        chain.append(parent)
    return chain


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


# ---------------------------------------------------------------------------------------------
# Safe YAML: a bounded number of nodes, errors naming the file and line.

MAX_YAML_NODES = 100_000  # nodes with every alias expanded; params.yaml has about 500


def read_yaml_file(path: str | Path) -> tuple[Any, dict[str, int]]:
    """Parse a YAML file safely: its data and the 1-based line of every dotted key path.

    Keys inside lists get an index (`augment.eda_tasks[0]`). Aliases are allowed, but a document
    that would expand to more than MAX_YAML_NODES nodes ("billion laughs") is refused before it
    is built, in time linear in the file.

    Raises:
        ConfigError: naming the file (and line): missing, unreadable, not UTF-8, invalid YAML,
            too many expanded nodes, recursive aliases or duplicate keys.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file does not exist", path=path) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read the file ({err})", path=path) from None
    return _load_yaml(text, path)


def _load_yaml(text: str, path: str | Path | None) -> tuple[Any, dict[str, int]]:
    """The data of one YAML document and its key lines; ConfigError naming `path` otherwise."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        _expanded_size(node, {}, set(), path)
        lines = _key_lines(node, "", path)  # before construction, which rewrites merge keys
        return loader.construct_document(node), lines
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        problem = err.problem or err.context or "invalid YAML"
        raise ConfigError(f"invalid YAML: {problem}", path=path,
                          line=mark.line + 1 if mark else None) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"invalid YAML: {err}", path=path) from None
    except RecursionError:
        raise ConfigError("invalid YAML: nested too deeply", path=path) from None
    finally:
        loader.dispose()


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_nodes: set[int],
                   path: str | Path | None) -> int:
    """How many nodes `node` becomes with aliases expanded (each node is visited once)."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_nodes:
        raise ConfigError("an alias refers to a node that contains it (recursive YAML)",
                          path=path, line=node.start_mark.line + 1)
    open_nodes.add(id(node))
    children: list[yaml.Node] = []
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [child for pair in node.value for child in pair]
    size = 1 + sum(_expanded_size(child, sizes, open_nodes, path) for child in children)
    if size > MAX_YAML_NODES:
        raise ConfigError(f"more than {MAX_YAML_NODES} YAML nodes once aliases are expanded "
                          "(an alias bomb?); refused", path=path, line=node.start_mark.line + 1)
    open_nodes.discard(id(node))
    sizes[id(node)] = size
    return size


def _key_lines(node: yaml.Node, prefix: str, path: str | Path | None) -> dict[str, int]:
    """1-based line of every dotted key path under `node`; refuses a key given twice."""
    lines: dict[str, int] = {}
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[f"{prefix}[{i}]"] = item.start_mark.line + 1
            lines.update(_key_lines(item, f"{prefix}[{i}]", path))
    elif isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}  # merged keys (`<<: *base`) may be given again: not checked
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue
            dotted = f"{prefix}.{key.value}" if prefix else key.value
            if key.value in seen:
                raise ConfigError(f"duplicate key (first on line {seen[key.value]})", path=path,
                                  line=key.start_mark.line + 1, field=dotted)
            seen[key.value] = lines[dotted] = key.start_mark.line + 1
            lines.update(_key_lines(value, dotted, path))
    return lines
