"""The train stage: the multitask model trained into `train.out_dir`, resumable, tracked in MLflow.

`train_model` is the work (tuning trials and ablation configurations call it inside their own
runs); `run` is the stage: `train_model` inside the MLflow run "train", whose id is written with
the weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm import tqdm

from mtbert.allocator import ReleaseFreedMemory, limit_onednn_cache
from mtbert.averaging import WeightEma
from mtbert.batching import TokenizedTask, tokenize_frame
from mtbert.callbacks import Callback, FitContext, TrainState
from mtbert.checkpoint import (
    CHECKPOINT_FILE,
    MODEL_FILE,
    TEACHER_KEY,
    CheckpointError,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
    save_model,
)
from mtbert.config import Config, flatten, to_dict
from mtbert.curves import CURVES_FILE, CURVES_PNG, CurveRecorder, read_rows, write_curves
from mtbert.data import read_prepared
from mtbert.distill import with_targets
from mtbert.distributed import SINGLE, Dist, RankLost, process_group
from mtbert.errors import Interrupted, UserError
from mtbert.fileio import sha256_file
from mtbert.model.export_hf import ENCODER_DIR, save_hf_encoder
from mtbert.model.load_hf import load_tokenizer
from mtbert.model.multitask import build_multitask
from mtbert.model.trained import RESULT_KEYS, RUNTIME_KEYS  # what a checkpoint's fingerprint covers
from mtbert.optim import build_optimizer, lr_scale_fn
from mtbert.pipeline import model_card, tracking
from mtbert.pipeline.project import (
    apply_threads,
    checkpoint_dir,
    model_lock,
    prepared_path,
    read_teacher_outputs,
    resolve_device,
    seed_everything,
    silver_path,
    train_frames,
    unsent_path,
    with_precision,
    with_silver,
)
from mtbert.smart import BregmanTeacher
from mtbert.train import DevScorer, fit, make_teacher

log = logging.getLogger("mtbert")
# oneDNN's compiled primitives kept per process (its default, 1024, held about 300 MB of bucketed
# batch shapes in a bf16 training; 16 measured no slower): mtbert.allocator.limit_onednn_cache
ONEDNN_CACHE_CAPACITY = 16


class CheckpointCallback(Callback):
    """Writes a resumable checkpoint every `every` steps and at each epoch end (atomically)."""

    def __init__(self, path: Path, every: int, config: dict[str, Any], fingerprint: dict[str, Any],
                 ema: WeightEma | None = None) -> None:
        self.path, self.every, self.config, self.ema = path, every, config, ema
        self.fingerprint = fingerprint

    def save(self, ctx: FitContext) -> None:
        extra: dict[str, Any] = {FINGERPRINT_KEY: self.fingerprint}
        if self.ema is not None:
            extra[EMA_KEY] = self.ema.state_dict()
        save_checkpoint(self.path, model=ctx.model, optimizer=ctx.optimizer, state=ctx.state,
                        config=self.config, teacher=ctx.teacher.module if ctx.teacher else None,
                        extra=extra)

    def on_step(self, ctx: FitContext, metrics: dict[str, float]) -> None:
        if self.every and ctx.state.global_step % self.every == 0:
            self.save(ctx)

    def on_epoch_end(self, ctx: FitContext) -> None:
        self.save(ctx)


class TrainProgress(Callback):
    """A bar over the training steps with throughput, ETA and the last losses; silent if disabled."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bar: tqdm | None = None

    def on_step(self, ctx: FitContext, metrics: dict[str, float]) -> None:
        if self.bar is None:
            self.bar = tqdm(total=ctx.state.total_steps, initial=ctx.state.global_step - 1,
                            desc="train", unit="step", disable=not self.enabled, mininterval=2.0)
        self.bar.update(1)
        losses = {k.split("/")[1]: f"{v:.3f}" for k, v in metrics.items() if k.endswith("/loss")}
        if losses:
            self.bar.set_postfix(losses, refresh=False)

    def on_epoch_end(self, ctx: FitContext) -> None:
        if self.bar is not None and ctx.state.global_step >= ctx.state.total_steps:
            self.bar.close()

    def close(self) -> None:
        """End the bar's line (training stopped early), so an error message starts a line."""
        if self.bar is not None:
            self.bar.close()


