"""The trained model as a Python object: `predict` for the three tasks, `encode` for sentence vectors.

    import mtbert
    model = mtbert.load("artifacts/model")            # or "models:/mtbert@champion" (MLflow)
    model.predict("sst", ["a great film"]).names      # ['positive']

`TrainedModel` wraps what `mtbert.model.trained.load_trained` returns and predicts through the
same code as `mtbert predict`, `mtbert evaluate` and the served model (`batching.tokenize_frame`,
then `evaluate.predict`), so its answers are theirs. This module is core: no MLflow; the MLflow
URIs are resolved by `mtbert.pipeline.loading`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mtbert.batching import pad, tokenize_frame
from mtbert.config import Config
from mtbert.evaluate import predict
from mtbert.model.multitask import MultitaskBert
from mtbert.model.trained import load_trained
from mtbert.tasks import LABEL_NAMES, TASK_SPECS, TASKS, check_task



@dataclass(frozen=True)
class Predictions:
    """One task's predictions, in input order.

    Attributes:
        task: "sst", "para" or "sts".
        labels: (n,) sst class ids 0..4, para 0/1 (1 = duplicate, probability > 0.5), or sts
            scores clipped to 0..5 (float).
        scores: (n,) sst probability of the predicted class, para probability of duplicate,
            sts the unclipped score.
        names: the label names of sst and para classes (`LABEL_NAMES`); None for sts.
    """

    task: str
    labels: np.ndarray
    scores: np.ndarray
    names: list[str] | None

    def __len__(self) -> int:
        return len(self.labels)

    def to_frame(self) -> pd.DataFrame:
        """A table with columns label, score and (sst, para) name."""
        frame = pd.DataFrame({"label": self.labels, "score": self.scores})
        return frame if self.names is None else frame.assign(name=self.names)


def _sentences(values: Sequence[str] | str, what: str) -> list[str]:
    """`values` as a list of strings; one string is refused (a list of its characters is never meant)."""
    if isinstance(values, str) or not isinstance(values, Sequence | np.ndarray | pd.Series):
        raise ValueError(f"{what} must be a list of strings, got {type(values).__name__}")
    out = list(values)
    bad = next((i for i, v in enumerate(out) if not isinstance(v, str)), None)
    if bad is not None:
        raise ValueError(f"{what}[{bad}] is {type(out[bad]).__name__}, not a string")
    return out


class TrainedModel:
    """A trained multitask model with its tokenizer and the config it was trained with."""

    def __init__(self, model: MultitaskBert, tokenizer: Any, cfg: Config) -> None:
        self.model, self.tokenizer, self.cfg = model.eval(), tokenizer, cfg

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks this model has heads for."""
        return self.model.tasks

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> TrainedModel:
        """Move the model to `device` ("cpu", "cuda", "cuda:1", ...); returns self."""
        self.model.to(device)
        return self

    def predict(self, task: str, sentences1: Sequence[str], sentences2: Sequence[str] | None = None,
                batch_size: int = 64) -> Predictions:
        """Predict `task` for sentences (sst) or sentence pairs (para, sts).

        Args:
            task: "sst", "para" or "sts".
            sentences1: n sentences (the first of each pair for para and sts).
            sentences2: n second sentences for para and sts; none for sst.
            batch_size: rows per forward pass.

        Raises:
            ValueError: an unknown task or one without a head, a missing, superfluous or
                mismatched `sentences2`, or an element that is not a string.
        """
        frame = self._frame(task, sentences1, sentences2)
        if frame.empty:
            return Predictions(task, np.zeros(0), np.zeros(0), None if task == "sts" else [])
        data = tokenize_frame(self.tokenizer, frame, task, self.cfg.model.pair_encoding,
                              self.cfg.model.max_length)
        pred = predict(self.model, data, batch_size)
        names = [LABEL_NAMES[task][int(i)] for i in pred.labels] if task in LABEL_NAMES else None
        return Predictions(task, pred.labels, pred.scores, names)

    def _frame(self, task: str, sentences1: Sequence[str],
               sentences2: Sequence[str] | None) -> pd.DataFrame:
        check_task(task)
        if task not in self.tasks:
            raise ValueError(f"this model has no {task} head; it was trained for {', '.join(self.tasks)}")
        first = _sentences(sentences1, "sentences1")
        if not TASK_SPECS[task].is_pair:
            if sentences2 is not None:
                raise ValueError(f"{task} takes single sentences; leave out sentences2")
            return pd.DataFrame({"sentence1": first})
        if sentences2 is None:
            raise ValueError(f"{task} compares two sentences: pass sentences1 and sentences2")
        second = _sentences(sentences2, "sentences2")
        if len(first) != len(second):
            raise ValueError(f"sentences1 has {len(first)} sentences and sentences2 {len(second)}; "
                             "pairs need the same number")
        return pd.DataFrame({"sentence1": first, "sentence2": second})

    @torch.inference_mode()
    def encode(self, sentences: Sequence[str], batch_size: int = 64,
               normalize: bool = False) -> np.ndarray:
        """Sentence vectors: the pooled encoder output the heads see (`model.pooling`).

        Returns:
            float32 (n, H), or (n, 2H) for `mean_max` pooling; unit length with `normalize`.
            Equal to `SentenceTransformer(<model_dir>/encoder).encode(...)` (mtbert.model.export_hf).
        """
        texts = _sentences(sentences, "sentences")
        width = self.model.encoder.config.hidden_size * (2 if self.cfg.model.pooling == "mean_max" else 1)
        if not texts:
            return np.zeros((0, width), dtype=np.float32)
        enc = self.tokenizer(texts, truncation=True, max_length=self.cfg.model.max_length,
                             return_token_type_ids=True, return_attention_mask=False)
        seqs = list(zip(enc["input_ids"], enc["token_type_ids"]))
        out = np.zeros((len(seqs), width), dtype=np.float32)
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))  # little padding per batch
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            vectors = self.model.embed(pad([seqs[i] for i in rows]).to(self.device)).float()
            if normalize:
                vectors = torch.nn.functional.normalize(vectors, dim=-1)
            out[rows] = vectors.cpu().numpy()
        return out

    def __repr__(self) -> str:
        m = self.cfg.model
        return (f"TrainedModel(tasks={list(self.tasks)}, pooling={m.pooling!r}, "
                f"pair_encoding={m.pair_encoding!r}, device={str(self.device)!r})")


def load_dir(model_dir: str | Path, device: str = "cpu", quantize: str = "none") -> TrainedModel:
    """The trained model in a folder the train stage wrote (`train.out_dir`), on `device`
    (`quantize="int8"`: dynamic int8 linear layers, CPU only).

    Raises:
        UserError: the folder, its weights or its metadata are missing or unreadable (named).
    """
    model, tokenizer, cfg = load_trained(model_dir, device, quantize)
    return TrainedModel(model, tokenizer, cfg)


__all__ = ["LABEL_NAMES", "TASKS", "Predictions", "TrainedModel", "load_dir"]
