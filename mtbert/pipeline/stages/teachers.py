"""The teachers stage: the single-task models that `train.distill.teacher_seeds` asks the project
to train as distillation teachers, one per distilled task and seed (`project.teacher_configs`).

A teacher is the single-task baseline run it would be compared with: the project's config with one
task, its seed, loss scale 1 and no distillation. The stage's folder persists between runs
(dvc.yaml: persist), so a teacher already trained with the same settings on the same training rows
is kept, an interrupted one resumes from its checkpoint, and adding a seed trains only that one.
With distillation off, or teachers given as folders, it trains nothing and says so in its manifest.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mtbert.callbacks import Callback
from mtbert.checkpoint import MODEL_FILE
from mtbert.config import Config
from mtbert.fileio import atomic_write_text, sha256_file
from mtbert.model.load_hf import load_tokenizer
from mtbert.pipeline.project import resolve_device, teacher_configs, train_frames, with_precision
from mtbert.pipeline.stages import train as train_stage

log = logging.getLogger("mtbert")
MANIFEST = "manifest.json"


def _fingerprint(cfg: Config) -> dict[str, Any]:
    """What a finished teacher must have been trained with to be kept: the train stage's resume
    fingerprint (result-determining settings and a digest of the tokenized rows), code aside."""
    cfg = with_precision(cfg, resolve_device(cfg.train.device), quiet=True)
    tokenizer = load_tokenizer(cfg.train.init_from or cfg.model.checkpoint)
    data = train_stage.tokenize_tasks(cfg, tokenizer, train_frames(cfg))
    return {k: v for k, v in train_stage.fingerprint(cfg, data).items() if k != "code"}


def _recorded(path: Path) -> dict[str, Any]:
    """The teachers a previous run of the stage finished (folder -> fingerprint, weights' sha256)."""
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, or unreadable: every teacher is trained (or resumed)
        return {}
    trained = manifest.get("trained") if isinstance(manifest, dict) else None
    return trained if isinstance(trained, dict) else {}


def _is_current(entry: Any, fingerprint: dict[str, Any], weights: Path) -> bool:
    return (isinstance(entry, dict) and entry.get("fingerprint") == fingerprint and weights.exists()
            and entry.get("model_sha256") == sha256_file(weights))


def run(cfg: Config, callbacks: Callable[[], Sequence[Callback]] = tuple,
        retrain: bool = False) -> dict[str, Any]:
    """Train the teachers not trained yet with these settings; returns the manifest it writes.

    `callbacks` makes the callbacks of each teacher's training (e.g. a fresh progress bar).
    `retrain`: train every teacher from scratch. The settings compared leave the code out, as
    resuming does: after a change to the training code that should reach the teachers, retrain.
    """
    manifest_path = Path(cfg.train.distill.teachers_dir) / MANIFEST
    recorded = {} if retrain else _recorded(manifest_path)
    trained: dict[str, Any] = {}
    configs = teacher_configs(cfg)
    for i, tcfg in enumerate(configs, 1):
        folder = Path(tcfg.train.out_dir)
        current = _fingerprint(tcfg)
        if _is_current(recorded.get(str(folder)), current, folder / MODEL_FILE):
            log.info("teacher %d/%d %s: trained already with these settings", i, len(configs), folder)
            trained[str(folder)] = recorded[str(folder)]
        else:
            log.info("teacher %d/%d: training %s", i, len(configs), folder)
            train_stage.run(tcfg, resume=not retrain, callbacks=callbacks(),
                            run_name=f"teacher/{folder.parent.name}/{folder.name}")
            trained[str(folder)] = {"fingerprint": current, "model_sha256": sha256_file(folder / MODEL_FILE)}
        # after each teacher, so that an interrupted stage keeps what it finished
        _write(manifest_path, cfg, {**recorded, **trained})
    return _write(manifest_path, cfg, trained)


def _write(path: Path, cfg: Config, trained: dict[str, Any]) -> dict[str, Any]:
    manifest = {"enabled": cfg.train.distill.enabled, "teacher_seeds": list(cfg.train.distill.teacher_seeds),
                "trained": trained}
    atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=True))
    return manifest
