"""The multitask training loop: a pure `train_step` and a `fit` that emits callbacks.

An epoch is fully determined by (seed, epoch): the per-task batches and the task schedule are
rebuilt from them, so a resumed run skips to its step and continues exactly where it stopped.
Logging, checkpoints and evaluation hook in through callbacks from the edge. With the ranks of a
torchrun job (`fit(..., dist=...)`), each rank trains on its slice of every batch
(`data_parallel_step`, costs and exactness in `mtbert.distributed`); one process runs `train_step`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from mtbert.batching import Batch, TokenizedTask, collate, make_batches
from mtbert.callbacks import Callback, Evaluate, FitContext, TrainState
from mtbert.config import TrainConfig
from mtbert.distill import distill_loss, lam_at, mix
from mtbert.distributed import SINGLE, Dist
from mtbert.evaluate import predict, summary_metrics, task_metrics
from mtbert.losses import STS_MAX_SCORE, task_loss
from mtbert.model.multitask import MultitaskBert
from mtbert.optim import lr_at
from mtbert.pcgrad import assign_flat_grad, flat_grads, pcgrad
from mtbert.precision import resolve_precision
from mtbert.samplers import build_schedule
from mtbert.smart import BregmanTeacher, bregman_divergence, smart_adversarial_loss
from mtbert.tasks import TASKS


def _seed_for(*parts: int) -> int:
    # A stable mix of integers (Python's hash of ints is stable, but be explicit about the range).
    value = 0
    for p in parts:
        value = (value * 1_000_003 + p) % (2**62)
    return value


def epoch_plan(data: dict[str, TokenizedTask], cfg: TrainConfig, seed: int,
               epoch: int) -> tuple[list[tuple[str, ...]], dict[str, list[list[int]]]]:
    """The task schedule and the per-task batches (row positions) of one epoch.

    Only the tasks of `cfg.tasks` (`train.tasks`) that `data` holds are planned.
    """
    batches = {
        task: make_batches(d.lengths(), cfg.batch_size, max_tokens=cfg.max_tokens, shuffle=True,
                           bucket=cfg.bucket, seed=_seed_for(seed, epoch, TASKS.index(task)))
        for task, d in data.items() if task in cfg.tasks
    }
    schedule = build_schedule(cfg.sampler, {t: len(b) for t, b in batches.items()}, epoch,
                              cfg.epochs, seed, alpha_start=cfg.alpha_start, alpha_end=cfg.alpha_end)
    return schedule, batches


def total_steps(data: dict[str, TokenizedTask], cfg: TrainConfig, seed: int) -> int:
    return sum(len(epoch_plan(data, cfg, seed, e)[0]) for e in range(cfg.epochs))


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def uses_bregman(cfg: TrainConfig) -> bool:
    """Whether SMART's Bregman proximal term (and so an EMA teacher) is on."""
    return cfg.smart.enabled and cfg.smart.bregman_weight > 0


def make_teacher(model: MultitaskBert, cfg: TrainConfig) -> BregmanTeacher | None:
    """SMART's EMA teacher (a copy of `model`) when the Bregman proximal term is on, else None."""
    return BregmanTeacher(model, cfg.smart.bregman_beta) if uses_bregman(cfg) else None


def batch_loss(model: MultitaskBert, batch: Batch, cfg: TrainConfig,
               metrics: dict[str, float] | None = None, teacher: BregmanTeacher | None = None,
               distill_lam: float | None = None) -> Tensor:
    """The task loss of one batch (plus the SMART terms when enabled), unscaled.

    With SMART, the adversarial term is added, and with a `teacher` (and `train.smart.bregman_weight`
    > 0) the Bregman proximal term too. If `metrics` is given, they are recorded in it as
    `train/<task>/smart` and `train/<task>/bregman`. With `distill_lam` (from `distill_lam_at`) and
    the batch's task in `train.distill.tasks`, the task loss is BAM!'s lam * distill + (1 - lam) *
    gold against the batch's teacher `targets` (recorded as `train/<task>/gold` and `.../distill`).
    """
    device = batch.enc.input_ids.device
    # Taken before the forward: the teacher replays its dropout masks.
    rng = _rng_snapshot(device) if uses_bregman(cfg) and teacher is not None else None
    with _autocast(device, cfg.precision):
        out = model(batch.task, batch.enc)
        pred = out.float()
        if batch.task == "sts" and cfg.sts_loss == "cosine":
            # The cosine head scores 5 cos(u, v) on the 0..5 scale; the Sentence-BERT loss wants cos.
            pred = pred / STS_MAX_SCORE
        loss = task_loss(batch.task, pred, batch.labels, sts_loss_kind=cfg.sts_loss)
        if distill_lam is not None and batch.task in cfg.distill.tasks:
            loss = _distilled(batch, pred, loss, cfg, distill_lam, metrics)
        if cfg.smart.enabled:
            smart = _smart_term(model, batch, out, cfg)
            if metrics is not None:
                metrics[f"train/{batch.task}/smart"] = smart.item()
            loss = loss + cfg.smart.weight * smart
        if rng is not None:
            term = _bregman_term(model, teacher, batch, out, rng)
            if metrics is not None:
                metrics[f"train/{batch.task}/bregman"] = term.item()
            loss = loss + cfg.smart.bregman_weight * term
    return loss


