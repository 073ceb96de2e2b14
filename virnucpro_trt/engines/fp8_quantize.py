"""Row-wise fp8 quantisation of an ESM-2 layer's activations, the GELU case fused into one Triton kernel.

An fp8 linear needs its input as e4m3 plus one scale per row (amax / 448). Every path multiplies by
``448 / amax`` instead of dividing by the scale (one multiply per value). Modes: ``IDENTITY`` (the
attention output), ``LAYERNORM`` (fp32 statistics, weight and bias: the two pre-LN inputs),
``BIAS_GELU`` (fc1's bias, then exact erf GELU: fc2's input, the widest rows, 10,240 values).

``BIAS_GELU`` runs a Triton kernel on CUDA (the others: Inductor's own fusion of
:func:`quantize_rows_reference`). Inductor's fusion re-evaluates GELU on every pass of a looped
reduction, and a kernel holding a whole row in one program left too few rows in flight and idled the
lanes past 10,240 (profiles: docs/measurements.md). This kernel walks the row in chunks that divide it,
in small programs so that many rows are in flight, and needs no GELU pass for the amax: GELU rises on
[-0.75, inf) and stays within 0.17 in magnitude below 0, so when GELU(max z) >= 0.17 it *is* the row's
amax; a row whose maximum is smaller gets an exact pass. It is registered with
``torch.library.triton_op``, so ``torch.export`` and AOTInductor compile it into the engine; the tests
compare it with :func:`quantize_rows_reference`.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch.nn import functional as F

IDENTITY, LAYERNORM, BIAS_GELU = 0, 1, 2
MODES = (IDENTITY, LAYERNORM, BIAS_GELU)
FP8_MAX = 448.0  # largest finite e4m3fn value
AMAX_FLOOR = 1e-12  # an all-zero row gets scale ~2e-15 instead of 0 (no 0/0 in the quantisation)
FP8_DTYPE = getattr(torch, "float8_e4m3fn", None)
GELU_NEGATIVE_BOUND = 0.17  # max |GELU(z)| over z < 0 is 0.16997 (at z = -0.7518)


def quantize_rows_reference(
    x: torch.Tensor,
    mode: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(e4m3 [rows, K], fp32 scales [rows, 1])`` of ``op(x)`` flattened to rows, in torch."""
    rows = x.reshape(-1, x.shape[-1]).float()
    if mode == LAYERNORM:
        assert weight is not None and bias is not None
        rows = F.layer_norm(rows, (rows.shape[-1],), weight.float(), bias.float(), eps)
    elif mode == BIAS_GELU:
        assert bias is not None
        rows = F.gelu(rows + bias.float(), approximate="none")
    return scale_rows_to_e4m3(rows)


