"""SICK augmentation on the real files: parsing, the overlap flags, and no STS pair leaking in."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pandas as pd
import pytest

from mtbert.augment import (
    SICK_FILE,
    SICK_OVERLAP_FILE,
    build_augmented,
    read_sick,
    read_sick_overlap,
)
from mtbert.config import AugmentConfig
from mtbert.data import read_prepared, read_split, write_prepared

SICK_ROWS = 9840
README_PAIR_OVERLAP = {"train": 114, "dev": 18, "test": 31}


def _flag_table(data_dir: Path) -> pd.DataFrame:
    """The overlap file read with the csv module, independently of mtbert.augment."""
    with (data_dir / SICK_OVERLAP_FILE).open(newline="") as handle:
        return pd.DataFrame(list(csv.DictReader(handle, delimiter="\t")))


def _norm(text: str) -> str:
    """Lower-case words and digits only; an independent spelling of the module's normalization."""
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


@pytest.fixture(scope="module")
def augmented(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Real prepared tables (read as `mtbert prepare` reads them) and the SICK-only output."""
    root = tmp_path_factory.mktemp("sick")
    for task, split in [("sst", "train"), ("para", "train"), ("sts", "train"), ("sts", "dev"),
                        ("sts", "test")]:
        frame = read_split(data_dir, task, split, on_error="skip").frame
        write_prepared(frame, root / "prepared" / f"{task}-{split}.parquet")
    cfg = AugmentConfig(sick=True, eda_tasks=())
    report = build_augmented(root / "prepared", data_dir, root / "out", cfg, seed=1)
    return root, report


def test_sick_file_parses_with_scores_in_range(data_dir: Path) -> None:
    sick = read_sick(data_dir / SICK_FILE)
    assert len(sick) == SICK_ROWS and sick["pair_id"].is_unique
    assert sick["relatedness"].between(1, 5).all()
    assert sick["relatedness"].min() == 1 and sick["relatedness"].max() == 5


def test_overlap_flags_match_the_readme(data_dir: Path) -> None:
    table = _flag_table(data_dir)
    parsed = read_sick_overlap(data_dir / SICK_OVERLAP_FILE)
    assert len(table) == len(parsed) == SICK_ROWS
    for split, count in README_PAIR_OVERLAP.items():
        assert (table[f"pair_in_sts-{split}"] == "1").sum() == count
        assert parsed[f"pair_in_sts-{split}"].sum() == count


def test_every_flagged_pair_is_dropped(data_dir: Path, augmented: tuple[Path, dict]) -> None:
    root, report = augmented
    table = _flag_table(data_dir)
    pair_flags = [f"pair_in_sts-{split}" for split in README_PAIR_OVERLAP]
    flagged = set(table.loc[(table[pair_flags] == "1").any(axis=1), "pair_ID"])
    sts = read_prepared(root / "out" / "sts-train.parquet")
    kept = set(sts.loc[sts["source"] == "sick", "id"].str.removeprefix("sick-"))
    assert len(flagged) == report["sick"]["dropped_pair_flag"] == 159  # 163 flags, 4 pairs twice
    assert not kept & flagged
    assert len(kept) == report["sick"]["used"] == SICK_ROWS - report["sick"]["dropped"]
    # The text check finds exactly the flagged pairs on the real data: both sources agree.
    assert report["sick"]["dropped_text_match"] == 159
    assert report["sick"]["dropped_text_match_not_flagged"] == 0
    assert report["tasks"]["sts"]["rows_after"] == 6040 + len(kept)


def test_no_kept_sick_pair_equals_an_sts_pair(augmented: tuple[Path, dict]) -> None:
    root, report = augmented
    sts_pairs = set()
    for split in ("train", "dev", "test"):
        frame = read_prepared(root / "prepared" / f"sts-{split}.parquet")
        for a, b in zip(frame["sentence1"].map(_norm), frame["sentence2"].map(_norm)):
            sts_pairs |= {(a, b), (b, a)}
    out = read_prepared(root / "out" / "sts-train.parquet")
    sick = out[out["source"] == "sick"]
    assert len(sick) == report["sick"]["used"] > 9000
    kept_pairs = {(_norm(a), _norm(b)) for a, b in zip(sick["sentence1"], sick["sentence2"])}
    assert not kept_pairs & sts_pairs
    assert sick["label"].between(0, 5).all() and sick["label"].dtype == "float64"
