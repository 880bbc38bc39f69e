"""Distillation with teacher annealing (BAM!, Clark et al. 2019).

A teacher (one trained model, or the average of several) labels every training row once; the
outputs travel with the rows (`TokenizedTask.targets`, batched by `collate`). A distilled task's
loss is `lam * distill + (1 - lam) * gold`, where lam anneals from 1 (imitate the teacher) at the
first step to 0 (learn from the gold labels only) at the last, so the student can end up better
than its teacher. The distill term is a soft cross-entropy for sst (softmax over 5 classes) and
para (a binary one), both at a temperature T, and the task's own regression loss against the
teacher's score for sts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mtbert.batching import TokenizedTask
from mtbert.evaluate import raw_outputs
from mtbert.losses import STS_MAX_SCORE, sts_loss
from mtbert.model.multitask import MultitaskBert
from mtbert.tasks import TASK_SPECS, check_task

LAM_SCHEDULES: tuple[str, ...] = ("linear", "constant")


def teacher_outputs(model: MultitaskBert, data: TokenizedTask, batch_size: int,
                    precision: str = "fp32") -> np.ndarray:
    """A teacher's soft targets for every row of `data`, in its row order (eval mode, no grad).

    Args:
        model: the teacher, on its device.
        data: the rows to label (the student's training rows).
        batch_size: rows per inference batch.
        precision: "fp32" or "bf16" (autocast).

    Returns:
        float32 (N, 5) sst class probabilities, (N,) para probabilities of "duplicate", or
        (N,) sts scores clipped to the gold scale 0..5.
    """
    out = raw_outputs(model, data, batch_size, precision)
    if data.task == "sst":
        return torch.softmax(torch.from_numpy(out), dim=-1).numpy()
    if data.task == "para":
        return torch.sigmoid(torch.from_numpy(out[:, 0])).numpy()
    return np.clip(out[:, 0], 0.0, STS_MAX_SCORE)


def average_teachers(outputs: Sequence[np.ndarray]) -> np.ndarray:
    """The ensemble's targets: the mean of several teachers' `teacher_outputs` on the same rows.

    Probabilities are averaged (not logits), as for an ensemble's prediction.
    """
    if not outputs:
        raise ValueError("average_teachers needs at least one teacher's outputs")
    shapes = {np.shape(o) for o in outputs}
    if len(shapes) != 1:
        raise ValueError(f"teachers' outputs differ in shape: {sorted(shapes)}")
    return np.mean(np.stack(outputs), axis=0, dtype=np.float64).astype(np.float32)


def with_targets(data: TokenizedTask, targets: np.ndarray) -> TokenizedTask:
    """`data` with one teacher target per row (a copy; the rows are shared, not copied).

    Raises:
        ValueError: if `targets` does not hold one output of the task's shape per row.
    """
    targets = np.asarray(targets, dtype=np.float32)
    expected = (len(data), 5) if data.task == "sst" else (len(data),)
    if targets.shape != expected:
        raise ValueError(f"{data.task}: targets must be {expected} for {len(data)} rows; "
                         f"got {targets.shape}")
    return dataclasses.replace(data, targets=targets)


def lam_at(step: int, total_steps: int, schedule: str = "linear", lam: float = 0.5) -> float:
    """Weight of the teacher term at an optimizer step: a pure function of the step.

    "linear" is BAM!'s teacher annealing: 1 at step 0, falling linearly to 0 at the last step
    (`total_steps` - 1) and 0 after it; a one-step run gets 1. "constant" is `lam` throughout.

    Raises:
        ValueError: on an unknown schedule, step < 0, total_steps < 1 or lam outside [0, 1].
    """
    if schedule not in LAM_SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; valid schedules: {', '.join(LAM_SCHEDULES)}")
    if step < 0 or total_steps < 1 or not 0.0 <= lam <= 1.0:
        raise ValueError(f"need step >= 0, total_steps >= 1 and 0 <= lam <= 1; got step={step}, "
                         f"total_steps={total_steps}, lam={lam}")
    if schedule == "constant":
        return lam
    if total_steps == 1:
        return 1.0
    return max(0.0, 1.0 - step / (total_steps - 1))


def soften(probs: Tensor, temperature: float) -> Tensor:
    """Teacher class probabilities at a temperature: softmax(log p / T), (B, C) -> (B, C).

    For p = softmax(z) this is softmax(z / T), Hinton's softened targets; T = 1 returns `probs`.
    """
    if temperature == 1.0:
        return probs
    return torch.softmax(torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny)) / temperature, dim=-1)


def _binary_logits(logits: Tensor) -> Tensor:
    """A para head's output as one logit per row: (B,), (B, 1) or (B, 2) -> (B,)."""
    if logits.ndim == 2 and logits.shape[1] == 2:
        return logits[:, 1] - logits[:, 0]  # the two-class softmax is sigmoid(z_1 - z_0)
    if logits.ndim == 2 and logits.shape[1] == 1:
        return logits[:, 0]
    if logits.ndim != 1:
        raise ValueError(f"para: logits must be (B,), (B, 1) or (B, 2); got {tuple(logits.shape)}")
    return logits


def distill_loss(task: str, output: Tensor, targets: Tensor, temperature: float = 1.0,
                 sts_loss_kind: str = "mse") -> Tensor:
    """Loss of a student's head output against teacher targets; scalar mean over the batch.

    sst: soft cross-entropy -sum_c q_T,c log softmax(z / T)_c, with q_T = `soften(q, T)`.
    para: binary soft cross-entropy of sigmoid(z / T) against the teacher's probability at T.
    Both are multiplied by T**2 so that their gradients keep their size as T changes (Hinton et
    al. 2015); at T = 1 they are the plain soft cross-entropies. sts: `sts_loss` of the score (as
    `batch_loss` hands it to the gold loss) against the teacher's 0..5 score; T is not used.

    Args:
        task: one of TASKS.
        output: sst logits (B, 5); para logits (B,), (B, 1) or (B, 2); sts prediction (B,).
        targets: teacher outputs of the batch's rows, (B, 5) for sst, (B,) otherwise.
        temperature: T > 0.
        sts_loss_kind: the gold sts loss kind (see mtbert.losses.sts_loss).
    """
    if check_task(task) == "sts":
        return sts_loss(output, targets, sts_loss_kind)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    targets = targets.to(output.dtype)
    if task == "sst":
        shape = (output.shape[0], TASK_SPECS["sst"].num_labels)
        if output.shape != shape or targets.shape != shape:
            raise ValueError(f"sst: logits and targets must be {shape}; got {tuple(output.shape)} "
                             f"and {tuple(targets.shape)}")
        log_p = F.log_softmax(output / temperature, dim=-1)
        loss = -(soften(targets, temperature) * log_p).sum(-1).mean()
    else:
        z = _binary_logits(output)
        if targets.shape != z.shape:
            raise ValueError(f"para: targets must be {tuple(z.shape)}; got {tuple(targets.shape)}")
        soft = targets if temperature == 1.0 else torch.sigmoid(torch.logit(targets, eps=1e-6) / temperature)
        loss = F.binary_cross_entropy_with_logits(z / temperature, soft)
    return loss * temperature**2


def mix(gold: Tensor, distill: Tensor, lam: float) -> Tensor:
    """BAM!'s teacher-annealed loss lam * distill + (1 - lam) * gold (exactly `gold` at lam = 0)."""
    return lam * distill + (1.0 - lam) * gold
