"""Loader tests on small synthetic files: every malformation is reported, never dropped."""

from __future__ import annotations

import csv
import io
import pickle
from collections.abc import Callable
from pathlib import Path

import hypothesis.strategies as st
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings

from mtbert.data import (
    EXTRA_FILES,
    ON_ERROR,
    RAW_FILES,
    DataFormatError,
    RowIssue,
    find_overlaps,
    import_raw,
    label_distribution,
    read_prepared,
    read_split,
    read_task_file,
    write_prepared,
)
from mtbert.tasks import TASKS

WriteLines = Callable[[str, list[str]], Path]  # the `write_lines` fixture

HEADERS = {
    "sst": "\tid\tsentence\tsentiment",
    "para": "\tid\tsentence1\tsentence2\tis_duplicate",
    "sts": "\tid\tsentence1\tsentence2\tsimilarity",
}
GOOD_ROWS = {
    "sst": "{i}\tid{i}\t A fine film .\t3",
    "para": "{i}\tid{i}\tHow do I cook rice?\tWhat is the best way to cook rice?\t1.0",
    "sts": "{i}\tid{i}\tA man is playing a guitar.\tA man plays the guitar.\t4.6",
}
LABEL_RANGES = {"sst": (0, 4), "para": (0, 1), "sts": (0, 5)}


def _file_with_bad_row(write_lines: WriteLines, task: str, bad_row: str) -> Path:
    """Header (line 1), good rows on lines 2-3, `bad_row` on line 4, good rows on lines 5-6."""
    rows = [GOOD_ROWS[task].format(i=i) for i in range(5)]
    rows[2] = bad_row
    return write_lines(f"{task}-bad.csv", [HEADERS[task], *rows])


# (task, bad row placed on line 4, field named in the error, words in the reason)
MALFORMED = [
    ("sst", "2\tidX\t A fine film .\t7", "sentiment", "out of range 0..4"),
    ("sst", "2\tidX\t A fine film .\t-1", "sentiment", "out of range 0..4"),
    ("sst", "2\tidX\t A fine film .\t2.5", "sentiment", "non-integer label"),
    ("sst", "2\tidX\t A fine film .\tgood", "sentiment", "non-numeric label"),
    ("sst", "2\tidX\t A fine film .\tnan", "sentiment", "non-numeric label"),
    ("sst", "2\tidX\t A fine film .\t", "sentiment", "empty label"),
    ("sst", "2\tidX\t   \t3", "sentence", "empty or whitespace-only sentence"),
    ("sst", "2\tidX\t\t3", "sentence", "empty or whitespace-only sentence"),
    ("sst", '2\tidX\t"A fine film .\t3', "row", "unbalanced quotes"),
    ("sst", '2\tidX\t"A fine" film .\t3', "row", "malformed quoting"),
    ("sst", "2\tidX\t A fine film .", "row", "expected 4 fields, found 3"),
    ("sst", "2\tidX\t A fine\tfilm .\t3", "row", "expected 4 fields, found 5"),
    ("sst", "2\t\t A fine film .\t3", "id", "empty id"),
    ("sst", "2\tid0\t A fine film .\t3", "id", "duplicate id 'id0' (first on line 2)"),
    ("sst", "", "row", "blank line"),
    ("para", "2\tidX\tHow?\tWhy?\t0.5", "is_duplicate", "non-integer label"),
    ("para", "2\tidX\tHow?\tWhy?\t2.0", "is_duplicate", "out of range 0..1"),
    ("para", "2\tidX\tHow?\tWhy?\t", "is_duplicate", "empty label"),
    ("para", "2\tidX\tHow?\t \t1.0", "sentence2", "empty or whitespace-only sentence"),
    ("sts", "2\tidX\tA man.\tA dog.\t5.5", "similarity", "out of range 0..5"),
    ("sts", "2\tidX\tA man.\tA dog.\t-0.1", "similarity", "out of range 0..5"),
    ("sts", "2\tidX\tA man.\tA dog.\tinf", "similarity", "non-numeric label"),
]


