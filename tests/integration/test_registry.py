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
    assert {"dev/sst/accuracy", "dev/para/accuracy", "dev/sts/pearson", "data_md5", "git_commit",
            "run_id", "created"} <= set(header)
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


def test_register_refuses_a_run_the_server_does_not_know(trained_project: Path, mlflow_server: str,
                                                         tmp_path: Path) -> None:
    """`trained_project` recorded its run in a local store: registering on the server must say so."""
    import shutil

    root = shutil.copytree(trained_project, tmp_path / "project")
    proc = run_mtbert(["-q", "register"], root, mlflow_env(mlflow_server), check=False)
    assert proc.returncode != 0
    assert "does not exist at" in proc.stderr and "Traceback" not in proc.stderr
