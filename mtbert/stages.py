"""Pipeline stages: the functions that dvc.yaml (through the CLI), the CLI and the Prefect flow call.

Each stage reads the typed config, calls the core and writes its outputs to the paths the config
names. Stages hold no modelling logic; tracking goes through `mtbert.tracking`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mtbert import data as data_io
from mtbert.batching import TokenizedTask, tokenize_frame
from mtbert.checkpoint import (
    CHECKPOINT_FILE,
    TEACHER_KEY,
    CheckpointError,
    atomic_write_text,
    load_checkpoint,
    read_model_files,
    restore_rng,
    save_checkpoint,
    save_model,
)
from mtbert.config import Config, config_from_resolved, flatten, to_dict
from mtbert.curves import CURVES_FILE, CURVES_WIDE_FILE, CurveRecorder, read_rows, wide
from mtbert.evaluate import (
    ProgressStart,
    RowHook,
    predict,
    sst_confusion,
    summary_metrics,
    task_metrics,
    write_course_predictions,
)
from mtbert.model.bert import BertConfig
from mtbert.model.load_hf import load_tokenizer
from mtbert.model.multitask import MultitaskBert, build_multitask, multitask_from_state
from mtbert.optim import build_optimizer
from mtbert.plots import confusion_png, learning_curve_png, scatter_png
from mtbert.tasks import TASKS
from mtbert.smart import BregmanTeacher
from mtbert.train import Callback, TrainState, fit, make_teacher

log = logging.getLogger("mtbert")

REPORT_FILE = "report.json"


# ---------------------------------------------------------------------------------------------
# Data stages


def import_data(cfg: Config, source: str | None = None) -> list[Path]:
    """Copy the course CSVs from `source` (default `data.source`) into `data.raw_dir`."""
    return data_io.import_raw(source or cfg.data.source, cfg.data.raw_dir)


def prepared_path(cfg: Config, task: str, split: str, augmented: bool = False) -> Path:
    root = cfg.data.augmented_dir if augmented else cfg.data.prepared_dir
    return Path(root) / f"{task}-{split}.parquet"


def prepare(cfg: Config) -> dict[str, Any]:
    """Validate every raw file and write typed parquet tables plus a report of skipped rows."""
    report: dict[str, Any] = {"on_error": cfg.data.on_error, "files": {}, "issues": []}
    for (task, split), name in data_io.RAW_FILES.items():
        if split not in data_io.REQUIRED_SPLITS and not (Path(cfg.data.raw_dir) / name).exists():
            continue  # test files are optional
        result = data_io.read_split(cfg.data.raw_dir, task, split, on_error=cfg.data.on_error)
        out = prepared_path(cfg, task, split)
        out.parent.mkdir(parents=True, exist_ok=True)
        result.frame.to_parquet(out, index=False)
        report["files"][name] = {"rows": len(result.frame), "skipped": len(result.issues)}
        for issue in result.issues:
            log.warning("skipped %s:%d: field '%s': %s", name, issue.line, issue.field, issue.reason)
            report["issues"].append(dataclasses.asdict(issue))
    atomic_write_text(Path(cfg.data.prepared_dir) / REPORT_FILE, json.dumps(report, indent=2))
    return report


def _sample(frame: pd.DataFrame, size: int | None, replace: bool, seed: int) -> pd.DataFrame:
    if size is None or (not replace and size >= len(frame)):
        return frame
    return frame.sample(n=size, replace=replace, random_state=seed).reset_index(drop=True)


def train_frames(cfg: Config) -> dict[str, pd.DataFrame]:
    """Training tables per task, raw or augmented, trimmed or resampled as the config says."""
    augmented = cfg.data.train_source == "augmented"
    frames = {}
    for task in TASKS:
        frame = pd.read_parquet(prepared_path(cfg, task, "train", augmented))
        frame = _sample(frame, cfg.data.train_size.get(task), replace=False, seed=cfg.seed)
        frames[task] = _sample(frame, cfg.data.resample_to.get(task), replace=True, seed=cfg.seed)
    return frames


def dev_frame(cfg: Config, task: str, split: str = "dev") -> pd.DataFrame:
    frame = pd.read_parquet(prepared_path(cfg, task, split))
    size = cfg.data.dev_size.get(task) if split == "dev" else None
    return frame if size is None else frame.head(size)


def augment(cfg: Config) -> dict[str, Any]:
    """Write augmented training tables (SICK for STS, EDA for the configured tasks) and a report."""
    from mtbert.augment import build_augmented

    out = Path(cfg.data.augmented_dir)
    report = build_augmented(Path(cfg.data.prepared_dir), Path(cfg.data.raw_dir), out,
                             cfg.augment, cfg.seed)
    atomic_write_text(out / REPORT_FILE, json.dumps(report, indent=2, default=str))
    return report


# ---------------------------------------------------------------------------------------------
# Training


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device: cuda requested but torch sees no CUDA device")
    return torch.device(name)


class CheckpointCallback(Callback):
    """Writes a resumable checkpoint every `every` steps and at each epoch end (atomically)."""

    def __init__(self, path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 every: int, config: dict[str, Any], teacher: BregmanTeacher | None = None) -> None:
        self.path, self.model, self.optimizer = path, model, optimizer
        self.every, self.config, self.teacher = every, config, teacher

    def save(self, state: TrainState) -> None:
        save_checkpoint(self.path, model=self.model, optimizer=self.optimizer, state=state,
                        config=self.config, teacher=self.teacher.module if self.teacher else None)

    def on_step(self, state: TrainState, metrics: dict[str, float]) -> None:
        if self.every and state.global_step % self.every == 0:
            self.save(state)

    def on_epoch_end(self, state: TrainState) -> None:
        self.save(state)


def checkpoint_dir(cfg: Config) -> Path:
    # Beside, not inside, the model directory: DVC clears a stage's outputs before re-running it,
    # and the checkpoint must survive that to be resumed.
    return Path(cfg.train.out_dir).with_name(Path(cfg.train.out_dir).name + "-checkpoint")


def _maybe_resume(cfg: Config, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                  teacher: BregmanTeacher | None = None) -> TrainState | None:
    """Restore model, optimizer, RNG, trainer state (and SMART's teacher) from an interrupted run.

    A checkpoint of another config is ignored (warning; training starts fresh and overwrites it).
    One that cannot be read is refused: CheckpointError, telling how to start fresh instead.
    """
    path = checkpoint_dir(cfg) / CHECKPOINT_FILE
    if not path.exists():
        return None
    hint = "; not resuming from it: start fresh with `mtbert train --no-resume` (resume=False)"
    try:
        payload = load_checkpoint(path)
        saved, current = flatten(payload["config"]), flatten(to_dict(cfg))
        if saved != current:
            changed = sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k))
            log.warning("not resuming %s: it was written with a different config (%s); starting "
                        "fresh", path, ", ".join(changed[:5]) + (" ..." if len(changed) > 5 else ""))
            return None
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        if teacher is not None:  # a KeyError if the checkpoint lacks it: refused below
            teacher.module.load_state_dict(payload[TEACHER_KEY])
        state = TrainState(**payload["state"])
        restore_rng(payload)
    except CheckpointError as err:
        raise CheckpointError(f"{err}{hint}") from err
    except (AttributeError, KeyError, TypeError, ValueError, RuntimeError) as err:  # not our layout
        raise CheckpointError(f"{path}: does not match this model ({type(err).__name__}: "
                              f"{str(err)[:300]}){hint}") from err
    log.info("resuming from %s at epoch %d, step %d", path, state.epoch, state.global_step)
    return state


def head_lr_scale(cfg: Config):
    """Learning-rate multiplier by parameter name: 1 for the encoder, `train.head_lr_scale` else."""
    return lambda name: 1.0 if name.startswith("encoder.") else cfg.train.head_lr_scale


def tokenize_tasks(cfg: Config, tokenizer: Any, frames: dict[str, pd.DataFrame]) -> dict[str, TokenizedTask]:
    return {task: tokenize_frame(tokenizer, frame, task, cfg.model.pair_encoding, cfg.model.max_length)
            for task, frame in frames.items()}


def train(cfg: Config, resume: bool = True, callbacks: list[Callback] | None = None) -> TrainState:
    """Train the multitask model and write it to `train.out_dir`.

    With `resume`, a checkpoint written by an interrupted run with the same config is continued.
    """
    seed_everything(cfg.seed)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    tokenizer = load_tokenizer(cfg.train.init_from or cfg.model.checkpoint)
    data = tokenize_tasks(cfg, tokenizer, train_frames(cfg))
    model = build_multitask(cfg.model, cfg.train.init_from).to(device)
    optimizer = build_optimizer(model, cfg.train.optimizer, cfg.train.lr, cfg.train.weight_decay,
                                lr_scale=head_lr_scale(cfg))
    teacher = make_teacher(model, cfg.train)  # SMART's Bregman teacher, or None
    state = _maybe_resume(cfg, model, optimizer, teacher) if resume else None
    for stale in checkpoint_dir(cfg).glob(f".{CHECKPOINT_FILE}.*.tmp"):  # from a kill mid-write
        stale.unlink()
    ckpt = CheckpointCallback(checkpoint_dir(cfg) / CHECKPOINT_FILE, model, optimizer,
                              cfg.train.checkpoint_every, to_dict(cfg), teacher)
    curves = _curve_recorder(cfg, state)  # before ckpt: see mtbert.curves
    state = fit(model, data, optimizer, cfg.train, cfg.seed, state, [curves, ckpt, *(callbacks or [])],
                teacher)
    meta = {"config": to_dict(cfg), "bert_config": dataclasses.asdict(model.encoder.config),
            "train_state": dataclasses.asdict(state)}
    save_model(cfg.train.out_dir, model, tokenizer, meta)
    write_curves(curves, cfg.train.out_dir)
    (checkpoint_dir(cfg) / CHECKPOINT_FILE).unlink(missing_ok=True)  # done: nothing to resume
    curves.path.unlink(missing_ok=True)
    return state


CURVES_PNG = "curves.png"


def _curve_recorder(cfg: Config, state: TrainState | None) -> CurveRecorder:
    """The loss-curve recorder; on resume it continues the rows saved up to the checkpoint's step."""
    path = checkpoint_dir(cfg) / CURVES_FILE
    for stale in path.parent.glob(f".{CURVES_FILE}.*.tmp"):  # from a kill mid-write
        stale.unlink()
    rows = read_rows(path, upto=state.global_step) if state else []
    if state and state.global_step and (not rows or rows[-1][0] < state.global_step):
        log.warning("%s lacks steps %d..%d (written by an older version?); the learning curve "
                    "has a gap there", path, rows[-1][0] + 1 if rows else 1, state.global_step)
    return CurveRecorder(path, cfg.train.checkpoint_every, rows)


def write_curves(curves: CurveRecorder, out_dir: str | Path) -> Path:
    """Write the learning curves into the model folder: long and wide CSVs and a PNG."""
    out = Path(out_dir)
    frame = curves.frame()
    curves.save(out / CURVES_FILE)
    atomic_write_text(out / CURVES_WIDE_FILE, wide(frame).to_csv(index=False))
    by_task = {task: frame[frame["task"] == task] for task in TASKS if (frame["task"] == task).any()}
    learning_curve_png({t: f["step"].to_numpy() for t, f in by_task.items()},
                       {t: f["loss"].to_numpy() for t, f in by_task.items()}, out / CURVES_PNG)
    return out / CURVES_FILE


def load_trained(model_dir: str | Path, device: str = "cpu") -> tuple[MultitaskBert, Any, Config]:
    """The trained model, its tokenizer and the config it was trained with."""
    state, meta = read_model_files(model_dir)
    cfg = config_from_resolved(meta["config"])
    model = multitask_from_state(BertConfig(**meta["bert_config"]), cfg.model, state)
    return model.to(device).eval(), load_tokenizer(str(model_dir)), cfg


# ---------------------------------------------------------------------------------------------
# Evaluation


def evaluate(cfg: Config, progress: ProgressStart | None = None) -> dict[str, float]:
    """Dev metrics, prediction files (dev and test) and plots for the model in `train.out_dir`.

    `progress`, if given, is called once with the number of rows to predict and returns the hook
    called after each batch (see `mtbert.evaluate.RowHook`).
    """
    frames = {task: dev_frame(cfg, task) for task in TASKS}  # read once: counted, then scored
    hook = progress(eval_row_count(cfg, frames)) if progress else None
    device = resolve_device(cfg.train.device)
    model, tokenizer, trained_cfg = load_trained(cfg.train.out_dir, str(device))
    out = Path(cfg.eval.out_dir)
    (out / "predictions").mkdir(parents=True, exist_ok=True)
    per_task: dict[str, dict[str, float]] = {}
    for task, frame in frames.items():
        data = tokenize_frame(tokenizer, frame, task, trained_cfg.model.pair_encoding,
                              trained_cfg.model.max_length)
        pred = predict(model, data, cfg.eval.batch_size, cfg.train.precision, on_batch=hook)
        write_course_predictions(out / "predictions" / f"{task}-dev-output.csv", frame["id"], pred)
        gold = frame["label"].to_numpy()
        per_task[task] = task_metrics(pred, gold)
        _task_plots(task, pred, gold, per_task[task], out)
        if cfg.eval.predict_test:
            _predict_test(cfg, trained_cfg, model, tokenizer, task, out, hook)
    metrics = summary_metrics(per_task)
    atomic_write_text(out / cfg.eval.metrics_file, json.dumps(metrics, indent=2, sort_keys=True))
    return metrics


def eval_row_count(cfg: Config, dev_frames: dict[str, pd.DataFrame]) -> int:
    """How many rows `evaluate` predicts: the dev rows it scores plus, if asked, the test rows
    (counted from the test files' metadata, without reading them)."""
    import pyarrow.parquet as pq

    total = 0
    for task in TASKS:
        total += len(dev_frames[task])
        test = prepared_path(cfg, task, "test")
        if cfg.eval.predict_test and test.exists():
            total += pq.read_metadata(test).num_rows
    return total


def _task_plots(task: str, pred: Any, gold: np.ndarray, metrics: dict[str, float], out: Path) -> None:
    if task == "sst":
        counts = sst_confusion(pred, gold)
        pd.DataFrame(counts).to_csv(out / "sst-confusion.csv", index_label="gold\\pred")
        confusion_png(counts, out / "sst-confusion.png")
    elif task == "sts":
        scatter_png(pred.labels, gold, metrics["pearson"], metrics["spearman"], out / "sts-scatter.png")


def _predict_test(cfg: Config, trained_cfg: Config, model: MultitaskBert, tokenizer: Any, task: str,
                  out: Path, hook: RowHook | None = None) -> None:
    path = prepared_path(cfg, task, "test")
    if not path.exists():
        return
    frame = pd.read_parquet(path)
    data = tokenize_frame(tokenizer, frame, task, trained_cfg.model.pair_encoding,
                          trained_cfg.model.max_length)
    pred = predict(model, data, cfg.eval.batch_size, cfg.train.precision, on_batch=hook)
    write_course_predictions(out / "predictions" / f"{task}-test-output.csv", frame["id"], pred)


# ---------------------------------------------------------------------------------------------
# Hyperparameter search


def tune(cfg: Config, n_trials: int | None = None, progress: bool = False) -> dict[str, Any]:
    """Run (or resume) the Optuna study; return the best parameters as dotted overrides.

    With `progress`, a bar over the trials (best value so far) goes to stderr.

    The best parameters are also written to `tune.out_file`. Raises RuntimeError when no trial of
    the study has completed (every trial failed or was pruned).
    """
    from mtbert import tuning  # Optuna and MLflow are only needed here

    study = tuning.run_study(cfg, n_trials, progress=progress)
    if not tuning.completed(study):
        raise RuntimeError(f"study {cfg.tune.study_name!r}: no trial completed; see the log above")
    return tuning.best_overrides(study)


# ---------------------------------------------------------------------------------------------
# Registry


def register(cfg: Config) -> Any:
    """Register the model in `train.out_dir` with the dev metrics `evaluate` wrote; promote it.

    The model's MLflow run is the one `mtbert train` recorded in the model directory. Returns a
    `mtbert.registry.RegistrationResult` (version, alias given, reason).
    """
    from mtbert import registry, tracking

    run_id = tracking.load_run_id(cfg.train.out_dir)
    if run_id is None:
        raise registry.RegistryError(f"{cfg.train.out_dir}/{tracking.RUN_FILE} is missing: train "
                                     "the model with `mtbert train` (it records the MLflow run)")
    metrics_path = Path(cfg.eval.out_dir) / cfg.eval.metrics_file
    if not metrics_path.exists():
        raise registry.RegistryError(f"{metrics_path} is missing: run `mtbert evaluate` first")
    metrics = json.loads(metrics_path.read_text())
    return registry.register(cfg, run_id, cfg.train.out_dir, metrics)


# ---------------------------------------------------------------------------------------------
# MLM further pretraining

MLM_EVAL_SENTENCES = 256  # dev sentences whose MLM loss (fixed mask) is reported before and after


def pretrain_mlm(cfg: Config, callbacks: list[Callback] | None = None) -> dict[str, float]:
    """Further-pretrain `model.checkpoint` with MLM on the training sentences; write `mlm.out_dir`.

    The sentences are those of the training tables `train_frames` gives (profile trimming applies),
    deduplicated and capped at `mlm.max_sentences`. The output is an HF encoder directory: train on
    it with `train.init_from=<mlm.out_dir>`. Returns the MLM losses (a held-out loss on dev
    sentences with a fixed mask, before and after) and sizes.
    """
    from mtbert import pretrain
    from mtbert.model.load_hf import load_pretrained_bert

    seed_everything(cfg.seed)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    tokenizer = load_tokenizer(cfg.model.checkpoint)
    tokens = pretrain.mlm_tokens(tokenizer)
    sentences = pretrain.collect_sentences(train_frames(cfg), cfg.mlm.max_sentences, cfg.seed)
    train_seqs = pretrain.tokenize_sentences(tokenizer, sentences, cfg.model.max_length)
    dev = pretrain.collect_sentences({t: dev_frame(cfg, t) for t in TASKS}, MLM_EVAL_SENTENCES, cfg.seed)
    dev_seqs = pretrain.tokenize_sentences(tokenizer, dev, cfg.model.max_length)
    encoder = load_pretrained_bert(cfg.model.checkpoint, attn_impl=cfg.model.attn_impl)
    head, loaded = pretrain.load_mlm_head(cfg.model.checkpoint, encoder)
    encoder.to(device)
    head.to(device)
    before = pretrain.evaluate_mlm(encoder, head, dev_seqs, tokens, cfg.mlm.mask_prob, cfg.seed)
    state = pretrain.further_pretrain(encoder, head, train_seqs, tokens, cfg.mlm, seed=cfg.seed,
                                      weight_decay=cfg.train.weight_decay,
                                      grad_clip=cfg.train.grad_clip, callbacks=callbacks or [])
    after = pretrain.evaluate_mlm(encoder, head, dev_seqs, tokens, cfg.mlm.mask_prob, cfg.seed)
    stats = {"mlm/dev_loss_before": before, "mlm/dev_loss_after": after,
             "mlm/steps": float(state.global_step), "mlm/sentences": float(len(sentences)),
             "mlm/head_loaded": float(loaded)}
    pretrain.save_encoder(cfg.mlm.out_dir, encoder.cpu(), head.cpu(), tokenizer,
                          {"config": to_dict(cfg), "stats": stats})
    return stats
