"""Fixtures for the data-loading tests: synthetic files and the real course data."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from mtbert.data import RAW_FILES, LoadResult, read_split

REPO_ROOT = Path(__file__).resolve().parents[2]

WriteLines = Callable[[str, list[str]], Path]


@pytest.fixture
def write_lines(tmp_path: Path) -> WriteLines:
    """Write physical lines (header first) to ``tmp_path / name``, newline-terminated."""

    def write(name: str, lines: list[str]) -> Path:
        path = tmp_path / name
        path.write_bytes(("\n".join(lines) + "\n").encode("utf-8"))
        return path

    return write


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The course data directory (``$MTBERT_DATA_DIR``, else ``<repo>/../shared/data``)."""
    path = Path(os.environ.get("MTBERT_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
    if not (path / RAW_FILES[("sst", "train")]).is_file():
        pytest.skip(f"course data not found in {path}; set MTBERT_DATA_DIR")
    return path


@pytest.fixture(scope="session")
def loaded(data_dir: Path) -> dict[tuple[str, str], LoadResult]:
    """Every course file present in `data_dir`, read once under the skip policy."""
    results = {}
    for task, split in RAW_FILES:
        if (data_dir / RAW_FILES[(task, split)]).is_file():
            results[(task, split)] = read_split(data_dir, task, split, on_error="skip")
    return results
