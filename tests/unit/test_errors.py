"""UserError: the one base class the CLI turns into `mtbert <command>: <one line>` and exit 2."""

from __future__ import annotations

import errno
import pickle

import pytest

from mtbert.checkpoint import CheckpointError
from mtbert.config import ConfigError
from mtbert.data import DataFormatError
from mtbert.errors import DiskWriteError, MissingFileError, UserError, disk_write_error
from mtbert.model.load_hf import PretrainedLoadError


@pytest.mark.parametrize(("err", "text"), [
    (UserError("must be >= 1, got 0", path="params.yaml", line=57, field="train.epochs"),
     "params.yaml:57: train.epochs: must be >= 1, got 0"),
    (UserError("must be >= 1, got 0", path="params.yaml", field="train.epochs", fix="use null"),
     "params.yaml: train.epochs: must be >= 1, got 0 (use null)"),
    (UserError("does not exist", path="ck/config.json"), "ck/config.json: does not exist"),
    (UserError("cannot parse value '['", field="train.lr"), "train.lr: cannot parse value '['"),
    (UserError("weights do not match:\n  missing keys: ['a']\n"),
     "weights do not match: missing keys: ['a']"),
    (DataFormatError("d/quora-dev.csv", 1267, "is_duplicate", "empty label"),
     "d/quora-dev.csv:1267: field 'is_duplicate': empty label"),
])
def test_message_is_one_line_path_line_field_reason_fix(err: UserError, text: str) -> None:
    assert str(err) == text
    assert "\n" not in str(err)


def test_every_user_facing_error_is_a_user_error_and_keeps_its_builtin_base() -> None:
    for cls, builtin in [(ConfigError, ValueError), (DataFormatError, ValueError),
                         (CheckpointError, RuntimeError), (PretrainedLoadError, ValueError),
                         (MissingFileError, FileNotFoundError), (DiskWriteError, OSError)]:
        assert issubclass(cls, UserError) and issubclass(cls, builtin), cls


def test_legacy_config_messages_are_split_into_field_and_reason() -> None:
    err = ConfigError("train.smart.weight: must be >= 0, got -1")
    assert (err.field, err.reason, err.path) == ("train.smart.weight", "must be >= 0, got -1", None)
    assert str(err) == "train.smart.weight: must be >= 0, got -1"
    assert ConfigError("=5: override must look like section.key=value").field is None


def test_locate_fills_in_only_what_is_unknown() -> None:
    err = UserError("shape mismatch", field="pooler.dense.bias")
    assert err.locate("ck/model.safetensors") is err
    assert str(err) == "ck/model.safetensors: pooler.dense.bias: shape mismatch"
    err.locate("elsewhere", line=3)
    assert (err.path, err.line) == ("ck/model.safetensors", None)


@pytest.mark.parametrize("err", [
    UserError("bad", path="p", line=2, field="f", fix="x"),
    ConfigError("must be > 0", path="params.yaml", line=9, field="train.lr"),
    MissingFileError("checkpoint directory does not exist", path="ck"),
    DataFormatError("a.csv", 3, "id", "empty id"),
    disk_write_error("out/model.safetensors", errno.ENOSPC),
])
def test_errors_survive_pickling_whole(err: UserError) -> None:
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is type(err) and str(again) == str(err)
    assert (again.path, again.line, again.field, again.reason, again.fix) == \
        (err.path, err.line, err.field, err.reason, err.fix)


def test_disk_write_errors() -> None:
    full = disk_write_error("out/x.pt", errno.ENOSPC)
    assert str(full).startswith("out/x.pt: disk full while writing (free some space")
    assert full.errno == errno.ENOSPC and isinstance(full, OSError)
    assert "permission denied" in str(disk_write_error("out/x.pt", errno.EACCES))
    assert disk_write_error("out/x.pt", errno.ENOENT) is None
    assert disk_write_error("out/x.pt", None) is None
