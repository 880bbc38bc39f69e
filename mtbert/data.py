"""Loading and checking the CS224N course data files (SST-5, Quora, STS-B).

The course files are tab-separated with standard double-quote escaping, a header
line, and exactly one record per physical line. Each line is parsed on its own so
that one malformed row (for example an unbalanced quote) can never swallow the
rows after it. Every bad row is either an error (``on_error="fail"``) or a
recorded `RowIssue` (``on_error="skip"``); no row is ever dropped silently.

Loaded frames have the columns ``id`` (str), ``sentence1`` (str), ``sentence2``
(str, pair tasks only) and ``label`` (labeled splits only: int64 for ``sst``
0..4 and ``para`` 0/1, float64 for ``sts`` 0..5).
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from mtbert.errors import MissingFileError, UserError
from mtbert.fileio import atomic_write
from mtbert.tasks import TASK_SPECS, check_task

SPLITS: tuple[str, ...] = ("train", "dev", "test")
REQUIRED_SPLITS: tuple[str, ...] = ("train", "dev")
ON_ERROR: tuple[str, ...] = ("fail", "skip")

RAW_FILES: dict[tuple[str, str], str] = {
    ("sst", "train"): "ids-sst-train.csv",
    ("sst", "dev"): "ids-sst-dev.csv",
    ("sst", "test"): "ids-sst-test-student.csv",
    ("para", "train"): "quora-train.csv",
    ("para", "dev"): "quora-dev.csv",
    # Optional: not in the shared course data, but some users have it.
    ("para", "test"): "quora-test-student.csv",
    ("sts", "train"): "sts-train.csv",
    ("sts", "dev"): "sts-dev.csv",
    ("sts", "test"): "sts-test-student.csv",
}
EXTRA_FILES: tuple[str, ...] = ("extra/SICK.txt", "extra/SICK_overlap_with_cs224n_sts.tsv")

_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_SHOWN_CHARS = 40


@dataclass(frozen=True)
class _Schema:
    """Source column names and label range of one task's files."""

    sentences: tuple[str, ...]
    label: str
    low: float
    high: float
    integer: bool


_SCHEMAS: dict[str, _Schema] = {
    "sst": _Schema(("sentence",), "sentiment", 0, 4, integer=True),
    "para": _Schema(("sentence1", "sentence2"), "is_duplicate", 0, 1, integer=True),
    "sts": _Schema(("sentence1", "sentence2"), "similarity", 0, 5, integer=False),
}


class DataFormatError(UserError, ValueError):
    """A data file violates the expected format.

    ``str(err)`` is ``<path>:<line>: field '<field>': <reason>``.

    Attributes:
        path: the file, as given.
        line: 1-based physical line number in the file (the header is line 1).
        field: the column name from the header, or ``"row"`` for whole-line problems.
        reason: what is wrong.
    """

    field_format = "field '{}'"

    def __init__(self, path: str | Path, line: int, field: str, reason: str) -> None:
        super().__init__(reason, path=path, line=line, field=field)

    def __reduce__(self) -> tuple[type, tuple[str, int, str, str]]:
        return (type(self), (str(self.path), self.line or 0, self.field or "", self.reason))

    @classmethod
    def from_issue(cls, issue: RowIssue) -> DataFormatError:
        """Build the error that ``on_error="fail"`` raises for `issue`."""
        return cls(issue.path, issue.line, issue.field, issue.reason)


@dataclass(frozen=True)
class RowIssue:
    """A row skipped under ``on_error="skip"``: the same facts as `DataFormatError`."""

    path: str
    line: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: field '{self.field}': {self.reason}"


@dataclass
class LoadResult:
    """A loaded file: the good rows, the skipped rows and where they came from.

    Attributes:
        frame: one row per good record (columns as in the module docstring).
        issues: rows skipped under ``on_error="skip"``; always empty under "fail".
        path: the file that was read.
    """

    frame: pd.DataFrame
    issues: list[RowIssue]
    path: Path


@dataclass(frozen=True)
class _Layout:
    """What the header says about where each required column is."""

    path: str
    schema: _Schema
    labeled: bool
    positions: dict[str, int]
    n_fields: int


class _FieldError(Exception):
    """Internal: one field of one row is bad; `empty` marks a missing value."""

    def __init__(self, field_name: str, reason: str, *, empty: bool = False) -> None:
        super().__init__(reason)
        self.field_name = field_name
        self.reason = reason
        self.empty = empty


def _check_on_error(on_error: str) -> str:
    if on_error not in ON_ERROR:
        raise ValueError(f"unknown on_error {on_error!r}; valid values: {', '.join(ON_ERROR)}")
    return on_error


def _shown(text: str) -> str:
    """`text` quoted and cut short, for error messages."""
    if len(text) > _SHOWN_CHARS:
        text = text[:_SHOWN_CHARS] + "..."
    return repr(text)


def _split_fields(line: str) -> list[str]:
    """Split one physical line into fields (tab-separated, double-quote escaping).

    Raises:
        _FieldError: on broken quoting, e.g. a quoted field that never closes.
    """
    try:
        reader = csv.reader((line,), delimiter="\t", quotechar='"', doublequote=True, strict=True)
        return next(reader)
    except csv.Error as err:
        message = str(err)
        if "unexpected end of data" in message:
            raise _FieldError("row", "unbalanced quotes (quoted field not closed)") from err
        raise _FieldError("row", f"malformed quoting ({message})") from err


def _decode(raw: bytes) -> str:
    """Decode one physical line and drop a trailing carriage return."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _FieldError("row", f"invalid UTF-8 at byte {err.start}") from err
    return text[:-1] if text.endswith("\r") else text


def _physical_lines(path: Path) -> list[bytes]:
    """The file's physical lines, split on newline only (no final empty line).

    Raises:
        MissingFileError: `path` does not exist.
        UserError: `path` cannot be read (a directory, no permission).
    """
    try:
        lines = path.read_bytes().split(b"\n")
    except FileNotFoundError:
        raise MissingFileError("data file does not exist", path=path) from None
    except OSError as err:
        raise UserError(f"cannot read data file ({err.strerror or err})", path=path) from None
    if lines and lines[-1] == b"":
        lines.pop()
    return lines


def _header_line(path: Path, lines: list[bytes]) -> list[str]:
    """Column names from line 1; raises DataFormatError if there is no usable header."""
    try:
        text = _decode(lines[0]).removeprefix("\ufeff") if lines else ""
        if not text.strip():
            raise _FieldError("row", "empty header line (no column names)")
        return [name.strip() for name in _split_fields(text)]
    except _FieldError as err:
        raise DataFormatError(path, 1, err.field_name, err.reason) from err


def _layout(path: Path, lines: list[bytes], task: str, labeled: bool) -> _Layout:
    """Find every required column by name in the header (line 1).

    Raises:
        DataFormatError: a required column is missing or appears twice.
    """
    names = _header_line(path, lines)
    schema = _SCHEMAS[task]
    required = ("id", *schema.sentences) + ((schema.label,) if labeled else ())
    for column in required:
        count = names.count(column)
        if count != 1:
            problem = "missing required column" if count == 0 else f"column appears {count} times"
            raise DataFormatError(path, 1, column, f"{problem} in header of {path.name}")
    positions = {column: names.index(column) for column in required}
    return _Layout(str(path), schema, labeled, positions, len(names))


def _parse_label(text: str, schema: _Schema) -> float:
    """Parse and range-check one label; raises _FieldError naming the label column."""
    stripped = text.strip()
    if not stripped:
        raise _FieldError(schema.label, "empty label", empty=True)
    if not _NUMBER.fullmatch(stripped):
        raise _FieldError(schema.label, f"non-numeric label {_shown(text)}")
    value = float(stripped)
    stripped = stripped[:_SHOWN_CHARS]
    bounds = f"{schema.low:g}..{schema.high:g}"
    if schema.integer and not value.is_integer():
        reason = f"non-integer label {stripped} (expected an integer {bounds})"
        raise _FieldError(schema.label, reason)
    if not schema.low <= value <= schema.high:
        raise _FieldError(schema.label, f"label {stripped} out of range {bounds}")
    return value


def _row_values(raw: bytes, layout: _Layout) -> tuple[str | float, ...]:
    """Parse one data line into (id, sentence..., [label]); raises _FieldError."""
    line = _decode(raw)
    if not line.strip():
        raise _FieldError("row", "blank line")
    fields = _split_fields(line)
    if len(fields) != layout.n_fields:
        raise _FieldError("row", f"expected {layout.n_fields} fields, found {len(fields)}")
    row_id = fields[layout.positions["id"]].strip()
    if not row_id:
        raise _FieldError("id", "empty id")
    values: list[str | float] = [row_id]
    for column in layout.schema.sentences:
        sentence = fields[layout.positions[column]].strip()
        if not sentence:
            raise _FieldError(column, "empty or whitespace-only sentence", empty=True)
        values.append(sentence)
    if layout.labeled:
        values.append(_parse_label(fields[layout.positions[layout.schema.label]], layout.schema))
    return tuple(values)


def _truncation_hint(raw: bytes, layout: _Layout) -> str:
    """Name a sentence whose quotes don't pair up, the usual sign of a cut-off record.

    Only called for rows that already decoded and split cleanly.
    """
    fields = _split_fields(_decode(raw))
    for column in layout.schema.sentences:
        if fields[layout.positions[column]].count('"') % 2:
            return f" (field '{column}' has an unbalanced quote: the record looks truncated)"
    return ""


def _issue(raw: bytes, line_number: int, err: _FieldError, layout: _Layout) -> RowIssue:
    """The RowIssue for a bad row, with a truncation hint when a value is missing."""
    reason = err.reason + (_truncation_hint(raw, layout) if err.empty else "")
    return RowIssue(layout.path, line_number, err.field_name, reason)


def _frame_columns(task: str, labeled: bool) -> list[str]:
    columns = ["id", "sentence1"]
    if TASK_SPECS[task].is_pair:
        columns.append("sentence2")
    return columns + (["label"] if labeled else [])


def _build_frame(records: list[tuple[str | float, ...]], task: str, labeled: bool) -> pd.DataFrame:
    """The output frame with fixed dtypes (strings; int64 or float64 labels)."""
    columns = _frame_columns(task, labeled)
    frame = pd.DataFrame.from_records(records, columns=columns)
    for column in columns:
        if column != "label":
            frame[column] = frame[column].astype(str)
    if labeled:
        frame["label"] = frame["label"].astype("int64" if _SCHEMAS[task].integer else "float64")
    return frame


def read_task_file(
    path: str | Path, task: str, *, labeled: bool, on_error: str = "fail"
) -> LoadResult:
    """Read one course file for `task`, checking every row.

    Columns are found by name in the header, so extra columns (such as the extra
    leading column of ``ids-sst-test-student.csv``) are ignored. Sentences are
    stripped of surrounding whitespace (SST sentences start with a space).

    Args:
        path: the tab-separated file.
        task: one of ``sst``, ``para``, ``sts``.
        labeled: whether the label column is required and loaded.
        on_error: ``"fail"`` raises on the first bad row; ``"skip"`` leaves bad rows
            out of the frame and records each one in ``issues``. Header problems
            always raise.

    Returns:
        The frame of good rows, the skipped rows and the path.

    Raises:
        DataFormatError: a bad header, or (under "fail") the first bad row; the
            message names the file, the 1-based line and the field.
        MissingFileError: the file does not exist (a UserError, like DataFormatError).
        ValueError: unknown task or on_error value.
    """
    check_task(task)
    _check_on_error(on_error)
    path = Path(path)
    lines = _physical_lines(path)
    layout = _layout(path, lines, task, labeled)
    records: list[tuple[str | float, ...]] = []
    issues: list[RowIssue] = []
    first_line_of_id: dict[str, int] = {}
    for line_number, raw in enumerate(lines[1:], start=2):
        try:
            values = _row_values(raw, layout)
            row_id = str(values[0])
            if row_id in first_line_of_id:
                first = first_line_of_id[row_id]
                raise _FieldError("id", f"duplicate id {_shown(row_id)} (first on line {first})")
        except _FieldError as err:
            issue = _issue(raw, line_number, err, layout)
            if on_error == "fail":
                raise DataFormatError.from_issue(issue) from None
            issues.append(issue)
            continue
        first_line_of_id[row_id] = line_number
        records.append(values)
    return LoadResult(_build_frame(records, task, labeled), issues, path)


def read_split(data_dir: str | Path, task: str, split: str, *, on_error: str) -> LoadResult:
    """Read the course file of one task and split from `data_dir` (see `RAW_FILES`).

    The ``test`` split is read unlabeled; ``train`` and ``dev`` must have labels.

    Raises:
        ValueError: unknown task, split or on_error value.
        MissingFileError: the file is not in `data_dir` (a FileNotFoundError).
        DataFormatError: as in `read_task_file`.
    """
    check_task(task)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    path = Path(data_dir) / RAW_FILES[(task, split)]
    if not path.is_file():
        raise MissingFileError(f"no {task} {split} file here", path=path,
                               fix="run `mtbert import-data` or check data.raw_dir")
    return read_task_file(path, task, labeled=split != "test", on_error=on_error)


def _raw_names() -> tuple[list[str], list[str]]:
    """(required, optional) file names, relative to a course data directory."""
    required = [name for (_, split), name in RAW_FILES.items() if split in REQUIRED_SPLITS]
    optional = [name for (_, split), name in RAW_FILES.items() if split not in REQUIRED_SPLITS]
    return required, optional + list(EXTRA_FILES)


@dataclass(frozen=True)
class ImportResult(Sequence[Path]):
    """What `import_raw` did to the data folder.

    As a sequence it is `copied` (what `import_raw` returned before it reported removals), so
    ``len(result)`` is the number of files imported.

    Attributes:
        copied: the paths written under the data folder, required files first.
        removed: the paths under the data folder of course files that the source lacks (an
            optional test or extra file a previous import left), now deleted.
    """

    copied: tuple[Path, ...]
    removed: tuple[Path, ...]

    def __len__(self) -> int:
        return len(self.copied)

    def __getitem__(self, index: int | slice) -> Path | tuple[Path, ...]:  # type: ignore[override]
        return self.copied[index]


def import_raw(source_dir: str | Path, dest_dir: str | Path) -> ImportResult:
    """Replace the course files in `dest_dir` with those in `source_dir`, keeping relative names.

    Train and dev files of every task are required; test and extra files are copied when
    present, and a course file (any name in `RAW_FILES` or `EXTRA_FILES`) that `dest_dir` holds
    but `source_dir` lacks is deleted, so the folder holds exactly the source's course files.
    Other files in `dest_dir` are left alone. Each copy is atomic (temporary file, then rename);
    nothing is deleted before every copy has landed.

    Returns:
        The copied and the removed paths under `dest_dir`.

    Raises:
        MissingFileError: `source_dir` is not a folder, or required files are missing from it
            (the message lists all of them); `dest_dir` is then unchanged.
        UserError: a stale course file cannot be deleted (permissions).
        DiskWriteError: a copy failed for lack of space or permission; that file is unchanged.
    """
    source, dest = Path(source_dir), Path(dest_dir)
    if not source.is_dir():
        what = "is not a folder" if source.exists() else "does not exist"
        raise MissingFileError(f"course data folder {what}", path=source_dir,
                               fix="pass --source DIR or set data.source in params.yaml")
    required, optional = _raw_names()
    missing = [name for name in required if not (source / name).is_file()]
    if missing:
        raise MissingFileError(
            f"missing required course data files: {', '.join(missing)}", path=source_dir,
            fix="train and dev of every task are required; test and extra files are optional",
        )
    present = required + [name for name in optional if (source / name).is_file()]
    copied = [atomic_write(dest / name, partial(shutil.copyfile, source / name)) for name in present]
    stale = [name for name in optional if name not in present]
    return ImportResult(tuple(copied), tuple(_remove_stale(dest, stale)))


def _remove_stale(dest: Path, names: list[str]) -> list[Path]:
    """Delete the files `names` (relative to `dest`) that exist; a folder they leave empty goes too."""
    removed: list[Path] = []
    for name in names:
        target = dest / name
        if not (target.is_file() or target.is_symlink()):
            continue
        try:
            target.unlink()
        except OSError as err:
            raise UserError(f"cannot delete this course file, which the source lacks "
                            f"({err.strerror or err})", path=target,
                            fix="check the permissions of the folder") from None
        removed.append(target)
        if target.parent != dest and not any(target.parent.iterdir()):
            with contextlib.suppress(OSError):  # an empty folder left behind is harmless
                target.parent.rmdir()  # extra/, emptied: the source has no such folder either
    return removed


def write_prepared(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a loaded frame to parquet atomically, keeping its dtypes.

    Raises:
        ValueError: the frame has no ``id`` column.
    """
    if "id" not in frame.columns:
        raise ValueError(f"frame has no 'id' column (columns: {list(frame.columns)})")
    out = frame.reset_index(drop=True)
    out["id"] = out["id"].astype(str)
    return atomic_write(Path(path), partial(out.to_parquet, engine="pyarrow", index=False))


