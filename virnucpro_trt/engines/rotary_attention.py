"""ESM-2's attention as one Triton kernel: rotary, key padding and softmax(q k^T) v, read straight from
the fused qkv projection and written straight into out_proj's input layout.

Why: with SDPA, an fp8 ESM-2 3B engine on the H200 spent a large share of its forward in the
memory-efficient attention kernel and the kernels that rotate q and k and lay q, k, v out as
[B, H, T, d] for it (profiles: measurement log, 2026-12-02, third session, and 2026-12-03, tenth
session), for ~1% of the FLOPs: at 168 tokens per protein the cost is moving q, k, v and the
[B, 1, T, T] mask bias SDPA takes. This kernel reads each head's q, k and v from the projection
output [B, T, 3, H, d], rotates q and k by halves as it loads them (each value and half of each rotary
table read once), takes the key padding as one byte per key, and writes [B, T, H * d]: no layout pass,
no mask bias, no rotary pass.

Same function as :func:`virnucpro_trt.models.esm2.sdpa_rotary_attention` with a boolean key mask: q scaled
and rounded to the input dtype, rotary in fp32 rounded to the input dtype, scores and softmax in fp32
(online, FlashAttention's rescaling), probabilities rounded to the input dtype for the second product,
as FlashAttention-style kernels do. A row whose keys are all padded gets the mean of v where SDPA gives
NaN (no real input has one: every row holds its BOS token).

Applies on CUDA to bf16/fp16 projections with a power-of-two head size of 16..256; otherwise (CPU
engines, tests on tiny models) :func:`rotary_attention` runs the SDPA path, so a build may ask for it
on any device. Registered with ``torch.library.triton_op``, so ``torch.export`` and AOTInductor compile
it into the engine, like the fp8 row kernels (:mod:`~virnucpro_trt.engines.fp8_quantize`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from virnucpro_trt.models.esm2 import self_attention

try:  # CUDA builds of torch bring triton; the kernel is only defined (and used) where it exists
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU-only installs
    triton = None

KERNEL_DTYPES = (torch.bfloat16, torch.float16)
MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 256  # tl.dot's smallest K; registers bound the largest
MASKED_SCORE = -1.0e30  # a padded key's score (log2 units): finite, so no inf - inf in the rescaling


@dataclass(frozen=True)
class AttentionLaunch:
    """Queries and keys per block (powers of two >= 16), warps and pipeline stages per program.

    :data:`ATTENTION_LAUNCH` is what engines build with: one stage, because a row's keys are few (168
    at 500 bp: three to six blocks) and a software pipeline then only costs registers and shared memory;
    64 queries against 32 keys at a time was the fastest of the launches tried on the H200, at 500 bp
    and on both read-length mixes (measurement log, 2026-12-03, twelfth session).
    ``benchmarks/diagnostics/attention_kernels.py --kernels rotary-triton:MxNxWxS`` times others
    (:func:`launch_in_effect`).
    """

    block_m: int = 64
    block_n: int = 32
    num_warps: int = 4
    num_stages: int = 1


ATTENTION_LAUNCH = AttentionLaunch()
_in_effect: AttentionLaunch | None = None


def current_launch() -> AttentionLaunch:
    """The launch the op uses when traced now (:data:`ATTENTION_LAUNCH` outside :func:`launch_in_effect`)."""
    return _in_effect if _in_effect is not None else ATTENTION_LAUNCH


@contextlib.contextmanager
def launch_in_effect(launch: AttentionLaunch) -> Iterator[None]:
    """Trace or run the op with ``launch`` instead of :data:`ATTENTION_LAUNCH` (diagnostics). As for the
    row kernels, no compiler cache key sees it: compile afresh under it."""
    global _in_effect
    saved, _in_effect = _in_effect, launch
    try:
        yield
    finally:
        _in_effect = saved


def launch_facts() -> dict[str, int]:
    """The launch in effect, for an engine's build facts."""
    return dataclasses.asdict(current_launch())


def kernel_unavailable_reason(device: torch.device, dtype: torch.dtype, head_dim: int) -> str | None:
    """Why :func:`rotary_attention` would not run the Triton kernel for a projection of ``dtype`` on
    ``device`` with heads of ``head_dim`` (None when it runs it): the one statement of the kernel's
    conditions, for the build's choice and the diagnostics' messages alike."""
    if triton is None:
        return "the attention kernel is a Triton kernel, and triton is not importable"
    if device.type != "cuda":
        return f"the attention kernel needs a CUDA device, not {device.type}"
    if dtype not in KERNEL_DTYPES:
        takes = " or ".join(str(d).removeprefix("torch.") for d in KERNEL_DTYPES)
        return f"the attention kernel takes {takes} projections, not {str(dtype).removeprefix('torch.')}"
    if head_dim & (head_dim - 1) or not MIN_HEAD_DIM <= head_dim <= MAX_HEAD_DIM:
        return (
            f"the attention kernel takes power-of-two heads of {MIN_HEAD_DIM} to {MAX_HEAD_DIM}, "
            f"not heads of {head_dim}"
        )
    return None


