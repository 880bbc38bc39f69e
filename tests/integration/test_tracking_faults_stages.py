"""Every stage that runs under MLflow keeps its metrics when the server dies mid-run.

For a tuning trial, an ablation configuration and an MLM run, each through the real CLI against
its own real `mlflow server`: once the run's first step metrics reached the server, the server is
SIGKILLed; the command finishes; what the server missed is in the project's fallback file
(artifacts/unsent_metrics.jsonl); after a restart, the next run of the command sends it, and the
server then holds every step of the first run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import copy_project
from tests.integration.conftest import mlflow_env
from tests.integration.test_tracking_faults import Server, _wait_for

pytestmark = pytest.mark.integration

UNSENT = Path("artifacts/unsent_metrics.jsonl")
TRAIN = ["data.train_size={sst: 48, para: 48, sts: 48}", "train.epochs=3", "train.batch_size=8"]
TRAIN_STEPS = 18  # 6 batches of 8 per task, round-robin, 3 epochs
ABLATIONS = """sets:
  one:
    profile: tiny
    configs:
      - name: base
"""


@dataclass(frozen=True)
class Scenario:
    name: str
    first: list[str]  # the command killed under
    second: list[str]  # the next run, which replays the file
    step_metric: str  # logged at every step 1..steps
    steps: int
    final_metric: str  # logged once the work is done (after the kill)


SCENARIOS = [
    Scenario("tune", ["tune", "tune.n_trials=1", "tune.report_every=0", *TRAIN],
             ["tune", "tune.n_trials=2", "tune.report_every=0", *TRAIN],
             "train/lr", TRAIN_STEPS, "dev/overall"),
    Scenario("ablate", ["ablate", "--set", "one", "--file", "ablations.yaml", "--out", "abl", *TRAIN],
             ["ablate", "--set", "one", "--file", "ablations2.yaml", "--out", "abl2", *TRAIN],
             "train/lr", TRAIN_STEPS, "dev/overall"),
    Scenario("pretrain-mlm", ["pretrain-mlm", "mlm.epochs=4", "mlm.batch_size=16",
                              "mlm.max_sentences=160"],
             ["pretrain-mlm", "mlm.epochs=1", "mlm.batch_size=16", "mlm.max_sentences=16"],
             "mlm/loss", 40, "mlm/dev_loss_after"),
]


def _first_metrics_arrived(server: Server, key: str):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=server.uri)

    def check() -> str | None:
        experiment = client.get_experiment_by_name("mtbert")
        if experiment is None:
            return None
        runs = client.search_runs([experiment.experiment_id], f"metrics.`{key}` > -1")
        return runs[0].info.run_id if runs else None

    return check


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_stage_keeps_every_metric_through_a_server_kill(scenario: Scenario, prepared_project: Path,
                                                        tmp_path: Path) -> None:
    from mlflow import MlflowClient

    root = copy_project(prepared_project, tmp_path / "project")
    (root / "ablations.yaml").write_text(ABLATIONS)
    (root / "ablations2.yaml").write_text(ABLATIONS.replace("name: base", "name: other"))
    (tmp_path / "server").mkdir()
    server = Server(tmp_path / "server")
    env = mlflow_env(server.uri)
    try:
        server.start()
        log = open(tmp_path / "first.txt", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "mtbert.cli", "-q", *scenario.first], cwd=root,
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            found = _first_metrics_arrived(server, scenario.step_metric)
            _wait_for(lambda: found() is not None, f"{scenario.step_metric} on the server", proc)
            run_id = found()
            server.kill()
            proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.close()
        output = (tmp_path / "first.txt").read_text()
        assert proc.returncode == 0, output[-4000:]
        assert "Traceback" not in output
        rows = [json.loads(line) for line in (root / UNSENT).read_text().splitlines()]
        mine = [r for r in rows if r["run_id"] == run_id]
        assert {r["key"] for r in mine} >= {scenario.step_metric, scenario.final_metric}, output[-3000:]

        server.start()
        start = time.monotonic()
        second = subprocess.run([sys.executable, "-m", "mtbert.cli", *scenario.second], cwd=root,
                                env=env, capture_output=True, text=True, timeout=600)
        assert second.returncode == 0, second.stderr[-4000:]
        assert "buffered in artifacts/unsent_metrics.jsonl" in second.stderr
        client = MlflowClient(tracking_uri=server.uri)
        steps = sorted(m.step for m in client.get_metric_history(run_id, scenario.step_metric))
        assert steps == list(range(1, scenario.steps + 1))
        assert scenario.final_metric in client.get_run(run_id).data.metrics
        print(f"\n{scenario.name}: {len(mine)} metric values kept and replayed "
              f"(second run {time.monotonic() - start:.0f} s)")
    finally:
        server.stop()
