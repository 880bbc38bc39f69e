"""Dev metrics of trained models, one by one and averaged as an ensemble, per task.

What a student distilled from these models can hope to reach: `train.distill.teachers` averages
the same outputs (`mtbert.distill.teacher_outputs`, probabilities for sst and para, scores for
sts) on the training rows. docs/results.md used it on the nine single-task baselines:

    cd PROJECT && python REPO/scripts/ensemble_dev.py --json ensemble.json \\
        artifacts/ablation/distill_full/{sst,para,sts}_only/seed-{1234,1,2}/model

Each task is scored with the models that have its head, on the dev rows params.yaml selects
(`data.dev_size`), in the precision `train.precision` resolves to on this machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from mtbert.batching import tokenize_frame
from mtbert.config import load_config
from mtbert.distill import average_teachers, teacher_outputs
from mtbert.errors import UserError, one_line
from mtbert.metrics import accuracy, overall_score, pearson
from mtbert.model.trained import load_trained
from mtbert.pipeline.project import apply_threads, dev_frame, resolve_device, with_precision
from mtbert.tasks import TASKS


def score(task: str, outputs: np.ndarray, gold: np.ndarray) -> float:
    """The task's dev metric for `teacher_outputs`-style outputs."""
    if task == "sst":
        return accuracy(outputs.argmax(-1), gold)
    if task == "para":
        return accuracy((outputs > 0.5).astype(int), gold)
    return pearson(outputs, gold)


def run(models: list[str], params: str, overrides: list[str]) -> dict:
    cfg = load_config(params, overrides)
    apply_threads(cfg)
    device = resolve_device(cfg.train.device)
    cfg = with_precision(cfg, device, inference=True)
    frames: dict = {}  # task -> dev rows, read once
    outputs: dict = {task: {} for task in TASKS}  # task -> folder -> outputs
    for folder in models:  # one model in memory at a time
        model, tok, tcfg = load_trained(folder, str(device))
        for task in model.tasks:
            frame = frames.setdefault(task, dev_frame(cfg, task))
            data = tokenize_frame(tok, frame, task, tcfg.model.pair_encoding, tcfg.model.max_length)
            outputs[task][folder] = teacher_outputs(model, data, cfg.eval.batch_size, cfg.train.precision)
        del model
    result: dict = {"precision": cfg.train.precision, "tasks": {}}
    for task in (t for t in TASKS if outputs[t]):
        gold = frames[task]["label"].to_numpy()
        singles = {folder: score(task, out, gold) for folder, out in outputs[task].items()}
        result["tasks"][task] = {"rows": len(gold), "models": singles,
                                 "mean": float(np.mean(list(singles.values()))),
                                 "ensemble": score(task, average_teachers(list(outputs[task].values())), gold)}
        print(f"{task}: {len(singles)} models, mean {result['tasks'][task]['mean']:.4f}, "
              f"ensemble {result['tasks'][task]['ensemble']:.4f} ({len(gold)} dev rows)", flush=True)
    if set(result["tasks"]) == set(TASKS):
        for kind in ("mean", "ensemble"):
            result[f"overall_{kind}"] = overall_score(*(result["tasks"][t][kind] for t in TASKS))
        print(f"overall: models' mean {result['overall_mean']:.4f}, "
              f"ensembles {result['overall_ensemble']:.4f}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="trained model folders")
    parser.add_argument("--params", default="params.yaml", help="the project's parameters file")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="a dotted override, e.g. --set data.dev_size.para=2000 (repeatable)")
    args = parser.parse_args(argv)
    try:
        result = run(args.models, args.params, args.overrides)
    except UserError as err:
        print(f"ensemble_dev: {one_line(str(err))}", file=sys.stderr)
        return 2
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
