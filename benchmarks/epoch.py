"""Epoch benchmark: one multitask training epoch at quick-profile sizes, batching policies compared.

The quick profile (params.yaml) trains on 3000 SST, 3000 Quora and 2000 STS examples (pairs
cross-encoded, max_length 128, batch 32, round-robin sampler: every step holds one batch of each
task). Every variant trains the same MultitaskBert with the same optimizer and ``train_step``;
only the batches, and whether the encoder skips padding, differ:

- ours: the pipeline as configured, i.e. length-bucketed batches padded to their own longest row
  (``train.bucket``, ``train.max_tokens``) and the encoder's unpadded dense path.
- fixed128_dense (the peer): random batches padded to 128 and a dense encoder (``unpad=False``),
  which computes every padding position like a plain BERT does.
- fixed128_unpad: the same fixed-128 batches with the unpadded path on (isolates batching).
- starter: what the CS224N starter actually does: random batches padded to their own longest
  row (``tokenizer(..., padding=True)``), dense encoder.

A full epoch of the slow variants takes far longer than 6 minutes here, so each variant runs
the same number of steps drawn evenly from its own epoch schedule (including collation), the
variants alternating step by step; the epoch time is extrapolated as mean step time x steps per
epoch, with its standard error. Run: ``python benchmarks/epoch.py`` (about 4 minutes).
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

NAME = "epoch"
GOAL = 3.0
FIXED_LENGTH = 128
# variant -> (bucketed batches, pad every batch to FIXED_LENGTH, encoder unpad)
VARIANTS: dict[str, tuple[bool, bool, bool]] = {
    "ours": (True, False, True),
    "fixed128_dense": (False, True, False),
    "fixed128_unpad": (False, True, True),
    "starter": (False, False, False),
}
PEER = "fixed128_dense"


def load_data(cfg: Any, data_dir: Path, smoke: bool) -> tuple[dict[str, Any], Any]:
    """Quick-profile training rows, sampled as `project.train_frames` does, tokenized once."""
    from mtbert.batching import tokenize_frame
    from mtbert.data import read_split
    from mtbert.model.load_hf import load_tokenizer
    from mtbert.tasks import TASKS

    tokenizer = load_tokenizer(cfg.model.checkpoint)
    data = {}
    for task in TASKS:
        frame = read_split(data_dir, task, "train", on_error=cfg.data.on_error).frame
        size = 40 if smoke else cfg.data.train_size.get(task)
        if size is not None and size < len(frame):
            frame = frame.sample(n=size, random_state=cfg.seed).reset_index(drop=True)
        data[task] = tokenize_frame(tokenizer, frame, task, cfg.model.pair_encoding,
                                    cfg.model.max_length)
    return data, tokenizer


def plan(data: dict[str, Any], train_cfg: Any, seed: int, bucket: bool) -> list[dict[str, list[int]]]:
    """The epoch's steps: for each step, the rows of each task's batch (round-robin cycling)."""
    from mtbert.train import epoch_plan

    cfg = dataclasses.replace(train_cfg, bucket=bucket, max_tokens=train_cfg.max_tokens if bucket else 0)
    schedule, batches = epoch_plan(data, cfg, seed, 0)
    cursor = dict.fromkeys(batches, 0)
    steps = []
    for tasks in schedule:
        step = {}
        for task in tasks:
            step[task] = batches[task][cursor[task] % len(batches[task])]
            cursor[task] += 1
        steps.append(step)
    return steps


def padding_stats(data: dict[str, Any], steps: list[dict[str, list[int]]], fixed: bool) -> dict[str, float]:
    """Padding fraction over every batch the epoch trains on, and tokens per epoch."""
    real = slots = 0
    for step in steps:
        for task, rows in step.items():
            lengths = data[task].lengths()
            n_seg = len(data[task].segments[rows[0]])
            width = FIXED_LENGTH if fixed else max(lengths[r] for r in rows)
            real += sum(len(ids) for r in rows for ids, _ in data[task].segments[r])
            slots += width * len(rows) * n_seg
    return {"padding_fraction": 1.0 - real / slots, "real_tokens": real, "padded_slots": slots}


def pad_to(batch: Any, width: int) -> Any:
    """Pad a collated batch's (B, T) tensors on the right to (B, width)."""
    import torch.nn.functional as F

    from mtbert.batching import Batch, Encoded

    grow = width - batch.enc.input_ids.shape[1]
    enc = Encoded(*(F.pad(t, (0, grow)) for t in
                    (batch.enc.input_ids, batch.enc.attention_mask, batch.enc.token_type_ids)))
    return Batch(batch.task, enc, batch.labels, batch.rows)