FINGERPRINT_KEY = "fingerprint"


class ResumeRefused(CheckpointError):
    """A checkpoint of another run: resuming it would mix two runs; it is left as it is."""


def fingerprint(cfg: Config, data: dict[str, TokenizedTask]) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the result-determining config and a digest of
    the tokenized training rows (labels and teacher targets included). The code version is
    recorded too, but only reported: a bug fix must not cost an interrupted run."""
    keys = {k: v for k, v in flatten(to_dict(cfg)).items()
            if k.startswith(RESULT_KEYS) and k not in RUNTIME_KEYS}
    digest = hashlib.sha256()
    for task in sorted(data):
        rows = data[task]
        digest.update(json.dumps([task, rows.segments, rows.labels]).encode())
        if rows.targets is not None:
            digest.update(rows.targets.tobytes())
    return {"config": keys, "data": digest.hexdigest(), "code": tracking.git_commit()}


def _check_fingerprint(path: Path, payload: dict[str, Any], current: dict[str, Any]) -> None:
    saved = payload.get(FINGERPRINT_KEY) or {  # checkpoints older than fingerprints: config only
        "config": {k: v for k, v in flatten(payload["config"]).items()
                   if k.startswith(RESULT_KEYS) and k not in RUNTIME_KEYS}}
    old, new = saved["config"], current["config"]
    default = flatten(to_dict(Config()))
    # A key the checkpoint lacks is an option added since: equal if this run keeps its default.
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k, default.get(k)) != new.get(k))
    reasons: list[str] = []
    if changed:
        shown = ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:6])
        reasons.append(f"settings changed: {shown}" + (f" (+{len(changed) - 6} more)" if len(changed) > 6 else ""))
    if "data" in saved and saved["data"] != current["data"]:
        reasons.append("the training rows changed (data, sampling, tokenizer or teacher targets)")
    if reasons:
        raise ResumeRefused(f"{path}: written by another run ({'; '.join(reasons)}). It is kept. "
                            "To resume it, restore those settings; to start fresh and replace it, "
                            "run `mtbert train --no-resume`")
    if saved.get("code") not in (None, current["code"]):
        log.warning("%s was written by code at commit %s, now %s; resuming (code changes are not "
                    "checked)", path, saved["code"], current["code"])


def _maybe_resume(cfg: Config, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                  current: dict[str, Any], teacher: BregmanTeacher | None = None,
                  ema: WeightEma | None = None) -> TrainState | None:
    """Restore model, optimizer, RNG, trainer state (SMART's teacher, the weight average) from an
    interrupted run with the same fingerprint (`fingerprint`).

    A checkpoint of another run is refused (ResumeRefused, naming what changed), never discarded;
    one that cannot be read is refused too (CheckpointError, telling how to start fresh instead).
    """
    path = checkpoint_dir(cfg) / CHECKPOINT_FILE
    if not path.exists():
        return None
    hint = "; not resuming from it: start fresh with `mtbert train --no-resume` (resume=False)"
    try:
        payload = load_checkpoint(path)
        _check_fingerprint(path, payload, current)
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        if teacher is not None:  # a KeyError if the checkpoint lacks it: refused below
            teacher.module.load_state_dict(payload[TEACHER_KEY])
        if ema is not None:
            ema.load_state_dict(payload[EMA_KEY])
        state = TrainState(**payload["state"])
        restore_rng(payload)
    except ResumeRefused:
        raise
    except CheckpointError as err:
        raise CheckpointError(f"{err}{hint}") from err
    except (AttributeError, KeyError, TypeError, ValueError, RuntimeError) as err:  # not our layout
        raise CheckpointError(f"{path}: does not match this model ({type(err).__name__}: "
                              f"{str(err)[:300]}){hint}") from err
    log.info("resuming from %s at epoch %d, step %d", path, state.epoch, state.global_step)
    return state


class StopOnSignal(Callback):
    """SIGTERM or SIGINT: finish the current step, save the curves and a checkpoint, then stop
    with `Interrupted` (the next run resumes there). Install it last: after every logger.

    Data-parallel (`dist`): the ranks agree after every step whether any of them was signalled,
    so all stop after the same step; rank 0 saves (the others pass no `curves`/`ckpt`) and every
    rank waits for that save before it exits (torchrun would end rank 0 mid-write).
    """

    def __init__(self, curves: CurveRecorder | None, ckpt: CheckpointCallback | None,
                 dist: Dist = SINGLE, path: Path | None = None) -> None:
        self.curves, self.ckpt, self.dist = curves, ckpt, dist
        self.path = ckpt.path if ckpt is not None else path  # where rank 0 saves
        self.signum: int | None = None

    def request(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def on_step(self, ctx: FitContext, metrics: dict[str, float]) -> None:
        requested = self.signum is not None
        if self.dist.enabled:
            requested = self.dist.any(requested)
        if not requested:
            return
        if self.curves is not None and self.ckpt is not None:
            self.curves.save()  # before the checkpoint, as at every checkpoint step (mtbert.curves)
            self.ckpt.save(ctx)
        self.dist.barrier()
        signum = self.signum if self.signum is not None else signal.SIGTERM
        name = signal.Signals(signum).name
        raise Interrupted(f"stopped by {name} at step {ctx.state.global_step} of "
                          f"{ctx.state.total_steps}; checkpoint saved", signum=signum,
                          path=self.path, fix="run the same command again to resume")

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Route SIGTERM and SIGINT to `request` while training (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self.request) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


class RankSync(Callback):
    """Data-parallel ranks meet at every checkpoint (installed after the checkpoint callback, so
    rank 0 has written it before any rank goes on) and at the end; every rank knows the last step
    saved, and a lost rank becomes one clear error (`reporting_lost_ranks`)."""

    def __init__(self, dist: Dist, every: int, state: TrainState | None, path: Path) -> None:
        self.dist, self.every, self.path = dist, every, path
        self.saved_step = state.global_step if state else None  # the checkpoint resumed from
        self.step = state.global_step if state else 0

    def on_step(self, ctx: FitContext, metrics: dict[str, float]) -> None:
        self.step = ctx.state.global_step
        if self.every and self.step % self.every == 0:
            self.meet(ctx.state.global_step)

    def on_epoch_end(self, ctx: FitContext) -> None:
        self.meet(ctx.state.global_step)

    def meet(self, saved_step: int | None = None) -> None:
        self.dist.barrier()
        if saved_step is not None:
            self.saved_step = saved_step

    @contextlib.contextmanager
    def reporting_lost_ranks(self) -> Iterator[None]:
        """A failed collective (another rank died; torchrun ends the job) as one UserError line:
        the step, the last checkpoint, and that rerunning resumes from it."""
        try:
            yield
        except RankLost as err:
            if threading.current_thread() is threading.main_thread():
                # torchrun is ending the job: its SIGTERM must not cut this message short.
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            fix = ("no checkpoint was written yet: run the same command again to start over"
                   if self.saved_step is None else f"the last checkpoint is at step "
                   f"{self.saved_step}: run the same command again to resume from it")
            raise UserError(f"lost a rank of the data-parallel job after step {self.step} (rank "
                            f"{self.dist.rank} of {self.dist.world_size} saw: {err})",
                            path=self.path, fix=fix) from err


EMA_KEY = "ema"  # the weight average's state in checkpoints of runs with train.ema.enabled


def with_teacher_targets(cfg: Config, data: dict[str, TokenizedTask],
                         frames: dict[str, pd.DataFrame]) -> dict[str, TokenizedTask]:
    """With `train.distill` on: each distilled task's rows carry the cached teacher outputs
    (written by the teach stage, matched to the rows by id)."""
    if not cfg.train.distill.enabled:
        return data
    out = dict(data)
    for task in cfg.train.distill.tasks:
        if task in out:
            out[task] = with_targets(out[task], read_teacher_outputs(cfg, task, frames[task]["id"]))
    return out


def tokenize_tasks(cfg: Config, tokenizer: Any, frames: dict[str, pd.DataFrame]) -> dict[str, TokenizedTask]:
    return {task: tokenize_frame(tokenizer, frame, task, cfg.model.pair_encoding, cfg.model.max_length)
            for task, frame in frames.items()}


def train_model(cfg: Config, resume: bool = True, callbacks: Sequence[Callback] = (),
                dist: Dist = SINGLE) -> TrainState:
    """Train the multitask model and write it to `train.out_dir` (untracked: the caller tracks).

    With `resume`, a checkpoint written by an interrupted run of the same training is continued.
    The model folder is locked meanwhile (`model_lock`); SIGTERM/SIGINT save a checkpoint and
    raise `Interrupted`. Data-parallel (`dist`, its process group joined): every rank trains the
    same model on its slice of each batch; rank 0 alone holds the lock and writes checkpoints,
    curves and the model, and every rank resumes from the checkpoint it wrote.
    """
    with model_lock(cfg, "train") if dist.is_main else contextlib.nullcontext():
        return _train_model(cfg, resume, callbacks, dist)


def _train_model(cfg: Config, resume: bool, callbacks: Sequence[Callback], dist: Dist) -> TrainState:
    seed_everything(cfg.seed)
    apply_threads(cfg)
    device = torch.device(dist.device) if dist.enabled else resolve_device(cfg.train.device)
    cfg = with_precision(cfg, device)  # auto -> bf16 or fp32 here; the model's config records which
    memory = [ReleaseFreedMemory(cfg.train.release_memory_mb)] if cfg.train.release_memory_mb else []
    if memory:
        limit_onednn_cache(ONEDNN_CACHE_CAPACITY)
    tokenizer = load_tokenizer(cfg.train.init_from or cfg.model.checkpoint)
    frames = with_silver(cfg, train_frames(cfg))  # silver pairs: after the gold rows
    data = with_teacher_targets(cfg, tokenize_tasks(cfg, tokenizer, frames), frames)
    model = build_multitask(cfg.model, cfg.train.init_from, cfg.train.tasks).to(device)
    model.encoder.recompute_tokens = cfg.train.recompute_tokens
    optimizer = build_optimizer(model, cfg.train.optimizer, cfg.train.lr, cfg.train.weight_decay,
                                lr_scale=lr_scale_fn(model.encoder.config.num_hidden_layers, cfg.train))
    teacher = make_teacher(model, cfg.train)  # SMART's Bregman teacher, or None
    ema = WeightEma.from_config(cfg.train.ema) if cfg.train.ema.enabled and dist.is_main else None
    current = fingerprint(cfg, data)
    state = _maybe_resume(cfg, model, optimizer, current, teacher, ema) if resume else None
    sync = RankSync(dist, cfg.train.checkpoint_every, state, checkpoint_dir(cfg) / CHECKPOINT_FILE)
    with sync.reporting_lost_ranks():
        _start_ranks(cfg, dist, (model, teacher), current, state)
        curves, ckpt, hooks = _file_callbacks(cfg, dist, state, current, ema)
        stop = StopOnSignal(curves, ckpt, dist, sync.path)
        meet = [sync] if dist.enabled else []
        with stop.installed():
            state = fit(model, data, optimizer, cfg.train, cfg.seed, state,
                        [*hooks, *meet, *callbacks, *memory, stop], teacher, dist,
                        dev_scorer(cfg, tokenizer) if dist.is_main else None)
        if curves is not None:
            _save_trained(cfg, (model, tokenizer), state, curves, ema)
        sync.meet()  # the other ranks exit only once the model is written
    return state


def dev_scorer(cfg: Config, tokenizer: Any) -> DevScorer | None:
    """The dev curves' scorer: the first `train.eval_rows` rows of each trained task's dev split
    (whole split, not `data.dev_size`: the curves must not depend on the evaluate stage's settings);
    None when `train.eval_rows` is 0 or no dev split is prepared."""
    paths = {task: prepared_path(cfg, task, "dev") for task in cfg.train.tasks}
    frames = {task: read_prepared(path).head(cfg.train.eval_rows)
              for task, path in paths.items() if cfg.train.eval_rows and path.exists()}
    if not frames:
        return None
    return DevScorer(tokenize_tasks(cfg, tokenizer, frames), cfg.train.batch_size, cfg.train.precision)


def prepared_inputs(cfg: Config) -> list[tuple[Path, str]]:
    """The prepared tables a training run reads, with their MLflow input context: each trained
    task's training rows (augmented, if `data.train_source` says so), its silver pairs (if
    `train.distill.silver` asks for them), and its dev rows."""
    augmented = cfg.data.train_source == "augmented"
    distill = cfg.train.distill
    silver = [(silver_path(cfg, task), "training") for task in cfg.train.tasks
              if distill.enabled and distill.silver.get(task)]
    return ([(prepared_path(cfg, task, "train", augmented), "training") for task in cfg.train.tasks]
            + silver + [(prepared_path(cfg, task, "dev"), "validation") for task in cfg.train.tasks])


def _file_callbacks(cfg: Config, dist: Dist, state: TrainState | None, current: dict[str, Any],
                    ema: WeightEma | None) -> tuple[CurveRecorder | None, CheckpointCallback | None,
                                                    list[Callback]]:
    """Rank 0's (or the one process's) curve recorder, checkpoint writer, and its file-writing
    callbacks in order: curves, the weight average, the checkpoint writer. Other ranks write
    nothing."""
    if not dist.is_main:
        return None, None, []
    for stale in checkpoint_dir(cfg).glob(f".{CHECKPOINT_FILE}.*.tmp"):  # from a kill mid-write
        stale.unlink()
    ckpt = CheckpointCallback(checkpoint_dir(cfg) / CHECKPOINT_FILE, cfg.train.checkpoint_every,
                              to_dict(cfg), current, ema)
    curves = _curve_recorder(cfg, state)  # before ckpt: see mtbert.curves
    averaging = [ema] if ema is not None else []  # before ckpt: a checkpoint holds its step's average
    return curves, ckpt, [curves, *averaging, ckpt]


def _start_ranks(cfg: Config, dist: Dist, modules: tuple[torch.nn.Module, BregmanTeacher | None],
                 current: dict[str, Any], state: TrainState | None) -> None:
    """Data-parallel: check that every rank trains the same run (settings, rows, checkpoint),
    give every rank rank 0's weights, and each rank its own dropout stream."""
    if not dist.enabled:
        return
    if not dist.same_everywhere(json.dumps([current["config"], current["data"]], sort_keys=True)):
        raise UserError("the ranks of the data-parallel job differ in their settings or training "
                        "rows", fix="give every node the same params.yaml, overrides and prepared "
                        "data")
    low, high = dist.spread(state.global_step if state else -1)
    if low != high:
        raise UserError(f"the ranks found different checkpoints to resume (steps {low} to {high}; "
                        "-1: none)", path=checkpoint_dir(cfg) / CHECKPOINT_FILE,
                        fix="put train.out_dir on storage that every node shares, or run with "
                        "--no-resume")
    model, teacher = modules
    dist.broadcast_(model.state_dict().values())
    if teacher is not None:
        dist.broadcast_(teacher.module.state_dict().values())
    # The same seed gave every rank the same weights; dropout masks should differ between ranks.
    torch.manual_seed(cfg.seed + 1_000_003 * (dist.rank + 1) + (state.global_step if state else 0))