def kernel_applies_to(device: torch.device, dtype: torch.dtype, head_dim: int) -> bool:
    """Whether :func:`rotary_attention` runs the Triton kernel (:func:`kernel_unavailable_reason`)."""
    return kernel_unavailable_reason(device, dtype, head_dim) is None


if triton is not None:
    _LOG2E = tl.constexpr(1.4426950408889634)
    _MASKED = tl.constexpr(MASKED_SCORE)

    @triton.jit
    def _with_bias(x, bias_ptr, cols, HAS_BIAS: tl.constexpr):
        """``x`` plus the projection's bias at ``cols``, summed in fp32 and rounded to x's dtype (what the
        model's bias add after the GEMM computes)."""
        if HAS_BIAS:
            x = (x.to(tl.float32) + tl.load(bias_ptr + cols)[None, :].to(tl.float32)).to(x.dtype)
        return x

    @triton.jit
    def _rotated(
        base, bias_ptr, rows, inside, cos_ptr, sin_ptr, scaling,
        HEAD_DIM: tl.constexpr, SCALE: tl.constexpr, HAS_BIAS: tl.constexpr,
    ):  # fmt: skip
        """Rows of one head of q or k [BLOCK, d], rotated: the bias added first when ``HAS_BIAS``,
        ``scaling`` applied and rounded when ``SCALE``, then rotate-half rotary in fp32 (halves
        ``x1 cos - x2 sin`` and ``x2 cos + x1 sin``), rounded to the input dtype.

        Each value is loaded once, and only the tables' first half is read: their halves are equal (the
        angles are ``cat(freqs, freqs)``, ``models.esm2``). The two rotated halves come back interleaved
        (column 2c from the first, 2c + 1 from the second): q and k both so, q . k is the same sum.
        """
        half: tl.constexpr = HEAD_DIM // 2
        cols = tl.arange(0, half)
        x1 = tl.load(base + cols[None, :], mask=inside[:, None], other=0.0)
        x2 = tl.load(base + half + cols[None, :], mask=inside[:, None], other=0.0)
        x1 = _with_bias(x1, bias_ptr, cols, HAS_BIAS)
        x2 = _with_bias(x2, bias_ptr, half + cols, HAS_BIAS)
        dtype = x1.dtype
        if SCALE:  # the model scales q in its dtype before rotary
            x1 = (x1.to(tl.float32) * scaling).to(dtype)
            x2 = (x2.to(tl.float32) * scaling).to(dtype)
        table = rows[:, None] * HEAD_DIM + cols[None, :]
        cos = tl.load(cos_ptr + table, mask=inside[:, None], other=0.0)
        sin = tl.load(sin_ptr + table, mask=inside[:, None], other=0.0)
        a, b = x1.to(tl.float32), x2.to(tl.float32)
        first, second = (a * cos - b * sin).to(dtype), (b * cos + a * sin).to(dtype)
        return tl.reshape(tl.join(first, second), (first.shape[0], HEAD_DIM))

    @triton.jit
    def _rotary_attention_kernel(
        qkv_ptr, bias_ptr, cos_ptr, sin_ptr, real_ptr, out_ptr, length, heads, scaling,
        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_BIAS: tl.constexpr,
    ):  # fmt: skip
        """One program: BLOCK_M queries of one (row, head) against all of that row's keys; ``bias_ptr``
        (when ``HAS_BIAS``) is the projection's bias [3, H, d], added as q, k and v are loaded."""
        row = tl.program_id(1) // heads
        head = tl.program_id(1) % heads
        width = heads * HEAD_DIM  # one of q, k, v per token
        first = row.to(tl.int64) * length  # the row's first token
        queries = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        q_inside = queries < length
        q_base = qkv_ptr + (first + queries)[:, None] * (3 * width) + head * HEAD_DIM
        head_bias = bias_ptr + head * HEAD_DIM  # q's bias; k's and v's one and two widths on
        q = _rotated(
            q_base, head_bias, queries, q_inside, cos_ptr, sin_ptr, scaling, HEAD_DIM, True, HAS_BIAS
        )
        cols = tl.arange(0, HEAD_DIM)
        top = tl.full([BLOCK_M], _MASKED, dtype=tl.float32)
        total = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
        for start in range(0, length, BLOCK_N):
            keys = start + tl.arange(0, BLOCK_N)
            k_inside = keys < length
            real = tl.load(real_ptr + first + keys, mask=k_inside, other=0) != 0
            k_rows = (first + keys)[:, None] * (3 * width) + head * HEAD_DIM
            k = _rotated(
                qkv_ptr + k_rows + width, head_bias + width, keys, k_inside, cos_ptr, sin_ptr, scaling,
                HEAD_DIM, False, HAS_BIAS,
            )  # fmt: skip
            v = tl.load(qkv_ptr + k_rows + 2 * width + cols[None, :], mask=k_inside[:, None], other=0.0)
            v = _with_bias(v, head_bias + 2 * width, cols, HAS_BIAS)
            scores = tl.dot(q, tl.trans(k)) * _LOG2E
            scores = tl.where(real[None, :], scores, _MASKED)
            new_top = tl.maximum(top, tl.max(scores, axis=1))
            rescale = tl.math.exp2(top - new_top)
            weights = tl.math.exp2(scores - new_top[:, None])
            total = total * rescale + tl.sum(weights, axis=1)
            acc = acc * rescale[:, None] + tl.dot(weights.to(v.dtype), v)
            top = new_top
        out = acc / total[:, None]
        out_rows = (first + queries)[:, None] * width + head * HEAD_DIM
        tl.store(out_ptr + out_rows + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=q_inside[:, None])


