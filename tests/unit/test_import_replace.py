"""`import_raw` replaces the data folder's course files: what the source lacks is removed and reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtbert.data import EXTRA_FILES, RAW_FILES, REQUIRED_SPLITS, ImportResult, import_raw
from mtbert.errors import MissingFileError

REQUIRED = [name for (_, split), name in RAW_FILES.items() if split in REQUIRED_SPLITS]
OPTIONAL = [name for (_, split), name in RAW_FILES.items() if split not in REQUIRED_SPLITS]


def _course_dir(root: Path, names: list[str], tag: str) -> Path:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(f"{tag} {name}\n")
    return root


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_a_second_import_removes_the_course_files_the_new_source_lacks(tmp_path: Path) -> None:
    everything = [*REQUIRED, *OPTIONAL, *EXTRA_FILES]
    dest = tmp_path / "data"
    first = import_raw(_course_dir(tmp_path / "full", everything, "v1"), dest)
    assert first.removed == () and len(first) == len(everything)
    assert _files(dest) == sorted(everything)

    kept_optional = OPTIONAL[0]
    result = import_raw(_course_dir(tmp_path / "lean", [*REQUIRED, kept_optional], "v2"), dest)

    gone = sorted(set(OPTIONAL + list(EXTRA_FILES)) - {kept_optional})
    assert isinstance(result, ImportResult)
    assert sorted(str(p.relative_to(dest)) for p in result.removed) == gone
    assert not any(p.exists() for p in result.removed)
    assert _files(dest) == sorted([*REQUIRED, kept_optional])
    assert all((dest / n).read_text() == f"v2 {n}\n" for n in [*REQUIRED, kept_optional])
    assert not (dest / "extra").exists()  # emptied by the removal of both extra files
    # As a sequence it is the copied paths (what `mtbert import-data` counts).
    assert list(result) == list(result.copied) and len(result) == len(REQUIRED) + 1
    assert result.copied[0] in result and result.removed[0] not in result


def test_files_that_are_not_course_files_are_left_alone(tmp_path: Path) -> None:
    dest = _course_dir(tmp_path / "data", ["notes.txt", "extra/mine.tsv", "ids-cfimdb-dev.csv"], "own")
    _course_dir(dest, [EXTRA_FILES[0]], "old")
    result = import_raw(_course_dir(tmp_path / "src", REQUIRED, "new"), dest)
    assert [str(p.relative_to(dest)) for p in result.removed] == [EXTRA_FILES[0]]
    assert _files(dest) == sorted([*REQUIRED, "notes.txt", "extra/mine.tsv", "ids-cfimdb-dev.csv"])
    assert (dest / "extra" / "mine.tsv").read_text() == "own extra/mine.tsv\n"


def test_a_failed_import_removes_nothing(tmp_path: Path) -> None:
    dest = _course_dir(tmp_path / "data", [*REQUIRED, *OPTIONAL], "old")
    before = {n: (dest / n).read_text() for n in _files(dest)}
    source = _course_dir(tmp_path / "src", REQUIRED[:-1], "new")  # one required file missing
    with pytest.raises(MissingFileError, match=REQUIRED[-1]) as caught:
        import_raw(source, dest)
    assert caught.value.path == str(source)
    assert {n: (dest / n).read_text() for n in _files(dest)} == before


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_a_source_that_is_not_a_folder_is_one_clear_error(tmp_path: Path, kind: str) -> None:
    source = tmp_path / "src"
    if kind == "file":
        source.write_text("not a folder\n")
    with pytest.raises(MissingFileError) as caught:
        import_raw(source, tmp_path / "data")
    what = "does not exist" if kind == "missing" else "is not a folder"
    assert str(caught.value).startswith(f"{source}: course data folder {what} (")
    assert not (tmp_path / "data").exists()


def test_a_stale_course_file_that_is_a_symlink_is_removed_not_its_target(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.csv"
    target.write_text("keep me\n")
    dest = tmp_path / "data"
    dest.mkdir()
    (dest / OPTIONAL[0]).symlink_to(target)
    result = import_raw(_course_dir(tmp_path / "src", REQUIRED, "new"), dest)
    assert result.removed == (dest / OPTIONAL[0],)
    assert not (dest / OPTIONAL[0]).is_symlink() and target.read_text() == "keep me\n"
