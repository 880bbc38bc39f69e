"""scripts/ablation.sh with two lanes: configurations side by side, one table, one MLflow server."""

from __future__ import annotations

import csv
import os
import subprocess
from pathlib import Path

from mlflow import MlflowClient

from mtbert.pipeline.tracking import load_run_id
from tests.conftest import REPO_ROOT


def _run_script(project: Path, out: Path, *configs: str) -> str:
    env = {**os.environ, "SETS": "smoke", "JOBS": "2", "OUT": str(out)}  # MLFLOW_TRACKING_URI: the server
    proc = subprocess.run(["bash", str(REPO_ROOT / "scripts/ablation.sh"), str(project), *configs],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "FAILED" not in proc.stdout, proc.stdout
    return proc.stdout


def _rows(out: Path) -> list[dict[str, str]]:
    with out.with_suffix(".csv").open() as fh:
        return list(csv.DictReader(fh))


def test_two_lanes_run_the_set_side_by_side_and_write_one_table(project: Path, tmp_path: Path) -> None:
    out = tmp_path / "tables" / "ablation"
    out.parent.mkdir()
    # Named configurations only: the closing table pass runs nothing else.
    _run_script(project, out, "smoke/cls_pooling")
    assert [r["config"] for r in _rows(out)] == ["cls_pooling"]
    assert not (project / "artifacts/ablation/smoke/baseline").exists()
    # All of the set: two lanes, each configuration started before either ended.
    stdout = _run_script(project, out)
    events = [line.split()[1:] for line in stdout.splitlines() if line.split()[1:2] in (["start"], ["end"])]
    assert [e[0] for e in events[:2]] == ["start", "start"], stdout
    assert sorted(e[1] for e in events if e[0] == "start") == ["smoke/baseline", "smoke/cls_pooling"]
    # The final pass wrote every configuration into the tables, in the set's order.
    rows = _rows(out)
    assert [r["config"] for r in rows] == ["baseline", "cls_pooling"]
    assert all(0 < float(r["dev_overall"]) <= 1 for r in rows)
    md = out.with_suffix(".md").read_text()
    assert "| baseline |" in md and "| cls_pooling |" in md
    # Both lanes logged their nested run under the one parent run on the tracking server.
    parent_id = load_run_id(project / "artifacts/ablation/smoke")
    client = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    parent = client.get_run(parent_id)
    nested = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    assert sorted(r.data.tags["ablation.config"] for r in nested) == ["baseline", "cls_pooling"]
    assert all(r.data.metrics["dev/overall"] > 0 for r in nested)