def step_fn(model: Any, optimizer: Any, data: dict[str, Any], cfg: Any, variant: str):
    """A callable running one training step (collation included) of `variant`."""
    from mtbert.batching import collate
    from mtbert.train import train_step

    _, fixed, unpad = VARIANTS[variant]

    def run(step: dict[str, list[int]], seed: int) -> None:
        model.encoder.unpad = unpad
        batches = [collate(data[task], rows) for task, rows in step.items()]
        if fixed:
            batches = [pad_to(b, FIXED_LENGTH) for b in batches]
        train_step(model, batches, optimizer, cfg, seed)

    return run


def time_variants(model: Any, optimizer: Any, data: dict, cfg: Any, plans: dict,
                  samples: int) -> dict[str, list[float]]:
    """Run `samples` evenly spaced steps of every variant, alternating; seconds per step."""
    runs = {v: step_fn(model, optimizer, data, cfg.train, v) for v in plans}
    times: dict[str, list[float]] = {v: [] for v in plans}
    names = list(plans)
    for v in names:  # warm-up: one step each (first-call allocations)
        runs[v](plans[v][-1], 0)
    for i in range(samples):
        shift = i % len(names)
        for v in names[shift:] + names[:shift]:
            steps = plans[v]
            index = (i * len(steps)) // samples
            start = time.perf_counter()
            runs[v](steps[index], index)
            times[v].append(time.perf_counter() - start)
        print(f"sample {i + 1}/{samples}: " + ", ".join(f"{v} {times[v][-1]:.2f}s" for v in names),
              flush=True)
    return times


def breakdown(model: Any, optimizer: Any, data: dict, cfg: Any, steps: list, n: int) -> dict[str, Any]:
    """Where a step of ours goes: seconds per phase of `train_step` (timed one by one, no
    profiler), then the top operators by self CPU time over the same steps under torch.profiler."""
    from torch.profiler import profile

    model.encoder.unpad = True
    model.train()
    phases = dict.fromkeys(("collate", "forward_and_loss", "backward", "clip", "optimizer"), 0.0)
    picks = [steps[(i * len(steps)) // n] for i in range(n)]
    for step in picks:
        _phased_step(model, optimizer, data, cfg, step, phases)
    with profile() as prof:
        for step in picks:
            _phased_step(model, optimizer, data, cfg, step, dict.fromkeys(phases, 0.0))
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
    return {"steps": n, "seconds_per_step": {k: v / n for k, v in phases.items()},
            "top_ops_self_cpu_ms_per_step": {e.key: e.self_cpu_time_total / 1e3 / n for e in ops}}


def _phased_step(model: Any, optimizer: Any, data: dict, cfg: Any, step: dict,
                 phases: dict[str, float]) -> None:
    """`train_step`'s work for one step (no PCGrad/SMART), adding each phase's seconds."""
    import torch

    from mtbert.batching import collate
    from mtbert.train import batch_loss

    clock = time.perf_counter()
    batches = [collate(data[task], rows) for task, rows in step.items()]
    clock = _tick(phases, "collate", clock)
    for batch in batches:
        loss = cfg.loss_scale.get(batch.task) * batch_loss(model, batch, cfg)
        clock = _tick(phases, "forward_and_loss", clock)
        loss.backward()
        clock = _tick(phases, "backward", clock)
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.grad_clip)
    clock = _tick(phases, "clip", clock)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    _tick(phases, "optimizer", clock)


def _tick(phases: dict[str, float], name: str, since: float) -> float:
    now = time.perf_counter()
    phases[name] += now - since
    return now


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = _common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=6, help="steps timed per variant")
    parser.add_argument("--breakdown", type=int, default=4,
                        help="steps of ours to split into phases and profile (0: skip)")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="override train.max_tokens for ours (token-budget batches)")
    args = parser.parse_args(argv)
    start = _common.cpu_snapshot()
    _common.setup(args.threads)
    import torch

    from mtbert.config import load_config
    from mtbert.model.multitask import build_multitask
    from mtbert.optim import build_optimizer, lr_scale_fn

    overrides = [f"model.checkpoint={_common.checkpoint(args.smoke)}"]
    if args.max_tokens is not None:
        overrides.append(f"train.max_tokens={args.max_tokens}")
    cfg = load_config(_common.REPO / "params.yaml", ["profile=quick", *overrides])
    data, _ = load_data(cfg, args.data_dir or _common.default_data_dir(), args.smoke)
    torch.manual_seed(cfg.seed)
    model = build_multitask(cfg.model)
    layers = model.encoder.config.num_hidden_layers
    optimizer = build_optimizer(model, cfg.train.optimizer, cfg.train.lr, cfg.train.weight_decay,
                                lr_scale=lr_scale_fn(layers, cfg.train))  # as the train stage builds it
    plans = {v: plan(data, cfg.train, cfg.seed, VARIANTS[v][0]) for v in VARIANTS}
    stats = {v: padding_stats(data, plans[v], VARIANTS[v][1]) for v in VARIANTS}
    samples = 2 if args.smoke else args.samples
    times = time_variants(model, optimizer, data, cfg, plans, samples)
    payload = summarize(cfg, plans, stats, times, samples)
    if args.breakdown:
        payload["breakdown_ours"] = breakdown(model, optimizer, data, cfg.train, plans["ours"],
                                              1 if args.smoke else args.breakdown)
        print("ours per step: " + ", ".join(f"{k} {v:.3f}s" for k, v in
                                            payload["breakdown_ours"]["seconds_per_step"].items()))
    path = _common.write_result(_common.result_path(NAME, args.out, args.smoke), NAME, payload, start)
    print(f"wrote {path}")
    return payload


