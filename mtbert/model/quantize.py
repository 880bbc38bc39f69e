"""Dynamic int8 quantization of a trained model's linear layers, for prediction on the CPU.

Every ``nn.Linear`` (attention projections, feed-forward, pooler, heads) gets int8 weights
(per-output-channel scales) and quantizes its input on the fly, per batch; embeddings and
LayerNorm stay fp32. On CPUs with VNNI this runs the matmuls as int8 dot products.
``benchmarks/quantize.py`` measures the speed-up and the change of the dev metrics.

The model is copied, not changed: the fp32 weights stay what is saved and registered. Inference
only (quantized layers have no gradient).
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn
from torch.ao.quantization import quantize_dynamic

from mtbert.config import QUANTIZATIONS


def quantize_int8(model: nn.Module) -> nn.Module:
    """An inference-only copy of `model` whose linear layers run in dynamic int8."""
    with warnings.catch_warnings():
        # torch 2.13 marks its quantized tensor types deprecated (pytorch#184982); the project
        # pins that release, and benchmarks/quantize.py checks the path still works and pays.
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        quantized = quantize_dynamic(copy.deepcopy(model).cpu().eval(), {nn.Linear},
                                     dtype=torch.qint8)
    return quantized


def apply_quantization(model: nn.Module, quantize: str) -> nn.Module:
    """`model` as `quantize` ("none" or "int8") asks; raises ValueError on another value."""
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {list(QUANTIZATIONS)}, got {quantize!r}")
    return quantize_int8(model) if quantize == "int8" else model
