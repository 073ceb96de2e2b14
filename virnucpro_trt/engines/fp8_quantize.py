"""Row-wise fp8 quantisation of an ESM-2 layer's activations, fused with the op that produces them.

An fp8 linear needs its input as e4m3 plus one scale per row (amax / 448). Every path multiplies by
``448 / amax`` instead of dividing by the scale (one multiply per value). Modes: ``IDENTITY`` (the
attention output), ``LAYERNORM`` (fp32 statistics, weight and bias: the two pre-LN inputs; the second
one after the attention's residual add, which :func:`add_layernorm_rows` fuses too), ``BIAS_GELU``
(fc1's bias, then GELU: fc2's input, the widest rows, 10,240 values).

On CUDA the modes of ``kernels`` run Triton kernels, the others Inductor's own fusion of the torch
reference. Inductor's fusion re-reads and recomputes a row on every pass of a looped reduction, and a
kernel holding a whole row in one program left too few rows in flight (profiles: docs/measurements.md).
These kernels walk a row in chunks that divide it, in small programs, so that many rows are in flight;
later passes re-read the row from cache. ``RowLaunch(resident=True)`` instead holds the row in
registers as two power-of-two pieces (:func:`resident_pieces`) and reads it once, in every mode:

* BIAS_GELU needs no GELU pass for the amax: GELU rises on [-0.75, inf) and stays within 0.17 in
  magnitude below 0, so when GELU(max z) >= 0.17 it *is* the row's amax; a row whose maximum is smaller
  gets an exact pass. The kernel is bound by evaluating GELU, not by memory, so the cheaper the GELU
  the faster the kernel: erf from a polynomial (|error| <= 1.5e-7, :data:`ERF_COEFFS`) beat libdevice's
  ``erff``, and GELU's tanh form by the hardware tanh (one MUFU op, :data:`GELU_TANH`, the engines'
  default) beat the polynomial, each at the same parity on the H200 (measurement log, 2026-12-02, fifth
  session, and 2026-12-03, eighth session). Its |difference| from the erf form (<= 4.8e-4) is below the
  bf16 rounding of the GEMM output it is applied to except in the far negative lobe, and far below the
  e4m3 rounding after it (half a step is 3-6% of a value).
* LAYERNORM takes mean and variance in one pass, per chunk and merged across chunks (Chan's update:
  no cancellation when the mean is large against the spread, as in the residual stream's outlier
  channels), then an amax pass and the store pass; with a residual, the sum is written out on the first.

They are registered with ``torch.library.triton_op``, so ``torch.export`` and AOTInductor compile them
into the engine; the tests compare them with the torch references.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
from torch.nn import functional as F

IDENTITY, LAYERNORM, BIAS_GELU = 0, 1, 2
MODES = (IDENTITY, LAYERNORM, BIAS_GELU)
FP8_MAX = 448.0  # largest finite e4m3fn value
AMAX_FLOOR = 1e-12  # an all-zero row gets scale ~2e-15 instead of 0 (no 0/0 in the quantisation)
FP8_DTYPE = getattr(torch, "float8_e4m3fn", None)
# max |GELU(z)| over z < 0: 0.16997 (erf form, at z = -0.7518), 0.17004 (tanh form), with margin for
# the hardware tanh's relative error (2^-11)
GELU_NEGATIVE_BOUND = 0.171
# How the GELU kernel evaluates GELU (RowLaunch.erf): erf by libdevice's erff, erf by the polynomial
# below, or GELU's tanh form with the hardware's tanh.approx.f32 (|diff| <= 4.8e-4 from the erf form,
# below the bf16 rounding of the GEMM output it is applied to except in the far negative lobe)
ERF_LIBDEVICE, ERF_POLYNOMIAL, GELU_TANH = 0, 1, 2
# Abramowitz & Stegun 7.1.26: erf(a) = 1 - t (c1 + c2 t + ... + c5 t^4) exp(-a^2), t = 1 / (1 + p a),
# a >= 0, |error| <= 1.5e-7: below bf16's resolution of the GEMM output it is applied to.
ERF_P = 0.3275911
ERF_COEFFS = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


@dataclass(frozen=True)
class RowLaunch:
    """How a row kernel is launched: values per chunk at most (the largest power of two dividing the
    row, :func:`chunk_size`), warps per program, and for the GELU kernel how erf is evaluated.

    The defaults (:data:`ROW_LAUNCH`) are what the engines build with; other values exist for
    ``benchmarks/diagnostics/row_kernels.py`` and ``esm2_variants.py``, which time them on the GPU
    (:func:`launches_in_effect`).
    """

    chunk: int
    num_warps: int = 4
    erf: int = ERF_LIBDEVICE
    resident: bool = False  # the whole row in registers, read once (chunk unused)


def quantize_rows_reference(
    x: torch.Tensor,
    mode: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 0.0,
    gelu_tanh: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(e4m3 [rows, K], fp32 scales [rows, 1])`` of ``op(x)`` flattened to rows, in torch (GELU in
    its tanh form when ``gelu_tanh``, as a :data:`GELU_TANH` launch computes it)."""
    rows = x.reshape(-1, x.shape[-1]).float()
    if mode == LAYERNORM:
        assert weight is not None and bias is not None
        rows = F.layer_norm(rows, (rows.shape[-1],), weight.float(), bias.float(), eps)
    elif mode == BIAS_GELU:
        assert bias is not None
        rows = F.gelu(rows + bias.float(), approximate="tanh" if gelu_tanh else "none")
    return scale_rows_to_e4m3(rows)