def _save_trained(cfg: Config, parts: tuple[torch.nn.Module, Any], state: TrainState,
                  curves: CurveRecorder, ema: WeightEma | None) -> None:
    """Write the trained model folder and its curves; remove what a resume would have read."""
    model, tokenizer = parts
    if ema is not None:
        ema.copy_to(model)  # the averaged weights are the model
    meta = {"config": to_dict(cfg), "bert_config": dataclasses.asdict(model.encoder.config),
            "train_state": dataclasses.asdict(state)}
    encoder_dir = Path(cfg.train.out_dir) / ENCODER_DIR
    if not cfg.train.export_hf:  # an earlier run's copy goes first: it holds other weights than these
        shutil.rmtree(encoder_dir, ignore_errors=True)
    save_model(cfg.train.out_dir, model, tokenizer, meta)
    if cfg.train.export_hf:  # the encoder again, for transformers and sentence-transformers (export_hf)
        save_hf_encoder(encoder_dir, model.encoder, tokenizer, cfg.model.pooling, cfg.model.max_length)
    write_curves(curves, cfg.train.out_dir)
    (checkpoint_dir(cfg) / CHECKPOINT_FILE).unlink(missing_ok=True)  # done: nothing to resume
    curves.path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # the folder too, once empty (a user's own files stay)
        checkpoint_dir(cfg).rmdir()


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


