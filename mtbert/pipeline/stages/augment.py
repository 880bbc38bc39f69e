"""The augment stage: augmented training tables (SICK pairs for sts, EDA copies) and a report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mtbert.augment import build_augmented
from mtbert.config import Config
from mtbert.fileio import atomic_write_text
from mtbert.pipeline.project import REPORT_FILE


def run(cfg: Config) -> dict[str, Any]:
    """Write augmented training tables (SICK for STS, EDA for the configured tasks) and a report."""
    out = Path(cfg.data.augmented_dir)
    report = build_augmented(Path(cfg.data.prepared_dir), Path(cfg.data.raw_dir), out,
                             cfg.augment, cfg.seed)
    atomic_write_text(out / REPORT_FILE, json.dumps(report, indent=2, default=str))
    return report