def distill_lam_at(cfg: TrainConfig, state: TrainState) -> float | None:
    """The teacher weight lam of the step `state` is at, or None when distillation is off."""
    if not cfg.distill.enabled:
        return None
    return lam_at(state.global_step, state.total_steps, cfg.distill.schedule, cfg.distill.lam)


def _distilled(batch: Batch, pred: Tensor, gold: Tensor, cfg: TrainConfig, lam: float,
               metrics: dict[str, float] | None) -> Tensor:
    """lam * distill + (1 - lam) * gold for a batch that carries teacher targets."""
    if batch.targets is None:
        raise ValueError(f"train.distill covers {batch.task!r} but its batch has no teacher targets "
                         "(set them with mtbert.distill.with_targets)")
    distill = distill_loss(batch.task, pred, batch.targets, cfg.distill.temperature, cfg.sts_loss)
    if metrics is not None:
        metrics[f"train/{batch.task}/gold"] = gold.item()
        metrics[f"train/{batch.task}/distill"] = distill.item()
    return mix(gold, distill, lam)


RngState = tuple[Tensor, Tensor | None]


def _rng_snapshot(device: torch.device) -> RngState:
    """The CPU (and, on CUDA, the device's) generator state, to replay dropout masks."""
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _bregman_term(model: MultitaskBert, teacher: BregmanTeacher, batch: Batch, out: Tensor,
                  rng: RngState) -> Tensor:
    """SMART's D_Breg(theta, theta~): divergence between `out` and the teacher's output, no grad.

    The teacher runs in the model's mode from the generator state the model's forward started
    from, so in training it draws the same dropout masks: the term measures only how far the
    weights moved from theta~ (it is 0 when theta == theta~), not dropout noise. The generator is
    forked, so the run's random stream is the same as without the term.
    """
    cpu, cuda = rng
    teacher.module.train(model.training)
    devices = [out.device] if cuda is not None else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, out.device)
        target = teacher.module(batch.task, batch.enc)
    if batch.task == "para":  # one logit: compare as two-class logits [0, z], as the adversarial term
        out, target = (torch.stack([torch.zeros_like(z), z], dim=-1) for z in (out, target))
    return bregman_divergence(out, target, "regression" if batch.task == "sts" else "classification")


def _smart_term(model: MultitaskBert, batch: Batch, clean: Tensor, cfg: TrainConfig) -> Tensor:
    """SMART regularizer with the perturbation added to the embedding layer's output.

    `smart_adversarial_loss` renormalizes the perturbation to max-abs 1 per token (mt-dnn). Raw word
    vectors have entries of about 0.05, so such a perturbation would drown the tokens; after the
    embedding LayerNorm the entries are of order 1, which is where mt-dnn perturbs. A forward hook
    swaps the embedding module's output for the perturbed tensor.
    """
    embeddings = model.encoder.embeddings
    enc = batch.enc
    clean_embeds = embeddings(enc.input_ids, enc.token_type_ids, None)  # (B, T, H), after LayerNorm
    two_class = batch.task == "para"  # one logit: compare as two-class logits [0, z]

    def forward_fn(e: Tensor) -> Tensor:
        handle = embeddings.register_forward_hook(lambda _module, _args, _out: e)
        try:
            z = model(batch.task, enc)
        finally:
            handle.remove()
        return torch.stack([torch.zeros_like(z), z], dim=-1) if two_class else z

    if two_class:
        clean = torch.stack([torch.zeros_like(clean), clean], dim=-1)
    kind = "regression" if batch.task == "sts" else "classification"
    s = cfg.smart
    return smart_adversarial_loss(forward_fn, clean_embeds.detach(), clean, kind,
                                  noise_var=s.noise_var, step_size=s.step_size, epsilon=s.epsilon)