def _rank_dist(cfg: Config) -> Dist:
    """This process's rank (torchrun's environment; one process without it), on its device: on
    CUDA, the GPU of its local rank."""
    dist = Dist.from_env(os.environ)
    if not dist.enabled:
        return dist
    device = resolve_device(cfg.train.device)
    return dist.on(torch.device("cuda", dist.local_rank) if device.type == "cuda" else device)


def run(cfg: Config, resume: bool = True, callbacks: Sequence[Callback] = (),
        run_name: str = "train") -> tuple[TrainState, str]:
    """The train stage: `train_model` inside the MLflow run `run_name`; returns the state and run id.

    If the server goes away mid-run, training goes on and its metrics are kept in the project's
    fallback file for the next tracked run to send. The learning curves and the wall time are
    logged at the end. Under torchrun (`torchrun --nproc_per_node=N -m mtbert.cli train`) the N
    ranks train one model; rank 0 alone tracks it (the others return an empty run id) and shows
    the progress bar (`TrainProgress` callbacks are dropped on the other ranks).
    """
    dist = _rank_dist(cfg)
    level = log.level
    try:
        with process_group(dist):
            if not dist.is_main:
                log.setLevel(max(logging.WARNING, log.getEffectiveLevel()))  # rank 0 tells the rest
                quiet = [cb for cb in callbacks if not isinstance(cb, TrainProgress)]
                return train_model(cfg, resume=resume, callbacks=quiet, dist=dist), ""
            return _tracked_train(cfg, resume, callbacks, dist, run_name)
    finally:
        log.setLevel(level)
        for cb in callbacks:
            if isinstance(cb, TrainProgress):
                cb.close()


def _tracked_train(cfg: Config, resume: bool, callbacks: Sequence[Callback],
                   dist: Dist, run_name: str) -> tuple[TrainState, str]:
    start = time.monotonic()
    with tracking.tracked_run(cfg, run_name, fallback=unsent_path(cfg)) as tracked:
        tracked.log_datasets(prepared_inputs(cfg))
        state = train_model(cfg, resume=resume, callbacks=[*callbacks, tracked.callback], dist=dist)
        out = Path(cfg.train.out_dir)
        # Written with the weights, never before: a failed or killed run cannot claim old weights.
        sha = sha256_file(out / MODEL_FILE)
        tracking.save_run_id(out, tracked.run_id, model_sha256=sha)
        tracked.set_tags({tracking.TRAINED_SHA_TAG: sha})
        tracked.log_artifacts([out / CURVES_FILE, out / CURVES_PNG], "curves")
        wall_s = time.monotonic() - start
        tracked.log_metrics({"train/wall_s": wall_s}, state.global_step)
        model_card.write_card(out, {"git_commit": tracking.git_commit(), "data_md5": tracking.data_hash(),
                                    "run_id": tracked.run_id, "wall_s": wall_s, "model_sha256": sha})
    return state, tracked.run_id
