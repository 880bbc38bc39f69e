"""bf16 on the CPU: autocast bf16 training against fp32, on the same steps and the same seed.

1. steps: quick-profile training steps (round-robin: one length-bucketed batch of each task), the
   same model and optimizer stepping in fp32 and in bf16 autocast alternately, on the same
   evenly spaced steps of the epoch; median seconds per step, ratio fp32 / bf16.
2. quick (skipped with --steps-only): the quick profile trained and evaluated by the real CLI
   (``mtbert train`` then ``mtbert evaluate``, all dev rows) in a fresh project, once with
   ``train.precision=fp32`` and once with ``bf16``, same seed; wall times and dev metrics.

bf16 matmuls are fast only where the CPU has bf16 units (avx512_bf16, amx_bf16); elsewhere they are
emulated and slow. The result records what this CPU has (``machine.isa``, and
``mtbert.precision.cpu_has_bf16``). Run: ``python benchmarks/bf16.py`` (about 10 minutes on an idle
2-core machine with avx512_bf16).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

NAME = "bf16"
PRECISIONS = ("fp32", "bf16")


def time_steps(cfg: Any, data_dir: Path, samples: int, smoke: bool) -> dict[str, list[float]]:
    """Seconds per training step in each precision, alternating step by step (order rotating)."""
    import torch

    import epoch
    from mtbert.batching import collate
    from mtbert.model.multitask import build_multitask
    from mtbert.optim import build_optimizer, lr_scale_fn
    from mtbert.train import train_step

    data, _ = epoch.load_data(cfg, data_dir, smoke)
    torch.manual_seed(cfg.seed)
    model = build_multitask(cfg.model)
    optimizer = build_optimizer(model, cfg.train.optimizer, cfg.train.lr, cfg.train.weight_decay,
                                lr_scale=lr_scale_fn(model.encoder.config.num_hidden_layers, cfg.train))
    steps = epoch.plan(data, cfg.train, cfg.seed, bucket=True)
    configs = {p: dataclasses.replace(cfg.train, precision=p) for p in PRECISIONS}

    def run(precision: str, index: int) -> float:
        batches = [collate(data[task], rows) for task, rows in steps[index].items()]
        start = time.perf_counter()
        train_step(model, batches, optimizer, configs[precision], index)
        return time.perf_counter() - start

    for p in PRECISIONS:  # warm-up: first-call allocations and kernel selection
        run(p, len(steps) - 1)
    times: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for i in range(samples):
        index = (i * len(steps)) // samples
        for p in (PRECISIONS if i % 2 == 0 else PRECISIONS[::-1]):
            times[p].append(run(p, index))
        print(f"step sample {i + 1}/{samples}: " + ", ".join(f"{p} {times[p][-1]:.2f}s" for p in PRECISIONS),
              flush=True)
    return times


def quick_runs(data_dir: Path, threads: int, smoke: bool, prepared: Path | None = None) -> dict[str, Any]:
    """`mtbert train` and `mtbert evaluate` in each precision in one fresh project."""
    import memory

    profile = "tiny" if smoke else "quick"
    env = _common.project_env(threads)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="mtbert-bf16-") as tmp:
        root = memory.make_project(Path(tmp), data_dir, profile, prepared)
        for precision in PRECISIONS:
            common = [f"train.precision={precision}", f"train.threads={threads}",
                      f"model.checkpoint={_common.checkpoint(smoke)}",
                      f"train.out_dir=artifacts/model-{precision}", f"eval.out_dir=artifacts/eval-{precision}"]
            walls = {}
            for stage in ("train", "evaluate"):
                start = time.perf_counter()
                subprocess.run([sys.executable, "-m", "mtbert.cli", "-q", stage, *common], cwd=root,
                               env=env, check=True, capture_output=True, timeout=3600)
                walls[f"{stage}_s"] = time.perf_counter() - start
            metrics = json.loads((root / f"artifacts/eval-{precision}/metrics.json").read_text())
            out[precision] = {**walls, "metrics": metrics, "command": f"mtbert train/evaluate {' '.join(common)}"}
            print(f"{profile} {precision}: train {walls['train_s']:.0f} s, evaluate {walls['evaluate_s']:.0f} s, "
                  f"overall {metrics['dev/overall']:.4f}", flush=True)
    out["metric_delta_bf16_minus_fp32"] = {
        k: out["bf16"]["metrics"][k] - out["fp32"]["metrics"][k]
        for k in out["fp32"]["metrics"] if isinstance(out["fp32"]["metrics"][k], (int, float))
        and isinstance(out["bf16"]["metrics"].get(k), (int, float))}
    out["train_speedup"] = out["fp32"]["train_s"] / out["bf16"]["train_s"]
    out["evaluate_speedup"] = out["fp32"]["evaluate_s"] / out["bf16"]["evaluate_s"]
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = _common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=12, help="training steps timed per precision")
    parser.add_argument("--steps-only", action="store_true", help="skip the quick-profile runs")
    parser.add_argument("--prepared-project", type=Path, default=None,
                        help="copy data/ and artifacts/ from this prepared project (tests)")
    args = parser.parse_args(argv)
    start = _common.cpu_snapshot()
    _common.setup(args.threads)
    from mtbert.config import load_config
    from mtbert.precision import cpu_has_bf16

    data_dir = (args.data_dir or _common.default_data_dir()).resolve()
    cfg = load_config(_common.REPO / "params.yaml",
                      ["profile=quick", f"model.checkpoint={_common.checkpoint(args.smoke)}"])
    times = time_steps(cfg, data_dir, 2 if args.smoke else args.samples, args.smoke)
    payload: dict[str, Any] = {
        "unit": "seconds per quick-profile training step (3 batches), median",
        "ours": _common.median(times["bf16"]), "peer": _common.median(times["fp32"]),
        "ratio": _common.paired_ratio(times["bf16"], times["fp32"]),
        "cpu_has_bf16": cpu_has_bf16(),
        "step_times": {p: _common.spread(times[p]) for p in PRECISIONS},
        "setup": {"ours": "train.precision=bf16 (torch.autocast bf16)", "peer": "train.precision=fp32",
                  "steps": "quick profile, round-robin, length-bucketed; the same evenly spaced steps "
                           "of epoch 1 in both precisions, alternating, one model and optimizer",
                  "threads": args.threads},
    }
    print(f"step: fp32 {payload['peer']:.3f} s, bf16 {payload['ours']:.3f} s, ratio {payload['ratio']:.2f}x",
          flush=True)
    if not args.steps_only:
        payload["quick"] = quick_runs(data_dir, args.threads, args.smoke, args.prepared_project)
    path = _common.write_result(_common.result_path(NAME, args.out, args.smoke), NAME, payload, start)
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
