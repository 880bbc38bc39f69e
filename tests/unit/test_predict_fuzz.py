"""Fuzzing `predict_file` with broken input files: predictions, or one line naming the file.

A real trained-model directory (a tiny `MultitaskBert` on the offline MiniLM tokenizer, written by
`save_model`) is built once; hypothesis then feeds `predict_file` random bytes and random malformed
rows (wrong column counts, unbalanced quotes, empty sentences, invalid UTF-8, header only, huge
lines). Each input either gives readable course-format predictions, one per row, or a `UserError`
whose message is one line starting with the input file (and `:<line>` where a row is at fault).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st

from mtbert.checkpoint import save_model
from mtbert.config import Config, ModelConfig, to_dict
from mtbert.data import DataFormatError
from mtbert.errors import UserError
from mtbert.evaluate import PREDICTION_HEADERS
from mtbert.model.bert import BertConfig, BertModel
from mtbert.model.load_hf import load_tokenizer
from mtbert.model.multitask import MultitaskBert
from mtbert.pipeline.serving import predict_file

MAX_LENGTH = 11
HEADERS = {"sst": ["id", "sentence"], "para": ["id", "sentence1", "sentence2"],
           "sts": ["id", "sentence1", "sentence2"]}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained-model directory as `mtbert train` writes it, with odd tiny sizes (seconds to load)."""
    tokenizer = load_tokenizer("minilm")
    bert = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                      num_attention_heads=4, intermediate_size=37, max_position_embeddings=13,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    cfg = dataclasses.replace(Config(), model=ModelConfig(max_length=MAX_LENGTH, head_dropout=0.0))
    torch.manual_seed(0)
    model = MultitaskBert(BertModel(bert), cfg.model)
    meta = {"config": to_dict(cfg), "bert_config": dataclasses.asdict(bert)}
    return save_model(tmp_path_factory.mktemp("fuzz") / "model", model, tokenizer, meta)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-io")


def check(model_dir: Path, work: Path, task: str, content: bytes) -> str:
    """Predict `content` as a `task` file; assert the outcome is one of the two allowed ones."""
    source, out = work / "in.csv", work / "out.csv"
    source.write_bytes(content)
    out.unlink(missing_ok=True)
    try:
        n = predict_file(model_dir, task, source, out, batch_size=7)
    except UserError as err:
        message = str(err)
        assert "\n" not in message and "\r" not in message, message
        assert message.startswith(f"{source}: ") or message.startswith(f"{source}:{err.line}: ")
        if isinstance(err, DataFormatError):  # a header or row at fault: its line is named
            n_lines = max(1, len(content.split(b"\n")))
            assert err.line is not None and 1 <= err.line <= n_lines, message
            assert message.startswith(f"{source}:{err.line}: "), message
        assert not out.exists()
        return "error"
    lines = out.read_text().splitlines()
    assert lines[0].split() == ["id", PREDICTION_HEADERS[task]]
    assert len(lines) == n + 1 and n >= 1
    for line in lines[1:]:
        row_id, value = line.rsplit(" , ", 1)
        assert row_id and float(value) == float(value)  # a number, not NaN
    return "predicted"


@settings(max_examples=80, deadline=None, database=None)
@given(task=st.sampled_from(sorted(HEADERS)), content=st.binary(max_size=600),
       after_header=st.booleans())
def test_random_bytes(model_dir: Path, work: Path, task: str, content: bytes,
                      after_header: bool) -> None:
    header = ("\t".join(HEADERS[task]) + "\n").encode() if after_header else b""
    event(check(model_dir, work, task, header + content))


# Pieces of fields: fine words, quotes (balanced or not), blanks, tabs inside quotes, invalid UTF-8,
# carriage returns, NUL, non-ASCII, and a huge word. Most rows are fine, so that a file is often
# predicted and a bad row is found among good ones.
WORDS = st.sampled_from([b"good", b"film .", b'"quoted"', b"1", "é ü 漢".encode(), b"x" * 20_000])
PIECES = st.one_of(WORDS, st.sampled_from([b'"', b'""', b'"tab\tinside"', b" ", b"", b"\xff",
                                           b"\xc3", b"\r", b"\x00", b"-"]))
GOOD_FIELD = st.lists(WORDS, min_size=1, max_size=3).map(b" ".join)
ANY_FIELD = st.lists(PIECES, max_size=4).map(b"".join)


@st.composite
def malformed_file(draw: st.DrawFn, task: str) -> bytes:
    columns = list(HEADERS[task])
    header = draw(st.sampled_from(["ok", "ok", "ok", "extra", "missing", "bom", "none"]))
    if header == "extra":
        columns.insert(draw(st.integers(0, len(columns))), "notes")
    elif header == "missing":
        columns.pop(draw(st.integers(0, len(columns) - 1)))
    lines = [] if header == "none" else [("\ufeff" if header == "bom" else "") + "\t".join(columns)]
    encoded = [line.encode() for line in lines]
    for i in range(draw(st.integers(0, 6))):
        bad = draw(st.integers(0, 3)) == 0
        n_fields = draw(st.sampled_from([len(columns), 1, len(columns) + 1])) if bad else len(columns)
        fields = draw(st.lists(ANY_FIELD if bad else GOOD_FIELD, min_size=n_fields, max_size=n_fields))
        encoded.append(b"\t".join([f"r{i}".encode(), *fields[1:]]) if not bad else b"\t".join(fields))
    ending = draw(st.sampled_from([b"\n", b"\r\n"]))
    return ending.join(encoded) + draw(st.sampled_from([ending, b""]))


@settings(max_examples=150, deadline=None, database=None)
@given(data=st.data(), task=st.sampled_from(sorted(HEADERS)))
def test_malformed_rows(model_dir: Path, work: Path, data: st.DataObject, task: str) -> None:
    event(check(model_dir, work, task, data.draw(malformed_file(task))))


@pytest.mark.parametrize("task", sorted(HEADERS))
def test_a_clean_file_is_predicted_and_a_header_alone_is_refused(model_dir: Path, work: Path,
                                                                  task: str) -> None:
    header = "\t".join(HEADERS[task])
    row = "\t".join(["r1", "A fine film .", "Another one ."][: len(HEADERS[task])])
    assert check(model_dir, work, task, f"{header}\n{row}\n".encode()) == "predicted"
    assert check(model_dir, work, task, f"{header}\n".encode()) == "error"
    (work / "in.csv").write_text(f"{header}\n")
    with pytest.raises(UserError, match=r"in\.csv: has a header but no rows to predict$"):
        predict_file(model_dir, task, work / "in.csv", work / "out.csv")