@pytest.mark.parametrize(("task", "bad_row", "field", "reason"), MALFORMED)
def test_fail_policy_names_file_line_and_field(
    write_lines: WriteLines, task: str, bad_row: str, field: str, reason: str
) -> None:
    path = _file_with_bad_row(write_lines, task, bad_row)
    with pytest.raises(DataFormatError) as caught:
        read_task_file(path, task, labeled=True, on_error="fail")
    err = caught.value
    assert f"{task}-bad.csv:4: field '{field}': " in str(err)
    assert reason in str(err)
    assert (err.path, err.line, err.field) == (str(path), 4, field)


@pytest.mark.parametrize(("task", "bad_row", "field", "reason"), MALFORMED)
def test_skip_policy_keeps_good_rows_and_records_issue(
    write_lines: WriteLines, task: str, bad_row: str, field: str, reason: str
) -> None:
    path = _file_with_bad_row(write_lines, task, bad_row)
    result = read_task_file(path, task, labeled=True, on_error="skip")
    assert result.frame["id"].tolist() == ["id0", "id1", "id3", "id4"]
    assert len(result.issues) == 1
    issue = result.issues[0]
    assert (issue.path, issue.line, issue.field) == (str(path), 4, field)
    assert reason in issue.reason
    assert result.path == path


def test_unbalanced_quote_does_not_swallow_following_rows(write_lines: WriteLines) -> None:
    rows = [GOOD_ROWS["sst"].format(i=i) for i in range(8)]
    rows[1] = '1\tid1\t"Opens a quote that never closes .\t2'
    rows[4] = '4\tid4\t"Another one\t"'
    path = write_lines("sst-quotes.csv", [HEADERS["sst"], *rows])
    result = read_task_file(path, "sst", labeled=True, on_error="skip")
    assert result.frame["id"].tolist() == ["id0", "id2", "id3", "id5", "id6", "id7"]
    assert [(issue.line, issue.field) for issue in result.issues] == [(3, "row"), (6, "row")]


def test_truncated_record_reason_points_at_unbalanced_sentence(write_lines: WriteLines) -> None:
    # The shape of the two broken quora-dev rows: CSV-valid, but the sentence keeps a lone quote.
    bad = '2\tidX\tAny idea?\t"""Where can I find a dress?"\t'
    path = _file_with_bad_row(write_lines, "para", bad)
    with pytest.raises(DataFormatError, match="empty label") as caught:
        read_task_file(path, "para", labeled=True)
    assert "field 'sentence2' has an unbalanced quote" in caught.value.reason


def test_embedded_doubled_quotes_and_tabs_parse(write_lines: WriteLines) -> None:
    rows = [
        '0\tid0\t"""Which is right? Do I need """"the"""" here?"""\tHe said ""hi"" .\t0.0',
        '1\tid1\t"She said ""hi"" ."\t"tab\tinside"\t1.0',
        "2\tid2\t  Ünïcödé — text 😀  \t'single' quotes\t1",
    ]
    path = write_lines("quotes.csv", [HEADERS["para"], *rows])
    frame = read_task_file(path, "para", labeled=True).frame
    assert frame["sentence1"].tolist() == [
        '"Which is right? Do I need ""the"" here?"',
        'She said "hi" .',
        "Ünïcödé — text 😀",
    ]
    assert frame["sentence2"].tolist() == ['He said ""hi"" .', "tab\tinside", "'single' quotes"]


def test_sst_frame_shape_and_dtypes(write_lines: WriteLines) -> None:
    rows = ["0\t007\t Leading space .\t4", "1\t008\t Two .\t0"]
    path = write_lines("sst.csv", [HEADERS["sst"], *rows])
    frame = read_task_file(path, "sst", labeled=True).frame
    assert list(frame.columns) == ["id", "sentence1", "label"]
    assert frame["id"].tolist() == ["007", "008"]
    assert frame["sentence1"].tolist() == ["Leading space .", "Two ."]
    assert frame["label"].dtype == np.int64
    assert pd.api.types.is_string_dtype(frame["id"])


def test_labels_written_as_floats_become_int64(write_lines: WriteLines) -> None:
    path = _file_with_bad_row(write_lines, "para", "2\tidX\tA?\tB?\t0.0")
    frame = read_task_file(path, "para", labeled=True).frame
    assert frame["label"].dtype == np.int64
    assert frame["label"].tolist() == [1, 1, 0, 1, 1]


