"""A project folder as the config names it: where each artifact lives, reading the prepared
tables, and the process set-up (seed, threads, device) that every stage does first."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import random
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mtbert.config import Config, DistillConfig, PerTaskFloat, to_dict, with_overrides
from mtbert.data import read_prepared
from mtbert.errors import UserError
from mtbert.precision import resolve_precision

log = logging.getLogger("mtbert")

REPORT_FILE = "report.json"  # what prepare and augment write beside their tables
UNSENT_FILE = "unsent_metrics.jsonl"  # metrics MLflow could not take; sent by the next tracked run
TEACH_MANIFEST = "manifest.json"  # what the teach stage wrote into train.distill.outputs_dir


def prepared_path(cfg: Config, task: str, split: str, augmented: bool = False) -> Path:
    root = cfg.data.augmented_dir if augmented else cfg.data.prepared_dir
    return Path(root) / f"{task}-{split}.parquet"


def checkpoint_dir(cfg: Config) -> Path:
    # Beside, not inside, the model directory: DVC clears a stage's outputs before re-running it,
    # and the checkpoint must survive that to be resumed.
    return Path(cfg.train.out_dir).with_name(Path(cfg.train.out_dir).name + "-checkpoint")


def unsent_path(cfg: Config) -> Path:
    """The project's fallback file for metrics the tracking server could not take (beside the model)."""
    return Path(cfg.train.out_dir).with_name(UNSENT_FILE)


def teacher_outputs_path(cfg: Config, task: str) -> Path:
    return Path(cfg.train.distill.outputs_dir) / f"{task}-train.parquet"


def teacher_config(cfg: Config, task: str, seed: int) -> Config:
    """The config of the teacher the project trains for `task` with `seed` (`train.distill.
    teacher_seeds`): this config with one task, loss scale 1 and no distillation, i.e. the
    single-task baseline run, written to teachers_dir/TASK/seed-S (without the Hugging Face copy of
    its encoder, `train.export_hf`: nobody loads a teacher's encoder alone)."""
    folder = Path(cfg.train.distill.teachers_dir) / task / f"seed-{seed}"
    return with_overrides(cfg, {"seed": seed, "train.tasks": [task], "train.out_dir": str(folder),
                                "train.loss_scale": to_dict(PerTaskFloat()),
                                "train.distill": to_dict(DistillConfig()),
                                "train.export_hf": False})  # only the student is for users


def teacher_configs(cfg: Config) -> list[Config]:
    """One config per teacher the project trains: each distilled task x `teacher_seeds` (none when
    distillation is off or its teachers are given as folders)."""
    distill = cfg.train.distill
    if not distill.enabled:
        return []
    return [teacher_config(cfg, task, seed) for task in cfg.train.tasks if task in distill.tasks
            for seed in distill.teacher_seeds]


def teacher_dirs(cfg: Config) -> list[str]:
    """The teachers' model folders: `train.distill.teachers`, or those the project trains."""
    return list(cfg.train.distill.teachers) or [c.train.out_dir for c in teacher_configs(cfg)]


def read_teacher_outputs(cfg: Config, task: str, ids: pd.Series) -> np.ndarray:
    """The cached teacher outputs (the teach stage's) for the training rows with these ids, in order.

    Raises UserError when rows are missing: the cache was made for other rows or settings.
    """
    path = teacher_outputs_path(cfg, task)
    if not path.exists():
        raise UserError("no teacher outputs", path=str(path), field="train.distill",
                        fix="run `mtbert teach` (or `dvc repro teach`) first")
    table = read_prepared(path).drop_duplicates("id").set_index("id")  # a corrupt file: one line
    missing = ~ids.isin(table.index)
    if missing.any():
        raise UserError(f"{int(missing.sum())} of {len(ids)} training rows have no teacher output "
                        f"(first id {ids[missing].iloc[0]!r})", path=str(path), field="train.distill",
                        fix="the cache was made for other rows: run `mtbert teach` again")
    values = table.loc[ids.to_numpy()].to_numpy(dtype=np.float32)
    return values if task == "sst" else values[:, 0]


def silver_path(cfg: Config, task: str) -> Path:
    """The teach stage's silver pairs of `task` (mtbert.silver), labelled by the teachers."""
    return Path(cfg.train.distill.outputs_dir) / f"{task}-silver.parquet"


