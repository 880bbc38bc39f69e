"""Shared helpers for the benchmarks: setup, machine facts, alternating timers, real data, results.

Every benchmark times ours and its peer in the same process, alternating call by call (the order
rotates each round so neither side always runs first or second), and reports medians. Results go
to ``benchmarks/results/<name>.json`` with at least the keys ``ours``, ``peer``, ``unit``,
``ratio`` (peer time / our time, so > 1 means ours is faster) and ``setup``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"

# Set before transformers is imported (it reads them at import time).
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
REQUIRED_KEYS = ("ours", "peer", "unit", "ratio", "setup")
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def setup(threads: int) -> None:
    """Offline environment and a fixed number of torch threads (intra-op and inter-op)."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process (in-process smoke tests)
        pass


def default_data_dir() -> Path:
    """The course data: MTBERT_DATA_DIR, else params.yaml's data.source relative to the repo."""
    if "MTBERT_DATA_DIR" in os.environ:
        return Path(os.environ["MTBERT_DATA_DIR"])
    from mtbert.config import load_config

    return (REPO / load_config(REPO / "params.yaml").data.source).resolve()


def base_parser(description: str) -> argparse.ArgumentParser:
    """Arguments every benchmark takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--smoke", action="store_true",
                        help="seconds-long run on tiny sizes, for tests; its numbers mean nothing")
    parser.add_argument("--out", type=Path, default=None,
                        help="result JSON (default benchmarks/results/<name>.json; smoke: a temp file)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--data-dir", type=Path, default=None, help="course CSVs")
    return parser


def result_path(name: str, out: Path | None, smoke: bool) -> Path:
    if out is not None:
        return out
    if smoke:
        return Path(tempfile.gettempdir()) / f"mtbert-bench-{name}-smoke.json"
    return RESULTS_DIR / f"{name}.json"


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_model() -> str:
    """The CPU model name as lscpu reports it."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def machine_info() -> dict[str, Any]:
    """Facts that decide how fast a CPU benchmark can be, recorded with every result."""
    import torch

    flags = _cpu_flags()
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "isa": {flag: flag in flags for flag in ISA_FLAGS},
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    }


