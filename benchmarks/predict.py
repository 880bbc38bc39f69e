"""Predict benchmark: mtbert's prediction path vs sentence-transformers' CrossEncoder.predict.

Input: the first 2000 pairs of quora-dev (a subset, so that several alternating repeats fit in
a few minutes), as raw strings. Both sides go from strings to scores on the same MiniLM
backbone (cross-encoded pairs, max_length 128, fp32):

- ours: ``mtbert.serving.predict_rows`` (what ``mtbert predict`` and the MLflow model server
  call): validate rows, tokenize once, length-sorted batches, ``evaluate.predict`` under
  inference_mode, sigmoid of the paraphrase head.
- peer: ``CrossEncoder(minilm_dir, num_labels=1, max_length=128).predict(pairs)`` (it sorts by
  length too, tokenizes per batch and applies a sigmoid).

Both heads are freshly initialised (speed does not depend on training). Headline: the same batch
size (32, CrossEncoder's default) for both; each side at its own default (ours
``eval.batch_size``) is reported too. Run: ``python benchmarks/predict.py`` (about 3 minutes).
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


def load_models(checkpoint: str) -> tuple[Any, Any, Any, Any]:
    """Our MultitaskBert (+ tokenizer, config) and the CrossEncoder, both on `checkpoint`."""
    import torch
    from sentence_transformers import CrossEncoder

    from mtbert.config import load_config
    from mtbert.model.load_hf import load_tokenizer, resolve_checkpoint
    from mtbert.model.multitask import build_multitask

    cfg = load_config(_common.REPO / "params.yaml", [f"model.checkpoint={checkpoint}"])
    torch.manual_seed(cfg.seed)
    ours = build_multitask(cfg.model).eval()
    path = str(resolve_checkpoint(cfg.model.checkpoint))
    peer = CrossEncoder(path, num_labels=1, max_length=cfg.model.max_length, device="cpu",
                        model_kwargs={"attn_implementation": "sdpa"})
    return ours, load_tokenizer(path), cfg, peer


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = _common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=PAIRS)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    start = _common.cpu_snapshot()
    _common.setup(args.threads)
    import pandas as pd

    from mtbert.data import read_split
    from mtbert.serving import predict_rows

    ours, tokenizer, cfg, peer = load_models(_common.checkpoint(args.smoke))
    n_pairs = 24 if args.smoke else args.pairs
    frame = read_split(args.data_dir or _common.default_data_dir(), "para", "dev",
                       on_error="skip").frame.head(n_pairs)
    rows = pd.DataFrame({"task": "para", "sentence1": frame["sentence1"], "sentence2": frame["sentence2"]})
    pairs = list(zip(frame["sentence1"], frame["sentence2"]))
    our_default = cfg.eval.batch_size

    def ours_at(bs: int):
        return lambda: predict_rows(ours, tokenizer, cfg.model.pair_encoding, cfg.model.max_length,
                                    rows, batch_size=bs)

    def peer_at(bs: int):
        return lambda: peer.predict(pairs, batch_size=bs, show_progress_bar=False)

    fns = {"ours_bs32": ours_at(32), "peer_bs32": peer_at(32), f"ours_bs{our_default}": ours_at(our_default),
           f"peer_bs{our_default}": peer_at(our_default)}
    times = _common.alternate(fns, 1 if args.smoke else args.repeats, warmup=1)
    rates = {name: len(pairs) / _common.median(t) for name, t in times.items()}
    for name, rate in rates.items():
        print(f"{name:<12} {rate:7.1f} pairs/s", flush=True)
    payload = summarize(rates, times, len(pairs), our_default, cfg)
    path = _common.write_result(_common.result_path(NAME, args.out, args.smoke), NAME, payload, start)
    print(f"wrote {path}")
    return payload


def summarize(rates: dict[str, float], times: dict, n_pairs: int, our_default: int,
              cfg: Any) -> dict[str, Any]:
    ours, peer = rates["ours_bs32"], rates["peer_bs32"]
    return {
        "unit": "pairs/s (strings to scores)",
        "ours": ours, "peer": peer, "ratio": ours / peer,
        "ratio_at_defaults": rates[f"ours_bs{our_default}"] / rates[f"peer_bs{PEER_DEFAULT_BATCH}"],
        "ratio_at_batch_{}".format(our_default): rates[f"ours_bs{our_default}"] / rates[f"peer_bs{our_default}"],
        "rates": rates,
        "goal": f"ratio >= {GOAL} (same batch size)", "goal_met": ours / peer >= GOAL,
        "setup": {"pairs": n_pairs, "source": "quora-dev.csv, first rows (malformed rows skipped)",
                  "batch_size_headline": 32, "ours_default_batch_size": our_default,
                  "peer_default_batch_size": PEER_DEFAULT_BATCH, "max_length": cfg.model.max_length,
                  "pair_encoding": cfg.model.pair_encoding, "precision": "fp32",
                  "ours": "mtbert.serving.predict_rows (validate, tokenize_frame, evaluate.predict)",
                  "peer": "sentence_transformers.CrossEncoder(minilm, num_labels=1).predict",
                  "timing": "alternating calls, rotated order, one warm-up round; medians"},
        "times_s": times,
    }


if __name__ == "__main__":
    main()
