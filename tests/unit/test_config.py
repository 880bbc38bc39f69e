"""params.yaml into typed config: bad values fail before any work, naming the dotted key path."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from mtbert.config import (
    SAMPLERS,
    Config,
    ConfigError,
    config_from_dict,
    config_from_resolved,
    flatten,
    load_config,
    parse_override,
    to_dict,
    with_overrides,
)
from tests.conftest import REPO_ROOT, copy_project

PARAMS = REPO_ROOT / "params.yaml"


@pytest.fixture(scope="module")
def raw() -> dict:
    """The repository's params.yaml as plain data (profiles included)."""
    return yaml.safe_load(PARAMS.read_text())


def _error(raw: dict, overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw, overrides)
    return str(info.value)


# ---------------------------------------------------------------------------------------------
# The real file loads, and profiles resolve in the documented order.


def test_repository_params_load_with_the_quick_profile() -> None:
    cfg = load_config(PARAMS)
    assert cfg.profile == "quick"
    assert cfg.train.epochs == 1 and cfg.train.checkpoint_every == 100  # from profiles.quick
    assert cfg.data.train_size.get("sts") == 2000
    assert cfg.train.lr == pytest.approx(5e-5) and isinstance(cfg.train.lr, float)
    assert cfg.augment.eda_tasks == ("sst",)


def test_profile_switch_on_the_command_line(raw: dict) -> None:
    cfg = config_from_dict(raw, ["profile=tiny"])
    assert cfg.profile == "tiny"
    assert (cfg.train.batch_size, cfg.train.checkpoint_every, cfg.model.max_length) == (8, 4, 64)
    assert cfg.data.train_size.get("para") == 48
    assert cfg.eval.predict_test is False


def test_command_line_overrides_win_over_the_profile(raw: dict) -> None:
    # Both orders on the command line: the profile is applied first regardless.
    for overrides in (["profile=tiny", "train.batch_size=13"], ["train.batch_size=13", "profile=tiny"]):
        cfg = config_from_dict(raw, overrides)
        assert cfg.train.batch_size == 13, overrides  # command line beats profiles.tiny (8)
        assert cfg.train.checkpoint_every == 4  # the rest of the profile still applies


def test_profile_full_keeps_the_base_values(raw: dict) -> None:
    cfg = config_from_dict(raw, ["profile=full"])
    assert cfg.train.epochs == raw["train"]["epochs"] == 3
    assert cfg.data.train_size.get("sst") is None


def test_profile_null_applies_no_profile(raw: dict) -> None:
    cfg = config_from_dict(raw, ["profile=null"])
    assert cfg.profile is None and cfg.train.epochs == 3


def test_with_overrides_replaces_and_revalidates(raw: dict) -> None:
    cfg = config_from_dict(raw, ["profile=tiny"])
    new = with_overrides(cfg, {"train.lr": 3e-5, "model.head_dropout": 0.25,
                               "data.train_size": {"sst": 7, "para": 9, "sts": 11}})
    assert (new.train.lr, new.model.head_dropout) == (3e-5, 0.25)
    assert (new.data.train_size.sst, new.data.train_size.sts) == (7, 11)
    assert cfg.train.lr == pytest.approx(5e-5)  # the original is untouched (frozen dataclasses)
    changed = {k for k, v in flatten(to_dict(new)).items() if flatten(to_dict(cfg))[k] != v}
    assert changed == {"train.lr", "model.head_dropout", "data.train_size.sst",
                       "data.train_size.para", "data.train_size.sts"}
    with pytest.raises(ConfigError, match=r"^train\.lr: must be > 0"):
        with_overrides(cfg, {"train.lr": 0.0})
    with pytest.raises(ConfigError, match=r"^train\.lrr: unknown key"):
        with_overrides(cfg, {"train.lrr": 1e-4})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.lr = 1.0  # type: ignore[misc]


def test_resolved_config_round_trips(raw: dict) -> None:
    cfg = config_from_dict(raw, ["profile=tiny", "model.pair_encoding=bi", "model.sts_head=cosine"])
    assert config_from_resolved(to_dict(cfg)) == cfg


