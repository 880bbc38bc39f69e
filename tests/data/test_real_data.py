"""Checks on the real course files: row counts, label ranges, nulls, ids, known issues, overlap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mtbert.data import (
    RAW_FILES,
    DataFormatError,
    LoadResult,
    find_overlaps,
    label_distribution,
    read_split,
)

Loaded = dict[tuple[str, str], LoadResult]

ROWS = {
    ("sst", "train"): 8544,
    ("sst", "dev"): 1101,
    ("sst", "test"): 2210,
    ("para", "train"): 13507,
    ("para", "dev"): 10100,  # 10,102 records minus the two malformed ones
    ("sts", "train"): 6040,
    ("sts", "dev"): 863,
    ("sts", "test"): 1725,
}
LABEL_RANGES = {"sst": (0, 4), "para": (0, 1), "sts": (0, 5)}
# quora-dev.csv: record index -> (physical line, field reported). Line 1 is the header.
QUORA_DEV_BROKEN = {"65479": (1267, "is_duplicate"), "264614": (7083, "sentence2")}


def _line_of_index(path: Path, index: str) -> int:
    """The 1-based physical line whose first field is `index`."""
    with path.open(encoding="utf-8", newline="\n") as handle:
        for number, line in enumerate(handle, start=1):
            if line.split("\t", 1)[0] == index:
                return number
    raise AssertionError(f"index {index} not in {path}")


@pytest.mark.parametrize(("task", "split"), list(ROWS))
def test_row_counts(loaded: Loaded, task: str, split: str) -> None:
    assert len(loaded[(task, split)].frame) == ROWS[(task, split)]


@pytest.mark.parametrize(("task", "split"), [key for key in ROWS if key[1] != "test"])
def test_labels_in_range_with_expected_dtype(loaded: Loaded, task: str, split: str) -> None:
    labels = loaded[(task, split)].frame["label"]
    low, high = LABEL_RANGES[task]
    assert labels.between(low, high).all()
    assert labels.dtype == (np.float64 if task == "sts" else np.int64)
    if task != "sts":
        assert set(label_distribution(loaded[(task, split)].frame)) == set(range(low, high + 1))


@pytest.mark.parametrize(("task", "split"), list(ROWS))
def test_no_nulls_unique_ids_stripped_sentences(loaded: Loaded, task: str, split: str) -> None:
    frame = loaded[(task, split)].frame
    assert not frame.isna().any().any()
    assert frame["id"].is_unique
    assert frame["id"].str.fullmatch(r"[0-9a-f]{25}").all()
    assert not frame["sentence1"].str.startswith(" ").any()


@pytest.mark.parametrize(("task", "split"), [key for key in ROWS if key != ("para", "dev")])
def test_clean_files_have_no_issues(loaded: Loaded, task: str, split: str) -> None:
    assert loaded[(task, split)].issues == []


def test_quora_dev_skip_reports_the_two_malformed_rows(loaded: Loaded, data_dir: Path) -> None:
    issues = loaded[("para", "dev")].issues
    path = data_dir / RAW_FILES[("para", "dev")]
    expected = []
    for index, (line, field) in QUORA_DEV_BROKEN.items():
        assert _line_of_index(path, index) == line
        expected.append((str(path), line, field))
    assert [(issue.path, issue.line, issue.field) for issue in issues] == expected
    assert "empty label" in issues[0].reason
    assert "empty or whitespace-only sentence" in issues[1].reason
    assert all("unbalanced quote" in issue.reason for issue in issues)


def test_quora_dev_fail_names_file_and_line(data_dir: Path) -> None:
    expected = r"quora-dev\.csv:1267: field 'is_duplicate': empty label"
    with pytest.raises(DataFormatError, match=expected):
        read_split(data_dir, "para", "dev", on_error="fail")


def test_sst_test_student_extra_leading_column_is_ignored(loaded: Loaded) -> None:
    assert list(loaded[("sst", "test")].frame.columns) == ["id", "sentence1"]


def test_sst_train_dev_sentence_overlap_is_small_and_reported(loaded: Loaded) -> None:
    frames = {split: loaded[("sst", split)].frame for split in ("train", "dev", "test")}
    overlaps = find_overlaps(frames, "sentence1")
    # Known: "Hey Arnold !" (train/dev); "No. ." and "What 's next ?" (train/test).
    # Reported, not dropped.
    assert 0 < overlaps[("train", "dev")] <= 5
    assert 0 < overlaps[("train", "test")] <= 5


def test_quora_train_dev_share_no_pairs(loaded: Loaded) -> None:
    frames = {split: loaded[("para", split)].frame for split in ("train", "dev")}
    assert find_overlaps(frames, ["sentence1", "sentence2"]) == {("train", "dev"): 0}