def train_step(model: MultitaskBert, batches: Sequence[Batch], optimizer: torch.optim.Optimizer,
               cfg: TrainConfig, step_seed: int, teacher: BregmanTeacher | None = None,
               distill_lam: float | None = None) -> dict[str, float]:
    """One optimizer step over one batch per task in `batches`; returns the step's metrics.

    Each task's loss is back-propagated as soon as it is computed, so only one task's activations
    are alive at a time. With PCGrad the per-task gradients are kept apart and combined by
    gradient surgery instead of summed. A SMART `teacher` (see `make_teacher`) adds the Bregman
    proximal term and is moved toward the new weights after the optimizer step. `distill_lam`
    mixes in the teacher targets (see `batch_loss`). One process; `data_parallel_step` is the
    same step across ranks.
    """
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    metrics: dict[str, float] = {}
    task_grads: list[Tensor] = []
    surgery = cfg.pcgrad and len(batches) > 1
    for batch in batches:
        loss = batch_loss(model, batch, cfg, metrics, teacher, distill_lam)
        (cfg.loss_scale.get(batch.task) * loss).backward()
        metrics[f"train/{batch.task}/loss"] = loss.item()
        if surgery:
            task_grads.append(flat_grads(params))
            optimizer.zero_grad(set_to_none=True)
    if surgery:
        _surgery(params, task_grads, step_seed, metrics)
    _apply_step(model, optimizer, cfg, teacher, metrics)
    return metrics


def _surgery(params: list[nn.Parameter], task_grads: Sequence[Tensor], step_seed: int,
             metrics: dict[str, float]) -> None:
    """PCGrad over the per-task flat gradients, written into the parameters' `.grad`."""
    result = pcgrad(list(task_grads), torch.Generator().manual_seed(step_seed))
    assign_flat_grad(params, result.grad)
    metrics["train/pcgrad_conflict_fraction"] = result.num_conflicts / max(result.num_pairs, 1)


def _apply_step(model: MultitaskBert, optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                teacher: BregmanTeacher | None, metrics: dict[str, float]) -> None:
    """Clip the gradients, take the optimizer step, and move SMART's teacher after it."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.grad_clip > 0:
        metrics["train/grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if teacher is not None:
        teacher.update(model)


@dataclass(frozen=True)
class Shard:
    """This rank's part of one task's global batch in a data-parallel step.

    Attributes:
        task: the batch's task.
        batch: this rank's rows of it, on the training device; None when its slice is empty.
        share: local rows / global rows: the weight of the local mean in the global batch mean.
    """

    task: str
    batch: Batch | None
    share: float


def shard_batch(data: TokenizedTask, rows: Sequence[int], dist: Dist, device: torch.device) -> Shard:
    """This rank's `Shard` of the global batch `rows` (positions in `data`)."""
    local = dist.shard(rows)
    batch = collate(data, local).to(device) if local else None
    return Shard(data.task, batch, len(local) / len(rows))


def loss_metric_keys(task: str, cfg: TrainConfig, teacher: BregmanTeacher | None,
                     distill_lam: float | None) -> list[str]:
    """The metrics a step records for a batch of `task` (its loss, and what `batch_loss` adds),
    known without computing them: a rank whose slice is empty contributes 0 to each."""
    keys = [f"train/{task}/loss"]
    if distill_lam is not None and task in cfg.distill.tasks:
        keys += [f"train/{task}/gold", f"train/{task}/distill"]
    if cfg.smart.enabled:
        keys.append(f"train/{task}/smart")
    if uses_bregman(cfg) and teacher is not None:
        keys.append(f"train/{task}/bregman")
    return keys


