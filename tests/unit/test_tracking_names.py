"""What the MLflow UI is told: run names, the experiment's tags (kind, runs view) and the UI link."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mtbert.config import load_config
from mtbert.pipeline import tracking

PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


def cfg(*overrides: str):
    return load_config(PARAMS, list(overrides))


@pytest.mark.parametrize("overrides, name", [
    (["profile=tiny"], "train tiny"),
    (["profile=tiny", "train.threads=1", "train.out_dir=/tmp/x", "eval.batch_size=7"], "train tiny"),
    (["profile=quick", "train.lr=3e-5", "model.pooling=cls"], "train quick lr=3e-05 pooling=cls"),
    (["profile=quick", "train.loss_scale.sst=2.0"], "train quick loss_scale.sst=2"),
    (["profile=quick", "train.smart.enabled=true"], "train quick smart.enabled=True"),
    (["profile=quick", "train.lr=1e-5", "train.epochs=2", "seed=7", "train.pcgrad=true",
      "train.weight_decay=0.0"], "train quick epochs=2 lr=1e-05 pcgrad=True seed=7 +1"),
])
def test_a_stage_run_is_named_by_profile_and_what_differs(overrides, name) -> None:
    assert tracking.describe_run(cfg(*overrides), "train", base=cfg(overrides[0])) == name


def test_names_are_deterministic_and_default_to_the_project_params(monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(PARAMS.parent)  # params.yaml of the working directory is the baseline
    run = cfg("profile=tiny", "train.lr=2e-5")
    assert tracking.describe_run(run, "evaluate") == "evaluate tiny lr=2e-05"
    assert tracking.describe_run(run, "evaluate") == tracking.describe_run(run, "evaluate")
    monkeypatch.chdir(tmp_path)  # no params.yaml here: stage and profile only
    assert tracking.describe_run(run, "train") == "train tiny"


def test_trials_and_ablation_configurations_keep_their_names() -> None:
    run = cfg("profile=quick", "train.lr=3e-5")
    for name in ("trial-3", "half/pcgrad/seed-2", "ablation-half", "tune-mtbert", "register"):
        assert tracking.describe_run(run, name, base=cfg("profile=quick")) == name


def test_experiment_tags_set_the_training_kind_and_the_runs_view_once() -> None:
    tags = tracking.experiment_tags({})
    assert tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    view = json.loads(tags[tracking.VIEW_TAG])
    assert view["selectedColumns"][:4] == ["metrics.`dev/overall`", "metrics.`dev/sst/accuracy`",
                                           "metrics.`dev/para/accuracy`", "metrics.`dev/sts/pearson`"]
    assert tracking.experiment_tags(tags) == {}  # nothing to send once set
    # a kind the user chose stays; an outdated view is replaced
    chosen = {tracking.EXPERIMENT_KIND_TAG: "genai_development", tracking.VIEW_TAG: "{}"}
    assert tracking.experiment_tags(chosen) == {tracking.VIEW_TAG: tags[tracking.VIEW_TAG]}


def test_ui_url_opens_the_runs_table_in_the_training_workflow(monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.ui_url("4") == ("http://127.0.0.1:5000/#/experiments/4/runs?"
                                    "workflowType=machine_learning&viewStateShareKey=mtbert")
    remote = tracking.ui_url("4", "http://10.0.0.2:5099/")
    assert remote.startswith("http://10.0.0.2:5099/#/experiments/4/runs?")


def test_ui_command_names_the_store_in_use(monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.ui_command() == "mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////srv/team/mlflow.db")
    assert "--backend-store-uri sqlite:////srv/team/mlflow.db " in tracking.ui_command()