@settings(max_examples=40, deadline=None)
@given(lr=st.floats(min_value=1e-9, max_value=1.0), dropout=st.floats(min_value=0.0, max_value=0.999))
def test_valid_values_survive_override_text(lr: float, dropout: float) -> None:
    raw = yaml.safe_load(PARAMS.read_text())
    cfg = config_from_dict(raw, [f"train.lr={lr!r}", f"--model.head_dropout={dropout!r}"])
    assert cfg.train.lr == lr and cfg.model.head_dropout == dropout


# ---------------------------------------------------------------------------------------------
# Bad values: ConfigError whose message starts with the dotted key path.


@pytest.mark.parametrize(("overrides", "pattern"), [
    (["trian.lr=1e-4"], r"^trian: unknown key; valid keys here: .*train"),
    (["train.lrr=1e-4"], r"^train\.lrr: unknown key; valid keys here: .*\blr\b"),
    (["train.smart.wieght=2"], r"^train\.smart\.wieght: unknown key; valid keys here: .*weight"),
    (["data.train_size.qqp=5"], r"^data\.train_size\.qqp: unknown key; valid keys here: para, sst, sts"),
    (["train.epochs=three"], r"^train\.epochs: expected int, got 'three'"),
    (["train.epochs=2.5"], r"^train\.epochs: expected int, got 2\.5"),
    (["train.bucket=1"], r"^train\.bucket: expected bool, got 1"),
    (["train.lr=fast"], r"^train\.lr: expected float, got 'fast'"),
    (["train.lr=true"], r"^train\.lr: expected float, got True"),
    (["train.lr=nan"], r"^train\.lr: expected a finite number"),
    (["train.lr=.inf"], r"^train\.lr: expected a finite number"),
    (["model.pooling=[cls]"], r"^model\.pooling: expected str"),
    (["data.train_size.sst=many"], r"^data\.train_size\.sst: expected int \| None"),
    (["train.smart=on"], r"^train\.smart: expected a mapping"),
    (["train.lr.max=1"], r"^train\.lr\.max: lr is not a section"),
    (["augment.eda_tasks=sst"], r"^augment\.eda_tasks: expected a list"),
    (["train.lr=0"], r"^train\.lr: must be > 0, got 0\.0"),
    (["train.lr=-2e-5"], r"^train\.lr: must be > 0, got -2e-05"),
    (["model.head_dropout=1.0"], r"^model\.head_dropout: 1\.0 is outside \[0\.0, 1\.0\)"),
    (["train.smart.bregman_beta=1.5"], r"^train\.smart\.bregman_beta: 1\.5 is outside \[0\.0, 1\.0\]"),
    (["train.smart.bregman_weight=-1"], r"^train\.smart\.bregman_weight: must be >= 0, got -1\.0"),
    (["model.head_dropout=-0.1"], r"^model\.head_dropout: -0\.1 is outside \[0\.0, 1\.0\)"),
    (["model.encoder_dropout=1.5"], r"^model\.encoder_dropout: 1\.5 is outside"),
    (["train.sampler=random"], r"^train\.sampler: 'random' is not valid; choose one of: "
                               + ", ".join(SAMPLERS) + "$"),
    (["model.pooling=avg"], r"^model\.pooling: 'avg' is not valid; choose one of: cls, mean"),
    (["augment.eda_tasks=[sst, qqp]"], r"^augment\.eda_tasks\[1\]: 'qqp' is not valid; choose one of: "
                                       r"sst, para, sts"),
    (["train.epochs=0"], r"^train\.epochs: must be >= 1, got 0"),
    (["train.warmup_ratio=1"], r"^train\.warmup_ratio: 1\.0 is outside \[0\.0, 1\.0\)"),
    (["train.loss_scale.sts=-1"], r"^train\.loss_scale\.sts: must be >= 0"),
    (["data.train_size.para=-5"], r"^data\.train_size\.para: must be >= 1, got -5"),
    (["data.dev_size.sts=0"], r"^data\.dev_size\.sts: must be >= 1, got 0 \(use null for all rows\)"),
    (["mlm.max_sentences=0"], r"^mlm\.max_sentences: must be >= 1, got 0"),
    (["train.checkpoint_every=-1"], r"^train\.checkpoint_every: must be >= 0, got -1"),
    (["profile=huge"], r"^profile: unknown profile 'huge'; defined profiles: .*full, quick, tiny"),
    (["model.pair_encoding=cross"], r"^model\.sts_head: 'cosine' .* needs model\.pair_encoding: bi"),
    (["model.pair_encoding=cross", "model.sts_head=regression"],
     r"^model\.para_head: .*needs model\.pair_encoding: bi"),
    (["train.pcgrad=true", "train.sampler=annealed"], r"^train\.pcgrad: .*train\.sampler: round_robin"),
    (["train.sts_loss=cosine", "model.sts_head=regression"],
     r"^train\.sts_loss: .*needs model\.sts_head: cosine"),
])
def test_bad_values_name_the_key_path(raw: dict, overrides: list[str], pattern: str) -> None:
    assert re.search(pattern, _error(raw, overrides)), _error(raw, overrides)


