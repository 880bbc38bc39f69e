"""The predict stage: a trained model's predictions for a user's file."""

from __future__ import annotations

from pathlib import Path

from mtbert.config import Config
from mtbert.evaluate import ProgressStart
from mtbert.pipeline import serving
from mtbert.pipeline.project import apply_threads


def run(cfg: Config, task: str, input_path: str | Path, output_path: str | Path,
        model_dir: str | Path | None = None, progress: ProgressStart | None = None) -> int:
    """Predict `task` for every row of `input_path` into `output_path`; returns the row count."""
    apply_threads(cfg)
    return serving.predict_file(model_dir or cfg.train.out_dir, task, input_path, output_path,
                                batch_size=cfg.eval.batch_size, progress=progress)
