"""The tune stage: run (or resume, or join) the Optuna study; its best parameters as overrides.

On several machines: `create` the study once, then `run(cfg, join=True)` on each worker. A study is
keyed by what its trials are measured on (profile, dev rows): a worker with another key is refused
(`tuning.StudyKeyMismatch`).
"""

from __future__ import annotations

from typing import Any

from mtbert.config import Config
from mtbert.errors import UserError
from mtbert.pipeline import tuning


class NoTrialCompleted(UserError, RuntimeError):
    """Every trial of the study failed or was pruned."""


def create(cfg: Config) -> tuning.StudyInfo:
    """Create the study (its tables, its MLflow parent run) in `tune.storage` and run no trial;
    an existing study is left as it is."""
    return tuning.create_study(cfg)


def run(cfg: Config, n_trials: int | None = None, progress: bool = False,
        join: bool = False) -> dict[str, Any]:
    """Run the study until it holds `n_trials` (default `tune.n_trials`) finished trials.

    With `progress`, a bar over the trials (best value so far) goes to stderr. With `join`, the
    study must exist already (`create`; tuning.StudyNotFound otherwise): a worker never creates
    it. The best parameters are also written to `tune.out_file`. Raises NoTrialCompleted when no
    trial has completed.
    """
    study = tuning.run_study(cfg, n_trials, progress=progress, join=join)
    if not tuning.completed(study):
        raise NoTrialCompleted(f"study {study.study_name!r}: no trial completed; see the log above")
    return tuning.best_overrides(study)


def study_name(cfg: Config) -> str:
    """The study `run` opens: `tune.study_name`, or one named after the measurement key
    (`mtbert-<profile>-<digest>`: studies of other profiles or dev rows never mix)."""
    return tuning.study_name(cfg)
