"""The teach stage: the teachers' outputs on the training rows, computed once and cached for
distillation (`train.distill`). A DVC stage, so the cache is versioned and rebuilt when the rows or
the distill settings change; with distillation off it only records that in its manifest.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mtbert.batching import tokenize_frame
from mtbert.checkpoint import MODEL_FILE
from mtbert.config import Config
from mtbert.distill import average_teachers, teacher_outputs
from mtbert.errors import UserError
from mtbert.fileio import atomic_write, atomic_write_text, sha256_file
from mtbert.model.trained import load_trained
from mtbert.pipeline.project import (
    apply_threads,
    resolve_device,
    teacher_dirs,
    teacher_outputs_path,
    train_frames,
    with_precision,
)

MANIFEST = "manifest.json"


def _task_targets(cfg: Config, task: str, frame: pd.DataFrame, teachers: list[Any]) -> np.ndarray:
    """The teachers' averaged outputs for one task's training rows (those with its head)."""
    outs = []
    for model, tokenizer, teacher_cfg in teachers:
        if task in model.tasks:
            data = tokenize_frame(tokenizer, frame, task, teacher_cfg.model.pair_encoding,
                                  teacher_cfg.model.max_length)
            outs.append(teacher_outputs(model, data, cfg.eval.batch_size, cfg.train.precision))
    if not outs:
        raise UserError(f"no teacher has a {task} head", field="train.distill.teachers",
                        fix=f"add a model trained on {task}, or drop {task} from train.distill.tasks")
    return average_teachers(outs)


def run(cfg: Config) -> dict[str, Any]:
    """Write each distilled task's teacher outputs (id + outputs) and a manifest; returns it."""
    distill, out = cfg.train.distill, Path(cfg.train.distill.outputs_dir)
    manifest: dict[str, Any] = {"enabled": distill.enabled, "tasks": {}, "teachers": {}}
    if distill.enabled:
        apply_threads(cfg)
        device = str(resolve_device(cfg.train.device))
        cfg = with_precision(cfg, torch.device(device), inference=True)
        folders = teacher_dirs(cfg)
        field, fix = (("train.distill.teachers", "train it first with `mtbert train`") if distill.teachers
                      else ("train.distill.teacher_seeds", "run `mtbert train-teachers` first"))
        for folder in folders:
            if not (Path(folder) / MODEL_FILE).exists():
                raise UserError("not a trained mtbert model", path=folder, field=field, fix=fix)
            manifest["teachers"][folder] = sha256_file(Path(folder) / MODEL_FILE)
        teachers = [load_trained(folder, device) for folder in folders]
        frames = train_frames(cfg)
        for task in (t for t in cfg.train.tasks if t in distill.tasks):
            targets = _task_targets(cfg, task, frames[task], teachers)
            columns = [f"p{i}" for i in range(5)] if task == "sst" else ["target"]
            table = pd.DataFrame(targets.reshape(len(frames[task]), -1), columns=columns)
            table.insert(0, "id", frames[task]["id"].to_numpy())
            atomic_write(teacher_outputs_path(cfg, task),
                         lambda tmp, t=table: t.to_parquet(tmp, index=False))
            manifest["tasks"][task] = {"rows": len(table)}
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
    return manifest
