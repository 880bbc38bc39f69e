"""Where a training run's resident memory goes: the breakdown behind ``benchmarks/memory.py``.

Runs the real train stage (``mtbert.pipeline.stages.train.run``, MLflow into the project's SQLite
file) in this process and reads ``/proc/self/status`` around each part of it:

- ``VmRSS`` after each part (what stays resident), and ``VmHWM`` (the peak) within it, reset
  before the part through ``/proc/self/clear_refs`` (Linux >= 4.0);
- after the run, ``malloc_trim(0)``: the memory glibc still held for reuse but no tensor used.

The parts are the train stage's own functions, wrapped here by name (importing, the tokenizer,
reading and tokenizing the tables, the model, the optimizer, each training step, the dev scoring at
epoch ends, each checkpoint, saving the model and its HF copy). A training step's peak holds the
activations of its longest batch; a step's record names the step and its batches' token counts.
Run by ``python benchmarks/memory.py --breakdown``; by hand:
``python benchmarks/memprobe.py PROJECT_DIR OUT_JSON [key=value ...]``.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

MB = 1024.0


def status_mb() -> dict[str, float]:
    """VmRSS and VmHWM of this process, in MB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / MB
    return out


def reset_peak() -> None:
    """Set VmHWM to the current VmRSS (writing 5 to clear_refs resets the peak)."""
    Path("/proc/self/clear_refs").write_text("5")


class Recorder:
    """Parts in order: name, RSS before and after, the peak within, seconds."""

    def __init__(self) -> None:
        self.parts: list[dict[str, Any]] = []
        self.steps: list[dict[str, Any]] = []

    def measure(self, name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        before = status_mb()["VmRSS"]
        reset_peak()
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            now = status_mb()
            self.parts.append({"part": name, "rss_before_mb": before, "rss_after_mb": now["VmRSS"],
                               "peak_mb": now["VmHWM"], "s": time.perf_counter() - start})

    def wrap(self, module: Any, attr: str, name: str) -> None:
        original = getattr(module, attr)

        @functools.wraps(original)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            return self.measure(name, original, *args, **kwargs)

        setattr(module, attr, wrapped)


def main(argv: list[str]) -> None:
    project, out_path, overrides = Path(argv[0]).resolve(), Path(argv[1]).resolve(), argv[2:]
    os.chdir(project)
    rec = Recorder()
    t0 = time.perf_counter()
    start_rss = status_mb()["VmRSS"]
    reset_peak()
    import torch  # noqa: F401

    from mtbert import train as core
    from mtbert.allocator import malloc_trim
    from mtbert.config import load_config
    from mtbert.pipeline.stages import train as stage

    now = status_mb()
    rec.parts.append({"part": "import torch, transformers, pandas, mlflow, mtbert",
                      "rss_before_mb": start_rss, "rss_after_mb": now["VmRSS"],
                      "peak_mb": now["VmHWM"], "s": time.perf_counter() - t0})
    cfg = load_config(project / "params.yaml", overrides)
    for attr, name in [("load_tokenizer", "tokenizer"), ("train_frames", "read training tables"),
                       ("tokenize_tasks", "tokenize training tables"),
                       ("build_multitask", "build model (pretrained weights)"),
                       ("build_optimizer", "build optimizer"), ("dev_scorer", "dev scorer setup"),
                       ("save_checkpoint", "checkpoint"), ("save_model", "save model"),
                       ("save_hf_encoder", "save HF encoder copy"),
                       ("write_curves", "write curves")]:
        rec.wrap(stage, attr, name)
    rec.wrap(core.DevScorer, "__call__", "dev scoring (epoch end)")
    original_step = core.train_step

    def train_step(model: Any, batches: Any, *args: Any, **kwargs: Any) -> Any:
        shapes = [list(b.enc.input_ids.shape) for b in batches]
        tokens = [int(b.enc.attention_mask.sum()) for b in batches]
        before = status_mb()["VmRSS"]
        reset_peak()
        out = original_step(model, batches, *args, **kwargs)
        now = status_mb()
        rec.steps.append({"step": len(rec.steps) + 1, "tasks": [b.task for b in batches],
                          "shapes": shapes, "real_tokens": tokens, "rss_before_mb": before, "peak_mb": now["VmHWM"],
                          "rss_after_mb": now["VmRSS"]})
        return out

    core.train_step = train_step
    stage.run(cfg, resume=False)
    end = status_mb()["VmRSS"]
    trimmed = malloc_trim()
    after_trim = status_mb()["VmRSS"]
    payload = {"overrides": overrides, "parts": rec.parts, "steps": rec.steps,
               "end_rss_mb": end, "malloc_trim": trimmed, "rss_after_trim_mb": after_trim,
               "wall_s": time.perf_counter() - t0}
    out_path.write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
