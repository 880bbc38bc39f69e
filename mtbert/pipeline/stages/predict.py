"""The predict stage: a trained model's predictions for a user's file."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from mtbert.config import Config
from mtbert.evaluate import ProgressStart
from mtbert.model.trained import describe, settings_for_model
from mtbert.pipeline import serving
from mtbert.pipeline.project import apply_threads

OUTPUT_FORMATS = serving.OUTPUT_FORMATS


def trained_settings(cfg: Config, explicit: Collection[str],
                     model_dir: str | Path | None = None) -> tuple[Config, str]:
    """The config `mtbert predict` runs with, and the line that says so: what the model in
    `model_dir` (default `train.out_dir`) was trained with (max_length, ...) comes from its saved
    config unless set on the command line (`explicit`); runtime settings (threads, batch size) are
    `cfg`'s. See `mtbert.model.trained.trained_settings`."""
    settings = settings_for_model(cfg, model_dir or cfg.train.out_dir, explicit)
    return settings.cfg, describe(settings, "predict", dev_sizes=False)


def run(cfg: Config, task: str, input_path: str | Path, output_path: str | Path,
        model_dir: str | Path | None = None, progress: ProgressStart | None = None,
        output_format: str = "csv") -> int:
    """Predict `task` for every row of `input_path` (CSV or TSV with a header; see
    `serving.read_input_file`) into `output_path` as `output_format` ("csv": id, prediction[,
    label]; "course": the course's format); returns the row count."""
    apply_threads(cfg)
    return serving.predict_file(model_dir or cfg.train.out_dir, task, input_path, output_path,
                                batch_size=cfg.eval.batch_size, progress=progress,
                                output_format=output_format, max_length=cfg.model.max_length,
                                quantize=cfg.eval.quantize)