def summarize(cfg: Any, plans: dict, stats: dict, times: dict, samples: int) -> dict[str, Any]:
    """Extrapolated epoch seconds per variant, padding fractions and the goal check."""
    variants = {}
    for v, steps in plans.items():
        mean = statistics.fmean(times[v])
        sem = statistics.stdev(times[v]) / len(times[v]) ** 0.5 if len(times[v]) > 1 else 0.0
        variants[v] = {"steps_per_epoch": len(steps), "mean_step_s": mean,
                       "median_step_s": _common.median(times[v]),
                       "epoch_s": mean * len(steps), "epoch_s_stderr": sem * len(steps),
                       **stats[v], "step_times_s": times[v]}
        print(f"{v:<15} padding {stats[v]['padding_fraction']:.2f}  epoch ~{mean * len(steps):6.0f}s "
              f"(+- {sem * len(steps):.0f})", flush=True)
    ours, peer = variants["ours"]["epoch_s"], variants[PEER]["epoch_s"]
    return {
        "unit": "seconds per epoch (extrapolated)",
        "ours": ours, "peer": peer, "ratio": peer / ours,
        "ratio_vs": {v: variants[v]["epoch_s"] / ours for v in variants},
        "goal": f"ratio >= {GOAL} vs {PEER}", "goal_met": peer / ours >= GOAL,
        "setup": {
            "profile": "quick", "train_size": dataclasses.asdict(cfg.data.train_size),
            "batch_size": cfg.train.batch_size, "max_tokens": cfg.train.max_tokens,
            "sampler": cfg.train.sampler, "optimizer": cfg.train.optimizer,
            "pair_encoding": cfg.model.pair_encoding, "max_length": cfg.model.max_length,
            "samples_per_variant": samples,
            "method": "evenly spaced steps of each variant's own epoch schedule, variants "
                      "alternating step by step after one warm-up step each; epoch = mean step x "
                      "steps per epoch (collation included, tokenization excluded: done once)",
            "peer": PEER, "variants": {v: dict(zip(("bucket", "pad_to_128", "unpad"), f))
                                       for v, f in VARIANTS.items()},
        },
        "variants": variants,
    }


if __name__ == "__main__":
    main()