def test_sts_labels_are_float64(write_lines: WriteLines) -> None:
    path = _file_with_bad_row(write_lines, "sts", "2\tidX\tA.\tB.\t5")
    frame = read_task_file(path, "sts", labeled=True).frame
    assert frame["label"].dtype == np.float64
    assert frame["label"].tolist() == [4.6, 4.6, 5.0, 4.6, 4.6]


def test_columns_found_by_name_with_extra_leading_column(write_lines: WriteLines) -> None:
    # The layout of ids-sst-test-student.csv: header "0", "", "id", "sentence".
    rows = ["1\t0.0\tabc\t Effective biopic", "2\t1.0\tdef\t Fun ."]
    path = write_lines("sst-test.csv", ["0\t\tid\tsentence", *rows])
    frame = read_task_file(path, "sst", labeled=False).frame
    assert list(frame.columns) == ["id", "sentence1"]
    assert frame["id"].tolist() == ["abc", "def"]


def test_column_order_does_not_matter(write_lines: WriteLines) -> None:
    path = write_lines("sts.csv", ["similarity\tsentence2\tid\tsentence1", "2.5\tB .\tx1\tA ."])
    frame = read_task_file(path, "sts", labeled=True).frame
    assert frame.iloc[0].tolist() == ["x1", "A .", "B .", 2.5]


@pytest.mark.parametrize("missing", ["id", "sentence", "sentiment"])
def test_missing_header_column_names_column_file_and_line_1(
    write_lines: WriteLines, missing: str
) -> None:
    header = "\t".join(name for name in ["", "id", "sentence", "sentiment"] if name != missing)
    path = write_lines("sst-nohead.csv", [header, "0\tid0\t A .\t1"])
    expected = f"sst-nohead.csv:1: field '{missing}': missing required column"
    with pytest.raises(DataFormatError, match=expected):
        read_task_file(path, "sst", labeled=True, on_error="skip")


def test_label_column_not_required_when_unlabeled(write_lines: WriteLines) -> None:
    path = write_lines("sts-test.csv", ["\tid\tsentence1\tsentence2", "0\tq\tA .\tB ."])
    assert len(read_task_file(path, "sts", labeled=False).frame) == 1
    with pytest.raises(DataFormatError, match="field 'similarity'"):
        read_task_file(path, "sts", labeled=True)


def test_duplicate_header_column_is_an_error(write_lines: WriteLines) -> None:
    path = write_lines("dup.csv", ["id\tid\tsentence\tsentiment", "a\tb\t A .\t1"])
    with pytest.raises(DataFormatError, match="dup.csv:1: field 'id': column appears 2 times"):
        read_task_file(path, "sst", labeled=True)


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    with pytest.raises(DataFormatError, match="empty.csv:1: field 'row'"):
        read_task_file(path, "sst", labeled=True)


def test_header_only_gives_empty_typed_frame(write_lines: WriteLines) -> None:
    frame = read_task_file(write_lines("h.csv", [HEADERS["sts"]]), "sts", labeled=True).frame
    assert list(frame.columns) == ["id", "sentence1", "sentence2", "label"]
    assert len(frame) == 0 and frame["label"].dtype == np.float64


def test_crlf_bom_and_missing_final_newline(tmp_path: Path) -> None:
    path = tmp_path / "crlf.csv"
    text = "\ufeff\tid\tsentence\tsentiment\r\n0\ta\t One .\t1\r\n1\tb\t Two .\t2"
    path.write_bytes(text.encode())
    frame = read_task_file(path, "sst", labeled=True).frame
    assert frame["label"].tolist() == [1, 2]


def test_invalid_utf8_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(HEADERS["sst"].encode() + b"\n0\ta\t caf\xe9 .\t1\n1\tb\t ok .\t2\n")
    result = read_task_file(path, "sst", labeled=True, on_error="skip")
    assert [(i.line, i.field) for i in result.issues] == [(2, "row")]
    assert "invalid UTF-8" in result.issues[0].reason
    assert result.frame["id"].tolist() == ["b"]