def data_parallel_step(model: MultitaskBert, shards: Sequence[Shard],
                       optimizer: torch.optim.Optimizer, cfg: TrainConfig, dist: Dist, step_seed: int,
                       teacher: BregmanTeacher | None = None,
                       distill_lam: float | None = None) -> dict[str, float]:
    """`train_step` on this rank's `shards` of the step's global batches, with the other ranks.

    Each shard's loss is back-propagated weighted by its `share`, so the sum over ranks of the
    local gradients is one process's gradient of the global batches. One all-reduce per step
    carries the flat gradient, a has-gradient flag per parameter tensor (a parameter that no rank
    gave a gradient keeps none, and the optimizer skips it, as in one process) and the weighted
    metrics, which become the global batch means; with PCGrad it carries the per-task gradients
    (K, P) instead, and every rank projects them with the same seeded order. Clipping, the
    optimizer step and SMART's teacher update follow on the reduced gradient, identically on every
    rank. Costs and what is exact: `mtbert.distributed`.
    """
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    keys = list(dict.fromkeys(key for shard in shards
                              for key in loss_metric_keys(shard.task, cfg, teacher, distill_lam)))
    local = dict.fromkeys(keys, 0.0)
    task_grads: list[Tensor] = []
    surgery = cfg.pcgrad and len(shards) > 1
    for shard in shards:
        if shard.batch is not None:
            local.update(_shard_backward(model, shard, cfg, teacher, distill_lam))
        if surgery:
            task_grads.append(flat_grads(params))
            optimizer.zero_grad(set_to_none=True)
    if len(local) != len(keys):
        raise RuntimeError(f"metrics {sorted(set(local) - set(keys))} missing from loss_metric_keys")
    values = torch.tensor([local[k] for k in keys], dtype=torch.float32, device=params[0].device)
    if surgery:
        grads, values = dist.all_reduce_flat([torch.stack(task_grads), values])
        metrics = dict(zip(keys, values.tolist()))
        _surgery(params, list(grads), step_seed, metrics)
    else:
        flags = torch.tensor([p.grad is not None for p in params], dtype=torch.float32,
                             device=values.device)
        grad, flags, values = dist.all_reduce_flat([flat_grads(params), flags, values])
        _assign_reduced(params, grad, flags)
        metrics = dict(zip(keys, values.tolist()))
    _apply_step(model, optimizer, cfg, teacher, metrics)
    return metrics


def _shard_backward(model: MultitaskBert, shard: Shard, cfg: TrainConfig,
                    teacher: BregmanTeacher | None, distill_lam: float | None) -> dict[str, float]:
    """Back-propagate the shard's loss weighted by its share; its metrics, weighted the same."""
    metrics: dict[str, float] = {}
    loss = batch_loss(model, shard.batch, cfg, metrics, teacher, distill_lam)
    (cfg.loss_scale.get(shard.task) * shard.share * loss).backward()
    metrics[f"train/{shard.task}/loss"] = loss.item()
    return {k: shard.share * v for k, v in metrics.items()}


def _assign_reduced(params: list[nn.Parameter], flat: Tensor, flags: Tensor) -> None:
    """Write the reduced flat gradient into `.grad`; None where no rank had a gradient."""
    offset = 0
    for param, has_grad in zip(params, flags.tolist()):
        chunk = flat[offset:offset + param.numel()]
        param.grad = chunk.view_as(param) if has_grad > 0 else None
        offset += param.numel()


def _cursors(schedule: list[tuple[str, ...]], upto: int) -> dict[str, int]:
    counts = dict.fromkeys(TASKS, 0)
    for step in schedule[:upto]:
        for task in step:
            counts[task] += 1
    return counts


def _teacher_for(model: MultitaskBert, cfg: TrainConfig, state: TrainState | None,
                 teacher: BregmanTeacher | None) -> BregmanTeacher | None:
    """`teacher`, or a new one from `model` when the Bregman term is on and training starts at 0."""
    if teacher is not None or not uses_bregman(cfg):
        return teacher
    if state is not None and state.global_step > 0:
        raise ValueError("resuming with train.smart.bregman_weight > 0 needs the checkpoint's "
                         "teacher (pass teacher=)")
    return make_teacher(model, cfg)


def _check_data(data: dict[str, TokenizedTask], cfg: TrainConfig) -> None:
    """Raise ValueError when no task of `train.tasks` has data, or a distilled task lacks targets."""
    trained = [task for task in data if task in cfg.tasks]
    if not trained:
        raise ValueError(f"no training data for train.tasks {list(cfg.tasks)}; data has {list(data)}")
    if cfg.distill.enabled:
        missing = [t for t in trained if t in cfg.distill.tasks and data[t].targets is None]
        if missing:
            raise ValueError(f"train.distill covers {missing} but their rows have no teacher targets "
                             "(set them with mtbert.distill.with_targets)")


