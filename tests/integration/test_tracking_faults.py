"""MLflow going away: training fails fast when the server is down at start, and finishes (model
saved, metrics kept locally and sent later) when the server dies mid-run.

The mid-run scenario uses its own `mlflow server` (SQLite, 127.0.0.1, free port, one worker), since
it SIGKILLs it and later restarts it on the same port and database:

1. server up; `mtbert train` (2 epochs, 24 steps) starts against it; at the same time the test
   logs 5 steps of its own run through `MlflowCallback` in-process;
2. once the first metrics of the training run reached the server, the server is SIGKILLed;
   the in-process callback logs 5 more steps (they fail fast and stay buffered);
3. training finishes without the server: model saved, unsent metrics in artifacts/unsent_metrics.jsonl;
4. the server is restarted: the in-process callback's next flush sends its buffer, and a second
   (small) `mtbert train` first replays the file into the first run.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mtbert.checkpoint import MODEL_FILE, read_model_files
from tests.conftest import copy_project
from tests.integration.conftest import (
    MLFLOW_STARTUP_TIMEOUT_S,
    free_port,
    mlflow_env,
    mlflow_in_process,
    start_process_group,
    stop_process_group,
    wait_http,
)

pytestmark = pytest.mark.integration

CONFIG = ["train.epochs=2", "train.sampler=annealed", "data.train_size={sst: 32, para: 32, sts: 32}"]
TOTAL_STEPS = 24  # 4 batches of 8 per task; annealed draws 12 single-task steps per epoch
UNSENT = Path("artifacts/unsent_metrics.jsonl")


def test_unreachable_server_fails_fast_before_loading_anything(prepared_project: Path,
                                                              tmp_path: Path) -> None:
    root = copy_project(prepared_project, tmp_path / "project")
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "mtbert.cli", "train"], cwd=root, env=mlflow_env(uri),
                          capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - start
    print(f"\nunreachable MLflow: exit {proc.returncode} after {elapsed:.1f} s")
    assert proc.returncode == 2, proc.stderr
    assert f"mtbert train: MLflow tracking server {uri} is not reachable (" in proc.stderr
    assert "Connection refused" in proc.stderr and "unset MLFLOW_TRACKING_URI" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "load_hf: loaded" not in proc.stderr  # the model was never loaded (INFO is on)
    assert not (root / "artifacts" / "model").exists()
    assert not (root / "artifacts" / "model-checkpoint").exists()
    assert elapsed < 30, elapsed  # imports only: about 5 s here


# ---------------------------------------------------------------------------------------------
# Server killed mid-run


class Server:
    """Our own `mlflow server` on a fixed port and database, so it can be killed and restarted."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> float:
        self.starts += 1
        cmd = [sys.executable, "-m", "mlflow", "server",
               "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
               "--artifacts-destination", str(self.root / "artifacts"),
               "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]  # fmt: skip
        log = self.root / f"server-{self.starts}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
        self.proc = start_process_group(cmd, log, env, self.root)
        return wait_http(f"{self.uri}/health", self.proc, log, MLFLOW_STARTUP_TIMEOUT_S)

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)  # no goodbye: as if the host went away
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_group(self.proc)


@dataclass
class Outage:
    server: Server
    root: Path
    run_id: str = ""
    train: subprocess.CompletedProcess | None = None
    unsent_rows: list[dict] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    side: dict = field(default_factory=dict)  # the in-process callback's observations
    replay: subprocess.CompletedProcess | None = None
    after: dict = field(default_factory=dict)  # server state after the restart and replay
    model: dict = field(default_factory=dict)  # the first train's saved model: tensors, steps


def _at(step: int):
    """What `fit` hands a callback at `step` (the callback under test reads only the step)."""
    from mtbert.train import FitContext, TrainState

    return FitContext(model=None, optimizer=None, state=TrainState(global_step=step))


def _running_run(client) -> str | None:
    """The id of the experiment's RUNNING run, if there is one yet."""
    experiment = client.get_experiment_by_name("mtbert")
    if experiment is None:
        return None
    runs = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")
    return runs[0].info.run_id if runs else None