def with_silver(cfg: Config, frames: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """`frames` with each task's silver pairs appended (`train.distill.silver`, written by the teach
    stage), as the student trains on them; unchanged for tasks without silver pairs.

    Raises UserError when the teach stage made no silver pairs for this task and count.
    """
    distill = cfg.train.distill
    wanted = {task: distill.silver.get(task) for task in frames
              if distill.enabled and distill.silver.get(task)}
    if not wanted:
        return frames
    made = _silver_made(Path(distill.outputs_dir) / TEACH_MANIFEST)
    out = dict(frames)
    for task, count in wanted.items():
        path = silver_path(cfg, task)
        entry = made.get(task)
        if not path.exists() or not isinstance(entry, dict) or entry.get("requested") != count:
            raise UserError(f"no silver {task} pairs made for train.distill.silver.{task}={count}",
                            path=str(path), field=f"train.distill.silver.{task}",
                            fix="run `mtbert teach` (or `dvc repro teach`) first")
        silver = read_prepared(path)
        out[task] = pd.concat([frames[task], silver[frames[task].columns]], ignore_index=True)
    return out


def _silver_made(manifest: Path) -> dict[str, Any]:
    """The teach stage's record of the silver pairs it made (task -> requested, rows); empty when
    it has not run, or its manifest is unreadable (then no pairs count as made)."""
    try:
        record = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return {}
    silver = record.get("silver") if isinstance(record, dict) else None
    return silver if isinstance(silver, dict) else {}


def _sample(frame: pd.DataFrame, size: int | None, replace: bool, seed: int) -> pd.DataFrame:
    if size is None or (not replace and size >= len(frame)):
        return frame
    return frame.sample(n=size, replace=replace, random_state=seed).reset_index(drop=True)


def train_frames(cfg: Config) -> dict[str, pd.DataFrame]:
    """Training tables per task, raw or augmented, trimmed or resampled as the config says."""
    augmented = cfg.data.train_source == "augmented"
    frames = {}
    for task in cfg.train.tasks:  # each task's sample depends on the seed alone, not on the others
        frame = read_prepared(prepared_path(cfg, task, "train", augmented))
        frame = _sample(frame, cfg.data.train_size.get(task), replace=False, seed=cfg.seed)
        frames[task] = _sample(frame, cfg.data.resample_to.get(task), replace=True, seed=cfg.seed)
    return frames


def dev_frame(cfg: Config, task: str, split: str = "dev") -> pd.DataFrame:
    frame = read_prepared(prepared_path(cfg, task, split))
    size = cfg.data.dev_size.get(task) if split == "dev" else None
    return frame if size is None else frame.head(size)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def apply_threads(cfg: Config) -> None:
    """`train.threads` (0: torch's default) for this process; every stage that runs the model calls it."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("cuda requested but torch sees no CUDA device", field="train.device",
                        fix="use train.device=auto or cpu, or install a CUDA build of torch")
    return torch.device(name)


def with_precision(cfg: Config, device: torch.device, *, inference: bool = False,
                   quiet: bool = False) -> Config:
    """`cfg` with `train.precision` resolved for `device`: auto becomes bf16 where the device has
    bf16 units, else fp32 (`mtbert.precision`); `inference`: scoring and prediction, which run in
    fp32 where bf16 would be emulated. A trained model's config records what it trained in.
    `quiet`: no line saying what auto became."""
    resolved = resolve_precision(cfg.train.precision, device, inference=inference)
    if cfg.train.precision == "auto" and not (inference or quiet):
        log.info("precision: %s (train.precision=auto: this %s %s bf16 units)", resolved,
                 device.type, "has" if resolved == "bf16" else "lacks")
    return cfg if resolved == cfg.train.precision else with_overrides(cfg, {"train.precision": resolved})


@contextlib.contextmanager
def model_lock(cfg: Config, command: str) -> Iterator[None]:
    """Hold the lock of `train.out_dir` while training or evaluating it.

    Two trainings (or a training and an evaluation) of one model folder cannot run at once: the
    second is refused, naming the process that holds the lock. The lock is an flock on a file
    beside the model folder (DVC clears the folder itself), so it goes away with its process, even
    a killed one: it is never stale.
    """
    out = Path(cfg.train.out_dir)
    path = out.with_name(f".{out.name}.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            raise UserError(f"in use by {holder}", path=str(out), field="train.out_dir",
                            fix=f"wait for it to finish, or stop it; the lock is {path}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"`mtbert {command}` (pid {os.getpid()} on {socket.gethostname()}, since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')})".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock
