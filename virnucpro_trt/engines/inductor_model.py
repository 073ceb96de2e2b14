"""Preparing the native encoder for export: a cast copy on the target device, never the caller's model.

``build`` receives the fp32 CPU model that the parity gate also uses as its reference, so casting it in
place (``model.to(bf16)``) would silently corrupt the reference. A plain ``copy.deepcopy`` would hold a
second fp32 copy (12 GB for ESM-2 3B) before the cast. :func:`device_copy` does both at once: every
parameter is converted straight to the device and dtype, and the module tree is deep-copied around
those new tensors. Buffers move to the device in their own dtype and then go through the module's own
``.to`` so that per-module rules still apply (ESM-2's rotary ``inv_freq`` stays fp32).

:func:`freeze_position_tables` then stores what a graph would otherwise recompute per layer from the
sequence length alone (ESM-2's rotary cos/sin), sized for the longest sequence the engine accepts, and
:func:`freeze_alibi_slopes` holds DNABERT-S's ALiBi slopes in a buffer (the weights file beside an
AOTInductor package can hold only named tensors: :mod:`~virnucpro_trt.engines.package_weights`).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def device_copy(model: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """A deep copy of ``model`` on ``device`` with floating parameters in ``dtype``, in eval mode."""
    memo: dict[int, object] = {}
    for param in model.parameters():
        target = dtype if param.is_floating_point() else param.dtype
        memo[id(param)] = nn.Parameter(param.detach().to(device=device, dtype=target), requires_grad=False)
    for buffer in model.buffers():
        memo[id(buffer)] = buffer.detach().to(device=device)
    clone = copy.deepcopy(model, memo)
    return clone.to(device=device, dtype=dtype).eval().requires_grad_(False)


def freeze_position_tables(model: nn.Module, max_length: int) -> int:
    """Freeze every rotary embedding's cos/sin tables up to ``max_length``; returns how many."""
    from virnucpro_trt.models.esm2 import RotaryEmbedding

    rotaries = [m for m in model.modules() if isinstance(m, RotaryEmbedding)]
    for rotary in rotaries:
        rotary.freeze(max_length)
    return len(rotaries)


def freeze_alibi_slopes(model: nn.Module) -> None:
    """Hold every DNABERT-S encoder's ALiBi slopes in its buffer (``DnabertEncoder.freeze_slopes``). Not
    an option like the rotary tables: without it the slopes are a tensor made in forward, which the
    weights file cannot name."""
    from virnucpro_trt.models.dnabert import DnabertEncoder

    for module in model.modules():
        if isinstance(module, DnabertEncoder):
            module.freeze_slopes()


DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp8": torch.bfloat16,  # fp8 engines keep bf16 activations; only the linears' operands are e4m3
}