def _wait_for(predicate, what: str, proc: subprocess.Popen, timeout_s: float = 300) -> None:
    start = time.monotonic()
    while not predicate():
        assert proc.poll() is None, f"training ended while waiting for {what}"
        assert time.monotonic() - start < timeout_s, f"no {what} within {timeout_s} s"
        time.sleep(0.2)


def _side_run_before_kill(server: Server, tmp: Path):
    """An in-process MlflowCallback with its own run: 5 steps logged while the server is up."""
    from mlflow import MlflowClient

    from mtbert.pipeline.tracking import MlflowCallback

    client = MlflowClient(tracking_uri=server.uri)
    run_id = client.create_run(client.get_experiment_by_name("mtbert").experiment_id).info.run_id
    with mlflow_in_process(server.uri):
        cb = MlflowCallback(run_id, every=5, fallback_path=tmp / "side-unsent.jsonl", retry_s=0)
        for step in range(1, 6):
            cb.on_step(_at(step), {"side/x": float(step)})
    return cb, run_id


def _side_steps(cb, first: int, last: int) -> float:

    start = time.monotonic()
    for step in range(first, last + 1):
        cb.on_step(_at(step), {"side/x": float(step)})
    return time.monotonic() - start


def _train_through_outage(o: Outage, tmp: Path) -> None:
    env = mlflow_env(o.server.uri)
    out, err = open(tmp / "train-out.txt", "wb"), open(tmp / "train-err.txt", "wb")
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "mtbert.cli", "train", *CONFIG], cwd=o.root, env=env,
                            stdout=out, stderr=err, start_new_session=True)
    try:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=o.server.uri)
        # The run record is written with the weights, at the end: find the run on the server.
        _wait_for(lambda: _running_run(client) is not None, "the training run on the server", proc)
        o.run_id = _running_run(client)
        side, side_run = _side_run_before_kill(o.server, tmp)
        _wait_for(lambda: client.get_metric_history(o.run_id, "train/lr"), "metrics on the server", proc)
        o.server.kill()
        killed = time.monotonic()
        with mlflow_in_process(o.server.uri):
            o.side.update(run_id=side_run, failing_s=_side_steps(side, 6, 10), pending=len(side.pending))
        proc.wait(timeout=600)
        o.seconds.update(train=time.monotonic() - start, kill_to_exit=time.monotonic() - killed)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        out.close()
        err.close()
    o.train = subprocess.CompletedProcess(proc.args, proc.returncode,
                                          (tmp / "train-out.txt").read_text(),
                                          (tmp / "train-err.txt").read_text())
    if (o.root / UNSENT).exists():
        o.unsent_rows = [json.loads(line) for line in (o.root / UNSENT).read_text().splitlines()]
    if (o.root / "artifacts" / "model" / MODEL_FILE).exists():  # the second train replaces it
        weights, meta = read_model_files(o.root / "artifacts" / "model")
        o.model = {"tensors": len(weights), "steps": meta["train_state"]["global_step"]}
    o.side["cb"] = side


def _after_restart(o: Outage, tmp: Path) -> None:
    from mlflow import MlflowClient

    o.seconds["restart"] = o.server.start()
    client = MlflowClient(tracking_uri=o.server.uri)
    o.after["sent_before_replay"] = {m.step for m in client.get_metric_history(o.run_id, "train/lr")}
    side = o.side.pop("cb")
    with mlflow_in_process(o.server.uri):
        _side_steps(side, 11, 15)  # the flush at step 15 finds the server back
        o.side.update(pending_after=len(side.pending), closed=side.close())
    o.side["history"] = sorted(m.step for m in client.get_metric_history(o.side["run_id"], "side/x"))
    start = time.monotonic()
    o.replay = subprocess.run([sys.executable, "-m", "mtbert.cli", "train", *CONFIG[:-1],
                               "data.train_size={sst: 8, para: 8, sts: 8}"], cwd=o.root,
                              env=mlflow_env(o.server.uri), capture_output=True, text=True, timeout=600)
    o.seconds["second train"] = time.monotonic() - start
    run = client.get_run(o.run_id)
    o.after.update(status=run.info.status, metrics=run.data.metrics,
                   lr_steps=sorted(m.step for m in client.get_metric_history(o.run_id, "train/lr")))


