"""Smoke tests: every benchmark script runs end to end with --smoke and writes a complete result.

Not timing tests: a smoke run uses tiny sizes and its numbers mean nothing. Each script is run
as a user runs it (``python benchmarks/<name>.py``), in its own process.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Each benchmark runs in its own process: integration tests (`pytest -m integration`).
pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
REQUIRED = ("ours", "peer", "unit", "ratio", "setup")
# memory runs the real `mtbert train` CLI plus two training processes: about a minute.
# gpu --smoke runs every section of the GPU proof on the CPU (tiny profile, torchrun with gloo).
BENCHMARKS = ("encoder", "epoch", "trainer", "predict", pytest.param("memory", marks=pytest.mark.slow),
              "gpu", "quantize", "bf16")


def _numbers(value: object) -> list[float]:
    """All numbers in a result value (a number or a dict of numbers)."""
    if isinstance(value, dict):
        return [v for item in value.values() for v in _numbers(item)]
    return [float(value)] if isinstance(value, (int, float)) else []


def _run(name: str, out: Path, data_dir: Path, *extra: str) -> dict:
    # One thread: on a CPU shared with other jobs, two OpenMP threads can stall each other.
    cmd = [sys.executable, str(REPO / "benchmarks" / f"{name}.py"), "--smoke", "--threads", "1",
           "--out", str(out), "--data-dir", str(data_dir), *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=out.parent, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(out.read_text())


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_smoke_writes_complete_result(name: str, tmp_path: Path, data_dir: Path,
                                                request: pytest.FixtureRequest) -> None:
    extra: list[str] = []
    if name in ("memory", "gpu", "bf16"):  # reuse the session's prepared tiny project instead of preparing again
        extra = ["--prepared-project", str(request.getfixturevalue("prepared_project"))]
    if name == "quantize":  # predicts with the session's tiny trained model
        extra = ["--project", str(request.getfixturevalue("trained_project"))]
    result = _run(name, tmp_path / f"{name}.json", data_dir, *extra)
    missing = [key for key in REQUIRED if key not in result]
    assert not missing, f"{name} result lacks {missing}"
    for key in ("ours", "peer", "ratio"):
        values = _numbers(result[key])
        assert values, f"{name}: {key} holds no number"
        assert all(math.isfinite(v) and v > 0 for v in values), f"{name}: {key} = {result[key]}"
    assert isinstance(result["unit"], str) and result["unit"]
    assert isinstance(result["setup"], dict) and result["setup"]
    machine = result["machine"]
    assert machine["torch_threads"] == 1 and machine["cpu_model"]
    assert len(result["loadavg_start"]) == 3 and result["other_processes_cores"] >= 0
    if name == "gpu":
        assert result["parity"]["ok"], result["parity"]
        assert set(result["quick_profile"]["runs"]) == {"cpu_bf16", "cpu_fp32"}
        assert result["torchrun"]["model_saved"] and result["torchrun"]["backend"] == "gloo"
        sets = result["sdpa_backends"]["sets"]
        assert set(sets) == {"torch_default", "mtbert"}, sets
        assert all(s["cold_ms_mean"] > 0 and s["warm_ms_mean"] > 0 for s in sets.values()), sets
        assert result["complete"] is True
    if name == "bf16":
        assert set(result["quick"]) >= {"fp32", "bf16", "metric_delta_bf16_minus_fp32"}
    if name == "memory":
        assert {"mtbert_train_ours", "mtbert_train_malloc_default"} <= set(result["runs"])


def test_gpu_benchmark_without_cuda_says_so_and_exits_0(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu.py"), "--out", str(out)],
                          env=dict(os.environ, CUDA_VISIBLE_DEVICES=""), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "no CUDA device" in proc.stdout and not out.exists()


def test_smoke_result_defaults_to_a_temp_file_not_the_results_dir(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import _common
    finally:
        sys.path.pop(0)
    smoke = _common.result_path("encoder", None, smoke=True)
    assert _common.RESULTS_DIR not in smoke.parents
    assert _common.result_path("encoder", None, smoke=False) == _common.RESULTS_DIR / "encoder.json"
    with pytest.raises(ValueError, match="lacks keys"):
        _common.write_result(tmp_path / "x.json", "x", {"ours": 1.0}, _common.cpu_snapshot())
