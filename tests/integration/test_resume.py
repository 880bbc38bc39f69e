"""Resume after SIGKILL is exact: a killed and resumed `mtbert train` equals an uninterrupted one.

One module fixture does the expensive runs, in copies of the prepared tiny project:

* A: `mtbert train` (2 epochs of 12 steps, annealed sampler, dropout on, a checkpoint every 5
  steps), SIGKILLed mid-epoch once a checkpoint exists; then `mtbert train` again (resume is the
  default).
* B: a copy of A right after the kill, trained with `mtbert -q train --no-resume`: an uninterrupted
  run from step 0 that has to ignore the checkpoint lying there. It recomputes every layer's
  activations in the backward pass (`train.recompute_tokens=1`), which must change nothing.
* C: another copy of A after the kill, trained with a different config: refused, the checkpoint
  kept; then with only runtime settings changed (threads, checkpoint interval): resumed.

The tracking store is each project's own `sqlite:///mlflow.db`; the per-step metrics it records
tell where each run started.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mtbert.checkpoint import CHECKPOINT_FILE, MODEL_FILE, load_checkpoint
from tests.integration.conftest import MLFLOW_ENV_KEYS

pytestmark = pytest.mark.integration

# fp32: run C resumes on 1 thread what ran on 2, and is compared at 1e-4; bf16 (auto, on a CPU
# with bf16 units) rounds differently with the thread count, far beyond that.
CONFIG = ["train.precision=fp32", "train.epochs=2", "train.sampler=annealed",
          "train.checkpoint_every=5", "model.encoder_dropout=0.1", "model.head_dropout=0.2",
          "data.train_size={sst: 32, para: 32, sts: 32}"]
TOTAL_STEPS = 24  # 4 batches of 8 per task; annealed draws 12 single-task steps per epoch
CHECKPOINT = Path("artifacts/model-checkpoint") / CHECKPOINT_FILE
MODEL = Path("artifacts/model") / MODEL_FILE
BAR = re.compile(r"train:\s+\d+%\|")  # a tqdm bar line: "train:  14%|█▍  | 5/36 [...]"


@dataclass
class Runs:
    a: Path
    b: Path
    c: Path
    killed_at: dict = field(default_factory=dict)  # the checkpoint's TrainState when A was killed
    killed_model: dict = field(default_factory=dict)  # and its model weights
    model_after_kill: bool = True  # whether A had written a final model when it was killed
    killed_stderr: str = ""
    killed_bytes: bytes = b""
    kept_bytes: bytes = b""
    out: dict[str, subprocess.CompletedProcess] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in MLFLOW_ENV_KEYS}


def _mtbert(runs: Runs, name: str, args: list[str], cwd: Path, expect: int = 0) -> subprocess.CompletedProcess:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "mtbert.cli", *args], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=600)
    runs.seconds[name] = time.monotonic() - start
    if proc.returncode != expect:
        pytest.fail(f"{name}: mtbert {' '.join(args)} failed ({proc.returncode}):\n"
                    f"{proc.stderr[-4000:]}")
    runs.out[name] = proc
    return proc


def _train_and_kill(root: Path, runs: Runs) -> None:
    """Start `mtbert train`; SIGKILL it a little after its first checkpoint appears."""
    err_path = root / "killed-stderr.txt"
    start = time.monotonic()
    with open(err_path, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "mtbert.cli", "train", *CONFIG], cwd=root,
                                env=_env(), stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True)
    try:
        while not (root / CHECKPOINT).exists():
            assert proc.poll() is None, f"train ended before a checkpoint:\n{err_path.read_text()}"
            assert time.monotonic() - start < 300, "no checkpoint within 300 s"
            time.sleep(0.05)
        time.sleep(1.0)  # let it take a step or two past the checkpoint: that work is lost
        assert proc.poll() is None, "train finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    runs.seconds["A killed"] = time.monotonic() - start
    runs.killed_stderr = err_path.read_text()
    payload = load_checkpoint(root / CHECKPOINT)
    runs.killed_at, runs.killed_model = payload["state"], payload["model"]
    runs.model_after_kill = (root / MODEL).exists()


@pytest.fixture(scope="module")
def runs(prepared_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    base = tmp_path_factory.mktemp("resume")
    a = base / "a"
    shutil.copytree(prepared_project, a)
    runs = Runs(a=a, b=base / "b", c=base / "c")
    _train_and_kill(a, runs)
    shutil.copytree(a, runs.b)
    shutil.copytree(a, runs.c)
    _mtbert(runs, "A resumed", ["train", *CONFIG], a)
    # B also recomputes every batch's activations in backward (train.recompute_tokens=1): the
    # bitwise comparisons with A hold only if recomputing changes nothing either.
    _mtbert(runs, "B --no-resume", ["-q", "train", "--no-resume", *CONFIG, "train.recompute_tokens=1"], runs.b)
    runs.killed_bytes = (runs.c / CHECKPOINT).read_bytes()
    _mtbert(runs, "C other config", ["train", *CONFIG[:-1], "data.train_size={sst: 8, para: 8, sts: 8}"],
            runs.c, expect=2)
    runs.kept_bytes = (runs.c / CHECKPOINT).read_bytes()
    _mtbert(runs, "C runtime only", ["train", *CONFIG, "train.threads=1",
                                     "train.checkpoint_every=3"], runs.c)
    _mtbert(runs, "A evaluate", ["-q", "evaluate"], a)
    _mtbert(runs, "B evaluate", ["-q", "evaluate"], runs.b)
    print("\nresume timings (s):", {k: round(v, 1) for k, v in runs.seconds.items()})
    return runs


def _step_metrics(root: Path) -> list[dict[str, dict[int, float]]]:
    """Per run (oldest first) of the project's MLflow store: metric -> {step: value}."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("mtbert")
    found = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    return [{key: {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
             for key in run.data.metrics} for run in found]


def test_kill_happened_mid_epoch_after_a_checkpoint(runs: Runs) -> None:
    state = runs.killed_at
    assert state["epoch"] == 0 and 0 < state["step_in_epoch"] < TOTAL_STEPS // 2, state
    assert state["global_step"] % 5 == 0 and state["total_steps"] == TOTAL_STEPS
    assert not runs.model_after_kill


def test_resumed_run_continues_from_the_checkpoint(runs: Runs) -> None:
    step = runs.killed_at["global_step"]
    err = runs.out["A resumed"].stderr
    assert f"resuming from {CHECKPOINT} at epoch 0, step {step}" in err
    assert f"trained {TOTAL_STEPS} steps" in runs.out["A resumed"].stdout
    assert not (runs.a / CHECKPOINT).exists()  # a finished run leaves nothing to resume
    assert not (runs.a / CHECKPOINT.parent).exists()  # not even the empty folder
    resumed = _step_metrics(runs.a)[-1]
    assert sorted(resumed["train/lr"]) == list(range(step + 1, TOTAL_STEPS + 1))


def test_resumed_model_is_bitwise_identical_to_the_uninterrupted_one(runs: Runs) -> None:
    resumed, fresh = load_file(str(runs.a / MODEL)), load_file(str(runs.b / MODEL))
    assert resumed.keys() == fresh.keys() and len(resumed) > 50
    different = [k for k in resumed if not torch.equal(resumed[k], fresh[k])]
    assert different == []
    # The comparison has teeth: the weights moved after the checkpoint the resume started from.
    moved = [k for k, v in runs.killed_model.items() if not torch.equal(resumed[k], v)]
    assert len(moved) > len(resumed) // 2, "training after the checkpoint changed almost nothing"


def test_per_step_losses_match_the_uninterrupted_run(runs: Runs) -> None:
    step = runs.killed_at["global_step"]
    resumed, fresh = _step_metrics(runs.a)[-1], _step_metrics(runs.b)[-1]
    assert sorted(fresh["train/lr"]) == list(range(1, TOTAL_STEPS + 1))  # B started at step 0
    keys = [k for k in fresh if k.startswith("train/") and k != "train/wall_s"]
    assert {"train/sst/loss", "train/para/loss", "train/sts/loss", "train/lr"} <= set(keys)
    for key in keys:
        tail = {s: v for s, v in fresh[key].items() if s > step}
        assert resumed.get(key, {}) == tail, key


def test_dev_metrics_after_evaluate_are_identical(runs: Runs) -> None:
    resumed = json.loads((runs.a / "artifacts/eval/metrics.json").read_text())
    fresh = json.loads((runs.b / "artifacts/eval/metrics.json").read_text())
    assert set(resumed) >= {"dev/sst/accuracy", "dev/para/accuracy", "dev/sts/pearson", "dev/overall"}
    assert resumed == fresh


def test_no_resume_ignores_the_checkpoint(runs: Runs) -> None:
    out = runs.out["B --no-resume"]
    assert "resuming" not in out.stderr
    assert f"trained {TOTAL_STEPS} steps" in out.stdout
    assert not (runs.b / CHECKPOINT).exists()


def test_other_config_is_refused_and_the_checkpoint_kept(runs: Runs) -> None:
    out = runs.out["C other config"]
    assert out.stderr.strip().splitlines()[-1].startswith(
        f"mtbert train: {CHECKPOINT}: written by another run (settings changed: data.train_size.para 32 -> 8")
    assert "It is kept" in out.stderr and "--no-resume" in out.stderr and "Traceback" not in out.stderr
    assert runs.kept_bytes == runs.killed_bytes


def test_runtime_settings_resume_the_same_run(runs: Runs) -> None:
    out = runs.out["C runtime only"]
    assert f"resuming from {CHECKPOINT} at epoch 0" in out.stderr
    assert f"trained {TOTAL_STEPS} steps" in out.stdout
    weights = load_file(str(runs.c / MODEL))
    reference = load_file(str(runs.a / MODEL))  # A resumed with the same settings
    assert weights.keys() == reference.keys()
    assert all(torch.allclose(weights[k], reference[k], atol=1e-4) for k in weights)  # 1 vs 2 threads


def test_quiet_mode_hides_the_progress_bar(runs: Runs) -> None:
    assert BAR.search(runs.killed_stderr) and BAR.search(runs.out["A resumed"].stderr)
    quiet = runs.out["B --no-resume"]
    assert not BAR.search(quiet.stderr) and "step/s" not in quiet.stderr and "\r" not in quiet.stderr
    assert "INFO" not in quiet.stderr


def test_learning_curve_of_the_resumed_run_equals_the_uninterrupted_one(runs: Runs) -> None:
    # A's rows up to the checkpoint come from the curve file saved with it; none lost or repeated.
    resumed = (runs.a / "artifacts/model/curves.csv").read_text()
    fresh = (runs.b / "artifacts/model/curves.csv").read_text()
    steps = [int(line.split(",")[0]) for line in resumed.splitlines()[1:]]
    assert steps == list(range(1, TOTAL_STEPS + 1))  # annealed: one task per step
    assert resumed == fresh
    assert not (runs.a / CHECKPOINT.with_name("curves.csv")).exists()


def test_train_refuses_a_crafted_checkpoint_and_says_how_to_start_fresh(prepared_project: Path,
                                                                        tmp_path: Path) -> None:
    """A checkpoint whose unpickling would run a command: refused, command not run, clear advice."""
    root = tmp_path / "project"
    shutil.copytree(prepared_project, root)
    marker = tmp_path / "pwned"
    evil = (b"\x80\x04cposix\nsystem\n(V" + f"touch {marker}".encode() + b"\ntR.")  # os.system(...)
    (root / CHECKPOINT).parent.mkdir(parents=True)
    (root / CHECKPOINT).write_bytes(evil)
    proc = subprocess.run([sys.executable, "-m", "mtbert.cli", "train"], cwd=root, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert (f"mtbert train: {CHECKPOINT}: truncated, corrupt or not a tensors-only checkpoint "
            "(UnpicklingError: ") in proc.stderr
    assert "not resuming from it: start fresh with `mtbert train --no-resume`" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not marker.exists() and not (root / MODEL).exists()
    assert (root / CHECKPOINT).read_bytes() == evil  # left for inspection, not silently replaced
    pickle.loads(evil)  # the payload is real: plain unpickling runs the command
    assert marker.exists()