def launch_rotary_attention(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    real: torch.Tensor,
    scaling: float,
    launch: AttentionLaunch | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run :func:`_rotary_attention_kernel`: ``qkv`` [B, T, 3, H, d], ``cos``/``sin`` [T, d] fp32,
    ``real`` [B, T] (nonzero: a key to attend to), ``bias`` [3 * H * d] the projection's bias not yet
    added to ``qkv`` (or None) -> [B, T, H * d] in qkv's dtype."""
    from torch.library import wrap_triton

    launch = launch or current_launch()
    batch, length, _, heads, head_dim = qkv.shape
    qkv = qkv.contiguous()
    out = torch.empty((batch, length, heads * head_dim), device=qkv.device, dtype=qkv.dtype)
    grid = (triton.cdiv(length, launch.block_m), batch * heads)
    has_bias = bias is not None
    bias_arg = bias.to(qkv.dtype).contiguous() if bias is not None else qkv  # a dummy pointer when none
    wrap_triton(_rotary_attention_kernel)[grid](
        qkv, bias_arg, cos.float().contiguous(), sin.float().contiguous(), real.to(torch.uint8).contiguous(),
        out, length, heads, scaling, HEAD_DIM=head_dim, BLOCK_M=launch.block_m, BLOCK_N=launch.block_n,
        HAS_BIAS=has_bias, num_warps=launch.num_warps, num_stages=launch.num_stages,
    )  # fmt: skip
    return out


@functools.cache
def _registered_op() -> Any:
    """Register ``virnucpro::rotary_attention`` once (the cache keeps the definition alive)."""
    from torch.library import triton_op

    @triton_op("virnucpro::rotary_attention", mutates_args={})
    def rotary_attention_op(
        qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, real: torch.Tensor, scaling: float
    ) -> torch.Tensor:
        return launch_rotary_attention(qkv, cos, sin, real, scaling)

    @triton_op("virnucpro::rotary_attention_bias", mutates_args={})
    def rotary_attention_bias_op(
        qkv: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        real: torch.Tensor,
        scaling: float,
        bias: torch.Tensor,
    ) -> torch.Tensor:
        return launch_rotary_attention(qkv, cos, sin, real, scaling, bias=bias)

    return rotary_attention_op, rotary_attention_bias_op


def register_kernel() -> None:
    """Register the op (idempotent; nothing without triton). Call it before a compiler traces a model
    that uses :func:`rotary_attention` (Dynamo cannot trace the registration)."""
    if triton is not None:
        _registered_op()


def rotary_attention(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    key_mask: torch.Tensor,
    scaling: float,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """ESM-2's attention (an :data:`~virnucpro_trt.models.esm2.AttentionKernel`: a boolean key mask
    [B, 1, 1, T], and the projection's ``bias`` when it is not yet in ``qkv``): the Triton kernel where
    :func:`kernel_applies_to`, SDPA elsewhere."""
    if not kernel_applies_to(qkv.device, qkv.dtype, qkv.shape[-1]):
        return self_attention(qkv, cos, sin, key_mask, scaling, qkv_bias=bias)  # SDPA, the bias added first
    if not torch.compiler.is_compiling():
        register_kernel()
    batch, length = qkv.shape[:2]
    real = key_mask.reshape(batch, length)
    if bias is None:
        return torch.ops.virnucpro.rotary_attention(qkv, cos, sin, real, float(scaling))
    return torch.ops.virnucpro.rotary_attention_bias(qkv, cos, sin, real, float(scaling), bias)
