"""Checkpoints: atomic writes, clear errors for cut or foreign files, no unpickling of code."""

from __future__ import annotations

import json
import os
import pickle
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mtbert.model.trained import load_trained
from mtbert.pipeline.project import checkpoint_dir
from mtbert.pipeline.stages import train as train_stage
from mtbert.checkpoint import (
    CHECKPOINT_FILE,
    META_FILE,
    MODEL_FILE,
    TEACHER_KEY,
    CheckpointError,
    atomic_write,
    atomic_write_text,
    load_checkpoint,
    read_model_files,
    save_checkpoint,
)
from mtbert.config import Config, flatten, to_dict, with_overrides
from mtbert.smart import BregmanTeacher
from mtbert.train import TrainState

# torch's safe loader warns about the protocol of the hand-made pickles below (and then refuses them).
pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")


class _Evil:
    """Unpickling this runs `touch <marker>`: what a crafted checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _tiny() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A small model (odd sizes) after one optimizer step, so the optimizer has state."""
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(7, 13), torch.nn.Dropout(0.3), torch.nn.Linear(13, 5))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(11, 7)).pow(2).mean().backward()
    optimizer.step()
    return model, optimizer


def _checkpoint(path: Path, config: dict | None = None) -> Path:
    model, optimizer = _tiny()
    state = TrainState(epoch=1, step_in_epoch=3, global_step=9, total_steps=20)
    return save_checkpoint(path, model=model, optimizer=optimizer, state=state,
                           config=config if config is not None else to_dict(Config()))


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# ---------------------------------------------------------------------------------------------
# Atomic writes


def test_crash_mid_write_keeps_the_previous_file_and_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "out" / "weights.bin"
    atomic_write(path, lambda tmp: tmp.write_bytes(b"old" * 1000))

    def crash_half_way(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            fh.write(b"new" * 500)  # half of the new content is on disk ...
            fh.flush()
        assert _leftovers(path.parent), "the partial write goes to a temporary file"
        raise OSError("disk full")  # ... when the writer dies

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, crash_half_way)
    assert path.read_bytes() == b"old" * 1000
    assert _leftovers(path.parent) == []
    assert sorted(p.name for p in path.parent.iterdir()) == ["weights.bin"]


