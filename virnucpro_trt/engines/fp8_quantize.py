"""Row-wise fp8 quantisation fused with the op that produces its input: one pass over the activations.

An fp8 linear needs its input as e4m3 plus one scale per row (amax / 448). Left to Inductor, the
quantisation of a LayerNorm output or of a GELU output becomes a looped reduction that reads the row two
or three times and evaluates the LayerNorm or GELU again on every pass, which is where much of the fp8
forward goes (profile: docs/measurements.md). Here one Triton program holds one
whole row in registers (2560 or 10240 values), computes the op, its amax and the e4m3 values, and writes
them once.

Modes: ``IDENTITY`` (the attention output), ``LAYERNORM`` (fp32 statistics, weight and bias: the two
pre-LN inputs of an ESM-2 layer), ``BIAS_GELU`` (fc1's bias, then exact erf GELU: fc2's input).

:func:`quantize_rows` runs the Triton kernel on CUDA, registered with ``torch.library.triton_op`` so that
``torch.export`` and AOTInductor compile it into the engine; elsewhere it runs
:func:`quantize_rows_reference`, the same arithmetic in torch, which the tests compare the kernel with.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch.nn import functional as F

IDENTITY, LAYERNORM, BIAS_GELU = 0, 1, 2
FP8_MAX = 448.0
AMAX_FLOOR = 1e-12
FP8_DTYPE = getattr(torch, "float8_e4m3fn", None)


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
    scale = rows.abs().amax(dim=-1, keepdim=True).clamp(min=AMAX_FLOOR) / FP8_MAX
    return (rows / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale


try:  # CUDA builds of torch bring triton; the kernel is only defined (and used) where it exists
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU-only installs
    triton = None

if triton is not None:

    @triton.jit
    def _quantize_rows_kernel(x_ptr, w_ptr, b_ptr, out_ptr, scale_ptr, cols, eps, MODE: tl.constexpr,
                              BLOCK: tl.constexpr):  # fmt: skip
        row = tl.program_id(0).to(tl.int64)
        offsets = tl.arange(0, BLOCK)
        inside = offsets < cols
        x = tl.load(x_ptr + row * cols + offsets, mask=inside, other=0.0).to(tl.float32)
        if MODE == 1:
            mean = tl.sum(x, axis=0) / cols
            centred = tl.where(inside, x - mean, 0.0)
            var = tl.sum(centred * centred, axis=0) / cols
            w = tl.load(w_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
            b = tl.load(b_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
            y = centred * tl.rsqrt(var + eps) * w + b
        elif MODE == 2:
            b = tl.load(b_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
            z = x + b
            y = 0.5 * z * (1.0 + tl.math.erf(z * 0.7071067811865476))
        else:
            y = x
        y = tl.where(inside, y, 0.0)
        scale = tl.maximum(tl.max(tl.abs(y), axis=0), 1e-12) / 448.0
        q = tl.clamp(y / scale, -448.0, 448.0).to(tl.float8e4nv)
        tl.store(out_ptr + row * cols + offsets, q, mask=inside)
        tl.store(scale_ptr + row, scale)


@functools.cache
def _triton_quantize_rows() -> Any:
    """The ``virnucpro::quantize_rows`` op, registered on first use."""
    from torch.library import triton_op, wrap_triton

    @triton_op("virnucpro::quantize_rows", mutates_args={})
    def quantize_rows_op(
        x: torch.Tensor, mode: int, weight: torch.Tensor, bias: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cols = x.shape[-1]
        rows = x.reshape(-1, cols).contiguous()
        out = torch.empty(rows.shape, device=x.device, dtype=FP8_DTYPE)
        scale = torch.empty((rows.shape[0], 1), device=x.device, dtype=torch.float32)
        block = triton.next_power_of_2(cols)
        wrap_triton(_quantize_rows_kernel)[(rows.shape[0],)](
            rows, weight, bias, out, scale, cols, eps, MODE=mode, BLOCK=block,
            num_warps=16 if block >= 8192 else 8 if block >= 2048 else 4,
        )  # fmt: skip
        return out, scale

    return quantize_rows_op


# Modes whose Triton kernel the engines use. LAYERNORM and IDENTITY compile and match the reference when
# called directly, but inside Inductor (torch 2.11, triton 3.6 on the H200) their specialisation fails to
# lower ("PassManager::run failed"); they stay with Inductor's own fusion until that is understood.
TRITON_MODES = frozenset({BIAS_GELU})


def quantize_rows(
    x: torch.Tensor,
    mode: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 0.0,
    kernel: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`quantize_rows_reference`, as one fused Triton kernel on CUDA for :data:`TRITON_MODES`
    (``kernel`` forces the choice, for tests)."""
    use_kernel = mode in TRITON_MODES if kernel is None else kernel
    if not (use_kernel and x.is_cuda and triton is not None):
        return quantize_rows_reference(x, mode, weight, bias, eps)
    placeholder = x.new_empty(0)  # the kernel never reads a pointer its mode does not use
    return _triton_quantize_rows()(
        x, mode, placeholder if weight is None else weight, placeholder if bias is None else bias, eps
    )