def test_combinations_that_are_valid_pass(raw: dict) -> None:
    cfg = config_from_dict(raw, ["train.pcgrad=true", "train.sampler=round_robin",
                                 "model.pair_encoding=bi", "model.sts_head=cosine",
                                 "train.sts_loss=cosine", "model.head_dropout=0"])
    assert cfg.train.pcgrad and cfg.model.sts_head == "cosine" and cfg.model.head_dropout == 0.0


def test_unknown_keys_inside_the_file_and_its_profiles_are_errors(raw: dict) -> None:
    bad = yaml.safe_load(PARAMS.read_text())
    bad["model"]["hidden_dropout"] = 0.1
    assert _error(bad, []).startswith("model.hidden_dropout: unknown key")
    bad = yaml.safe_load(PARAMS.read_text())
    bad["profiles"]["tiny"]["train.batchsize"] = 4
    assert _error(bad, ["profile=tiny"]).startswith("train.batchsize: unknown key")


@pytest.mark.parametrize(("text", "pattern"), [
    ("train.lr", r"^train\.lr: override must look like section\.key=value"),
    ("=5", r"^=5: override must look like"),
    ("train..lr=1", r"^train\.\.lr=1: override must look like"),
    ("train.lr=[1", r"^train\.lr: cannot parse value '\[1'"),
    ("augment.eda_tasks={sst", r"^augment\.eda_tasks: cannot parse value"),
])
def test_bad_override_syntax(text: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        parse_override(text)


def test_override_parsing() -> None:
    assert parse_override("--train.lr=2e-5") == ("train.lr", "2e-5")  # YAML 1.1; coerced on build
    assert parse_override("train.lr=2.0e-5") == ("train.lr", 2e-5)
    assert parse_override("model.encoder_dropout=") == ("model.encoder_dropout", None)
    assert parse_override("augment.eda_tasks=[sst, sts]") == ("augment.eda_tasks", ["sst", "sts"])
    assert parse_override("model.checkpoint=a=b") == ("model.checkpoint", "a=b")


def test_load_config_prefixes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(PARAMS.read_text().replace("head_dropout: 0.1", "head_dropout: 1.2"))
    with pytest.raises(ConfigError, match=r"params\.yaml:\d+: model\.head_dropout: 1\.2 is outside"):
        load_config(path)
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(path)


def test_defaults_are_valid() -> None:
    assert config_from_dict({}) == Config()


# ---------------------------------------------------------------------------------------------
# Through the CLI: exit code 2 and the message, before any training.


@pytest.mark.parametrize(("override", "message"), [
    ("train.sampler=random", "train.sampler: 'random' is not valid; choose one of"),
    ("model.pair_encoding=cross", "model.sts_head: 'cosine' compares two sentence embeddings"),  # + line
    ("train.lr=[", "train.lr: cannot parse value"),
    ("profile=huge", "profile: unknown profile 'huge'"),
])
def test_cli_refuses_bad_config_before_training(prepared_project: Path, tmp_path: Path,
                                                override: str, message: str) -> None:
    root = copy_project(prepared_project, tmp_path / "project")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "mtbert.cli", "train", override], cwd=root,
                          capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr
    assert re.search(rf"mtbert train: params\.yaml(:\d+)?: {re.escape(message)}", proc.stderr)
    assert "Traceback" not in proc.stderr
    # Nothing was started: no model, no checkpoint, no tracking store, no progress.
    assert not (root / "artifacts" / "model").exists()
    assert not (root / "artifacts" / "model-checkpoint").exists()
    assert not (root / "mlflow.db").exists()
    assert "train:" not in proc.stderr.replace("mtbert train: ", "")  # no progress bar
    assert elapsed < 30, elapsed  # about 1 s: only yaml is imported before the config is checked
