"""Bad params files and overrides: one ConfigError line naming the file, the line and the key."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtbert.config import (
    MAX_YAML_NODES,
    Config,
    ConfigError,
    load_config,
    load_overrides_file,
    parse_override,
)
from mtbert.errors import UserError
from tests.conftest import REPO_ROOT

PARAMS = REPO_ROOT / "params.yaml"

# Ten levels of nine aliases each: 9**10 (3.5e9) strings once expanded.
ALIAS_BOMB = "\n".join(
    [f'l0: &l0 [{", ".join(["lol"] * 9)}]']
    + [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 10)]
) + "\n"


def _params(tmp_path: Path, text: str, name: str = "params.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _line_of(text: str, needle: str) -> int:
    """1-based line of the first line of `text` containing `needle`."""
    return next(i for i, line in enumerate(text.splitlines(), start=1) if needle in line)


def _message(path: Path, overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path, overrides)
    message = str(caught.value)
    assert isinstance(caught.value, UserError)
    assert "\n" not in message and message.startswith(str(path)), message
    return message


@pytest.mark.parametrize("text", ["", "\n\n", "# all commented out\n", "{}\n"])
def test_empty_params_file_is_an_error_not_code_defaults(tmp_path: Path, text: str) -> None:
    path = _params(tmp_path, text)
    assert _message(path).startswith(f"{path}: the parameters file is empty")


@pytest.mark.parametrize(("text", "kind"), [("- a\n- b\n", "list"), ("just a string\n", "str"),
                                            ("42\n", "int")])
def test_non_mapping_params_file_is_an_error(tmp_path: Path, text: str, kind: str) -> None:
    path = _params(tmp_path, text)
    assert _message(path) == f"{path}:1: top level must be a mapping of sections, got a {kind}"


def test_missing_params_file(tmp_path: Path) -> None:
    message = _message(tmp_path / "params.yaml")
    assert "parameters file does not exist" in message and "--params" in message


def test_alias_bomb_in_params_is_refused_quickly(tmp_path: Path) -> None:
    path = _params(tmp_path, ALIAS_BOMB)
    start = time.monotonic()
    message = _message(path)
    assert time.monotonic() - start < 2
    assert re.match(rf"{re.escape(str(path))}:\d+: more than {MAX_YAML_NODES} YAML nodes once "
                    r"aliases are expanded \(an alias bomb\?\); refused$", message), message


def test_alias_bomb_in_an_overrides_file_is_refused_quickly(tmp_path: Path) -> None:
    path = _params(tmp_path, ALIAS_BOMB.replace("l9:", "train.lr:"), "best_params.yaml")
    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"best_params\.yaml:\d+: more than .* refused$"):
        load_overrides_file(path)
    assert time.monotonic() - start < 2


def test_alias_bomb_in_an_override_value_is_refused_quickly() -> None:
    value = "{" + ", ".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 10))
    value = "{l0: &l0 [a, a, a, a, a, a, a, a, a], " + value[1:] + "}"
    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"^data\.train_size: cannot parse value .*alias bomb"):
        parse_override(f"data.train_size={value}")
    assert time.monotonic() - start < 2


def test_small_aliases_still_work(tmp_path: Path) -> None:
    text = PARAMS.read_text().replace("loss_scale: {sst: 1.0", "loss_scale: &scales {sst: 1.0")
    text = text.replace("    train.epochs: 1\n    train.checkpoint_every: 100\n",
                        "    train.epochs: 1\n    train.checkpoint_every: 100\n"
                        "    train.loss_scale: *scales\n", 1)
    assert load_config(_params(tmp_path, text)).train.loss_scale.sts == 1.0


def test_recursive_alias_is_refused(tmp_path: Path) -> None:
    path = _params(tmp_path, "seed: 1\nloop: &a [*a]\n")
    assert _message(path) == f"{path}:2: an alias refers to a node that contains it (recursive YAML)"


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    text = PARAMS.read_text().replace("  epochs: 3\n", "  epochs: [3\n")
    path = _params(tmp_path, text)
    assert re.match(rf"{re.escape(str(path))}:\d+: invalid YAML: ", _message(path))


def test_duplicate_key_names_both_lines(tmp_path: Path) -> None:
    text = PARAMS.read_text().replace("  epochs: 3\n", "  epochs: 3\n  epochs: 4\n")
    path = _params(tmp_path, text)
    first = _line_of(text, "  epochs: 3")
    assert _message(path) == (f"{path}:{first + 1}: train.epochs: duplicate key "
                              f"(first on line {first})")


@pytest.mark.parametrize(("old", "new", "needle", "expected"), [
    ("  epochs: 3\n", "  epochs: 0\n", "  epochs: 0", "train.epochs: must be >= 1, got 0"),
    ("eval:\n  batch_size: 128", "eval:\n  batch_size: 0", "  batch_size: 0",
     "eval.batch_size: must be >= 1, got 0"),
    ("  resample_to: {sst: null", "  resample_to: {sst: 0", "resample_to:",
     "data.resample_to.sst: must be >= 1, got 0 (use null for all rows)"),
    ("  max_length: 128", "  max_length: 0", "max_length: 0", "model.max_length: must be >= 1, got 0"),
    ("  pooling: mean ", "  poling: mean ", "poling:", "model.poling: unknown key; valid keys here:"),
    ("  lr: 5.0e-5\n  head_lr_scale", "  lr: fast\n  head_lr_scale", "lr: fast",
     "train.lr: expected float, got 'fast'"),
    ("  eda_tasks: [sst]", "  eda_tasks: [sst, qqp]", "eda_tasks:",
     "augment.eda_tasks[1]: 'qqp' is not valid"),
])
def test_bad_value_in_the_file_names_file_line_and_key(
    tmp_path: Path, old: str, new: str, needle: str, expected: str
) -> None:
    text = PARAMS.read_text()
    assert old in text
    text = text.replace(old, new, 1)
    path = _params(tmp_path, text)
    message = _message(path, ["profile=full"])
    assert message.startswith(f"{path}:{_line_of(text, needle)}: {expected}"), message


def test_bad_value_in_the_active_profile_names_the_profile_line(tmp_path: Path) -> None:
    text = PARAMS.read_text().replace("data.train_size: {sst: 3000", "data.train_size: {sst: 0", 1)
    path = _params(tmp_path, text)
    line = _line_of(text, "data.train_size: {sst: 0")
    assert _message(path) == (f"{path}:{line}: data.train_size.sst: must be >= 1, got 0 "
                              "(use null for all rows)")


@pytest.mark.parametrize(("override", "expected"), [
    ("train.epochs=0", "train.epochs: must be >= 1, got 0 (set by override 'train.epochs=0')"),
    ("data.dev_size={sst: 0}", "data.dev_size.sst: must be >= 1, got 0 (set by override "
                               "'data.dev_size={sst: 0}') (use null for all rows)"),
    ("train.batch_size=many", "train.batch_size: expected int, got 'many' (set by override"),
    ("train.lr=[", "train.lr: cannot parse value '['"),
    ("trian.lr=1", "trian: unknown key; valid keys here:"),
    ("profile=huge", "profile: unknown profile 'huge'"),
])
def test_bad_override_names_the_override(tmp_path: Path, override: str, expected: str) -> None:
    path = _params(tmp_path, PARAMS.read_text())
    message = _message(path, [override])
    assert message.startswith(f"{path}: {expected}"), message


def test_overrides_file(tmp_path: Path) -> None:
    path = _params(tmp_path, "train.lr: 3.0e-05\nmodel.pooling: cls\n", "best.yaml")
    overrides = load_overrides_file(path)
    assert load_config(PARAMS, overrides).train.lr == pytest.approx(3e-5)
    assert load_overrides_file(_params(tmp_path, "", "empty.yaml")) == []
    with pytest.raises(ConfigError, match=r"list\.yaml:1: expected a mapping"):
        load_overrides_file(_params(tmp_path, "- train.lr=1\n", "list.yaml"))
    with pytest.raises(ConfigError, match=r"missing\.yaml: file does not exist"):
        load_overrides_file(tmp_path / "missing.yaml")


def test_malformed_profiles_are_config_errors(tmp_path: Path) -> None:
    base = PARAMS.read_text()
    for old, new, expected in [
        ("profile: quick", "profile: [quick]", "profile: expected str or null"),
        ("  tiny:                ", "  tiny: [1, 2]\n  tinier:", "profiles.tiny: expected a mapping"),
    ]:
        path = _params(tmp_path, base.replace(old, new, 1))
        overrides = ["profile=tiny"] if "tiny" in old else []
        assert expected in _message(path, overrides)


YAML_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 10**30) | st.floats(allow_nan=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
SECTION_KEYS = st.sampled_from(["seed", "profile", "profiles", "data", "model", "train", "eval",
                                "mlm", "augment", "tune", "register", "bogus"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=st.dictionaries(SECTION_KEYS, YAML_VALUES | st.dictionaries(
    st.sampled_from(["lr", "epochs", "batch_size", "train_size", "sst", "pooling", "x"]),
    YAML_VALUES, max_size=4), min_size=1, max_size=4))
def test_property_any_params_mapping_loads_or_raises_config_error(tmp_path: Path, tree: dict) -> None:
    path = _params(tmp_path, yaml.safe_dump(tree))
    try:
        assert isinstance(load_config(path), Config)
    except ConfigError as err:
        assert str(err).startswith(str(path)) and "\n" not in str(err)
