"""The GPU proof in one command: parity, training throughput and MFU, the quick profile in bf16, torchrun.

    python benchmarks/gpu.py            # on a CUDA machine, a few minutes: benchmarks/results/gpu.json
    python benchmarks/gpu.py --smoke    # anywhere: every section on the CPU at tiny sizes (tests)

Without CUDA (and without --smoke) it says so and exits 0: nothing is measured.

Sections (each a key of the result):

- ``parity``: our encoder (SDPA and eager) against transformers' BertModel on the MiniLM weights,
  last hidden states on the real tokens of a padded batch of sentences. fp32 with TF32 off must
  agree within ``FP32_TOL``. bf16 autocast cannot agree with fp32 that closely (8 mantissa bits:
  each rounding is up to 2^-9 relative, and it compounds over layers), so the bf16 rule is
  relative to the reference implementation: our bf16 error against our fp32 output may be at most
  ``BF16_FACTOR`` times transformers' own bf16 error against its fp32 output.
- ``throughput``: training steps (forward, cross-entropy on the pooled output, backward, fused
  AdamW) under bf16 autocast for a BERT-base-sized encoder with random weights and for MiniLM,
  ours against transformers' BertModel in the same process, alternating; tokens/s and MFU (model
  matmul FLOPs per second over the device's dense bf16 peak, ``PEAK_BF16_TFLOPS`` by device
  name; on the CPU a measured bf16 matmul peak).
- ``quick_profile``: `mtbert train` + `mtbert evaluate` on the quick profile on the GPU in bf16,
  and the same on the CPU in fp32 (the reference): wall times and dev metrics, with the
  differences and the seed noise they are judged against (``SEED_SD``).
- ``torchrun``: the tiny profile under `torchrun --standalone --nproc_per_node=1` (NCCL on CUDA,
  gloo on the CPU): it trains, and how fast.
- ``sdpa_backends``: attention forward + backward over 48 distinct (B, T) shapes, as length
  bucketing makes them, twice (cold: the first call on each shape; warm), per backend set, each in
  a fresh process: PyTorch's default choice, mtbert's (`mtbert.model.bert.cuda_sdpa_backends`,
  cuDNN left out), cuDNN alone, memory-efficient alone. On CUDA the quick profile also trains
  once with cuDNN allowed (`MTBERT_SDPA_CUDNN=1`), the state before mtbert left it out.

The smoke run uses a tiny random backbone, the tiny profile, the CPU for both sides and few
steps: it checks the script, its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (sets up the path and environment before torch/transformers)

NAME = "gpu"
FP32_TOL = 1e-4  # max abs difference of last hidden states, fp32, TF32 off (kernels sum in other orders)
BF16_FACTOR = 2.0  # our bf16 error may be at most this multiple of transformers' bf16 error
# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets; matched as a
# substring of torch.cuda.get_device_name(), first match wins (longer names first).
PEAK_BF16_TFLOPS = {
    "H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "GH200": 989.0, "B200": 2250.0,
    "A100": 312.0, "A800": 312.0, "L40S": 362.0, "L40": 181.0, "L4": 121.0, "A10G": 70.0,
    "A10": 125.0, "RTX 4090": 165.0, "RTX 3090": 71.0, "A6000": 155.0,
}
BERT_BASE = {"vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12,
             "num_attention_heads": 12, "intermediate_size": 3072}
# Seed-to-seed standard deviation of the quick profile's dev metrics (multitask, 3 seeds,
# docs/results.md): a GPU bf16 run "agrees" with the CPU fp32 run within 2 of these.
SEED_SD = {"dev/sst/accuracy": 0.0184, "dev/para/accuracy": 0.0075, "dev/sts/pearson": 0.0016,
           "dev/overall": 0.0084}
SENTENCES = [
    "A gripping, beautifully acted film.", "It is not good at all, and far too long.",
    "How do I learn to play the guitar quickly?", "What is the fastest way to learn guitar?",
    "A man is playing a flute.", "Two dogs run across a snowy field while a child watches them.",
    "The plot, such as it is, wanders for two hours before it ends without a point.", "Fine.",
]


def main(argv: list[str] | None = None) -> int:
    parser = _common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--skip-cpu-reference", action="store_true",
                        help="quick profile: no CPU fp32 reference run (saves minutes)")
    parser.add_argument("--prepared-project", type=Path, default=None,
                        help="a project with the course data already prepared (tests)")
    parser.add_argument("--sdpa-probe", default=None, help=argparse.SUPPRESS)  # one backend set, in its own process
    parser.add_argument("--batch", type=int, default=32, help="throughput: sequences a step (default 32)")
    parser.add_argument("--checkpoint", default=None,
                        help="backbone for parity, the second throughput case and the quick profile: "
                             "'minilm' (default), a BERT directory or a hub id")
    args = parser.parse_args(argv)
    start = _common.cpu_snapshot()
    _common.setup(args.threads)
    import torch

    if args.sdpa_probe:
        print(json.dumps(sdpa_probe(args.sdpa_probe, "cpu" if args.smoke else "cuda", args.smoke)))
        return 0
    if not torch.cuda.is_available() and not args.smoke:
        print("gpu.py: no CUDA device here (torch.cuda.is_available() is False): nothing measured. "
              "Run it on a machine with an NVIDIA GPU, or with --smoke to check the script on the CPU.")
        return 0
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda":  # fp32 means fp32: TF32 would change the parity numbers
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    ckpt = args.checkpoint or _common.checkpoint(args.smoke)
    data_dir = (args.data_dir or _common.default_data_dir()).resolve()
    path = _common.result_path(NAME, args.out, args.smoke)
    result: dict[str, Any] = {"device": device_info(device), "checkpoint": ckpt}

    def save(done: bool) -> None:
        """Write what is measured so far: a run cut short by a time limit still leaves its sections."""
        cases = result.get("throughput", {}).get("cases") or [{}]
        headline = cases[0]
        payload = {
            "unit": "training tokens/s, bf16 autocast (higher is better)",
            "ours": headline.get("ours_tokens_per_s"), "peer": headline.get("peer_tokens_per_s"),
            "ratio": headline.get("ratio"),
            "setup": {"headline": headline.get("case"), "device": device, "smoke": args.smoke,
                      "peer": "transformers BertModel (sdpa), same weights, same step, alternating",
                      "fp32_tolerance": FP32_TOL, "bf16_rule": f"ours <= {BF16_FACTOR} x peer error"},
            "complete": done,
            **result,
        }
        _common.write_result(path, NAME, payload, start)

    failed: list[str] = []

    def section(name: str, measure: Callable[[], Any]) -> None:
        """One section; a failure is recorded (and the run exits 1 at the end), the others still run."""
        try:
            result[name] = measure()
        except Exception as err:  # noqa: BLE001 - a proof run reports every section it can
            traceback.print_exc()
            result[name] = {**result.get(name, {}), "error": f"{type(err).__name__}: {err}"[-4000:]}
            failed.append(name)
        save(done=False)

    section("parity", lambda: parity(ckpt, device))
    section("throughput", lambda: throughput(ckpt, device, args.smoke, args.batch))
    section("sdpa_backends", lambda: sdpa_backends(device, args.smoke))
    with tempfile.TemporaryDirectory(prefix="mtbert-gpu-") as tmp:
        prepared = args.prepared_project or prepare_project(Path(tmp) / "prepared", data_dir, args.threads)
        section("torchrun", lambda: torchrun_run(Path(tmp), prepared, ckpt, device, args))
        section("quick_profile", lambda: quick_profile(
            Path(tmp), prepared, ckpt, device, args,
            on_run=lambda partial: (result.update(quick_profile=partial), save(done=False))))
    save(done=not failed)
    print(f"wrote {path}" + (f"; sections that failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def device_info(device: str) -> dict[str, Any]:
    import torch

    if device != "cuda":
        return {"type": "cpu", "name": _common.cpu_model()}
    props = torch.cuda.get_device_properties(0)
    return {"type": "cuda", "name": props.name, "memory_gb": round(props.total_memory / 2**30, 1),
            "capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda,
            "bf16_supported": torch.cuda.is_bf16_supported()}


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def parity(ckpt: str, device: str) -> dict[str, Any]:
    """Ours (sdpa, eager) against transformers (sdpa), fp32 and bf16 autocast."""
    import torch
    import transformers

    from mtbert.model.load_hf import load_pretrained_bert, load_tokenizer, resolve_checkpoint

    tok = load_tokenizer(ckpt)
    batch = tok(SENTENCES, padding=True, return_tensors="pt")
    inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids")}
    real = inputs["attention_mask"].bool()
    peer = transformers.BertModel.from_pretrained(resolve_checkpoint(ckpt), attn_implementation="sdpa",
                                                  add_pooling_layer=True).to(device).eval()
    ours = {impl: load_pretrained_bert(ckpt, attn_impl=impl).to(device).eval() for impl in ("sdpa", "eager")}

    def hidden(model: Any, bf16: bool) -> Any:
        with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            return model(**inputs).last_hidden_state.float()[real]

    ref = {"peer": hidden(peer, False), "peer_bf16": hidden(peer, True)}
    peer_bf16_err = float((ref["peer_bf16"] - ref["peer"]).abs().max())
    out: dict[str, Any] = {"rows": len(SENTENCES), "real_tokens": int(real.sum()),
                           "peer_bf16_max_abs_err": peer_bf16_err}
    for impl, model in ours.items():
        fp32, bf16 = hidden(model, False), hidden(model, True)
        fp32_diff = float((fp32 - ref["peer"]).abs().max())
        bf16_err = float((bf16 - fp32).abs().max())
        out[impl] = {"fp32_max_abs_diff_vs_peer": fp32_diff, "fp32_ok": fp32_diff <= FP32_TOL,
                     "bf16_max_abs_err_vs_own_fp32": bf16_err,
                     "bf16_max_abs_diff_vs_peer_bf16": float((bf16 - ref["peer_bf16"]).abs().max()),
                     "bf16_ok": bf16_err <= BF16_FACTOR * peer_bf16_err}
        print(f"parity {impl:<5} fp32 diff {fp32_diff:.2e} (tol {FP32_TOL:.0e})  bf16 err {bf16_err:.2e} "
              f"(peer's {peer_bf16_err:.2e})", flush=True)
    out["ok"] = all(out[impl]["fp32_ok"] and out[impl]["bf16_ok"] for impl in ours)
    return out


def peak_tflops(device: str) -> tuple[float, str]:
    """The dense bf16 peak to compute MFU against, and where it came from."""
    import torch

    if device == "cuda":
        name = torch.cuda.get_device_name(0)
        for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
            if key in name:
                return PEAK_BF16_TFLOPS[key], f"data sheet, dense bf16, {key}"
        return float("nan"), f"unknown device {name!r}: add it to PEAK_BF16_TFLOPS"
    peak = _common.matmul_peak("bf16", [256, 512], reps=2)
    return peak["gflops"] / 1000, "measured here: best bf16 torch.mm"


def train_step(model: Any, inputs: dict[str, Any], device: str) -> Callable[[], None]:
    """One step: bf16 autocast forward, cross-entropy on a linear head over the pooled output,
    backward, fused AdamW (torch's foreach one where fused is unavailable)."""
    import torch
    import torch.nn.functional as F

    head = torch.nn.Linear(model.config.hidden_size, 5).to(device)
    params = [*model.parameters(), *head.parameters()]
    try:
        optimizer = torch.optim.AdamW(params, lr=1e-5, fused=True)
    except RuntimeError:
        optimizer = torch.optim.AdamW(params, lr=1e-5, foreach=True)
    labels = torch.arange(inputs["input_ids"].shape[0], device=device) % 5

    def step() -> None:
        model.train()
        with torch.autocast(device, dtype=torch.bfloat16):
            out = model(**inputs)
            loss = F.cross_entropy(head(out.pooler_output).float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)

    return step


def throughput(ckpt: str, device: str, smoke: bool, batch: int = 32) -> dict[str, Any]:
    """Training tokens/s and MFU, ours against transformers, BERT-base (random) and MiniLM, at `batch`
    sequences a step."""
    import torch
    import transformers

    from mtbert.model.bert import BertConfig, BertModel
    from mtbert.model.load_hf import load_pretrained_bert, resolve_checkpoint

    peak, peak_source = peak_tflops(device)
    if smoke:
        plans = [("tiny-random", None, 8, [16, 32])]
    else:
        plans = [("bert-base-random", BERT_BASE, batch, [128, 256, 512]), (Path(ckpt).name, ckpt, batch, [128, 256])]
    cases = []
    for label, source, batch, lengths in plans:
        torch.manual_seed(0)
        if isinstance(source, dict):
            cfg = BertConfig(**source)
            ours = BertModel(cfg)
            peer = transformers.BertModel(transformers.BertConfig(**source, attn_implementation="sdpa"))
        else:
            path = resolve_checkpoint(ckpt if source is None else source)
            ours = load_pretrained_bert(str(path))
            peer = transformers.BertModel.from_pretrained(path, attn_implementation="sdpa")
            cfg = ours.config
        ours, peer = ours.to(device), peer.to(device)
        for length in lengths:
            gen = torch.Generator().manual_seed(length)
            ids = torch.randint(1000, cfg.vocab_size, (batch, length), generator=gen).to(device)
            inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                      "token_type_ids": torch.zeros_like(ids)}
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            times = _common.alternate({"ours": train_step(ours, inputs, device),
                                       "peer": train_step(peer, inputs, device)},
                                      repeats=3 if smoke else 10, warmup=1 if smoke else 3)
            flops = _common.encoder_flops(cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers,
                                          [length] * batch, train=True)
            med = {side: _common.median(t) for side, t in times.items()}
            case = {"case": f"{label}/B{batch}/L{length}", "tokens_per_step": batch * length,
                    "ours_tokens_per_s": batch * length / med["ours"],
                    "peer_tokens_per_s": batch * length / med["peer"],
                    "ratio": med["peer"] / med["ours"],
                    "paired_ratio": _common.paired_ratio(times["ours"], times["peer"]),
                    "ours_mfu": flops / med["ours"] / (peak * 1e12),
                    "peer_mfu": flops / med["peer"] / (peak * 1e12), "times_s": times}
            if device == "cuda":
                case["peak_memory_gb_both_models"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            cases.append(case)
            print(f"{case['case']:<28} ours {case['ours_tokens_per_s']:9.0f} tok/s (MFU "
                  f"{case['ours_mfu']:.1%})  peer {case['peer_tokens_per_s']:9.0f}  ratio {case['ratio']:.2f}",
                  flush=True)
        del ours, peer
        if device == "cuda":
            torch.cuda.empty_cache()
    return {"peak_tflops_bf16": peak, "peak_source": peak_source,
            "flops": "_common.encoder_flops (matmuls only, backward = 2x forward)", "cases": cases}


SDPA_SETS = ("torch_default", "mtbert", "cudnn_only", "efficient_only")


def sdpa_probe(name: str, device: str, smoke: bool) -> dict[str, Any]:
    """Milliseconds per attention call (forward + backward, synchronised) over distinct (B, T)
    shapes with a padding bias and dropout, first on each shape (cold) and again (warm)."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from mtbert.model.bert import sdpa

    heads, dim = (2, 8) if smoke else (12, 32)  # MiniLM: 12 heads of 32
    shapes = [(16 + (i * 7) % 17, 20 + (i * 13) % 90) for i in range(6 if smoke else 48)]
    only = {"cudnn_only": [SDPBackend.CUDNN_ATTENTION], "efficient_only": [SDPBackend.EFFICIENT_ATTENTION]}
    dtype = torch.float32 if device == "cpu" else torch.bfloat16

    def attend(q: Any, k: Any, v: Any, bias: Any) -> Any:
        if name == "mtbert":
            return sdpa(q, k, v, bias, 0.1)
        if name in only:
            with sdpa_kernel(only[name]):
                return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=0.1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=0.1)

    def call(batch: int, length: int) -> float:
        q, k, v = (torch.randn(batch, heads, length, dim, device=device, dtype=dtype, requires_grad=True)
                   for _ in range(3))
        keep = torch.arange(length, device=device)[None] < torch.randint(
            length // 2, length + 1, (batch, 1), device=device)
        bias = torch.zeros(batch, 1, 1, length, device=device, dtype=dtype).masked_fill(
            ~keep[:, None, None], torch.finfo(dtype).min)
        _sync(device)
        start = time.perf_counter()
        attend(q, k, v, bias).float().sum().backward()
        _sync(device)
        return time.perf_counter() - start

    torch.manual_seed(0)
    call(8, 16)  # device and library set-up, on a shape not in the list
    try:
        cold = [call(*shape) for shape in shapes]
        warm = [call(*shape) for shape in shapes]
    except RuntimeError as err:  # e.g. no cuDNN attention for these shapes or on this device
        return {"error": f"{type(err).__name__}: {str(err)[:300]}"}
    return {"shapes": len(shapes), "cold_ms_mean": 1e3 * sum(cold) / len(cold), "cold_ms_max": 1e3 * max(cold),
            "warm_ms_mean": 1e3 * sum(warm) / len(warm)}


def sdpa_backends(device: str, smoke: bool) -> dict[str, Any]:
    """`sdpa_probe` for each backend set, each in a fresh process (cold caches)."""
    sets = SDPA_SETS if device == "cuda" else SDPA_SETS[:2]
    out: dict[str, Any] = {"dtype": "bf16" if device == "cuda" else "fp32", "sets": {}}
    for name in sets:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--sdpa-probe", name, *(["--smoke"] * smoke)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
        out["sets"][name] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"sdpa {name:<15} {out['sets'][name]}", flush=True)
    return out


def _mtbert(root: Path, args: list[str], env: dict[str, str], runner: list[str] | None = None) -> float:
    """Run one mtbert command in `root`; its wall seconds. A failure stops the benchmark with its log."""
    cmd = [*(runner or [sys.executable, "-m", "mtbert.cli"]), "-q", *args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def _project(root: Path, prepared: Path) -> Path:
    """A copy of the prepared project's params and data (commands choose the profile)."""
    root.mkdir(parents=True)
    for name in ("params.yaml", "data", "artifacts/prepared"):
        copy = shutil.copytree if (prepared / name).is_dir() else shutil.copy
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        copy(prepared / name, root / name)
    return root


def prepare_project(root: Path, data_dir: Path, threads: int) -> Path:
    """The course data imported and prepared once, in `root`."""
    root.mkdir(parents=True)
    shutil.copy(_common.REPO / "params.yaml", root / "params.yaml")
    env = _common.project_env(threads)
    _mtbert(root, ["import-data", "--source", str(data_dir)], env)
    _mtbert(root, ["prepare"], env)
    return root


def quick_profile(tmp: Path, prepared: Path, ckpt: str, device: str, args: Any,
                  on_run: Callable[[dict[str, Any]], None] = lambda partial: None) -> dict[str, Any]:
    """Train + evaluate on the accelerator in bf16, and on the CPU in fp32; wall times, metrics.
    `on_run` sees the result so far after each run."""
    profile = "tiny" if args.smoke else "quick"
    cpu_threads = args.threads if args.smoke else max(1, (os.cpu_count() or 2))
    runs: dict[str, tuple[str, str, int, dict[str, str]]] = {f"{device}_bf16": (device, "bf16", args.threads, {})}
    if device == "cuda":  # the state before mtbert left cuDNN attention out (its per-shape setup)
        runs[f"{device}_bf16_sdpa_cudnn"] = (device, "bf16", args.threads, {"MTBERT_SDPA_CUDNN": "1"})
    if not args.skip_cpu_reference:
        runs["cpu_fp32"] = ("cpu", "fp32", cpu_threads, {})
    out: dict[str, Any] = {"profile": profile, "runs": {}}
    for name, (dev, precision, threads, extra_env) in runs.items():
        root = _project(tmp / name, prepared)
        opts = [f"profile={profile}", f"model.checkpoint={ckpt}", f"train.device={dev}", f"train.precision={precision}",
                f"train.threads={threads}"]
        env = {**_common.project_env(threads), **extra_env}
        train_s = _mtbert(root, ["train", *opts], env)
        eval_s = _mtbert(root, ["evaluate", *opts], env)
        metrics = json.loads((root / "artifacts/eval/metrics.json").read_text())
        out["runs"][name] = {"device": dev, "precision": precision, "threads": threads,
                             "train_s": round(train_s, 1), "evaluate_s": round(eval_s, 1),
                             "metrics": {k: metrics.get(k) for k in SEED_SD}}
        print(f"{profile} {name}: train {train_s:.0f} s, evaluate {eval_s:.0f} s, "
              f"overall {metrics.get('dev/overall')}", flush=True)
        on_run(out)
    if "cpu_fp32" in out["runs"]:
        fast, ref = out["runs"][f"{device}_bf16"]["metrics"], out["runs"]["cpu_fp32"]["metrics"]
        diff = {k: fast[k] - ref[k] for k in SEED_SD if fast.get(k) is not None and ref.get(k) is not None}
        out["diff_vs_cpu_fp32"] = diff
        out["seed_sd"] = SEED_SD
        out["within_2_seed_sd"] = all(abs(d) <= 2 * SEED_SD[k] for k, d in diff.items())
        out["train_speedup_vs_cpu_fp32"] = (out["runs"]["cpu_fp32"]["train_s"]
                                            / out["runs"][f"{device}_bf16"]["train_s"])
    if f"{device}_bf16_sdpa_cudnn" in out["runs"]:
        out["train_speedup_vs_sdpa_cudnn"] = (out["runs"][f"{device}_bf16_sdpa_cudnn"]["train_s"]
                                              / out["runs"][f"{device}_bf16"]["train_s"])
    return out


def torchrun_run(tmp: Path, prepared: Path, ckpt: str, device: str, args: Any) -> dict[str, Any]:
    """The tiny profile under torchrun at world size 1 (NCCL on CUDA, gloo on the CPU)."""
    runner = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
              "-m", "mtbert.cli"]
    root = _project(tmp / "torchrun", prepared)
    opts = ["profile=tiny", f"model.checkpoint={ckpt}", f"train.device={device}", f"train.threads={args.threads}",
            "train.precision=bf16"]
    wall = _mtbert(root, ["train", *opts], _common.project_env(args.threads), runner=runner)
    trained = (root / "artifacts/model/model.safetensors").exists()
    backend = {"cpu": "gloo", "cuda": "nccl"}[device]
    print(f"torchrun world size 1 ({backend}): {wall:.0f} s, model saved: {trained}", flush=True)
    return {"world_size": 1, "backend": backend, "profile": "tiny", "wall_s": round(wall, 1),
            "model_saved": trained}


if __name__ == "__main__":
    sys.exit(main())
