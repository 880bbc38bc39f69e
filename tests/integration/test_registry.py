"""Registry against a real MLflow server: champion/challenger promotion, packaged model, compare.

Version 1 is registered by the real `mtbert register` CLI with the real dev metrics of the tiny
model (`mtbert evaluate`). Versions 2 and 3 register the same model with `dev/overall` set by
this test (real value - 0.1, then + 0.1) in the metrics file, to exercise both branches of the
comparison; they go through `mtbert.pipeline.stages.register.run`, the function the Prefect flow calls.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from tests.integration.conftest import TrackedProject, mlflow_env, mlflow_in_process, run_mtbert

pytestmark = pytest.mark.integration

REQUEST = pd.DataFrame({
    "task": ["sst", "para", "sts", "sst", "para", "sts", "sst"],
    "sentence1": ["A warm, funny and clever film.", "How can I lose weight fast?",
                  "A woman is slicing an onion.", "Dull, lifeless and far too long.",
                  "What is the capital of France?", "Two dogs play in the snow.", "It is fine."],
    "sentence2": [None, "What is the quickest way to lose weight?", "A woman cuts an onion.", None,
                  "How do I cook rice?", "A cat sleeps on a sofa.", None],
})


@dataclass
class History:
    """What the registrations did, with the registry state seen after each one."""

    project: TrackedProject
    cli_stdout: str  # `mtbert register` output for version 1
    results: dict[int, object]  # version -> RegistrationResult, for versions 2 and 3
    aliases: list[dict[str, str]]  # alias -> version after each registration
    seconds: list[float]


def _write_metrics(project: TrackedProject, overall: float) -> None:
    metrics = dict(project.metrics, **{"dev/overall": overall})
    (project.root / "artifacts" / "eval" / "metrics.json").write_text(json.dumps(metrics))


def _register_in_process(project: TrackedProject, overall: float):
    from mtbert.pipeline.stages import register
    from mtbert.config import load_config

    _write_metrics(project, overall)
    with mlflow_in_process(project.tracking_uri, cwd=project.root):
        return register.run(load_config("params.yaml"))


@pytest.fixture(scope="module")
def client(tracked_project: TrackedProject) -> MlflowClient:
    return MlflowClient(tracking_uri=tracked_project.tracking_uri,
                        registry_uri=tracked_project.tracking_uri)


@pytest.fixture(scope="module")
def history(tracked_project: TrackedProject, client: MlflowClient) -> History:
    """Register v1 (real metrics, CLI), v2 (worse, set here), v3 (better, set here)."""
    p, name, real = tracked_project, tracked_project.model_name, tracked_project.metrics["dev/overall"]
    results, aliases, seconds = {}, [], []
    start = time.monotonic()
    proc = run_mtbert(["-q", "register"], p.root, mlflow_env(p.tracking_uri))
    seconds.append(time.monotonic() - start)
    aliases.append(dict(client.get_registered_model(name).aliases))
    try:
        for overall in (real - 0.1, real + 0.1):
            start = time.monotonic()
            result = _register_in_process(p, overall)
            results[result.version] = result
            seconds.append(time.monotonic() - start)
            aliases.append(dict(client.get_registered_model(name).aliases))
    finally:
        _write_metrics(p, real)  # leave the session's project as evaluated
    print(f"registration seconds (CLI v1, in-process v2, v3): {[round(s, 1) for s in seconds]}")
    return History(p, proc.stdout, results, aliases, seconds)


def test_first_version_becomes_champion_with_provenance(history: History, client: MlflowClient) -> None:
    p = history.project
    assert "version 1 -> @champion (no champion yet)" in history.cli_stdout
    assert history.aliases[0] == {"champion": "1"}
    v1 = client.get_model_version(p.model_name, "1")
    assert v1.run_id == p.run_id
    assert v1.tags["promotion"] == "champion"
    assert v1.tags["promotion_reason"] == "no champion yet"
    assert float(v1.tags["dev/overall"]) == pytest.approx(p.metrics["dev/overall"], abs=1e-12)
    for key in ("dev/sst/accuracy", "dev/para/accuracy", "dev/sts/pearson"):
        assert float(v1.tags[key]) == pytest.approx(p.metrics[key], abs=1e-12)
    assert v1.tags["git_commit"] == p.git_commit
    assert v1.tags["data_md5"] == p.data_md5
    assert v1.current_stage in (None, "None")  # deprecated stages are not used


def test_worse_version_becomes_challenger_champion_unchanged(history: History,
                                                             client: MlflowClient) -> None:
    p, v2 = history.project, history.results[2]
    real = p.metrics["dev/overall"]
    assert (v2.version, v2.decision, v2.previous_champion) == (2, "challenger", 1)
    assert v2.reason == f"dev/overall {real - 0.1:.4f} <= champion v1 {real:.4f}"
    assert history.aliases[1] == {"champion": "1", "challenger": "2"}
    tags = client.get_model_version(p.model_name, "2").tags
    assert (tags["promotion"], tags["promotion_reason"]) == ("challenger", v2.reason)


def test_better_version_takes_champion(history: History, client: MlflowClient) -> None:
    p, v3 = history.project, history.results[3]
    real = p.metrics["dev/overall"]
    assert (v3.version, v3.decision, v3.previous_champion) == (3, "champion", 1)
    assert v3.reason == f"dev/overall {real + 0.1:.4f} > champion v1 {real:.4f}"
    assert history.aliases[2] == {"champion": "3", "challenger": "2"}
    assert client.get_model_version(p.model_name, "1").tags["superseded_by"] == "3"


def test_model_logged_once_and_shared_by_versions(history: History, client: MlflowClient) -> None:
    """Re-registering the same run reuses its logged model instead of uploading it again."""
    p = history.project
    sources = {client.get_model_version(p.model_name, str(v)).source for v in (1, 2, 3)}
    assert len(sources) == 1 and next(iter(sources)).startswith("models:/m-")
    assert client.get_run(p.run_id).data.tags["mtbert.model_uri"] == next(iter(sources))


def _local_predictions(root: Path, rows: pd.DataFrame) -> pd.DataFrame:
    from mtbert.model.trained import load_trained
    from mtbert.pipeline.serving import predict_rows

    model, tokenizer, cfg = load_trained(root / "artifacts" / "model")
    return predict_rows(model, tokenizer, cfg.model.pair_encoding, cfg.model.max_length, rows)


def test_champion_loads_and_predicts_like_the_trained_model(history: History) -> None:
    import mlflow
    from mlflow.exceptions import MlflowException

    p = history.project
    with mlflow_in_process(p.tracking_uri):
        model = mlflow.pyfunc.load_model(f"models:/{p.model_name}@champion")
        out = model.predict(REQUEST)
        with pytest.raises(MlflowException, match="unknown task 'nli'") as err:
            model.predict(pd.DataFrame({"task": ["nli"], "sentence1": ["a"], "sentence2": ["b"]}))
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"
    assert list(out.columns) == ["task", "prediction", "score"]
    assert list(out["task"]) == list(REQUEST["task"])
    by_task = {task: out.loc[out["task"] == task, "prediction"].to_numpy()
               for task in ("sst", "para", "sts")}
    assert set(by_task["sst"]) <= {0.0, 1.0, 2.0, 3.0, 4.0}
    assert set(by_task["para"]) <= {0.0, 1.0}
    assert np.all((by_task["sts"] >= 0.0) & (by_task["sts"] <= 5.0))
    assert np.isfinite(out["score"]).all()
    local = _local_predictions(p.root, REQUEST)
    np.testing.assert_allclose(out["prediction"], local["prediction"], atol=1e-5)
    np.testing.assert_allclose(out["score"], local["score"], atol=1e-5)


def test_compare_prints_one_row_per_version(history: History) -> None:
    p = history.project
    proc = run_mtbert(["-q", "compare"], p.root, mlflow_env(p.tracking_uri))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header[:5] == ["version", "aliases", "promotion", "superseded_by", "dev/overall"]
    assert {"dev/sst/accuracy", "dev/para/accuracy", "dev/sts/pearson", "measurement_key", "behaviour",
            "data_md5", "git_commit", "run_id", "created"} <= set(header)
    rows = [dict(zip(header, [c.strip() for c in line.strip("|").split("|")], strict=True))
            for line in lines[2:]]
    assert [r["version"] for r in rows] == ["1", "2", "3"]
    assert [r["aliases"] for r in rows] == ["", "challenger", "champion"]
    assert [r["superseded_by"] for r in rows] == ["3", "", ""]
    real = p.metrics["dev/overall"]
    assert [r["dev/overall"] for r in rows] == [f"{v:.4f}" for v in (real, real - 0.1, real + 0.1)]
    assert {r["git_commit"] for r in rows} == {p.git_commit}
    assert {r["data_md5"] for r in rows} == {p.data_md5}
    assert {r["run_id"] for r in rows} == {p.run_id}
    (key,) = {r["measurement_key"] for r in rows}
    assert key.startswith("profile=tiny dev=sst:64,para:64,sts:64 rows=")
    assert {r["behaviour"] for r in rows} == {"not run"}


def test_register_refuses_a_run_the_server_does_not_know(trained_project: Path, mlflow_server: str,
                                                         tmp_path: Path) -> None:
    """`trained_project` recorded its run in a local store: registering on the server must say so."""
    import shutil

    root = shutil.copytree(trained_project, tmp_path / "project")
    proc = run_mtbert(["-q", "register"], root, mlflow_env(mlflow_server), check=False)
    assert proc.returncode != 0
    assert "does not exist at" in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------------
# Comparable numbers, the behavioural gate, descriptions (#15). Each test registers a model name
# of its own in a copy of the session's project, so the history above is untouched.


def _copy(p: TrackedProject, tmp_path: Path) -> Path:
    import shutil

    return shutil.copytree(p.root, tmp_path / "project")


def _register(root: Path, uri: str, *overrides: str, force: bool = False):
    from mtbert.config import load_config
    from mtbert.pipeline.stages import register

    with mlflow_in_process(uri, cwd=root):
        return register.run(load_config("params.yaml", list(overrides)), force=force)


def test_version_records_its_key_and_a_description(history: History, client: MlflowClient) -> None:
    p = history.project
    v1 = client.get_model_version(p.model_name, "1")
    key = v1.tags["measurement_key"]
    assert key.startswith("profile=tiny dev=sst:64,para:64,sts:64 rows=") and len(key.split("rows=")[1]) == 12
    assert v1.tags["behaviour"] == "not run (register.behaviour.enabled: false)"  # the tiny profile
    lines = v1.description.splitlines()
    assert lines[0] == "mtbert multitask BERT (sst, para, sts): bi-encoder on minilm, trained with profile tiny."
    assert f"dev/overall {p.metrics['dev/overall']:.4f}" in lines[1]
    assert lines[2] == f"Measured on: {key}."
    assert lines[3] == "Behaviour gate: not run (register.behaviour.enabled: false)."
    assert lines[4] == "Promotion: @champion (no champion yet)."
    assert lines[5] == f"Data md5 {p.data_md5}, git commit {p.git_commit}."
    assert client.get_model_version(p.model_name, "2").description.splitlines()[4].startswith(
        "Promotion: @challenger (dev/overall ")


def test_candidate_measured_on_other_dev_rows_is_not_compared(tracked_project: TrackedProject,
                                                              client: MlflowClient, tmp_path: Path) -> None:
    from mtbert.config import load_config
    from mtbert.pipeline.stages.evaluate import evaluate_model

    p, name = tracked_project, f"{tracked_project.model_name}-keys"
    root = _copy(p, tmp_path)
    first = _register(root, p.tracking_uri, f"register.model_name={name}")
    assert (first.decision, first.reason) == ("champion", "no champion yet")
    # Really evaluate the same model on 32 dev rows per task instead of the tiny profile's 64, and
    # claim a much better score: compared silently, it would win.
    with mlflow_in_process(p.tracking_uri, cwd=root):
        metrics = evaluate_model(load_config("params.yaml", ["data.dev_size={sst: 32, para: 32, sts: 32}"]))
    (root / "artifacts" / "eval" / "metrics.json").write_text(
        json.dumps(dict(metrics, **{"dev/overall": metrics["dev/overall"] + 0.5})))

    proc = run_mtbert(["-q", "register", f"register.model_name={name}"], root, mlflow_env(p.tracking_uri))

    (line,) = proc.stdout.strip().splitlines()
    other, champion = first.measurement_key.replace(":64", ":32").rsplit(" rows=", 1)[0], first.measurement_key
    assert line.startswith(f"registered {name} version 2 -> @challenger (not compared: measured on {other} rows=")
    assert f", champion v1 on {champion} (to promote: " in line and "mtbert register --force" in line
    assert client.get_registered_model(name).aliases == {"champion": "1", "challenger": "2"}
    v2 = client.get_model_version(name, "2")
    assert v2.tags["measurement_key"].startswith(other) and v2.tags["measurement_key"] != champion
    assert line.endswith(f"({v2.tags['promotion_reason']})") and v2.tags["promotion"] == "challenger"

    forced = run_mtbert(["-q", "register", "--force", f"register.model_name={name}"], root,
                        mlflow_env(p.tracking_uri)).stdout
    assert "version 3 -> @champion (forced, not compared: measured on" in forced
    assert client.get_registered_model(name).aliases == {"champion": "3", "challenger": "2"}
    assert client.get_model_version(name, "1").tags["superseded_by"] == "3"

    table = run_mtbert(["-q", "compare", f"register.model_name={name}"], root, mlflow_env(p.tracking_uri)).stdout
    assert "measurement_key" in table.splitlines()[0] and champion in table and v2.tags["measurement_key"] in table


def test_failing_behaviour_gate_keeps_the_candidate_off_champion(tracked_project: TrackedProject,
                                                                client: MlflowClient, tmp_path: Path) -> None:
    """The tiny model really fails the default thresholds (invariance .56, direction .64 < .8)."""
    p, name = tracked_project, f"{tracked_project.model_name}-gate"
    root = _copy(p, tmp_path)

    failed = _register(root, p.tracking_uri, f"register.model_name={name}", "register.behaviour.enabled=true")

    assert failed.decision == "challenger" and failed.previous_champion is None
    assert failed.reason.startswith("behaviour gate failed: invariance ")
    assert "< 0.80" in failed.reason
    assert client.get_registered_model(name).aliases == {"challenger": "1"}  # no champion at all
    v1 = client.get_model_version(name, "1")
    assert v1.tags["promotion_reason"] == failed.reason and v1.tags["behaviour"] == failed.behaviour
    rates = {check: float(v1.tags[f"behaviour/{check}"]) for check in ("invariance", "direction", "symmetry")}
    assert rates["invariance"] < 0.8 or rates["direction"] < 0.8
    assert f"Behaviour gate: {failed.behaviour}." in v1.description
    run = client.get_run(p.run_id)
    for check, rate in rates.items():
        assert run.data.metrics[f"behaviour/{check}/pass_rate"] == pytest.approx(rate, abs=1e-4)
    assert run.data.metrics["behaviour/passed"] == 0.0
    from mlflow.artifacts import load_dict

    with mlflow_in_process(p.tracking_uri):
        shown = load_dict(f"runs:/{p.run_id}/behaviour/behaviour.json")
    assert shown["passed"] is False and shown["summary"] == failed.behaviour
    assert [c["name"] for c in shown["checks"]] == ["invariance", "direction", "symmetry"]
    assert all(c["failures"] for c in shown["checks"] if not c["ok"])

    # The same model with thresholds it meets becomes champion: the thresholds decided, nothing else.
    passed = _register(root, p.tracking_uri, f"register.model_name={name}", "register.behaviour.enabled=true",
                       "register.behaviour.min_pass={invariance: 0.5, direction: 0.5, symmetry: 1.0}")
    assert (passed.decision, passed.reason) == ("champion", "no champion yet")
    assert passed.behaviour.startswith("passed: ")