def read_prepared(path: str | Path) -> pd.DataFrame:
    """Read a frame written by `write_prepared`; ids come back as strings.

    Raises:
        MissingFileError: `path` does not exist.
        UserError: `path` is not a readable parquet table with an ``id`` column.
    """
    path = Path(path)
    try:
        frame = pd.read_parquet(path, engine="pyarrow")
    except FileNotFoundError:
        raise MissingFileError("prepared table does not exist", path=path,
                               fix="run `mtbert prepare`") from None
    except (OSError, pa.ArrowException) as err:
        reason = f"not a readable parquet table ({type(err).__name__}: {err})"
        raise UserError(reason, path=path, fix="run `mtbert prepare` again") from None
    if "id" not in frame.columns:
        raise UserError("prepared table has no 'id' column", path=path, field="id",
                        fix="run `mtbert prepare` again")
    frame["id"] = frame["id"].astype(str)
    return frame


def _keys(frame: pd.DataFrame, columns: Sequence[str]) -> set[tuple[object, ...]]:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise ValueError(f"frame has no column(s) {missing} (columns: {list(frame.columns)})")
    return set(zip(*(frame[column] for column in columns)))


def find_overlaps(
    frames: Mapping[str, pd.DataFrame], columns: str | Sequence[str]
) -> dict[tuple[str, str], int]:
    """Count distinct identical sentences (or tuples of columns) shared by each pair of frames.

    Args:
        frames: split name -> frame, e.g. ``{"train": ..., "dev": ...}``.
        columns: one column (``"sentence1"``) or several (``["sentence1", "sentence2"]``,
            compared as ordered pairs).

    Returns:
        ``{(a, b): count}`` for every pair of names, in the order of `frames`.
    """
    names = [columns] if isinstance(columns, str) else list(columns)
    keys = {name: _keys(frame, names) for name, frame in frames.items()}
    return {(a, b): len(keys[a] & keys[b]) for a, b in itertools.combinations(keys, 2)}


def label_distribution(frame: pd.DataFrame) -> dict[int, int]:
    """Count labels, sorted by label.

    Integer labels (sst, para) are counted as they are; float labels (sts) are
    rounded half up to the nearest integer first (so 0..5 gives keys 0..5).

    Raises:
        ValueError: the frame has no ``label`` column.
    """
    if "label" not in frame.columns:
        raise ValueError(f"frame has no 'label' column (columns: {list(frame.columns)})")
    labels = frame["label"].to_numpy()
    if not np.issubdtype(labels.dtype, np.integer):
        labels = np.floor(labels.astype("float64") + 0.5).astype("int64")
    values, counts = np.unique(labels, return_counts=True)
    return {int(value): int(count) for value, count in zip(values, counts)}