@pytest.mark.parametrize("on_error", ["ignore", "Fail", ""])
def test_invalid_on_error_lists_valid_values(write_lines: WriteLines, on_error: str) -> None:
    path = write_lines("ok.csv", [HEADERS["sst"], "0\ta\t A .\t1"])
    with pytest.raises(ValueError, match="valid values: fail, skip"):
        read_task_file(path, "sst", labeled=True, on_error=on_error)
    assert ON_ERROR == ("fail", "skip")


def test_unknown_task_and_split_raise_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="valid tasks"):
        read_task_file(tmp_path / "x.csv", "mnli", labeled=True)
    with pytest.raises(ValueError, match="valid splits: train, dev, test"):
        read_split(tmp_path, "sst", "validation", on_error="fail")


def test_read_split_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="quora-test-student.csv"):
        read_split(tmp_path, "para", "test", on_error="fail")


def test_read_split_reads_test_unlabeled(write_lines: WriteLines) -> None:
    path = write_lines(RAW_FILES[("sts", "test")], ["\tid\tsentence1\tsentence2", "0\tq\tA .\tB ."])
    frame = read_split(path.parent, "sts", "test", on_error="fail").frame
    assert list(frame.columns) == ["id", "sentence1", "sentence2"]


def test_error_format_and_pickle() -> None:
    err = DataFormatError("d/quora-dev.csv", 1267, "is_duplicate", "empty label")
    assert str(err) == "d/quora-dev.csv:1267: field 'is_duplicate': empty label"
    assert isinstance(err, ValueError)
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err)
    assert (again.path, again.line, again.field) == ("d/quora-dev.csv", 1267, "is_duplicate")
    assert again.reason == "empty label"
    issue = RowIssue("d/quora-dev.csv", 1267, "is_duplicate", "empty label")
    assert str(issue) == str(err) == str(DataFormatError.from_issue(issue))


# --- import_raw ---------------------------------------------------------------------------


def _fake_course_dir(root: Path, names: list[str]) -> Path:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(f"content of {name}\n")
    return root


def test_import_raw_copies_present_files_atomically(tmp_path: Path) -> None:
    required = [name for (_, split), name in RAW_FILES.items() if split != "test"]
    present = [*required, RAW_FILES[("sst", "test")], EXTRA_FILES[0]]
    source = _fake_course_dir(tmp_path / "src", present)
    copied = import_raw(source, tmp_path / "dest")
    assert sorted(str(path.relative_to(tmp_path / "dest")) for path in copied) == sorted(present)
    for path in copied:
        assert path.read_text() == f"content of {path.relative_to(tmp_path / 'dest')}\n"
    leftovers = [p for p in (tmp_path / "dest").rglob("*") if p.is_file() and p not in copied]
    assert leftovers == []


def test_import_raw_lists_every_missing_required_file(tmp_path: Path) -> None:
    source = _fake_course_dir(tmp_path / "src", ["ids-sst-train.csv", "sts-test-student.csv"])
    with pytest.raises(FileNotFoundError) as caught:
        import_raw(source, tmp_path / "dest")
    message = str(caught.value)
    missing = ["ids-sst-dev.csv", "quora-train.csv", "quora-dev.csv", "sts-train.csv"]
    missing.append("sts-dev.csv")
    assert all(name in message for name in missing)
    assert "ids-sst-train.csv" not in message and "test-student" not in message
    assert not (tmp_path / "dest").exists()


# --- prepared parquet, overlaps, label distribution ---------------------------------------


def test_prepared_round_trip_keeps_dtypes_and_string_ids(
    write_lines: WriteLines, tmp_path: Path
) -> None:
    rows = ["0\t007\t A .\t1", "1\t1e5\t B .\t4", "2\t42\t C .\t0"]
    path = write_lines("sst.csv", [HEADERS["sst"], *rows])
    frame = read_task_file(path, "sst", labeled=True).frame
    path = write_prepared(frame, tmp_path / "prepared" / "sst-train.parquet")
    back = read_prepared(path)
    pd.testing.assert_frame_equal(back, frame)
    assert back["id"].tolist() == ["007", "1e5", "42"]


