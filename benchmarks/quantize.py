"""Prediction precision on the CPU: fp32 against dynamic int8 (and bf16 autocast), speed and dev metrics.

A trained model predicts the dev rows of every task three ways, alternating round by round:
fp32 (the peer: what `mtbert predict` does by default), int8 (`mtbert.model.quantize`: linear
layers in dynamic int8) and bf16 autocast (fast only on CPUs with avx512_bf16/AMX). Reported:
rows/s of each, the speed-up against fp32, and each variant's dev metrics and their change
against fp32 on the same rows.

    python benchmarks/quantize.py --project PROJECT   # a project with a trained artifacts/model
    python benchmarks/quantize.py --smoke --project PROJECT

Default rows: all SST (1,101) and STS (863) dev rows and the first 2,000 Quora dev pairs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

NAME = "quantize"
VARIANTS = ("fp32", "int8", "bf16")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = _common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, required=True,
                        help="project folder with artifacts/model and artifacts/prepared")
    parser.add_argument("--para-rows", type=int, default=2000, help="Quora dev pairs (default 2000)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    start = _common.cpu_snapshot()
    _common.setup(args.threads)
    import pandas as pd

    from mtbert.batching import tokenize_frame
    from mtbert.evaluate import predict, summary_metrics, task_metrics
    from mtbert.model.quantize import quantize_int8
    from mtbert.model.trained import load_trained

    model, tokenizer, cfg = load_trained(args.project / "artifacts/model")
    models = {"fp32": model, "int8": quantize_int8(model), "bf16": model}
    limit = {"sst": 64, "para": 64, "sts": 64} if args.smoke else {"sst": None, "para": args.para_rows,
                                                                   "sts": None}
    data, gold = {}, {}
    for task in model.tasks:
        frame = pd.read_parquet(args.project / "artifacts/prepared" / f"{task}-dev.parquet")
        frame = frame if limit[task] is None else frame.head(limit[task])
        data[task] = tokenize_frame(tokenizer, frame, task, cfg.model.pair_encoding, cfg.model.max_length)
        gold[task] = frame["label"].to_numpy()
    rows = sum(len(g) for g in gold.values())
    preds: dict[str, dict[str, Any]] = {v: {} for v in VARIANTS}

    def run(variant: str) -> None:
        precision = "bf16" if variant == "bf16" else "fp32"
        for task, tokenized in data.items():
            preds[variant][task] = predict(models[variant], tokenized, cfg.eval.batch_size, precision)

    times = _common.alternate({v: (lambda v=v: run(v)) for v in VARIANTS}, args.repeats, warmup=0)
    metrics = {v: summary_metrics({t: task_metrics(preds[v][t], gold[t]) for t in data}) for v in VARIANTS}
    med = {v: _common.median(t) for v, t in times.items()}
    for v in VARIANTS:
        print(f"{v}: {rows / med[v]:7.1f} rows/s  x{med['fp32'] / med[v]:.2f} vs fp32  "
              f"overall {metrics[v].get('dev/overall', float('nan')):.4f}", flush=True)
    payload = {
        "unit": "dev rows predicted per second (higher is better)",
        "ours": rows / med["int8"], "peer": rows / med["fp32"], "ratio": med["fp32"] / med["int8"],
        "bf16_rows_per_s": rows / med["bf16"], "bf16_speedup_vs_fp32": med["fp32"] / med["bf16"],
        "paired_ratio_int8": _common.paired_ratio(times["int8"], times["fp32"]),
        "metrics": metrics,
        "metric_change_vs_fp32": {v: {k: metrics[v][k] - metrics["fp32"][k] for k in metrics["fp32"]}
                                  for v in ("int8", "bf16")},
        "setup": {"ours": "int8: dynamic int8 linear layers (mtbert.model.quantize)",
                  "peer": "fp32, the default prediction path", "rows": {t: len(g) for t, g in gold.items()},
                  "model": str(args.project / "artifacts/model"), "batch_size": cfg.eval.batch_size,
                  "threads": args.threads, "repeats": args.repeats},
        "times_s": times,
    }
    path = _common.write_result(_common.result_path(NAME, args.out, args.smoke), NAME, payload, start)
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