def alternate(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Time each callable `repeats` times, interleaved; returns seconds per call by name.

    Round r calls the callables in an order rotated by r, so that neither side always runs right
    after the other (caches, turbo, a neighbour's load). `warmup` untimed rounds come first.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return times


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def paired_ratio(ours: Sequence[float], peer: Sequence[float]) -> float:
    """Median over rounds of peer time / our time (robust to load that drifts between rounds)."""
    return median([p / o for o, p in zip(ours, peer)])


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of a list of timings (seconds)."""
    return {"median_s": median(values), "min_s": float(min(values)), "max_s": float(max(values)),
            "n": len(values)}


def cpu_snapshot() -> dict[str, Any]:
    """Wall time, load average, busy CPU seconds of the machine and of this process tree."""
    busy = 0.0
    try:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait
    except (OSError, ValueError):
        pass
    own = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for f in ("ru_utime", "ru_stime"))
    return {"wall": time.time(), "loadavg": list(os.getloadavg()), "busy_s": busy, "own_s": own}


def contention(start: dict[str, Any]) -> dict[str, Any]:
    """How busy the machine was with other processes while the benchmark ran.

    `other_processes_cores`: CPU seconds used by everything but this benchmark (and its child
    processes) per wall second; 0 means the benchmark had the machine to itself.
    """
    end = cpu_snapshot()
    wall = max(end["wall"] - start["wall"], 1e-9)
    others = (end["busy_s"] - start["busy_s"]) - (end["own_s"] - start["own_s"])
    return {"loadavg_start": start["loadavg"], "loadavg_end": end["loadavg"],
            "other_processes_cores": round(max(others, 0.0) / wall, 2), "wall_s": round(wall, 1)}


def write_result(path: Path, name: str, payload: dict[str, Any], start: dict[str, Any]) -> Path:
    """Add machine facts, load and timing to `payload` and write it as JSON.

    Args:
        start: `cpu_snapshot()` taken when the benchmark began.
    """
    missing = [key for key in REQUIRED_KEYS if key not in payload]
    if missing:
        raise ValueError(f"benchmark {name} result lacks keys {missing}")
    record = {
        "benchmark": name,
        **payload,
        "machine": machine_info(),
        **contention(start),
        "command": "python " + " ".join([os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]]),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    return path


def project_env(threads: int) -> dict[str, str]:
    """The environment of `mtbert` commands a benchmark runs in a project folder: offline, MLflow
    into a local store in that folder (SQLite; `MTBERT_BENCH_MLFLOW_URI` names another, such as
    `file:./mlruns` on a bare GPU image without SQLAlchemy), `threads` OpenMP threads."""
    env = dict(os.environ, **OFFLINE_ENV)
    env["MLFLOW_TRACKING_URI"] = os.environ.get("MTBERT_BENCH_MLFLOW_URI", "sqlite:///mlflow.db")
    env["OMP_NUM_THREADS"] = str(threads)
    return env


def course_sequences(tokenizer: Any, data_dir: Path, max_length: int,
                     tasks: Sequence[str] = ("sst", "para", "sts"),
                     limit: int | None = None) -> list[tuple[list[int], list[int]]]:
    """Tokenized training inputs as the pipeline builds them (pairs cross-encoded).

    Returns (input_ids, token_type_ids) per example: SST sentences, Quora and STS pairs.
    """
    from mtbert.batching import tokenize_frame
    from mtbert.data import read_split

    seqs: list[tuple[list[int], list[int]]] = []
    for task in tasks:
        frame = read_split(data_dir, task, "train", on_error="skip").frame
        if limit is not None:
            frame = frame.head(limit)
        data = tokenize_frame(tokenizer, frame, task, "cross", max_length)
        seqs += [seg[0] for seg in data.segments]
    return seqs


def encoder_flops(hidden: int, ffn: int, layers: int, lengths: Sequence[int], train: bool) -> float:
    """Matmul FLOPs of a BERT encoder over sequences of the given real lengths.

    Per token and layer: QKV (3H^2), attention output (H^2) and FFN (2 H F) multiply-adds; per
    sequence and layer: QK^T and PV (2 T^2 H). Two FLOPs per multiply-add; training counts the
    backward pass as twice the forward. Embeddings, LayerNorm, softmax and GELU are left out.
    """
    dense = 2 * (4 * hidden * hidden + 2 * hidden * ffn) * layers * sum(lengths)
    attention = 2 * 2 * hidden * layers * sum(t * t for t in lengths)
    pooler = 2 * hidden * hidden * len(lengths)
    forward = dense + attention + pooler
    return float(3 * forward if train else forward)


def matmul_peak(dtype_name: str, sizes: Sequence[int], reps: int = 3,
                max_call_s: float = 5.0) -> dict[str, Any]:
    """Best GFLOP/s of a square torch matmul (the machine's practical peak for this dtype).

    Sizes are tried in order; once one call takes longer than `max_call_s` (bf16 without
    hardware support runs at about 1 GFLOP/s), larger sizes are skipped and said so.
    """
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    per_size: dict[str, float] = {}
    skipped: list[int] = []
    for n in sizes:
        if skipped or (per_size and max(2 * n**3 / (g * 1e9) for g in per_size.values()) > max_call_s):
            skipped.append(n)
            continue
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        start = time.perf_counter()
        torch.mm(a, b)  # warm-up (and a first timing, for the skip rule)
        first = time.perf_counter() - start
        best = first
        for _ in range(reps if first < max_call_s else 0):
            start = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - start)
        per_size[str(n)] = round(2 * n**3 / best / 1e9, 1)
    return {"dtype": dtype_name, "gflops": max(per_size.values()), "per_size_gflops": per_size,
            "skipped_sizes": skipped, "method": f"best of {reps} torch.mm (n x n) @ (n x n) after one warm-up"}


def tiny_checkpoint(dest: Path) -> Path:
    """A random 2-layer BERT (hidden 32, FFN 37) with MiniLM's tokenizer, for smoke runs."""
    import shutil

    import torch
    import transformers

    from mtbert.model.load_hf import resolve_checkpoint

    src = resolve_checkpoint("minilm")
    vocab = json.loads((src / "config.json").read_text())["vocab_size"]
    cfg = transformers.BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=37)
    torch.manual_seed(0)
    transformers.BertModel(cfg).save_pretrained(dest)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (src / name).exists():
            shutil.copy(src / name, dest / name)
    return dest


def checkpoint(smoke: bool) -> str:
    """The backbone to benchmark: MiniLM, or for smoke runs a tiny random one (made once)."""
    if not smoke:
        return "minilm"
    import atexit
    import shutil

    dest = Path(tempfile.gettempdir()) / f"mtbert-bench-tiny-{os.getpid()}"
    if not (dest / "config.json").exists():
        tiny_checkpoint(dest)
        atexit.register(shutil.rmtree, dest, True)
    return str(dest)
