"""Predict benchmark: mtbert's prediction path vs sentence-transformers' CrossEncoder.predict.

Input: the first 2000 pairs of quora-dev (a subset, so that several alternating repeats fit in
a few minutes), as raw strings. Both sides go from strings to scores on the same MiniLM
backbone (cross-encoded pairs, max_length 128, fp32):

- ours: ``mtbert.pipeline.serving.predict_rows`` (what ``mtbert predict`` and the MLflow model server
  call): validate rows, tokenize once, length-sorted batches, ``evaluate.predict`` under
  inference_mode, sigmoid of the paraphrase head; the model set to the CrossEncoder's
  architecture (cross-encoded pair, CLS pooler, linear head). The model params.yaml configures
  (a bi-encoder at the time of writing) is timed too and reported apart.
- peer: ``CrossEncoder(minilm_dir, num_labels=1, max_length=128).predict(pairs)`` (it sorts by
  length too, tokenizes per batch and applies a sigmoid).

Heads are freshly initialised (speed does not depend on training). Headline: the same batch
size (32, CrossEncoder's default) for both; ours at its own default (``eval.batch_size``) is
reported too. Run: ``python benchmarks/predict.py`` (about 3 minutes).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

NAME = "predict"
GOAL = 1.2
PAIRS = 2000
PEER_DEFAULT_BATCH = 32


# The same architecture as the CrossEncoder: cross-encoded pair, CLS pooler, one linear logit.
CROSS = ["model.pair_encoding=cross", "model.pooling=cls", "model.para_head=linear",
         "model.sts_head=regression"]


def load_models(checkpoint: str) -> tuple[dict[str, Any], Any, dict[str, Any], Any]:
    """Our MultitaskBerts (cross-encoder, and as params.yaml configures it), their configs and
    tokenizer, and the CrossEncoder, all on `checkpoint`."""
    import torch
    from sentence_transformers import CrossEncoder

    from mtbert.config import load_config
    from mtbert.model.load_hf import load_tokenizer, resolve_checkpoint
    from mtbert.model.multitask import build_multitask

    base = [f"model.checkpoint={checkpoint}"]
    cfgs = {"cross": load_config(_common.REPO / "params.yaml", base + CROSS),
            "default": load_config(_common.REPO / "params.yaml", base)}
    models = {}
    for name, cfg in cfgs.items():
        torch.manual_seed(cfg.seed)
        models[name] = build_multitask(cfg.model).eval()
    path = str(resolve_checkpoint(checkpoint))
    peer = CrossEncoder(path, num_labels=1, max_length=cfgs["cross"].model.max_length, device="cpu",
                        model_kwargs={"attn_implementation": "sdpa"})
    return models, load_tokenizer(path), cfgs, peer


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = _common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=PAIRS)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    start = _common.cpu_snapshot()
    _common.setup(args.threads)
    import pandas as pd

    from mtbert.data import read_split
    from mtbert.pipeline.serving import predict_rows

    models, tokenizer, cfgs, peer = load_models(_common.checkpoint(args.smoke))
    frame = read_split(args.data_dir or _common.default_data_dir(), "para", "dev",
                       on_error="skip").frame.head(24 if args.smoke else args.pairs)
    rows = pd.DataFrame({"task": "para", "sentence1": frame["sentence1"], "sentence2": frame["sentence2"]})
    pairs = list(zip(frame["sentence1"], frame["sentence2"]))
    eval_bs = cfgs["default"].eval.batch_size

    def ours(name: str, bs: int):
        cfg = cfgs[name]
        return lambda: predict_rows(models[name], tokenizer, cfg.model.pair_encoding,
                                    cfg.model.max_length, rows, batch_size=bs)

    fns = {"ours_bs32": ours("cross", 32), "peer_bs32": lambda: peer.predict(
        pairs, batch_size=PEER_DEFAULT_BATCH, show_progress_bar=False),
        f"ours_bs{eval_bs}": ours("cross", eval_bs), f"ours_configured_bs{eval_bs}": ours("default", eval_bs)}
    times = _common.alternate(fns, 1 if args.smoke else args.repeats, warmup=1)
    rates = {name: len(pairs) / _common.median(t) for name, t in times.items()}
    for name, rate in rates.items():
        print(f"{name:<24} {rate:7.1f} pairs/s", flush=True)
    payload = summarize(rates, times, len(pairs), eval_bs, cfgs)
    path = _common.write_result(_common.result_path(NAME, args.out, args.smoke), NAME, payload, start)
    print(f"wrote {path}")
    return payload


def summarize(rates: dict[str, float], times: dict, n_pairs: int, eval_bs: int,
              cfgs: dict[str, Any]) -> dict[str, Any]:
    ours, peer = rates["ours_bs32"], rates["peer_bs32"]
    configured = cfgs["default"].model
    return {
        "unit": "pairs/s (strings to scores)",
        "ours": ours, "peer": peer, "ratio": ours / peer,
        "ratio_at_defaults": rates[f"ours_bs{eval_bs}"] / peer,
        "ratio_configured_model": rates[f"ours_configured_bs{eval_bs}"] / peer,
        "rates": rates,
        "goal": f"ratio >= {GOAL} (same architecture, same batch size)", "goal_met": ours / peer >= GOAL,
        "setup": {"pairs": n_pairs, "source": "quora-dev.csv, first rows (malformed rows skipped)",
                  "ours": "mtbert.pipeline.serving.predict_rows (validate, tokenize_frame, evaluate.predict) "
                          "on a MultitaskBert with " + ", ".join(CROSS) + ": the CrossEncoder's "
                          "architecture",
                  "ours_configured": f"the same path on the model params.yaml configures "
                                     f"(pair_encoding={configured.pair_encoding}, pooling="
                                     f"{configured.pooling}, para_head={configured.para_head}); "
                                     "a different model, reported apart",
                  "peer": "sentence_transformers.CrossEncoder(minilm, num_labels=1).predict",
                  "batch_sizes": {"headline": PEER_DEFAULT_BATCH, "ours_eval_batch_size": eval_bs,
                                  "peer_default": PEER_DEFAULT_BATCH},
                  "max_length": cfgs["cross"].model.max_length, "precision": "fp32",
                  "timing": "alternating calls, rotated order, one warm-up round; medians"},
        "times_s": times,
    }


if __name__ == "__main__":
    main()
