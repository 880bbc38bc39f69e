"""Which settings evaluate and predict take from the trained model, and which from the command.

A model trained with `profile=tiny` is measured as tiny even when params.yaml says quick; an
override on the command line wins and is stated; runtime settings (threads) are the command's.
"""

from __future__ import annotations

import pytest

from mtbert import cli
from mtbert.config import load_config
from mtbert.errors import UserError
from mtbert.model import trained
from mtbert.pipeline.stages import train as train_stage
from tests.conftest import REPO_ROOT

PARAMS = REPO_ROOT / "params.yaml"  # profile: quick


def model_config(*overrides: str):
    """The config `mtbert train profile=tiny ...` saves with the model."""
    return load_config(PARAMS, ["profile=tiny", "train.threads=3", *overrides])


def test_trained_keys_cover_the_train_stage_result_keys() -> None:
    assert trained.RUNTIME_KEYS == train_stage.RUNTIME_KEYS
    assert set(train_stage.RESULT_KEYS) <= set(trained.TRAINED_KEYS)


def test_params_yaml_does_not_override_the_models_profile() -> None:
    current = load_config(PARAMS, ["train.threads=1"])  # quick, from params.yaml
    assert current.profile == "quick" and current.data.dev_size.sst is None
    settings = trained.trained_settings(current, model_config(), ["train.threads"])
    cfg = settings.cfg
    assert cfg.profile == "tiny"
    assert (cfg.data.dev_size.sst, cfg.data.dev_size.para, cfg.data.dev_size.sts) == (64, 64, 64)
    assert cfg.model.max_length == 64 and cfg.eval.predict_test is False
    assert cfg.train.threads == 1  # runtime: the command's, not the model's 3
    assert settings.changed == ()
    assert trained.describe(settings, "evaluate", dev_sizes=True) == (
        "evaluate: using the trained model's settings (profile tiny; dev sizes sst 64, para 64, "
        "sts 64; max_length 64)")


def test_an_explicit_override_wins_and_is_stated() -> None:
    current = load_config(PARAMS, ["data.dev_size.sst=200", "eval.batch_size=7"])
    settings = trained.trained_settings(current, model_config(), ["data.dev_size.sst", "eval.batch_size"])
    assert settings.cfg.data.dev_size.sst == 200 and settings.cfg.data.dev_size.para == 64
    assert settings.cfg.eval.batch_size == 7
    line = trained.describe(settings, "evaluate", dev_sizes=True)
    assert line.endswith("; data.dev_size.sst=200 differs from the trained model's 64"), line
    assert "\n" not in line


def test_a_section_override_covers_its_keys() -> None:
    current = load_config(PARAMS, ["data.dev_size={sst: 5, para: 6, sts: 7}"])
    cfg = trained.trained_settings(current, model_config(), ["data.dev_size"]).cfg
    assert (cfg.data.dev_size.sst, cfg.data.dev_size.para, cfg.data.dev_size.sts) == (5, 6, 7)


def test_an_explicit_profile_brings_that_profiles_settings() -> None:
    current = load_config(PARAMS, ["profile=quick"])
    settings = trained.trained_settings(current, model_config(), ["profile"])
    assert settings.cfg.profile == "quick" and settings.cfg.data.dev_size.sst is None
    assert settings.cfg.model.pooling == "mean"  # the architecture stays the model's
    line = trained.describe(settings, "evaluate", dev_sizes=True)
    assert "profile=quick differs from the trained model's tiny" in line
    assert "dev sizes sst all" in line


def test_the_architecture_cannot_be_overridden() -> None:
    current = load_config(PARAMS, ["model.pooling=cls"])
    with pytest.raises(UserError, match=r"^model\.pooling: set to cls by an override, but the "
                                        r"trained model was built with mean"):
        trained.trained_settings(current, model_config(), ["model.pooling"])
    # the same value as the model's is no conflict
    same = load_config(PARAMS, ["model.pooling=mean"])
    assert trained.trained_settings(same, model_config(), ["model.pooling"]).changed == ()


def test_under_dvc_repro_params_yaml_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    args = cli.build_parser().parse_args(["evaluate"])
    args.overrides = ["data.dev_size.sst=3"]
    monkeypatch.delenv(cli.DVC_STAGE_ENV, raising=False)
    assert cli._explicit_keys(args) == ["data.dev_size.sst"]
    monkeypatch.setenv(cli.DVC_STAGE_ENV, "dvc.yaml:evaluate")
    assert cli._explicit_keys(args) is None