def fit(model: MultitaskBert, data: dict[str, TokenizedTask], optimizer: torch.optim.Optimizer,
        cfg: TrainConfig, seed: int, state: TrainState | None = None,
        callbacks: Sequence[Callback] = (), teacher: BregmanTeacher | None = None,
        dist: Dist = SINGLE, evaluate: Evaluate | None = None) -> TrainState:
    """Train for `cfg.epochs` epochs, resuming from `state` if given.

    Args:
        model: the multitask model, already on its device.
        data: tokenized training rows per task; the tasks of `cfg.tasks` among them are trained.
            With `cfg.distill` on, each distilled task's rows need teacher `targets`.
        optimizer: built over `model`'s parameters; its lr is set every step from the schedule.
        cfg: the train section of the config.
        seed: run seed; with the epoch it fixes the batches and the task schedule.
        state: where to resume (from a checkpoint); None starts at step 0.
        callbacks: hooks for logging, checkpoints and evaluation.
        teacher: SMART's EMA teacher (`make_teacher`), restored with `state` when resuming; None
            with the Bregman term on starts one from `model` (only when not resuming).
        dist: the ranks of a data-parallel job (`mtbert.distributed`): every rank plans the same
            batches, trains on its slice of each (`data_parallel_step`) and ends with the same
            weights. The default, one process, runs `train_step` on whole batches.
        evaluate: scores the live model on dev rows (e.g. a `DevScorer`) every `cfg.eval_every`
            steps (0: never mid-epoch) and at the end of each epoch; its metrics go to each
            callback's `on_eval`. Scoring runs in eval mode without grad and draws no random
            numbers, so the training is the same with or without it.
    """
    _check_data(data, cfg)
    device = next(model.parameters()).device
    cfg = dataclasses.replace(cfg, precision=resolve_precision(cfg.precision, device))  # auto: here
    teacher = _teacher_for(model, cfg, state, teacher)
    state = state or TrainState(total_steps=total_steps(data, cfg, seed))
    warmup = int(cfg.warmup_ratio * state.total_steps)
    ctx = FitContext(model, optimizer, state, teacher)
    evaluated = -1  # the step last scored: an epoch end right after a mid-epoch score skips it
    while state.epoch < cfg.epochs:
        schedule, batches = epoch_plan(data, cfg, seed, state.epoch)
        cursor = _cursors(schedule, state.step_in_epoch)
        for step_tasks in schedule[state.step_in_epoch:]:
            lr = lr_at(state.global_step, state.total_steps, cfg.lr, warmup, cfg.schedule)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            rows = _take_rows(batches, step_tasks, cursor)
            lam = distill_lam_at(cfg, state)
            step_seed = _seed_for(seed, state.global_step)
            if dist.enabled:
                shards = [shard_batch(data[task], r, dist, device) for task, r in rows]
                metrics = data_parallel_step(model, shards, optimizer, cfg, dist, step_seed, teacher,
                                             lam)
            else:
                step_batches = [collate(data[task], r).to(device) for task, r in rows]
                metrics = train_step(model, step_batches, optimizer, cfg, step_seed, teacher, lam)
            metrics["train/lr"] = lr
            if lam is not None:
                metrics["train/distill_lam"] = lam
            state.step_in_epoch += 1
            state.global_step += 1
            for cb in callbacks:
                cb.on_step(ctx, metrics)
            if evaluate is not None and cfg.eval_every and state.global_step % cfg.eval_every == 0:
                evaluated = _evaluate(ctx, evaluate, callbacks)
        state.epoch += 1
        state.step_in_epoch = 0
        if evaluate is not None and evaluated != state.global_step:
            evaluated = _evaluate(ctx, evaluate, callbacks)
        for cb in callbacks:
            cb.on_epoch_end(ctx)
    return state


def _evaluate(ctx: FitContext, evaluate: Evaluate, callbacks: Sequence[Callback]) -> int:
    """Score the live model and hand the metrics to every callback; returns the step scored."""
    metrics = evaluate(ctx.model)
    for cb in callbacks:
        cb.on_eval(ctx, metrics)
    return ctx.state.global_step


class DevScorer:
    """An `Evaluate` for `fit`: the evaluate stage's dev metrics on fixed tokenized rows.

    Args:
        data: labelled dev rows per task (a small, fixed subset keeps the scoring cheap).
        batch_size: rows per inference batch.
        precision: "fp32" or "bf16" (autocast), as in training.
    """

    def __init__(self, data: dict[str, TokenizedTask], batch_size: int, precision: str = "fp32") -> None:
        self.data, self.batch_size, self.precision = data, batch_size, precision

    def __call__(self, model: nn.Module) -> dict[str, float]:
        per_task = {task: task_metrics(predict(model, rows, self.batch_size, self.precision),
                                       np.asarray(rows.labels, dtype=np.float64))
                    for task, rows in self.data.items() if len(rows.segments)}
        return summary_metrics(per_task)


def _take_rows(batches: dict[str, list[list[int]]], step_tasks: tuple[str, ...],
               cursor: dict[str, int]) -> list[tuple[str, list[int]]]:
    """The (task, rows) of a step's global batches; advances `cursor`."""
    out = []
    for task in step_tasks:  # smaller tasks cycle through their batches (round-robin)
        out.append((task, batches[task][cursor[task] % len(batches[task])]))
        cursor[task] += 1
    return out
