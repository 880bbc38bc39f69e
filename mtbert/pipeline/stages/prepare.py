"""The prepare stage: import the course CSVs, validate them into typed tables and a report."""

from __future__ import annotations

import dataclasses
import filecmp
import json
import logging
from pathlib import Path
from typing import Any

from mtbert import data as data_io
from mtbert.config import Config
from mtbert.fileio import atomic_write, atomic_write_text
from mtbert.pipeline.project import REPORT_FILE, prepared_path

log = logging.getLogger("mtbert")


def import_data(cfg: Config, source: str | None = None) -> data_io.ImportResult:
    """Copy the course CSVs from `source` (default `data.source`) into `data.raw_dir`."""
    return data_io.import_raw(source or cfg.data.source, cfg.data.raw_dir)


def data_changed(cfg: Config, source: str | None = None) -> bool:
    """Whether importing from `source` (default `data.source`) would change `data.raw_dir`.

    True when a course file differs in bytes, is in one folder only, or `data.raw_dir` lacks a
    required file; False when the source folder is absent but `data.raw_dir` is complete (data
    that `dvc pull` or an earlier import put there: nothing to import from).
    """
    src, dest = Path(source or cfg.data.source), Path(cfg.data.raw_dir)
    names = [*data_io.RAW_FILES.values(), *data_io.EXTRA_FILES]
    required = [name for (_, split), name in data_io.RAW_FILES.items() if split in data_io.REQUIRED_SPLITS]
    if not all((dest / name).is_file() for name in required):
        return True
    if not src.is_dir():
        return False
    for name in names:
        have, new = dest / name, src / name
        if have.is_file() != new.is_file() or (new.is_file() and not filecmp.cmp(have, new, shallow=False)):
            return True
    return False


def run(cfg: Config) -> dict[str, Any]:
    """Validate every raw file and write typed parquet tables plus a report of skipped rows."""
    for (task, split), name in data_io.RAW_FILES.items():  # all present before any is read
        if split in data_io.REQUIRED_SPLITS and not (Path(cfg.data.raw_dir) / name).exists():
            raise data_io.MissingFileError(f"no {task} {split} file here", path=Path(cfg.data.raw_dir) / name,
                                           fix="run `mtbert import-data` or check data.raw_dir")
    report: dict[str, Any] = {"on_error": cfg.data.on_error, "files": {}, "issues": []}
    for (task, split), name in data_io.RAW_FILES.items():
        if split not in data_io.REQUIRED_SPLITS and not (Path(cfg.data.raw_dir) / name).exists():
            continue  # test files are optional
        result = data_io.read_split(cfg.data.raw_dir, task, split, on_error=cfg.data.on_error)
        out = prepared_path(cfg, task, split)
        # Atomic: a full disk or a kill mid-write leaves the previous table readable.
        atomic_write(out, lambda tmp, frame=result.frame: frame.to_parquet(tmp, index=False))
        report["files"][name] = {"rows": len(result.frame), "skipped": len(result.issues)}
        for issue in result.issues:
            log.warning("skipped %s:%d: field '%s': %s", name, issue.line, issue.field, issue.reason)
            report["issues"].append(dataclasses.asdict(issue))
    atomic_write_text(Path(cfg.data.prepared_dir) / REPORT_FILE, json.dumps(report, indent=2))
    return report