def test_prepared_round_trip_float_labels(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {"id": ["1", "2"], "sentence1": ["a", "b"], "sentence2": ["c", "d"], "label": [0.2, 5.0]}
    )
    back = read_prepared(write_prepared(frame, tmp_path / "sts.parquet"))
    assert back["label"].dtype == np.float64
    assert back["label"].tolist() == [0.2, 5.0]


def test_find_overlaps_counts_distinct_shared_values() -> None:
    frames = {
        "train": pd.DataFrame({"sentence1": list("abbc"), "sentence2": list("xyyz")}),
        "dev": pd.DataFrame({"sentence1": ["b", "c", "d"], "sentence2": ["y", "q", "w"]}),
        "test": pd.DataFrame({"sentence1": ["e"], "sentence2": ["x"]}),
    }
    singles = find_overlaps(frames, "sentence1")
    assert singles == {("train", "dev"): 2, ("train", "test"): 0, ("dev", "test"): 0}
    pairs = find_overlaps(frames, ["sentence1", "sentence2"])
    assert pairs == {("train", "dev"): 1, ("train", "test"): 0, ("dev", "test"): 0}
    with pytest.raises(ValueError, match="no column"):
        find_overlaps(frames, "label")


def test_label_distribution() -> None:
    integers = pd.DataFrame({"label": np.array([3, 0, 3, 4], dtype="int64")})
    assert label_distribution(integers) == {0: 1, 3: 2, 4: 1}
    floats = pd.DataFrame({"label": [0.0, 0.4, 0.5, 4.6, 5.0]})
    assert label_distribution(floats) == {0: 2, 1: 1, 5: 2}
    with pytest.raises(ValueError, match="no 'label' column"):
        label_distribution(pd.DataFrame({"id": ["a"]}))


# --- property-based tests -----------------------------------------------------------------

CHARS = st.one_of(
    st.sampled_from('"\t \r\'x.,'), st.characters(codec="utf-8", exclude_characters="\n")
)
TEXT = st.text(CHARS, max_size=16)
GARBAGE_LABELS = [
    *["", " ", "nan", "inf", "-inf", "1e0", "1_0", "\u0663", "0x1"],
    *["2.5", "-1", "5.01", "1.0.0", "+1"],
]
LABELS = st.one_of(
    st.sampled_from(["0", "1", "4", "0.0", "1.0", "3.7", "5", *GARBAGE_LABELS]),
    st.integers(-2, 7).map(str),
    st.floats().map(str),
    TEXT,
)
HEX_IDS = st.text("0123456789abcdef", min_size=1, max_size=8)
IDS = st.one_of(st.sampled_from(["a", "b", "c", " ", ""]), HEX_IDS)


def _join(fields: list[str], quote_all: bool) -> str:
    """One tab-separated record as the course files write it (without the line end)."""
    buffer = io.StringIO()
    quoting = csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL
    csv.writer(buffer, delimiter="\t", lineterminator="\r\n", quoting=quoting).writerow(fields)
    return buffer.getvalue()[:-2]


@st.composite
def _record(draw: st.DrawFn, task: str) -> str:
    """A well-formed-looking record with random content, the same with a stray quote, or garbage."""
    kind = draw(st.sampled_from(["garbage", "record", "stray quote"]))
    if kind == "garbage":
        return draw(TEXT)
    sentences = [draw(TEXT) for _ in range(2 if task != "sst" else 1)]
    fields = [str(draw(st.integers(0, 99))), draw(IDS), *sentences, draw(LABELS)]
    line = _join(fields, quote_all=draw(st.booleans()))
    if kind == "stray quote":
        cut = draw(st.integers(0, len(line)))
        line = line[:cut] + '"' + line[cut:]
    return line


def _check_issue(issue: RowIssue, path: Path, n_lines: int, task: str) -> None:
    assert issue.path == str(path)
    assert 2 <= issue.line <= n_lines + 1
    assert issue.field in {"row", *HEADERS[task].split("\t")} - {""}
    assert str(issue).startswith(f"{path}:{issue.line}: field '{issue.field}': ")
    assert issue.reason