def test_crash_mid_checkpoint_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    path = _checkpoint(tmp_path / CHECKPOINT_FILE)
    before = path.read_bytes()

    def torch_save_dies(obj, f, *args, **kwargs) -> None:
        Path(f).write_bytes(before[: len(before) // 2])
        raise KeyboardInterrupt  # e.g. Ctrl-C during the write

    monkeypatch.setattr(torch, "save", torch_save_dies)
    with pytest.raises(KeyboardInterrupt):
        _checkpoint(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path)["state"]["global_step"] == 9
    assert _leftovers(tmp_path) == []


def test_atomic_files_get_normal_permissions(tmp_path: Path) -> None:
    # mkstemp creates 0600 files; a model directory must stay readable by a serving user.
    mask = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "meta.json", "{}")
    finally:
        os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


# ---------------------------------------------------------------------------------------------
# Reading checkpoints


def test_round_trip_restores_model_optimizer_state_and_rng(tmp_path: Path) -> None:
    model, optimizer = _tiny()
    torch.manual_seed(11)
    torch.rand(3)
    state = TrainState(epoch=0, step_in_epoch=4, global_step=4, total_steps=17)
    save_checkpoint(tmp_path / CHECKPOINT_FILE, model=model, optimizer=optimizer, state=state,
                    config={"a": [1, None, "x"], "b": {"c": 2.5}})
    expected_draw = torch.rand(5)
    payload = load_checkpoint(tmp_path / CHECKPOINT_FILE)
    assert payload["config"] == {"a": [1, None, "x"], "b": {"c": 2.5}}
    assert TrainState(**payload["state"]) == state
    torch.set_rng_state(payload["rng_cpu"])
    assert torch.equal(torch.rand(5), expected_draw)
    for key, value in model.state_dict().items():
        assert torch.equal(payload["model"][key], value)
    assert payload["optimizer"]["state"][0]["step"] == optimizer.state_dict()["state"][0]["step"]


@pytest.mark.parametrize("cut", ["empty", "1 byte", "header", "a third", "half", "all but 1",
                                 "all but 100"])
def test_truncated_checkpoint_raises_checkpoint_error(tmp_path: Path, cut: str) -> None:
    path = _checkpoint(tmp_path / CHECKPOINT_FILE)
    data = path.read_bytes()
    n = len(data)
    offset = {"empty": 0, "1 byte": 1, "header": 64, "a third": n // 3, "half": n // 2,
              "all but 1": n - 1, "all but 100": n - 100}[cut]
    path.write_bytes(data[:offset])
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt: truncated, corrupt or not a tensors"):
        load_checkpoint(path)


def test_foreign_checkpoints_raise_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / CHECKPOINT_FILE
    torch.save([torch.zeros(3)], path)
    with pytest.raises(CheckpointError, match="not an mtbert checkpoint"):
        load_checkpoint(path)
    torch.save({"model": {}, "state": {}}, path)
    with pytest.raises(CheckpointError, match=r"missing \['config', 'optimizer', 'rng_cpu'\]"):
        load_checkpoint(path)
    path.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.parametrize("form", ["plain pickle", "torch.save zip"])
def test_crafted_pickle_checkpoint_is_refused_without_running_code(tmp_path: Path, form: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / CHECKPOINT_FILE
    evil = {"model": {}, "optimizer": {}, "state": {}, "rng_cpu": torch.zeros(1),
            "config": _Evil(marker)}
    if form == "plain pickle":
        path.write_bytes(pickle.dumps(evil))
    else:
        torch.save(evil, path)
    with pytest.raises(CheckpointError, match="not a tensors-only checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()
    # The payload is real: unpickling it without the safe loader does run the command.
    torch.load(path, weights_only=False) if form != "plain pickle" else pickle.loads(path.read_bytes())
    assert marker.exists()


# ---------------------------------------------------------------------------------------------
# Resuming (the train stage's _maybe_resume): same run resumes, runtime settings don't matter,
# another run or a bad file is refused and kept


def _current(cfg: Config, rows: str = "rows-1") -> dict:
    """A run's fingerprint as the train stage builds it, with a stand-in digest of its rows."""
    keys = {k: v for k, v in flatten(to_dict(cfg)).items()
            if k.startswith(train_stage.RESULT_KEYS) and k not in train_stage.RUNTIME_KEYS}
    return {"config": keys, "data": rows, "code": "test"}


def _resume_setup(tmp_path: Path, monkeypatch, config: Config) -> Path:
    monkeypatch.chdir(tmp_path)
    ckpt = checkpoint_dir(config) / CHECKPOINT_FILE
    _checkpoint(ckpt, to_dict(config))
    return ckpt


def test_resume_with_the_same_config_restores_everything(tmp_path: Path, monkeypatch) -> None:
    cfg = Config()
    ckpt = _resume_setup(tmp_path, monkeypatch, cfg)
    saved = load_checkpoint(ckpt)
    model = torch.nn.Sequential(torch.nn.Linear(7, 13), torch.nn.Dropout(0.3), torch.nn.Linear(13, 5))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    torch.manual_seed(999)
    state = train_stage._maybe_resume(cfg, model, optimizer, _current(cfg))
    assert state == TrainState(epoch=1, step_in_epoch=3, global_step=9, total_steps=20)
    assert all(torch.equal(v, saved["model"][k]) for k, v in model.state_dict().items())
    assert torch.equal(optimizer.state_dict()["state"][0]["exp_avg"],
                       saved["optimizer"]["state"][0]["exp_avg"])
    assert torch.equal(torch.get_rng_state(), saved["rng_cpu"])


def test_resume_restores_smart_teacher_exactly_and_needs_it(tmp_path: Path, monkeypatch) -> None:
    cfg = with_overrides(Config(), {"train.smart.enabled": True})
    monkeypatch.chdir(tmp_path)
    ckpt = checkpoint_dir(cfg) / CHECKPOINT_FILE
    model, optimizer = _tiny()
    teacher = BregmanTeacher(model, 0.5)
    optimizer.step()  # move the model, so the teacher differs from it
    teacher.update(model)
    save_checkpoint(ckpt, model=model, optimizer=optimizer, state=TrainState(global_step=2),
                    config=to_dict(cfg), teacher=teacher.module)
    assert set(load_checkpoint(ckpt)[TEACHER_KEY]) == set(model.state_dict())
    fresh, fresh_opt = _tiny()
    fresh_teacher = BregmanTeacher(torch.nn.Sequential(torch.nn.Linear(7, 13), torch.nn.Dropout(0.3),
                                                       torch.nn.Linear(13, 5)), 0.5)
    assert train_stage._maybe_resume(cfg, fresh, fresh_opt, _current(cfg), fresh_teacher) == TrainState(global_step=2)
    for key, value in teacher.module.state_dict().items():
        assert torch.equal(fresh_teacher.module.state_dict()[key], value)
    assert not torch.equal(teacher.module[0].weight, model[0].weight)
    # A checkpoint without the teacher cannot resume a run that needs one (SMART off: see above).
    save_checkpoint(ckpt, model=model, optimizer=optimizer, state=TrainState(global_step=2),
                    config=to_dict(cfg))
    with pytest.raises(CheckpointError, match=r"does not match this model \(KeyError: 'bregman_teacher'"):
        train_stage._maybe_resume(cfg, fresh, fresh_opt, _current(cfg), fresh_teacher)


def test_resume_with_another_config_is_refused_and_the_checkpoint_kept(tmp_path: Path,
                                                                       monkeypatch) -> None:
    cfg = Config()
    ckpt = _resume_setup(tmp_path, monkeypatch, cfg)
    before_bytes = ckpt.read_bytes()
    other = with_overrides(cfg, {"train.lr": 1e-4, "train.sampler": "annealed"})
    model, optimizer = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(train_stage.ResumeRefused,
                       match=r"settings changed: train.lr 5e-05 -> 0.0001, train.sampler 'round_robin' "
                             r"-> 'annealed'.*It is kept.*--no-resume"):
        train_stage._maybe_resume(other, model, optimizer, _current(other))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert ckpt.read_bytes() == before_bytes


def test_runtime_settings_never_block_a_resume(tmp_path: Path, monkeypatch) -> None:
    cfg = Config()
    _resume_setup(tmp_path, monkeypatch, cfg)
    runtime = with_overrides(cfg, {"train.threads": 1, "train.checkpoint_every": 7,
                                   "train.device": "cpu", "eval.batch_size": 3, "tune.n_trials": 2,
                                   "register.model_name": "other"})
    model, optimizer = _tiny()
    assert train_stage._maybe_resume(runtime, model, optimizer, _current(runtime)) is not None


def test_resume_after_the_training_rows_changed_is_refused(tmp_path: Path, monkeypatch) -> None:
    cfg = Config()
    monkeypatch.chdir(tmp_path)
    ckpt = checkpoint_dir(cfg) / CHECKPOINT_FILE
    model, optimizer = _tiny()
    save_checkpoint(ckpt, model=model, optimizer=optimizer, state=TrainState(global_step=2),
                    config=to_dict(cfg), extra={train_stage.FINGERPRINT_KEY: _current(cfg, "rows-1")})
    assert train_stage._maybe_resume(cfg, model, optimizer, _current(cfg, "rows-1")) is not None
    with pytest.raises(train_stage.ResumeRefused, match="the training rows changed"):
        train_stage._maybe_resume(cfg, model, optimizer, _current(cfg, "relabelled"))


def test_resume_refuses_a_truncated_checkpoint_and_says_how_to_start_fresh(tmp_path: Path,
                                                                           monkeypatch) -> None:
    cfg = Config()
    ckpt = _resume_setup(tmp_path, monkeypatch, cfg)
    ckpt.write_bytes(ckpt.read_bytes()[:5000])
    model, optimizer = _tiny()
    with pytest.raises(CheckpointError, match=r"truncated.*start fresh with `mtbert train --no-resume`"):
        train_stage._maybe_resume(cfg, model, optimizer, _current(cfg))


def test_resume_refuses_a_crafted_pickle(tmp_path: Path, monkeypatch) -> None:
    cfg = Config()
    ckpt = _resume_setup(tmp_path, monkeypatch, cfg)
    marker = tmp_path / "pwned"
    ckpt.write_bytes(pickle.dumps({"config": _Evil(marker)}))
    model, optimizer = _tiny()
    with pytest.raises(CheckpointError, match="--no-resume"):
        train_stage._maybe_resume(cfg, model, optimizer, _current(cfg))
    assert not marker.exists()


def test_resume_refuses_a_checkpoint_of_another_model_shape(tmp_path: Path, monkeypatch) -> None:
    cfg = Config()
    _resume_setup(tmp_path, monkeypatch, cfg)
    model = torch.nn.Sequential(torch.nn.Linear(7, 17), torch.nn.Dropout(0.3), torch.nn.Linear(17, 5))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with pytest.raises(CheckpointError,
                       match=r"(?s)does not match this model \(RuntimeError: .*size mismatch"):
        train_stage._maybe_resume(cfg, model, optimizer, _current(cfg))


# ---------------------------------------------------------------------------------------------
# The trained-model directory loads only through safetensors


def _model_dir(tmp_path: Path) -> Path:
    model, _ = _tiny()
    out = tmp_path / "model"
    out.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / MODEL_FILE))
    (out / META_FILE).write_text(json.dumps({"config": to_dict(Config())}))
    return out


def test_model_dir_reads_safetensors(tmp_path: Path) -> None:
    weights, meta = read_model_files(_model_dir(tmp_path))
    assert weights["0.weight"].shape == (13, 7) and "config" in meta


def test_model_dir_with_pickled_weights_fails_clearly_without_running_code(tmp_path: Path) -> None:
    out = _model_dir(tmp_path)
    marker = tmp_path / "pwned"
    model, _ = _tiny()
    torch.save({"state": model.state_dict(), "hook": _Evil(marker)}, out / MODEL_FILE)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a valid safetensors file .*"
                                              r"never unpickled"):
        read_model_files(out)
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_trained(out)
    assert not marker.exists()


def test_model_dir_with_truncated_weights_fails_clearly(tmp_path: Path) -> None:
    out = _model_dir(tmp_path)
    data = (out / MODEL_FILE).read_bytes()
    (out / MODEL_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        read_model_files(out)
