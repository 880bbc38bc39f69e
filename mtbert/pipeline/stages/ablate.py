"""The ablate stage: train and evaluate a named set of configurations under one budget."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mtbert.config import Config
from mtbert.pipeline import ablation


def run(cfg: Config, path: str | Path, set_name: str, *, root: str | Path, out: str | Path,
        keep_models: bool = False, only: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Run (or resume) set `set_name` of the ablations file; returns the table's rows."""
    return ablation.run_from_file(cfg, path, set_name, root=root, out=out,
                                  keep_models=keep_models, only=only)


def table(out: str | Path, set_name: str) -> str:
    """The set's results table as written to `OUT.md` (means ± sd, bootstrap intervals)."""
    return ablation.read_table(out, set_name) or "(no results)"