def _check_frame(frame: pd.DataFrame, task: str, labeled: bool) -> None:
    assert not frame.isna().any().any()
    assert frame["id"].is_unique
    for column in ("sentence1", "sentence2"):
        if column in frame:
            assert all(text and text == text.strip() for text in frame[column])
    if labeled:
        low, high = LABEL_RANGES[task]
        assert frame["label"].between(low, high).all()


@settings(max_examples=100, deadline=None)
@given(task=st.sampled_from(TASKS), labeled=st.booleans(), data=st.data())
def test_property_every_row_kept_or_reported(
    tmp_path_factory: pytest.TempPathFactory, task: str, labeled: bool, data: st.DataObject
) -> None:
    lines = data.draw(st.lists(_record(task), max_size=12), label="lines")
    path = tmp_path_factory.mktemp("prop") / f"{task}.csv"
    path.write_bytes(("\n".join([HEADERS[task], *lines]) + "\n").encode("utf-8"))
    result = read_task_file(path, task, labeled=labeled, on_error="skip")
    assert len(result.frame) + len(result.issues) == len(lines)
    issue_lines = [issue.line for issue in result.issues]
    assert issue_lines == sorted(set(issue_lines))
    for issue in result.issues:
        _check_issue(issue, path, len(lines), task)
    _check_frame(result.frame, task, labeled)
    if result.issues:
        with pytest.raises(DataFormatError) as caught:
            read_task_file(path, task, labeled=labeled, on_error="fail")
        first = result.issues[0]
        err = caught.value
        assert (err.line, err.field, err.reason) == (first.line, first.field, first.reason)
    else:
        strict = read_task_file(path, task, labeled=labeled, on_error="fail")
        pd.testing.assert_frame_equal(strict.frame, result.frame)


SENTENCES = TEXT.filter(lambda text: bool(text.strip()))
VALID_LABELS = {
    "sst": st.integers(0, 4).flatmap(lambda n: st.sampled_from([str(n), f"{n}.0"])),
    "para": st.sampled_from(["0", "1", "0.0", "1.0"]),
    "sts": st.floats(0, 5).map(repr),
}


@settings(max_examples=100, deadline=None)
@given(task=st.sampled_from(TASKS), data=st.data())
def test_property_valid_rows_round_trip(
    tmp_path_factory: pytest.TempPathFactory, task: str, data: st.DataObject
) -> None:
    n_sentences = 1 if task == "sst" else 2
    ids = data.draw(st.lists(HEX_IDS, unique=True, max_size=10))
    sentences = st.lists(SENTENCES, min_size=n_sentences, max_size=n_sentences)
    rows = [data.draw(sentences) + [data.draw(VALID_LABELS[task])] for _ in ids]
    lines = [
        _join([str(i), row_id, *row], quote_all=data.draw(st.booleans()))
        for i, (row_id, row) in enumerate(zip(ids, rows))
    ]
    path = tmp_path_factory.mktemp("valid") / f"{task}.csv"
    path.write_bytes(("\n".join([HEADERS[task], *lines]) + "\n").encode("utf-8"))
    frame = read_task_file(path, task, labeled=True, on_error="fail").frame
    assert frame["id"].tolist() == ids
    for k in range(n_sentences):
        assert frame[f"sentence{k + 1}"].tolist() == [row[k].strip() for row in rows]
    assert frame["label"].tolist() == [float(row[-1]) for row in rows]


ONE_LINE_OF_BYTES = st.binary(max_size=24).map(lambda raw: raw.replace(b"\n", b""))


@settings(max_examples=50, deadline=None)
@given(header=TEXT, body=st.lists(ONE_LINE_OF_BYTES, max_size=5))
def test_property_arbitrary_bytes_raise_only_data_format_error(
    tmp_path_factory: pytest.TempPathFactory, header: str, body: list[bytes]
) -> None:
    path = tmp_path_factory.mktemp("bytes") / "junk.csv"
    path.write_bytes(b"\n".join([header.encode("utf-8"), *body]) + b"\n")
    for task in TASKS:
        try:
            result = read_task_file(path, task, labeled=True, on_error="skip")
        except DataFormatError as err:
            assert err.line == 1 and "junk.csv:1: field '" in str(err)
        else:
            assert len(result.frame) + len(result.issues) == len(body)
