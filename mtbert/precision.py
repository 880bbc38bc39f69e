"""Which numeric precision a run uses: `train.precision` fp32, bf16 (autocast), or auto.

bf16 autocast is fast only on hardware with bf16 units: measured on a 2-core CPU with avx512_bf16,
a quick-profile training step ran 2.16x faster than fp32 and prediction 2.91x, with dev metrics
within seed noise (docs/performance.md). Without those units bf16 matmuls are emulated and far
slower than fp32. `auto` (the default) therefore picks bf16 where the device has them, else fp32.
"""

from __future__ import annotations

import logging

import torch

from mtbert.config import PRECISIONS

log = logging.getLogger("mtbert")


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (avx512_bf16 or AMX tiles), as torch sees it."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch build without these probes
        return False


def has_bf16_units(device: torch.device) -> bool:
    """Whether `device` runs bf16 matmuls in hardware (CUDA: Ampere or later)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    return device.type == "cpu" and cpu_has_bf16()


def resolve_precision(requested: str, device: torch.device, *, inference: bool = False) -> str:
    """The precision a run on `device` uses: "fp32" or "bf16".

    `auto` is bf16 where the device has bf16 units, else fp32. An explicit "bf16" is kept for
    training (and warned about without the units), but scoring and prediction (`inference`) run in
    fp32 there: a model trained in bf16 elsewhere predicts the same within bf16 rounding, and
    emulated bf16 would make it many times slower.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    units = has_bf16_units(device) if requested != "fp32" else False
    if requested == "auto":
        return "bf16" if units else "fp32"
    if requested == "bf16" and not units:
        if inference:
            _once(logging.INFO, "precision: fp32 on this %s (bf16 was asked for; without bf16 units it "
                  "would be emulated and slow)", device.type)
            return "fp32"
        _once(logging.WARNING, "train.precision=bf16 on a %s without bf16 units: bf16 matmuls are "
              "emulated and run slower than fp32 (train.precision=auto picks fp32 here)", device.type)
    return requested


_said: set[tuple[str, str]] = set()


def _once(level: int, message: str, device_type: str) -> None:
    """Log `message` the first time in this process only: scoring resolves the precision once per
    task and tuning once per trial, and the line would otherwise repeat with nothing new in it."""
    if (message, device_type) not in _said:
        _said.add((message, device_type))
        log.log(level, message, device_type)
