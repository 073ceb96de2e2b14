"""ESM-2 3B's attention kernel against variants of it, on the batches a run makes: where does its time go?

The project's kernel (``engines.rotary_attention``, the engines' launch) runs at ~1/3 of the bound set by
reading q, k, v and writing the output once. Each of a row's query-block programs rotates every key of
that row again (three times at 168 tokens), and the rotated halves are joined for one dot. Variants, all
with the projection's bias in the kernel (as the fp8 engines run it) unless named ``-nobias``:

* ``committed`` — the kernel as the engines launch it (``-nobias``: without the bias, what that costs);
* ``split:MxNxWxS`` — q . k as two dots of the rotated halves (no join into one [BLOCK, d] tile);
* ``split-norotk`` — the same without rotating the keys (wrong results: what the keys' rotation costs);
* ``once:MxNxWxSrR`` — one program per (row, head): the keys rotated once into a scratch buffer (R per
  step), then the query blocks in turn against them.

Each is the median of 30 calls after 3 warm-ups (``bench.timing.call_times_ms``), checked against the
committed kernel and the model's fp32 attention on the real tokens. Needs CUDA and triton; on the CPU
under ``TRITON_INTERPRET=1`` it checks the variants on a tiny fp16 batch instead (the interpreter
mishandles bf16).

    python3 benchmarks/diagnostics/attention_kernel_variants.py --json variants.json
    TRITON_INTERPRET=1 python3 benchmarks/diagnostics/attention_kernel_variants.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
import triton
import triton.language as tl

from virnucpro_trt.engines import rotary_attention as ra

_LOG2E = tl.constexpr(1.4426950408889634)
_MASKED = tl.constexpr(-1.0e30)


@triton.jit
def _online_step(scores, real, v, top, total, acc):
    """One key block of FlashAttention's online softmax, as the committed kernel computes it: ``scores``
    (log2 units) of the real keys, padded ones masked; returns the new running max, sum and output."""
    scores = tl.where(real[None, :], scores, _MASKED)
    new_top = tl.maximum(top, tl.max(scores, axis=1))
    rescale = tl.math.exp2(top - new_top)
    weights = tl.math.exp2(scores - new_top[:, None])
    total = total * rescale + tl.sum(weights, axis=1)
    acc = acc * rescale[:, None] + tl.dot(weights.to(v.dtype), v)
    return new_top, total, acc


@triton.jit
def _once_kernel(
    qkv_ptr, bias_ptr, cos_ptr, sin_ptr, real_ptr, out_ptr, keys_ptr, length, heads, scaling,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_BIAS: tl.constexpr,
    ROT_BLOCK: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    row = pid // heads
    head = pid % heads
    width = heads * HEAD_DIM
    first = row.to(tl.int64) * length
    head_bias = bias_ptr + head * HEAD_DIM
    scratch = keys_ptr + pid.to(tl.int64) * length * HEAD_DIM
    cols = tl.arange(0, HEAD_DIM)
    for start in range(0, length, ROT_BLOCK):
        keys = start + tl.arange(0, ROT_BLOCK)
        inside = keys < length
        k_rows = (first + keys)[:, None] * (3 * width) + head * HEAD_DIM
        k = ra._rotated(
            qkv_ptr + k_rows + width, head_bias + width, keys, inside, cos_ptr, sin_ptr, scaling,
            HEAD_DIM, False, HAS_BIAS,
        )  # fmt: skip
        tl.store(scratch + keys[:, None] * HEAD_DIM + cols[None, :], k, mask=inside[:, None])
    tl.debug_barrier()
    for q_start in range(0, length, BLOCK_M):
        queries = q_start + tl.arange(0, BLOCK_M)
        q_inside = queries < length
        q_base = qkv_ptr + (first + queries)[:, None] * (3 * width) + head * HEAD_DIM
        q = ra._rotated(
            q_base, head_bias, queries, q_inside, cos_ptr, sin_ptr, scaling, HEAD_DIM, True, HAS_BIAS
        )
        top = tl.full([BLOCK_M], _MASKED, dtype=tl.float32)
        total = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
        for start in range(0, length, BLOCK_N):
            keys = start + tl.arange(0, BLOCK_N)
            k_inside = keys < length
            real = tl.load(real_ptr + first + keys, mask=k_inside, other=0) != 0
            k = tl.load(scratch + keys[:, None] * HEAD_DIM + cols[None, :], mask=k_inside[:, None], other=0.0)
            k_rows = (first + keys)[:, None] * (3 * width) + head * HEAD_DIM
            v = tl.load(qkv_ptr + k_rows + 2 * width + cols[None, :], mask=k_inside[:, None], other=0.0)
            v = ra._with_bias(v, head_bias + 2 * width, cols, HAS_BIAS)
            scores = tl.dot(q, tl.trans(k)) * _LOG2E
            top, total, acc = _online_step(scores, real, v, top, total, acc)
        out = acc / total[:, None]
        out_rows = (first + queries)[:, None] * width + head * HEAD_DIM
        tl.store(out_ptr + out_rows + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=q_inside[:, None])


@triton.jit
def _halves(
    base, bias_ptr, rows, inside, cos_ptr, sin_ptr, scaling,
    HEAD_DIM: tl.constexpr, SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, ROTATE: tl.constexpr = True,
):  # fmt: skip
    half: tl.constexpr = HEAD_DIM // 2
    cols = tl.arange(0, half)
    x1 = tl.load(base + cols[None, :], mask=inside[:, None], other=0.0)
    x2 = tl.load(base + half + cols[None, :], mask=inside[:, None], other=0.0)
    x1 = ra._with_bias(x1, bias_ptr, cols, HAS_BIAS)
    x2 = ra._with_bias(x2, bias_ptr, half + cols, HAS_BIAS)
    dtype = x1.dtype
    if SCALE:
        x1 = (x1.to(tl.float32) * scaling).to(dtype)
        x2 = (x2.to(tl.float32) * scaling).to(dtype)
    if ROTATE:
        table = rows[:, None] * HEAD_DIM + cols[None, :]
        cos = tl.load(cos_ptr + table, mask=inside[:, None], other=0.0)
        sin = tl.load(sin_ptr + table, mask=inside[:, None], other=0.0)
        a, b = x1.to(tl.float32), x2.to(tl.float32)
        x1, x2 = (a * cos - b * sin).to(dtype), (b * cos + a * sin).to(dtype)
    return x1, x2


@triton.jit
def _split_kernel(
    qkv_ptr, bias_ptr, cos_ptr, sin_ptr, real_ptr, out_ptr, length, heads, scaling,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_BIAS: tl.constexpr,
    ROTATE_K: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(1) // heads
    head = tl.program_id(1) % heads
    width = heads * HEAD_DIM
    first = row.to(tl.int64) * length
    queries = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    q_inside = queries < length
    q_base = qkv_ptr + (first + queries)[:, None] * (3 * width) + head * HEAD_DIM
    head_bias = bias_ptr + head * HEAD_DIM
    q1, q2 = _halves(
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
        k1, k2 = _halves(
            qkv_ptr + k_rows + width, head_bias + width, keys, k_inside, cos_ptr, sin_ptr, scaling,
            HEAD_DIM, False, HAS_BIAS, ROTATE_K,
        )  # fmt: skip
        v = tl.load(qkv_ptr + k_rows + 2 * width + cols[None, :], mask=k_inside[:, None], other=0.0)
        v = ra._with_bias(v, head_bias + 2 * width, cols, HAS_BIAS)
        scores = tl.dot(q1, tl.trans(k1), acc=tl.dot(q2, tl.trans(k2))) * _LOG2E
        top, total, acc = _online_step(scores, real, v, top, total, acc)
    out = acc / total[:, None]
    out_rows = (first + queries)[:, None] * width + head * HEAD_DIM
    tl.store(out_ptr + out_rows + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=q_inside[:, None])


def _launch(kernel, grid, qkv, bias, cos, sin, real, scratch, scaling, warps, stages, **constexprs):
    """Run one of the kernels on ``qkv`` [B, T, 3, H, d] -> [B, T, H * d] (``scratch``: the keys' buffer
    of the ``once`` kernel, else None)."""
    batch, length, _, heads, head_dim = qkv.shape
    out = torch.empty((batch, length, heads * head_dim), device=qkv.device, dtype=qkv.dtype)
    tables = cos.float().contiguous(), sin.float().contiguous(), real.to(torch.uint8).contiguous()
    buffers = (out,) if scratch is None else (out, scratch)
    kernel[grid](
        qkv, bias, *tables, *buffers, length, heads, scaling, HEAD_DIM=head_dim, num_warps=warps,
        num_stages=stages, **constexprs,
    )  # fmt: skip
    return out


def split(qkv, cos, sin, real, scaling, bias, m=64, n=32, warps=4, stages=1, has_bias=True, rotate_k=True):
    grid = (triton.cdiv(qkv.shape[1], m), qkv.shape[0] * qkv.shape[3])
    return _launch(
        _split_kernel, grid, qkv, bias, cos, sin, real, None, scaling, warps, stages, BLOCK_M=m, BLOCK_N=n,
        HAS_BIAS=has_bias, ROTATE_K=rotate_k,
    )  # fmt: skip


def once(qkv, cos, sin, real, scaling, bias, m=64, n=32, warps=4, stages=1, rot=32):
    batch, length, _, heads, head_dim = qkv.shape
    scratch = torch.empty((batch * heads, length, head_dim), device=qkv.device, dtype=qkv.dtype)
    return _launch(
        _once_kernel, (batch * heads,), qkv, bias, cos, sin, real, scratch, scaling, warps, stages,
        BLOCK_M=m, BLOCK_N=n, HAS_BIAS=True, ROT_BLOCK=rot,
    )  # fmt: skip


def committed(qkv, cos, sin, real, scaling, bias, has_bias=True):
    launch = ra.ATTENTION_LAUNCH
    grid = (triton.cdiv(qkv.shape[1], launch.block_m), qkv.shape[0] * qkv.shape[3])
    return _launch(
        ra._rotary_attention_kernel, grid, qkv, bias, cos, sin, real, None, scaling, launch.num_warps,
        launch.num_stages, BLOCK_M=launch.block_m, BLOCK_N=launch.block_n, HAS_BIAS=has_bias,
    )  # fmt: skip


def variants(args: tuple, small: bool) -> dict:
    """The calls to time, by name (see the module's docstring)."""
    chosen = {
        "committed": lambda: committed(*args),
        "committed-nobias": lambda: committed(*args, has_bias=False),
    }
    split_launches = [(64, 32, 4, 1)] if small else [
        (64, 32, 4, 1), (64, 64, 4, 1), (64, 32, 4, 2), (64, 64, 4, 2), (128, 32, 4, 1), (128, 64, 8, 1),
        (64, 128, 4, 1), (64, 128, 8, 1), (32, 32, 2, 1), (64, 16, 4, 1)]  # fmt: skip
    for m, n, w, st in split_launches:
        chosen[f"split:{m}x{n}x{w}x{st}"] = lambda m=m, n=n, w=w, st=st: split(*args, m, n, w, st)
    chosen["split-nobias:64x32x4x1"] = lambda: split(*args, has_bias=False)
    chosen["split-norotk:64x32x4x1"] = lambda: split(*args, rotate_k=False)
    once_launches = [(64, 64, 4, 1, 64)] if small else [
        (64, 32, 4, 1, 32), (64, 32, 4, 1, 64), (64, 64, 4, 1, 64), (64, 32, 4, 2, 32),
        (128, 32, 4, 1, 64), (128, 64, 8, 1, 64), (32, 32, 2, 1, 32), (64, 32, 8, 1, 64)]  # fmt: skip
    for m, n, w, st, r in once_launches:
        chosen[f"once:{m}x{n}x{w}x{st}r{r}"] = lambda m=m, n=n, w=w, st=st, r=r: once(*args, m, n, w, st, r)
    return chosen


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # the inputs of attention_kernels.py
    from attention_kernels import make_inputs, median_batch

    from virnucpro_trt.bench.hardware import script_environment
    from virnucpro_trt.bench.report import write_json
    from virnucpro_trt.bench.timing import call_times_ms
    from virnucpro_trt.models.esm2 import self_attention

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mixes", default="fixed,mixed,illumina")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    small = device.type == "cpu"
    results = []
    for mix in ["fixed"] if small else args.mixes.split(","):
        lengths = np.array([37, 20, 5, 33]) if small else median_batch(mix, 6000, 32768)
        heads = 2 if small else 40
        x = make_inputs(lengths, heads, 64, device)
        qkv = x["qkv"].half() if small else x["qkv"]
        bias = (torch.randn(qkv.shape[2] * heads * 64, device=device) * 0.5).to(qkv.dtype)
        scaling = 64**-0.5
        call_args = (qkv, x["cos"], x["sin"], x["real"], scaling, bias)
        reference = committed(*call_args)
        fp32 = self_attention(qkv.float(), x["cos"], x["sin"], x["mask"], scaling, qkv_bias=bias.float())
        real = x["real"][:, :, None]
        entry: dict = {"mix": mix, "batch": len(lengths), "longest": int(lengths.max()), "rows": []}
        for name, call in variants(call_args, small).items():
            out = call()
            exact = "no" not in name.split(":")[0]  # -nobias and -norotk compute something else
            times = [0.0] if small else call_times_ms(call, device, 3, 30)
            row = {
                "variant": name,
                "ms": round(statistics.median(times), 4),
                "max_vs_committed": ((out.float() - reference.float()) * real).abs().max().item()
                if exact
                else None,
                "max_vs_fp32": round(((out.float() - fp32) * real).abs().max().item(), 5),
            }
            print(mix, row, flush=True)
            entry["rows"].append(row)
        results.append(entry)
    if args.json and not small:
        report = {
            "benchmark": "attention_kernel_variants",
            "command": " ".join(
                ["python3", "benchmarks/diagnostics/attention_kernel_variants.py", *(argv or sys.argv[1:])]
            ),
            "environment": script_environment(device, with_onnxruntime=False),
            "results": results,
        }
        write_json(report, args.json)
    print(json.dumps({"written": str(args.json) if args.json and not small else None}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
