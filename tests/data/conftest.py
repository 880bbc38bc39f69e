"""Fixtures for the data-loading tests: synthetic files and the real course data."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from mtbert.data import RAW_FILES, LoadResult, read_split

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
def loaded(data_dir: Path) -> dict[tuple[str, str], LoadResult]:
    """Every course file present in `data_dir`, read once under the skip policy."""
    results = {}
    for task, split in RAW_FILES:
        if (data_dir / RAW_FILES[(task, split)]).is_file():
            results[(task, split)] = read_split(data_dir, task, split, on_error="skip")
    return results