def scale_rows_to_e4m3(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise e4m3 of fp32 ``rows`` [M, K] and the scales [M, 1] that undo it (amax / 448).

    Multiplies by the reciprocal (one multiply per value instead of a division), as the kernels do.
    """
    amax = rows.abs().amax(dim=-1, keepdim=True).clamp(min=AMAX_FLOOR)
    quantised = (rows * (FP8_MAX / amax)).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return quantised, amax / FP8_MAX


def chunk_size(cols: int, largest: int) -> int:
    """The largest power of two <= ``largest`` that divides ``cols`` (no idle lanes in the last chunk);
    the next power of two >= ``cols`` when that is smaller, for short rows."""
    pow2 = 1 << max(cols - 1, 0).bit_length()
    if pow2 <= largest:
        return pow2
    chunk = largest
    while chunk > 64 and cols % chunk:
        chunk //= 2
    return chunk


try:  # CUDA builds of torch bring triton; the kernel is only defined (and used) where it exists
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU-only installs
    triton = None

if triton is not None:
    _FP8_MAX = tl.constexpr(FP8_MAX)
    _AMAX_FLOOR = tl.constexpr(AMAX_FLOOR)
    _GELU_NEGATIVE_BOUND = tl.constexpr(GELU_NEGATIVE_BOUND)

    @triton.jit
    def _e4m3_store(out_ptr, offsets, inside, y, inv):
        q = tl.clamp(y * inv, -_FP8_MAX, _FP8_MAX).to(tl.float8e4nv)
        tl.store(out_ptr + offsets, q, mask=inside)

    @triton.jit
    def _gelu(z):
        return 0.5 * z * (1.0 + tl.math.erf(z * 0.7071067811865476))

    @triton.jit
    def _bias_gelu_rows_kernel(x_ptr, b_ptr, out_ptr, scale_ptr, cols, CHUNK: tl.constexpr):
        base = tl.program_id(0).to(tl.int64) * cols
        lanes = tl.arange(0, CHUNK)
        top = tl.full([CHUNK], float("-inf"), dtype=tl.float32)
        for start in range(0, cols, CHUNK):
            inside = start + lanes < cols
            x = tl.load(x_ptr + base + start + lanes, mask=inside, other=0.0).to(tl.float32)
            b = tl.load(b_ptr + start + lanes, mask=inside, other=0.0).to(tl.float32)
            top = tl.maximum(top, tl.where(inside, x + b, float("-inf")))
        amax = _gelu(tl.max(top, axis=0))
        if amax < _GELU_NEGATIVE_BOUND:  # the negative lobe may hold the amax: the exact pass
            peak = tl.zeros([CHUNK], dtype=tl.float32)
            for start in range(0, cols, CHUNK):
                inside = start + lanes < cols
                x = tl.load(x_ptr + base + start + lanes, mask=inside, other=0.0).to(tl.float32)
                b = tl.load(b_ptr + start + lanes, mask=inside, other=0.0).to(tl.float32)
                peak = tl.maximum(peak, tl.where(inside, tl.abs(_gelu(x + b)), 0.0))
            amax = tl.max(peak, axis=0)
        amax = tl.maximum(amax, _AMAX_FLOOR)
        inv = _FP8_MAX / amax
        for start in range(0, cols, CHUNK):
            inside = start + lanes < cols
            x = tl.load(x_ptr + base + start + lanes, mask=inside, other=0.0).to(tl.float32)
            b = tl.load(b_ptr + start + lanes, mask=inside, other=0.0).to(tl.float32)
            _e4m3_store(out_ptr, base + start + lanes, inside, _gelu(x + b), inv)
        tl.store(scale_ptr + tl.program_id(0), amax / _FP8_MAX)


GELU_CHUNK = 2048  # values per chunk at most, 4 warps per program (fc1's 10,240-wide rows: 5 chunks)


@functools.cache
def _triton_bias_gelu_rows() -> Any:
    """The ``virnucpro::bias_gelu_rows`` op, registered on first use."""
    from torch.library import triton_op, wrap_triton

    @triton_op("virnucpro::bias_gelu_rows", mutates_args={})
    def bias_gelu_rows_op(x: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cols = x.shape[-1]
        rows = x.reshape(-1, cols).contiguous()
        out = torch.empty(rows.shape, device=x.device, dtype=FP8_DTYPE)
        scale = torch.empty((rows.shape[0], 1), device=x.device, dtype=torch.float32)
        chunk = chunk_size(cols, GELU_CHUNK)
        wrap_triton(_bias_gelu_rows_kernel)[(rows.shape[0],)](rows, bias, out, scale, cols, CHUNK=chunk)
        return out, scale

    return bias_gelu_rows_op


# Modes with a Triton kernel (the engines use it by default): measurement log, 2026-12-02. LayerNorm and
# the attention output stay with Inductor's fusion of quantize_rows_reference until a kernel of theirs
# is measured faster at parity (DEVELOPERS.md, open problems).
TRITON_MODES = frozenset({BIAS_GELU})


def quantize_rows(
    x: torch.Tensor,
    mode: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 0.0,
    kernels: frozenset[int] = TRITON_MODES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`quantize_rows_reference`; on CUDA, a mode of ``kernels`` (at most :data:`TRITON_MODES`) runs
    its fused Triton kernel."""
    if not (mode in kernels & TRITON_MODES and x.is_cuda and triton is not None):
        return quantize_rows_reference(x, mode, weight, bias, eps)
    assert bias is not None
    return _triton_bias_gelu_rows()(x, bias)
