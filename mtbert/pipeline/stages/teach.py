"""The teach stage: the teachers' outputs on the training rows, computed once and cached for
distillation (`train.distill`). A DVC stage, so the cache is versioned and rebuilt when the rows or
the distill settings change; with distillation off it only records that in its manifest.

With `train.distill.silver`, it also draws new para / sts pairs among the training sentences
(nearest neighbours under a teacher's embeddings, mtbert.silver) and has the teachers label them:
TASK-silver.parquet holds the pairs with the teachers' labels as their labels (para: the averaged
probability rounded, sts: the averaged score), and TASK-train.parquet their outputs after the gold
rows'. The train stage appends them to the training rows (`project.with_silver`).
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
    TEACH_MANIFEST,
    apply_threads,
    resolve_device,
    silver_path,
    teacher_dirs,
    teacher_outputs_path,
    train_frames,
    with_precision,
)
from mtbert.silver import neighbour_pairs, sentence_embeddings, silver_frame, unique_sentences

MANIFEST = TEACH_MANIFEST


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


def _silver_pairs(cfg: Config, task: str, frame: pd.DataFrame, teachers: list[Any]) -> pd.DataFrame:
    """`train.distill.silver[task]` new pairs of the training sentences that are nearest
    neighbours under the first bi-encoder teacher with a `task` head (id, sentence1, sentence2)."""
    embedder = next(((model, tokenizer, teacher_cfg) for model, tokenizer, teacher_cfg in teachers
                     if task in model.tasks and teacher_cfg.model.pair_encoding == "bi"), None)
    if embedder is None:
        raise UserError(f"silver {task} pairs need a bi-encoder teacher with a {task} head to find "
                        "neighbouring sentences", field=f"train.distill.silver.{task}",
                        fix=f"add one to the teachers, or set train.distill.silver.{task}=null")
    model, tokenizer, teacher_cfg = embedder
    sentences, pairs = unique_sentences(frame)
    data = tokenize_frame(tokenizer, pd.DataFrame({"sentence1": sentences}), "sst", "bi",
                          teacher_cfg.model.max_length)
    vectors = sentence_embeddings(model, data, cfg.eval.batch_size, cfg.train.precision)
    return silver_frame(task, sentences, neighbour_pairs(vectors, cfg.train.distill.silver.get(task),
                                                         pairs, cfg.seed))


def run(cfg: Config) -> dict[str, Any]:
    """Write each distilled task's teacher outputs (id + outputs) and a manifest; returns it."""
    distill, out = cfg.train.distill, Path(cfg.train.distill.outputs_dir)
    manifest: dict[str, Any] = {"enabled": distill.enabled, "tasks": {}, "teachers": {}, "silver": {}}
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
            frame = frames[task]
            targets = _task_targets(cfg, task, frame, teachers)
            silver_path(cfg, task).unlink(missing_ok=True)  # an earlier run's, made for other settings
            if distill.silver.get(task):
                silver = _silver_pairs(cfg, task, frame, teachers)
                labels = _task_targets(cfg, task, silver, teachers)
                silver["label"] = (labels >= 0.5).astype(np.int64) if task == "para" else labels
                atomic_write(silver_path(cfg, task), lambda tmp, t=silver: t.to_parquet(tmp, index=False))
                manifest["silver"][task] = {"requested": distill.silver.get(task), "rows": len(silver)}
                frame = pd.concat([frame, silver[frame.columns]], ignore_index=True)
                targets = np.concatenate([targets, labels])
            columns = [f"p{i}" for i in range(5)] if task == "sst" else ["target"]
            table = pd.DataFrame(targets.reshape(len(frame), -1), columns=columns)
            table.insert(0, "id", frame["id"].to_numpy())
            atomic_write(teacher_outputs_path(cfg, task),
                         lambda tmp, t=table: t.to_parquet(tmp, index=False))
            manifest["tasks"][task] = {"rows": len(table)}
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
    return manifest
