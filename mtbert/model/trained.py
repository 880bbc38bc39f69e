"""Loading a trained model directory (`model.safetensors`, `mtbert.json`, tokenizer files).

The directory is what the train stage writes (`mtbert.checkpoint.save_model`); everything needed to
rebuild the model is in it, so prediction, serving and the pyfunc model need no params.yaml.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtbert.checkpoint import META_FILE, MODEL_FILE, CheckpointError, read_model_files
from mtbert.config import Config, config_from_resolved, flatten, to_dict, with_overrides
from mtbert.errors import UserError, one_line
from mtbert.model.bert import BertConfig
from mtbert.model.load_hf import load_tokenizer
from mtbert.model.multitask import MultitaskBert, multitask_from_state
from mtbert.model.quantize import apply_quantization


def load_trained(model_dir: str | Path, device: str = "cpu",
                 quantize: str = "none") -> tuple[MultitaskBert, Any, Config]:
    """The trained model (in eval mode, on `device`), its tokenizer and the config it was trained with.

    `quantize`: "int8" gives an inference-only copy with dynamic int8 linear layers (CPU only;
    `mtbert.model.quantize`), "none" the weights as saved.
    """
    if quantize != "none" and str(device) != "cpu":
        raise UserError(f"{quantize} runs on the CPU only, and the device is {device}",
                        field="eval.quantize", fix="set eval.quantize=none or train.device=cpu")
    state, meta = read_model_files(model_dir)
    meta_path = Path(model_dir) / META_FILE
    try:
        cfg = config_from_resolved(meta["config"])
        model = multitask_from_state(BertConfig(**meta["bert_config"]), cfg.model, state, cfg.train.tasks)
    except UserError as err:
        raise err.locate(meta_path) from None
    except (KeyError, TypeError, RuntimeError) as err:  # written by another version, or edited
        reason = one_line(f"does not match the weights ({type(err).__name__}: {str(err)[:300]})")
        raise CheckpointError(reason, path=Path(model_dir) / MODEL_FILE,
                              fix="retrain the model with this version of mtbert") from None
    return apply_quantization(model.to(device).eval(), quantize), load_tokenizer(str(model_dir)), cfg


# What determines a training run's result: these config keys, and the rows it trains on. Other
# keys (threads, releasing freed memory, recomputing activations, device, checkpoint interval,
# output folder, in-training scoring, and the eval/register/tune/data-path sections) are runtime
# settings: a checkpoint written under other values of them is resumed (the train stage's
# fingerprint), and a command may change them.
RESULT_KEYS = ("seed", "model.", "train.", "data.train_source", "data.train_size.", "data.resample_to.")
RUNTIME_KEYS = frozenset({"train.threads", "train.release_memory_mb", "train.recompute_tokens",
                          "train.device", "train.checkpoint_every", "train.out_dir", "train.eval_every",
                          "train.eval_rows", "train.export_hf"})
# What a trained model remembers of how it was trained and measured: its training keys and the
# measuring keys of its profile. evaluate and predict take these from the model's saved config,
# not from params.yaml; everything else (threads, device, paths, batch sizes) is the current run's.
TRAINED_KEYS = ("profile", *RESULT_KEYS, "data.dev_size.", "eval.predict_test")
# The model's architecture: the weights are built for it, so no override can change it.
FIXED_KEYS = ("model.", "train.tasks")
CHANGEABLE_KEYS = frozenset({"model.max_length", "model.attn_impl", "model.unpad"})


@dataclass(frozen=True)
class TrainedSettings:
    """The config a command runs with, and how it relates to the trained model's.

    `changed`: (key, value used, the model's value) for each override that contradicts the model.
    `profile_override`: the profile named on the command line that replaced the model's profile.
    """

    cfg: Config
    trained: Config
    changed: tuple[tuple[str, Any, Any], ...] = ()
    profile_override: str | None = None


def is_trained_key(key: str) -> bool:
    """Whether the dotted `key` describes what the model was trained and measured with."""
    return key.startswith(TRAINED_KEYS) and key not in RUNTIME_KEYS


def _named(key: str, explicit: Collection[str]) -> bool:
    return any(key == e or key.startswith(e + ".") for e in explicit)


def trained_settings(current: Config, trained: Config, explicit: Collection[str]) -> TrainedSettings:
    """`current` with the trained model's training and measuring keys (`TRAINED_KEYS`), except
    those set on the command line (`explicit`, dotted keys; a section covers its keys).

    An explicit `profile` that differs from the model's hands every such key to `current` (the
    user asked for that profile's settings), except the architecture (`FIXED_KEYS`).

    Raises:
        UserError: an explicit override of the architecture that differs from the model's.
    """
    now, then = flatten(to_dict(current)), flatten(to_dict(trained))
    profile = current.profile if "profile" in explicit and current.profile != trained.profile else None
    keep: dict[str, Any] = {}
    changed: list[tuple[str, Any, Any]] = []
    for key, value in then.items():
        if not is_trained_key(key) or now.get(key) == value:
            continue
        fixed = key.startswith(FIXED_KEYS) and key not in CHANGEABLE_KEYS
        if _named(key, explicit) and fixed:
            raise UserError(f"set to {_shown(now.get(key))} by an override, but the trained model "
                            f"was built with {_shown(value)}: its architecture cannot change after "
                            "training", field=key, fix="drop the override, or retrain with it")
        if _named(key, explicit) or (profile is not None and not fixed):
            changed.append((key, now.get(key), value))
        else:
            keep[key] = value
    return TrainedSettings(with_overrides(current, keep), trained, tuple(changed), profile)


def settings_for_model(current: Config, model_dir: str | Path,
                       explicit: Collection[str]) -> TrainedSettings:
    """`trained_settings` for the model in `model_dir`; errors name its `mtbert.json`."""
    try:
        return trained_settings(current, read_trained_config(model_dir), explicit)
    except UserError as err:
        raise err.locate(Path(model_dir) / META_FILE) from None


def describe(settings: TrainedSettings, command: str, dev_sizes: bool) -> str:
    """The one line saying which settings `command` runs with, e.g. ``evaluate: using the trained
    model's settings (profile tiny; dev sizes sst 64, para 64, sts 64; max_length 64)``."""
    cfg = settings.cfg
    parts = [f"profile {cfg.profile or '(none)'}"]
    if dev_sizes:
        sizes = ", ".join(f"{t} {cfg.data.dev_size.get(t) or 'all'}" for t in cfg.train.tasks)
        parts.append(f"dev sizes {sizes}")
    parts.append(f"max_length {cfg.model.max_length}")
    line = f"{command}: using the trained model's settings ({'; '.join(parts)})"
    if settings.profile_override:
        line += (f"; profile={settings.profile_override} differs from the trained model's "
                 f"{settings.trained.profile}: that profile's settings are used")
    shown = [f"{k}={_shown(v)} differs from the trained model's {_shown(old)}"
             for k, v, old in settings.changed[:4]]
    if len(settings.changed) > 4:
        shown.append(f"+{len(settings.changed) - 4} more")
    return "; ".join([line, *shown])


def _shown(value: Any) -> str:
    return "null" if value is None else str(value)


def read_trained_config(model_dir: str | Path) -> Config:
    """The config a trained model directory was trained with, without loading its weights."""
    _, meta = read_model_files(model_dir)  # the same checks (and messages) as load_trained
    try:
        return config_from_resolved(meta["config"])
    except UserError as err:
        raise err.locate(Path(model_dir) / META_FILE) from None
    except (KeyError, TypeError) as err:
        raise CheckpointError(f"no readable config ({type(err).__name__}: {one_line(str(err))[:200]})",
                              path=Path(model_dir) / META_FILE,
                              fix="retrain the model with this version of mtbert") from None
