"""Task losses as functions of tensors: (output, labels) -> scalar mean over the batch."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from mtbert.tasks import TASK_SPECS, check_task

STS_LOSSES: tuple[str, ...] = ("mse", "cosine")
STS_MAX_SCORE = 5.0


def _check_batch(output: Tensor, labels: Tensor, task: str) -> None:
    """Raise ValueError unless labels is (B,) and output has the same batch size."""
    if labels.ndim != 1 or output.ndim == 0 or output.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{task}: need labels (B,) and output with batch size B; "
            f"got output {tuple(output.shape)}, labels {tuple(labels.shape)}"
        )


def sst_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross entropy for 5-way sentiment.

    Args:
        logits: (B, 5) unnormalized class scores.
        labels: (B,) integer classes in [0, 5).

    Returns:
        Scalar mean loss.
    """
    _check_batch(logits, labels, "sst")
    num_labels = TASK_SPECS["sst"].num_labels
    if logits.ndim != 2 or logits.shape[1] != num_labels:
        raise ValueError(f"sst: logits must be (B, {num_labels}); got {tuple(logits.shape)}")
    return F.cross_entropy(logits, labels.long())


def para_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Paraphrase loss for a binary-logit head or a 2-class head.

    A single logit, (B,) or (B, 1), gets binary cross entropy with logits. Two logits,
    (B, 2), get 2-class cross entropy; that equals BCE on the logit difference
    z_1 - z_0, so both head shapes optimize the same objective.

    Args:
        logits: (B,), (B, 1) or (B, 2).
        labels: (B,) with values 0 (not paraphrase) or 1 (paraphrase).

    Returns:
        Scalar mean loss.
    """
    _check_batch(logits, labels, "para")
    if logits.ndim == 2 and logits.shape[1] == 2:
        return F.cross_entropy(logits, labels.long())
    if logits.ndim == 2 and logits.shape[1] == 1:
        logits = logits[:, 0]
    if logits.ndim != 1:
        raise ValueError(f"para: logits must be (B,), (B, 1) or (B, 2); got {tuple(logits.shape)}")
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


def sts_loss(pred: Tensor, labels: Tensor, kind: str = "mse") -> Tensor:
    """Similarity regression loss.

    Kinds (STS_LOSSES):
        mse: `pred` is a similarity score on the gold 0..5 scale; MSE against `labels`.
        cosine: `pred` is a cosine similarity in [-1, 1] of the two sentence
            embeddings; MSE against `labels / 5` in [0, 1], as in Sentence-BERT's
            CosineSimilarityLoss.

    Args:
        pred: (B,) or (B, 1).
        labels: (B,) gold similarity in [0, 5].
        kind: one of STS_LOSSES.

    Returns:
        Scalar mean loss.
    """
    if kind not in STS_LOSSES:
        raise ValueError(f"unknown sts loss {kind!r}; valid sts losses: {', '.join(STS_LOSSES)}")
    _check_batch(pred, labels, "sts")
    if pred.ndim == 2 and pred.shape[1] == 1:
        pred = pred[:, 0]
    if pred.ndim != 1:
        raise ValueError(f"sts: pred must be (B,) or (B, 1); got {tuple(pred.shape)}")
    target = labels.to(pred.dtype)
    if kind == "cosine":
        target = target / STS_MAX_SCORE
    return F.mse_loss(pred, target)


def task_loss(task: str, output: Tensor, labels: Tensor, sts_loss_kind: str = "mse") -> Tensor:
    """Loss of one task's head output; dispatches on the task name.

    Args:
        task: one of TASKS.
        output: the task head's output (see sst_loss, para_loss, sts_loss).
        labels: (B,) gold labels.
        sts_loss_kind: one of STS_LOSSES; used only for "sts" but always validated.

    Returns:
        Scalar mean loss.
    """
    check_task(task)
    if sts_loss_kind not in STS_LOSSES:
        raise ValueError(f"unknown sts loss {sts_loss_kind!r}; valid sts losses: {', '.join(STS_LOSSES)}")
    if task == "sst":
        return sst_loss(output, labels)
    if task == "para":
        return para_loss(output, labels)
    return sts_loss(output, labels, sts_loss_kind)