def add_layernorm_rows_reference(
    x: torch.Tensor,
    delta: torch.Tensor,
    delta_bias: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x + delta + delta_bias`` in x's dtype, then its LayerNorm quantised row-wise, and the scales).

    The sum is taken in fp32 and rounded once to x's dtype (the residual stream); the statistics are of
    the rounded sum, which is what the next layer reads.
    """
    total = residual_sum(x, delta, delta_bias)
    quantised, scale = quantize_rows_reference(total, LAYERNORM, weight, bias, eps)
    return total, quantised, scale


def residual_sum(x: torch.Tensor, delta: torch.Tensor, delta_bias: torch.Tensor) -> torch.Tensor:
    """``x + delta + delta_bias`` in fp32, rounded once to x's dtype (the residual stream's)."""
    return (x.float() + delta.float() + delta_bias.float()).to(x.dtype)


def erf_polynomial(x: torch.Tensor) -> torch.Tensor:
    """erf by :data:`ERF_COEFFS` (the ``ERF_POLYNOMIAL`` kernel's formula, in torch, for the tests)."""
    a = x.abs()
    t = 1.0 / (1.0 + ERF_P * a)
    poly = torch.zeros_like(t)
    for coeff in reversed(ERF_COEFFS):
        poly = poly * t + coeff
    return torch.copysign(1.0 - t * poly * torch.exp(-a * a), x)


def scale_rows_to_e4m3(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise e4m3 of fp32 ``rows`` [M, K] and the scales [M, 1] that undo it (amax / 448).

    Multiplies by the reciprocal (one multiply per value instead of a division), as the kernels do.
    """
    amax = rows.abs().amax(dim=-1, keepdim=True).clamp(min=AMAX_FLOOR)
    quantised = (rows * (FP8_MAX / amax)).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return quantised, amax / FP8_MAX


def next_power_of_two(n: int) -> int:
    """The smallest power of two >= ``n`` (1 for n <= 1): a Triton block that covers n values."""
    return 1 << max(n - 1, 0).bit_length()


def resident_pieces(cols: int) -> tuple[int, int]:
    """A row held in registers as two power-of-two pieces: the largest power of two <= ``cols``, then
    the rest rounded up to a power of two (0 when nothing is left): 10240 = 8192 + 2048 and
    2560 = 2048 + 512 without an idle lane, where one block of the next power of two would leave 37.5%
    of its lanes idle (and their registers held)."""
    head = 1 << (max(cols, 1).bit_length() - 1)
    rest = cols - head
    return head, (next_power_of_two(rest) if rest else 0)


def chunk_size(cols: int, largest: int) -> int:
    """The largest power of two <= ``largest`` that divides ``cols`` (no idle lanes in the last chunk);
    the next power of two >= ``cols`` when that is smaller, for short rows."""
    pow2 = next_power_of_two(cols)
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

    _ERF_POLYNOMIAL = tl.constexpr(ERF_POLYNOMIAL)
    _ERF_P = tl.constexpr(ERF_P)
    _C1, _C2, _C3, _C4, _C5 = (tl.constexpr(c) for c in ERF_COEFFS)

    _GELU_TANH = tl.constexpr(GELU_TANH)

    @triton.jit
    def _gelu(z, ERF: tl.constexpr):
        half = 0.5 * z
        if ERF == _GELU_TANH:  # one MUFU op and four FMAs: tanh(sqrt(2/pi) (z + 0.044715 z^3))
            inner = z * (0.7978845608028654 + 0.035677408136300125 * z * z)
            gate = tl.inline_asm_elementwise(
                "tanh.approx.f32 $0, $1;", "=r,r", [inner], dtype=tl.float32, is_pure=True, pack=1
            )
        elif ERF == _ERF_POLYNOMIAL:  # a reciprocal, an exp and five FMAs instead of libdevice's erff
            u = z * 0.7071067811865476
            a = tl.abs(u)
            t = 1.0 / (1.0 + _ERF_P * a)
            poly = t * (_C1 + t * (_C2 + t * (_C3 + t * (_C4 + t * _C5))))
            e = 1.0 - poly * tl.exp(-a * a)
            gate = tl.where(u < 0.0, -e, e)
        else:
            gate = tl.math.erf(z * 0.7071067811865476)
        return half + half * gate

    @triton.jit
    def _bias_gelu_rows_kernel(
        x_ptr, b_ptr, out_ptr, scale_ptr, cols, CHUNK: tl.constexpr, ERF: tl.constexpr
    ):
        base = tl.program_id(0).to(tl.int64) * cols
        lanes = tl.arange(0, CHUNK)
        top = tl.full([CHUNK], float("-inf"), dtype=tl.float32)
        for start in range(0, cols, CHUNK):
            inside = start + lanes < cols
            x = tl.load(x_ptr + base + start + lanes, mask=inside, other=0.0).to(tl.float32)
            b = tl.load(b_ptr + start + lanes, mask=inside, other=0.0).to(tl.float32)
            top = tl.maximum(top, tl.where(inside, x + b, float("-inf")))
        amax = _gelu(tl.max(top, axis=0), ERF)
        if amax < _GELU_NEGATIVE_BOUND:  # the negative lobe may hold the amax: the exact pass
            peak = tl.zeros([CHUNK], dtype=tl.float32)
            for start in range(0, cols, CHUNK):
                inside = start + lanes < cols
                x = tl.load(x_ptr + base + start + lanes, mask=inside, other=0.0).to(tl.float32)
                b = tl.load(b_ptr + start + lanes, mask=inside, other=0.0).to(tl.float32)
                peak = tl.maximum(peak, tl.where(inside, tl.abs(_gelu(x + b, ERF)), 0.0))
            amax = tl.max(peak, axis=0)
        amax = tl.maximum(amax, _AMAX_FLOOR)
        inv = _FP8_MAX / amax
        for start in range(0, cols, CHUNK):
            inside = start + lanes < cols
            x = tl.load(x_ptr + base + start + lanes, mask=inside, other=0.0).to(tl.float32)
            b = tl.load(b_ptr + start + lanes, mask=inside, other=0.0).to(tl.float32)
            _e4m3_store(out_ptr, base + start + lanes, inside, _gelu(x + b, ERF), inv)
        tl.store(scale_ptr + tl.program_id(0), amax / _FP8_MAX)

    @triton.jit
    def _row_chunk(x_ptr, d_ptr, db_ptr, base, start, lanes, inside, HAS_DELTA: tl.constexpr):
        """fp32 values of one chunk of a row: ``x``, or ``x + delta + delta_bias`` rounded to x's dtype."""
        x = tl.load(x_ptr + base + start + lanes, mask=inside, other=0.0).to(tl.float32)
        if HAS_DELTA:
            d = tl.load(d_ptr + base + start + lanes, mask=inside, other=0.0).to(tl.float32)
            db = tl.load(db_ptr + start + lanes, mask=inside, other=0.0).to(tl.float32)
            x = (x + d + db).to(x_ptr.dtype.element_ty).to(tl.float32)
        return x

    @triton.jit
    def _normalised_chunk(
        x_ptr, d_ptr, db_ptr, w_ptr, b_ptr, base, start, lanes, inside, mean, rstd,
        NORM: tl.constexpr, HAS_DELTA: tl.constexpr,
    ):  # fmt: skip
        """One chunk of the values to quantise: :func:`_row_chunk`, LayerNorm'd when ``NORM``."""
        y = _row_chunk(x_ptr, d_ptr, db_ptr, base, start, lanes, inside, HAS_DELTA)
        if NORM:
            w = tl.load(w_ptr + start + lanes, mask=inside, other=0.0).to(tl.float32)
            b = tl.load(b_ptr + start + lanes, mask=inside, other=0.0).to(tl.float32)
            y = (y - mean) * rstd * w + b
        return y

    @triton.jit
    def _quantize_normalised_rows_kernel(
        x_ptr, d_ptr, db_ptr, w_ptr, b_ptr, sum_ptr, out_ptr, scale_ptr, cols, eps,
        NORM: tl.constexpr, HAS_DELTA: tl.constexpr, CHUNK: tl.constexpr,
    ):  # fmt: skip
        """Row-wise e4m3 of ``x`` (NORM false) or of LayerNorm(x [+ delta + delta_bias]) (NORM true)."""
        base = tl.program_id(0).to(tl.int64) * cols
        lanes = tl.arange(0, CHUNK)
        mean = 0.0
        rstd = 1.0
        if NORM:  # one pass: chunk mean and squared deviations, merged across chunks (Chan et al.)
            count = 0.0
            m2 = 0.0
            for start in range(0, cols, CHUNK):
                inside = start + lanes < cols
                x = _row_chunk(x_ptr, d_ptr, db_ptr, base, start, lanes, inside, HAS_DELTA)
                if HAS_DELTA:
                    tl.store(sum_ptr + base + start + lanes, x.to(sum_ptr.dtype.element_ty), mask=inside)
                n = tl.minimum(cols - start, CHUNK).to(tl.float32)
                chunk_mean = tl.sum(x, axis=0) / n
                dev = tl.where(inside, x - chunk_mean, 0.0)
                chunk_m2 = tl.sum(dev * dev, axis=0)
                total = count + n
                step = chunk_mean - mean
                mean = mean + step * (n / total)
                m2 = m2 + chunk_m2 + step * step * (count * n / total)
                count = total
            rstd = 1.0 / tl.sqrt((m2 / count + eps).to(tl.float32))  # Inductor may pass eps as fp64
        peak = tl.zeros([CHUNK], dtype=tl.float32)
        for start in range(0, cols, CHUNK):
            inside = start + lanes < cols
            y = _normalised_chunk(
                x_ptr, d_ptr, db_ptr, w_ptr, b_ptr, base, start, lanes, inside, mean, rstd, NORM, HAS_DELTA
            )
            peak = tl.maximum(peak, tl.where(inside, tl.abs(y), 0.0))
        amax = tl.maximum(tl.max(peak, axis=0), _AMAX_FLOOR)
        inv = _FP8_MAX / amax
        for start in range(0, cols, CHUNK):
            inside = start + lanes < cols
            y = _normalised_chunk(
                x_ptr, d_ptr, db_ptr, w_ptr, b_ptr, base, start, lanes, inside, mean, rstd, NORM, HAS_DELTA
            )
            _e4m3_store(out_ptr, base + start + lanes, inside, y, inv)
        tl.store(scale_ptr + tl.program_id(0), amax / _FP8_MAX)

    @triton.jit
    def _resident_piece(x_ptr, d_ptr, db_ptr, base, start, SIZE: tl.constexpr, cols, HAS_DELTA: tl.constexpr):
        """One power-of-two piece of a resident row, from ``start`` (masked only where it overhangs)."""
        lanes = start + tl.arange(0, SIZE)
        inside = lanes < cols
        return _row_chunk(x_ptr, d_ptr, db_ptr, base, 0, lanes, inside, HAS_DELTA), lanes, inside

    @triton.jit
    def _quantize_resident_rows_kernel(
        x_ptr, d_ptr, db_ptr, w_ptr, b_ptr, sum_ptr, out_ptr, scale_ptr, cols, eps,
        NORM: tl.constexpr, HAS_DELTA: tl.constexpr, HEAD: tl.constexpr, TAIL: tl.constexpr,
    ):  # fmt: skip
        """:func:`_quantize_normalised_rows_kernel` with the row held in registers as two power-of-two
        pieces (:func:`resident_pieces`): one read, the statistics as two reductions over the resident
        row (mean, then squared deviations: exact)."""
        base = tl.program_id(0).to(tl.int64) * cols
        y, lanes, inside = _resident_piece(x_ptr, d_ptr, db_ptr, base, 0, HEAD, cols, HAS_DELTA)
        if HAS_DELTA:
            tl.store(sum_ptr + base + lanes, y.to(sum_ptr.dtype.element_ty), mask=inside)
        total = tl.sum(y, axis=0)
        if TAIL > 0:
            t, t_lanes, t_inside = _resident_piece(x_ptr, d_ptr, db_ptr, base, HEAD, TAIL, cols, HAS_DELTA)
            if HAS_DELTA:
                tl.store(sum_ptr + base + t_lanes, t.to(sum_ptr.dtype.element_ty), mask=t_inside)
            total += tl.sum(t, axis=0)
        if NORM:
            mean = total / cols
            y = tl.where(inside, y - mean, 0.0)
            squares = tl.sum(y * y, axis=0)
            if TAIL > 0:
                t = tl.where(t_inside, t - mean, 0.0)
                squares += tl.sum(t * t, axis=0)
            rstd = 1.0 / tl.sqrt((squares / cols + eps).to(tl.float32))
            w = tl.load(w_ptr + lanes, mask=inside, other=0.0).to(tl.float32)
            b = tl.load(b_ptr + lanes, mask=inside, other=0.0).to(tl.float32)
            y = y * rstd * w + b
            if TAIL > 0:
                w = tl.load(w_ptr + t_lanes, mask=t_inside, other=0.0).to(tl.float32)
                b = tl.load(b_ptr + t_lanes, mask=t_inside, other=0.0).to(tl.float32)
                t = t * rstd * w + b
        peak = tl.max(tl.where(inside, tl.abs(y), 0.0), axis=0)
        if TAIL > 0:
            peak = tl.maximum(peak, tl.max(tl.where(t_inside, tl.abs(t), 0.0), axis=0))
        amax = tl.maximum(peak, _AMAX_FLOOR)
        _e4m3_store(out_ptr, base + lanes, inside, y, _FP8_MAX / amax)
        if TAIL > 0:
            _e4m3_store(out_ptr, base + t_lanes, t_inside, t, _FP8_MAX / amax)
        tl.store(scale_ptr + tl.program_id(0), amax / _FP8_MAX)

    @triton.jit
    def _bias_gelu_resident_kernel(
        x_ptr, b_ptr, out_ptr, scale_ptr, cols, HEAD: tl.constexpr, TAIL: tl.constexpr, ERF: tl.constexpr
    ):
        """:func:`_bias_gelu_rows_kernel` with the row (plus bias) held in registers as two power-of-two
        pieces: one read of the row, GELU evaluated once per value (twice only in the exact pass)."""
        base = tl.program_id(0).to(tl.int64) * cols
        lanes = tl.arange(0, HEAD)
        inside = lanes < cols
        z = tl.load(x_ptr + base + lanes, mask=inside, other=0.0).to(tl.float32)
        z += tl.load(b_ptr + lanes, mask=inside, other=0.0).to(tl.float32)
        top = tl.max(tl.where(inside, z, float("-inf")), axis=0)
        if TAIL > 0:
            t_lanes = HEAD + tl.arange(0, TAIL)
            t_inside = t_lanes < cols
            t = tl.load(x_ptr + base + t_lanes, mask=t_inside, other=0.0).to(tl.float32)
            t += tl.load(b_ptr + t_lanes, mask=t_inside, other=0.0).to(tl.float32)
            top = tl.maximum(top, tl.max(tl.where(t_inside, t, float("-inf")), axis=0))
        amax = _gelu(top, ERF)
        if amax < _GELU_NEGATIVE_BOUND:  # the negative lobe may hold the amax: the exact pass
            amax = tl.max(tl.where(inside, tl.abs(_gelu(z, ERF)), 0.0), axis=0)
            if TAIL > 0:
                amax = tl.maximum(amax, tl.max(tl.where(t_inside, tl.abs(_gelu(t, ERF)), 0.0), axis=0))
        amax = tl.maximum(amax, _AMAX_FLOOR)
        inv = _FP8_MAX / amax
        _e4m3_store(out_ptr, base + lanes, inside, _gelu(z, ERF), inv)
        if TAIL > 0:
            _e4m3_store(out_ptr, base + t_lanes, t_inside, _gelu(t, ERF), inv)
        tl.store(scale_ptr + tl.program_id(0), amax / _FP8_MAX)


# The engines' launches: fc1's 10,240-wide rows in chunks of 2048 (5) with GELU's tanh form (faster in
# the layers at the same parity), the 2,560-wide ones in chunks of 512 (5; the resident row is faster
# alone but slower in the layers). Measurement log, 2026-12-03, eighth session.
ROW_LAUNCH: Mapping[int, RowLaunch] = MappingProxyType(
    {
        BIAS_GELU: RowLaunch(chunk=2048, erf=GELU_TANH),
        LAYERNORM: RowLaunch(chunk=1024),
        IDENTITY: RowLaunch(chunk=1024),
    }
)


MODE_NAMES = {IDENTITY: "identity", LAYERNORM: "layernorm", BIAS_GELU: "bias_gelu"}


def row_launches(overrides: Mapping[int, RowLaunch] | None = None) -> dict[int, RowLaunch]:
    """:data:`ROW_LAUNCH` with ``overrides`` in place (a diagnostic's candidates), one per mode."""
    unknown = set(overrides or ()) - set(MODES)
    if unknown:
        raise ValueError(f"unknown row kernel mode(s) {sorted(unknown)}")
    return {**ROW_LAUNCH, **(overrides or {})}


_in_effect: dict[int, RowLaunch] | None = None  # set only inside launches_in_effect()


def current_launches() -> Mapping[int, RowLaunch]:
    """The launches the row ops use when traced now: :data:`ROW_LAUNCH` outside
    :func:`launches_in_effect`."""
    return _in_effect if _in_effect is not None else ROW_LAUNCH


@contextlib.contextmanager
def launches_in_effect(overrides: Mapping[int, RowLaunch]) -> Iterator[None]:
    """Trace the row ops with ``overrides`` in place of :data:`ROW_LAUNCH`, for diagnostics.

    The registered ops take no launch argument: with one (an ``int[]`` or four ints), AOTInductor's C++
    wrapper of torch 2.11 failed to compile the fp8 ESM-2 engine (``'int_array_178' was not declared in
    this scope``; measurement log, eighth session). So a launch is read when an op is traced, which no
    compiler cache key sees: whoever compiles under overrides must compile afresh (``esm2_variants.py``
    turns the FX graph and AOTAutograd caches off), or a cached graph runs another launch's kernels.
    """
    global _in_effect
    saved, _in_effect = _in_effect, row_launches(overrides)
    try:
        yield
    finally:
        _in_effect = saved


def row_launch_facts() -> dict[str, dict[str, Any]]:
    """The launches in effect by mode name, for an engine's build facts."""
    return {MODE_NAMES[mode]: dataclasses.asdict(launch) for mode, launch in current_launches().items()}


def _launch_bias_gelu_rows(
    x: torch.Tensor, bias: torch.Tensor, launch: RowLaunch | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run :func:`_bias_gelu_rows_kernel` (or, for a resident launch, :func:`_bias_gelu_resident_kernel`)
    on ``x``'s rows; returns (e4m3, scales)."""
    from torch.library import wrap_triton

    launch = launch or current_launches()[BIAS_GELU]
    cols = x.shape[-1]
    rows = x.reshape(-1, cols).contiguous()
    out = torch.empty(rows.shape, device=x.device, dtype=FP8_DTYPE)
    scale = torch.empty((rows.shape[0], 1), device=x.device, dtype=torch.float32)
    if launch.resident:
        head, tail = resident_pieces(cols)
        wrap_triton(_bias_gelu_resident_kernel)[(rows.shape[0],)](
            rows, bias, out, scale, cols, HEAD=head, TAIL=tail, ERF=launch.erf, num_warps=launch.num_warps
        )
    else:
        wrap_triton(_bias_gelu_rows_kernel)[(rows.shape[0],)](
            rows, bias, out, scale, cols,
            CHUNK=chunk_size(cols, launch.chunk), ERF=launch.erf, num_warps=launch.num_warps,
        )  # fmt: skip
    return out, scale


def _launch_quantize_normalised_rows(
    x: torch.Tensor,
    delta: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    launch: RowLaunch | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run :func:`_quantize_normalised_rows_kernel` on ``x``'s rows; returns (sum or x, e4m3, scales)."""
    from torch.library import wrap_triton

    launch = launch or current_launches()[LAYERNORM if weight is not None else IDENTITY]
    cols = x.shape[-1]
    rows = x.reshape(-1, cols).contiguous()
    norm, has_delta = weight is not None, delta is not None
    assert norm or not has_delta, "the kernel writes the residual sum in its LayerNorm statistics pass"
    total = torch.empty_like(rows) if has_delta else rows
    out = torch.empty(rows.shape, device=x.device, dtype=FP8_DTYPE)
    scale = torch.empty((rows.shape[0], 1), device=x.device, dtype=torch.float32)
    d = delta.reshape(-1, cols).contiguous() if delta is not None else rows
    args = (
        rows, d, delta_bias if delta_bias is not None else rows, weight if norm else rows,
        bias if bias is not None else rows, total, out, scale, cols, eps,
    )  # fmt: skip
    if launch.resident:
        head, tail = resident_pieces(cols)
        wrap_triton(_quantize_resident_rows_kernel)[(rows.shape[0],)](
            *args, NORM=norm, HAS_DELTA=has_delta, HEAD=head, TAIL=tail, num_warps=launch.num_warps
        )
    else:
        wrap_triton(_quantize_normalised_rows_kernel)[(rows.shape[0],)](
            *args, NORM=norm, HAS_DELTA=has_delta, CHUNK=chunk_size(cols, launch.chunk),
            num_warps=launch.num_warps,
        )  # fmt: skip
    return total.view(x.shape), out, scale


@functools.cache
def _registered_ops() -> tuple[Any, ...]:
    """Register the ``virnucpro::`` ops once (the cache keeps their definitions alive)."""
    from torch.library import triton_op

    @triton_op("virnucpro::bias_gelu_rows", mutates_args={})
    def bias_gelu_rows_op(x: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _launch_bias_gelu_rows(x, bias)

    @triton_op("virnucpro::quantize_rows", mutates_args={})
    def quantize_rows_op(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, out, scale = _launch_quantize_normalised_rows(x, None, None, None, None, 0.0)
        return out, scale

    @triton_op("virnucpro::layernorm_rows", mutates_args={})
    def layernorm_rows_op(
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        eps: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        _, out, scale = _launch_quantize_normalised_rows(x, None, None, weight, bias, eps)
        return out, scale

    @triton_op("virnucpro::add_layernorm_rows", mutates_args={})
    def add_layernorm_rows_op(
        x: torch.Tensor,
        delta: torch.Tensor,
        delta_bias: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        eps: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return _launch_quantize_normalised_rows(x, delta, delta_bias, weight, bias, eps)

    return bias_gelu_rows_op, quantize_rows_op, layernorm_rows_op, add_layernorm_rows_op


# Modes the engines run as Triton kernels by default: all three, each measured faster at parity than
# Inductor's fusion of the references (measurement log, 2026-12-02, second and third sessions).
TRITON_MODES = frozenset(MODES)


def _runs_kernel(x: torch.Tensor, mode: int, kernels: frozenset[int]) -> bool:
    return mode in kernels and x.is_cuda and triton is not None


def register_kernels() -> None:
    """Register the ``virnucpro::`` row ops (idempotent; nothing without triton).

    Call it before anything traces the ops (the fp8 layers do, when built): Dynamo cannot trace the
    registration, so reaching it from a compiled region breaks the graph at every row op (and the
    pieces after each break are recompiled for the first shape seen). Traced code then calls the
    registered ops through ``torch.ops.virnucpro``, which Dynamo and ``torch.export`` both trace.
    """
    if triton is not None:
        _registered_ops()


def _row_ops() -> Any:
    """``torch.ops.virnucpro``, registered first unless a compiler is tracing (:func:`register_kernels`)."""
    if not torch.compiler.is_compiling():
        register_kernels()
    return torch.ops.virnucpro


def quantize_rows(
    x: torch.Tensor,
    mode: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 0.0,
    kernels: frozenset[int] = TRITON_MODES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`quantize_rows_reference`; on CUDA, a mode of ``kernels`` runs its fused Triton kernel,
    launched as :func:`current_launches` says (off CUDA, GELU takes the form that launch computes)."""
    if not _runs_kernel(x, mode, kernels):
        gelu_tanh = current_launches()[BIAS_GELU].erf == GELU_TANH
        return quantize_rows_reference(x, mode, weight, bias, eps, gelu_tanh=gelu_tanh)
    if mode == BIAS_GELU:
        assert bias is not None
        return _row_ops().bias_gelu_rows(x, bias)
    if mode == LAYERNORM:
        assert weight is not None and bias is not None
        return _row_ops().layernorm_rows(x, weight, bias, float(eps))
    return _row_ops().quantize_rows(x)


def add_layernorm_rows(
    x: torch.Tensor,
    delta: torch.Tensor,
    delta_bias: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
    kernels: frozenset[int] = TRITON_MODES,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`add_layernorm_rows_reference`; one Triton kernel on CUDA when LAYERNORM is in ``kernels``."""
    if not _runs_kernel(x, LAYERNORM, kernels):
        return add_layernorm_rows_reference(x, delta, delta_bias, weight, bias, eps)
    return _row_ops().add_layernorm_rows(x, delta, delta_bias, weight, bias, float(eps))
