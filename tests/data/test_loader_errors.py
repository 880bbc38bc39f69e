"""Every course-format loader either loads a file or raises a UserError naming the file and line.

Random bytes and random malformed rows (wrong column counts, bad labels, empty sentences,
unbalanced quotes, non-UTF-8, blank lines, header only) go through `read_task_file` and
`read_split` under ``on_error="fail"``, and random bytes through `read_prepared`. No other
exception type may escape: the CLI shows a UserError as one line and anything else as a bug.
"""

from __future__ import annotations

from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from mtbert.data import RAW_FILES, DataFormatError, read_prepared, read_split, read_task_file
from mtbert.errors import MissingFileError, UserError
from mtbert.tasks import TASKS

HEADERS = {
    "sst": ["", "id", "sentence", "sentiment"],
    "para": ["", "id", "sentence1", "sentence2", "is_duplicate"],
    "sts": ["", "id", "sentence1", "sentence2", "similarity"],
}
SENTENCE = st.sampled_from([" A fine film .", "How do I cook rice?", "", "   ", '"unbalanced',
                            'say "hi"', '"quoted"', "tab\tinside", "caf\u00e9", "\u00ff\u0000"])
LABEL = st.sampled_from(["0", "1", "3", "4.0", "5", "2.5", "7", "-1", "", " ", "good", "nan",
                         "inf", "1e999", '"1"', "0x1"])
ID = st.sampled_from(["", "a1", "a1", "b2", "c3", " ", '"d4'])
RAW_BYTES = st.sampled_from([b"\xff\xfe", b"\x80", b"\r", b'"', b"\t", b"\x00", b"\xef\xbb\xbf"])


@st.composite
def _row(draw: st.DrawFn, task: str) -> bytes:
    """One physical line: half of them valid, the others malformed in one or more ways."""
    n_sentences = 1 if task == "sst" else 2
    if draw(st.booleans()):
        row_id = draw(st.text("abcdef0123456789", min_size=1, max_size=6))
        return "\t".join(["0", row_id, *["A fine film ."] * n_sentences, "1"]).encode()
    fields = [draw(st.sampled_from(["0", "17", ""])), draw(ID),
              *[draw(SENTENCE) for _ in range(n_sentences)], draw(LABEL)]
    cut = draw(st.integers(-2, 1))
    fields = fields[:cut] if cut < 0 else fields + ["extra"] * cut
    line = "\t".join(fields).encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 5)) == 0:  # splice in bytes that are not (valid) text
        at = draw(st.integers(0, len(line)))
        line = line[:at] + draw(RAW_BYTES) + line[at:]
    return line + draw(st.sampled_from([b"", b"\r"]))


@st.composite
def _course_file(draw: st.DrawFn, task: str) -> bytes:
    """A header (sometimes broken) and 0..6 rows, or random bytes."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=200))
    header = list(HEADERS[task])
    if draw(st.booleans()):
        header = draw(st.permutations(header))
    if draw(st.integers(0, 5)) == 0:
        header = header[:-1]
    rows = draw(st.lists(_row(task) | st.just(b""), max_size=6))
    ending = draw(st.sampled_from([b"\n", b"", b"\n\n"]))
    return b"\n".join(["\t".join(header).encode(), *rows]) + ending


def _check_error(err: Exception, path: Path, data: bytes) -> None:
    assert isinstance(err, UserError), f"{type(err).__name__} escaped: {err}"
    message = str(err)
    assert "\n" not in message and message.startswith(str(path)), message
    if isinstance(err, DataFormatError):  # a line is meaningful: it must be a real line
        n_lines = max(1, len(data.split(b"\n")) - (1 if data.endswith(b"\n") else 0))
        assert 1 <= err.line <= n_lines, (err.line, n_lines)
        assert message.startswith(f"{path}:{err.line}: field '{err.field}': ")
    else:
        assert isinstance(err, MissingFileError) or "cannot read" in message, message


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(task=st.sampled_from(TASKS), labeled=st.booleans(), data=st.data())
def test_property_read_task_file_loads_or_names_file_and_line(
    tmp_path: Path, task: str, labeled: bool, data: st.DataObject
) -> None:
    content = data.draw(_course_file(task), label="file")
    path = tmp_path / f"{task}-fuzz.csv"
    path.write_bytes(content)
    try:
        result = read_task_file(path, task, labeled=labeled, on_error="fail")
    except Exception as err:  # noqa: BLE001 - the test is that only UserError gets here
        _check_error(err, path, content)
    else:
        assert result.issues == [] and result.frame["id"].is_unique


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(sorted(RAW_FILES)), data=st.data())
def test_property_read_split_loads_or_names_file_and_line(
    tmp_path: Path, key: tuple[str, str], data: st.DataObject
) -> None:
    task, split = key
    content = data.draw(_course_file(task), label="file")
    path = tmp_path / RAW_FILES[key]
    path.write_bytes(content)
    try:
        read_split(tmp_path, task, split, on_error="fail")
    except Exception as err:  # noqa: BLE001 - the test is that only UserError gets here
        _check_error(err, path, content)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=64) | st.just(b"PAR1") | st.just(b"PAR1\x00\x00\x00\x00PAR1"))
def test_property_read_prepared_random_bytes_is_a_user_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "train.parquet"
    path.write_bytes(content)
    with pytest.raises(UserError) as caught:
        read_prepared(path)
    assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match=r"quora-dev\.csv: no para dev file here"):
        read_split(tmp_path, "para", "dev", on_error="fail")
    with pytest.raises(MissingFileError, match=r"gone\.csv: data file does not exist"):
        read_task_file(tmp_path / "gone.csv", "sst", labeled=True)
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(UserError, match=r"dir\.csv: cannot read data file"):
        read_task_file(tmp_path / "dir.csv", "sst", labeled=True)


def test_header_only_file_loads_empty(tmp_path: Path) -> None:
    path = tmp_path / "sts.csv"
    path.write_bytes(b"\tid\tsentence1\tsentence2\tsimilarity\n")
    assert read_task_file(path, "sts", labeled=True, on_error="fail").frame.empty