@pytest.fixture(scope="module")
def outage(prepared_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Outage:
    tmp = tmp_path_factory.mktemp("outage")
    (tmp / "server").mkdir()
    o = Outage(server=Server(tmp / "server"), root=copy_project(prepared_project, tmp / "project"))
    try:
        o.seconds["server start"] = o.server.start()
        _train_through_outage(o, tmp)
        _after_restart(o, tmp)
    finally:
        o.server.stop()
    print("\ntracking outage timings (s):", {k: round(v, 1) for k, v in o.seconds.items()})
    return o


def test_training_finishes_and_saves_the_model_without_the_server(outage: Outage) -> None:
    train = outage.train
    assert train.returncode == 0, train.stderr[-4000:]
    assert f"trained {TOTAL_STEPS} steps" in train.stdout
    assert outage.model["steps"] == TOTAL_STEPS and outage.model["tensors"] > 50
    assert "Traceback" not in train.stderr
    # With MLflow's default retries the first failed send alone blocks about 4 minutes, and at
    # least 3 more calls fail after it (flushes, close, end of run); here the rest of training
    # takes what it takes (about 15 s idle, 55 s seen on a loaded machine).
    assert outage.seconds["kill_to_exit"] < 200, outage.seconds


def test_user_is_told_where_the_unsent_metrics_are(outage: Outage) -> None:
    err = outage.train.stderr
    assert "WARNING mtbert: MLflow unreachable while training" in err
    assert (f"metric values of run {outage.run_id} written to {UNSENT}; the next tracked run "
            "(any mtbert command that trains or evaluates) sends them") in err
    assert f"could not mark MLflow run {outage.run_id} FINISHED" in err


def test_unsent_metrics_complete_what_the_server_got(outage: Outage) -> None:
    rows = outage.unsent_rows
    assert rows and {r["run_id"] for r in rows} == {outage.run_id}
    unsent = {r["step"] for r in rows if r["key"] == "train/lr"}
    sent = outage.after["sent_before_replay"]
    assert sent and unsent and not sent & unsent
    assert sent | unsent == set(range(1, TOTAL_STEPS + 1))
    assert any(r["key"] == "train/wall_s" for r in rows)
    assert {"train/sst/loss", "train/para/loss", "train/sts/loss"} <= {r["key"] for r in rows}


def test_next_train_sends_the_unsent_metrics(outage: Outage) -> None:
    replay = outage.replay
    assert replay.returncode == 0, replay.stderr[-4000:]
    assert f"sent {len(outage.unsent_rows)} metric values buffered in {UNSENT}" in replay.stderr
    assert not (outage.root / UNSENT).exists()
    assert outage.after["lr_steps"] == list(range(1, TOTAL_STEPS + 1))
    assert "train/wall_s" in outage.after["metrics"]
    assert outage.after["status"] == "FINISHED"


def test_callback_buffers_fast_and_sends_when_the_server_returns(outage: Outage) -> None:
    side = outage.side
    assert side["pending"] == 5  # steps 6-10 kept while the server was dead
    assert side["failing_s"] < 10, side  # one failed send costs milliseconds, not minutes of retries
    assert side["pending_after"] == 0 and side["closed"] is None  # nothing left for a fallback file
    assert side["history"] == list(range(1, 16))


def test_bounded_http_restores_the_environment(monkeypatch) -> None:
    from mtbert.pipeline.tracking import bounded_http

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "77")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    with bounded_http():
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "10"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "77"
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ


def test_dead_server_costs_milliseconds_per_flush(caplog) -> None:
    """Without a server at all: the callback's flush fails fast, warns once and keeps the metrics."""
    from mtbert.pipeline.tracking import MlflowCallback

    uri = f"http://127.0.0.1:{free_port()}"
    with mlflow_in_process(uri), caplog.at_level(logging.WARNING, logger="mtbert"):
        cb = MlflowCallback("0" * 32, every=1, retry_s=0)
        start = time.monotonic()
        for step in range(1, 4):
            cb.on_step(_at(step), {"a": 1.0, "b": 2.0})
        elapsed = time.monotonic() - start
    assert elapsed < 10 and len(cb.pending) == 6
    assert caplog.text.count("MLflow unreachable while training") == 1
