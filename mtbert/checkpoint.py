"""Checkpoints that survive a crash, and the self-contained trained-model directory.

Resumable checkpoints hold model, optimizer, trainer and RNG state. They are written to a temporary
file and renamed into place, so a kill mid-write leaves the previous checkpoint intact, and they are
read with `torch.load(weights_only=True)`, which refuses pickled code. The trained-model directory
holds `model.safetensors`, `mtbert.json` (resolved config and encoder shape) and the tokenizer.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mtbert.errors import MissingFileError, UserError, one_line
from mtbert.fileio import atomic_write, atomic_write_text  # noqa: F401 - re-exported

CHECKPOINT_FILE = "checkpoint.pt"
MODEL_FILE = "model.safetensors"
META_FILE = "mtbert.json"
TEACHER_KEY = "bregman_teacher"  # SMART's EMA teacher weights; only in checkpoints of runs that use it
_RETRAIN = "train the model again with `mtbert train`"  # the fix for a damaged model directory


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be trusted: truncated, corrupt, or of an unexpected shape."""


def save_checkpoint(path: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: Any, config: dict[str, Any], teacher: torch.nn.Module | None = None,
                    extra: dict[str, Any] | None = None) -> Path:
    """Write a resumable checkpoint (model, optimizer, trainer state, RNG, config) atomically.

    `teacher` (SMART's Bregman teacher module, when training uses one) is saved under TEACHER_KEY;
    `extra` entries (e.g. a weight average's state, the run's fingerprint) under their own keys.
    """
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "state": dataclasses.asdict(state),
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "config": config,
    }
    if teacher is not None:
        payload[TEACHER_KEY] = teacher.state_dict()
    payload.update(extra or {})
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint safely. Raises CheckpointError if it is truncated or not ours."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # torch raises several types for truncated or foreign files
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CheckpointError(f"truncated, corrupt or not a tensors-only checkpoint "
                              f"({type(err).__name__}: {first_line})", path=path) from err
    if not isinstance(payload, dict):
        raise CheckpointError(f"not an mtbert checkpoint (holds a {type(payload).__name__})",
                              path=path)
    missing = {"model", "optimizer", "state", "rng_cpu", "config"} - set(payload)
    if missing:
        raise CheckpointError(f"not an mtbert checkpoint (missing {sorted(missing)})", path=path)
    return payload


def restore_rng(payload: dict[str, Any]) -> None:
    torch.set_rng_state(payload["rng_cpu"])
    if payload["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["rng_cuda"])


def save_model(out_dir: str | Path, model: torch.nn.Module, tokenizer: Any,
               meta: dict[str, Any]) -> Path:
    """Write the trained model directory: weights, metadata and tokenizer."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(out_dir / MODEL_FILE, lambda tmp: save_file(state, str(tmp)))
    tokenizer.save_pretrained(str(out_dir))
    atomic_write_text(out_dir / META_FILE, json.dumps(meta, indent=2, sort_keys=True))
    return out_dir


def read_model_files(model_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights and metadata of a trained-model directory (safetensors: no code is executed).

    Raises:
        MissingFileError: the directory, its weights or its metadata file do not exist.
        CheckpointError: the weights are not a valid safetensors file, or the metadata is not a
            JSON object (the file and, for bad JSON, the line are named).
    """
    shown, model_dir = str(model_dir), Path(model_dir)  # shown as given (Path drops a leading ./)
    fix = "train one with `mtbert train`, or name the folder it wrote"
    if not model_dir.is_dir():
        what = "is not a folder" if model_dir.exists() else "does not exist"
        raise MissingFileError(f"trained model directory {what}", path=shown, fix=fix)
    for name in (MODEL_FILE, META_FILE):
        if not (model_dir / name).exists():
            raise MissingFileError(f"not a trained mtbert model (no {name})", path=shown, fix=fix)
    try:
        weights = load_file(str(model_dir / MODEL_FILE))
    except Exception as err:  # safetensors raises its own error type for a foreign or cut file
        raise CheckpointError(f"not a valid safetensors file ({one_line(str(err))}); model weights "
                              "are read only as safetensors, never unpickled",
                              path=model_dir / MODEL_FILE, fix=_RETRAIN) from err
    return weights, _read_meta(model_dir / META_FILE)


def _read_meta(path: Path) -> dict[str, Any]:
    """The trained model's metadata (`mtbert.json`): a JSON object."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"invalid JSON ({err.msg} at column {err.colno})", path=path,
                              line=err.lineno, fix=_RETRAIN) from None
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"cannot read the model's metadata ({one_line(str(err))})", path=path,
                              fix=_RETRAIN) from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"expected a JSON object, got {type(meta).__name__}", path=path,
                              fix=_RETRAIN)
    return meta
