"""The fp8 engine's four GEMM shapes: does Inductor's autotuning find anything faster than cuBLAS?

The fp8 ESM-2 engine spends ~65% of a 195 x 168 batch in four row-wise scaled fp8 GEMMs, all run by one
cuBLAS kernel (``nvjet_sm90_qqtst_*``) at 1,402-1,422 TFLOP/s (thirteenth session's profile). Inductor's
``max_autotune`` can time Triton ``_scaled_mm`` templates against cuBLAS per shape and keep the faster;
it was only ever measured for bf16 (cuBLAS won by 11-13%). This times each shape three ways, one
``[M, K] x [K, N]`` GEMM with a per-row scale for A, a per-column scale for B, bf16 out and fast
accumulation, exactly the engine's ``torch._scaled_mm`` call:

* ``cublas`` — the eager call (what the engine runs);
* ``max-autotune`` — the same call compiled by Inductor with ``max_autotune`` and GEMM backends
  ``ATEN,TRITON`` (the Triton templates against cuBLAS; Inductor keeps the faster);
* ``max-autotune-tma`` — as above with Inductor's persistent TMA templates on
  (``triton.enable_persistent_tma_matmul``), the Hopper kernels.

Each row names the kernel that ran (from ``torch.profiler``), its median milliseconds (CUDA events
around each call with the stream held: :func:`~virnucpro_trt.bench.timing.call_times_ms`), TFLOP/s and
the largest difference from the cuBLAS output relative to that output's largest magnitude. A compiled
row only matters if its kernel is not cuBLAS's; then the engine build's ``--max-autotune`` is the next
experiment (DEVELOPERS.md, "what is left"). Without CUDA and fp8 every row says why (the CPU test).

    python3 benchmarks/diagnostics/fp8_gemm_autotune.py --json benchmarks/results/h200_fp8_gemm_autotune.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from virnucpro_trt.bench.hardware import script_environment
from virnucpro_trt.bench.report import write_json
from virnucpro_trt.bench.timing import add_call_timing_options, call_times_ms, chosen_names
from virnucpro_trt.engines.inductor_fp8 import FP8_DTYPE, fp8_unavailable_reason
from virnucpro_trt.models.esm2 import ESM2_T36_3B_CONFIG


@dataclass(frozen=True)
class Shape:
    """One of the engine's linears: ``n`` outputs from ``k`` inputs (M is the batch's tokens)."""

    linear: str
    n: int
    k: int


_DIM, _FFN = ESM2_T36_3B_CONFIG.embed_dim, ESM2_T36_3B_CONFIG.ffn_dim
SHAPES = (
    Shape("qkv", 3 * _DIM, _DIM),
    Shape("out_proj", _DIM, _DIM),
    Shape("fc1", _FFN, _DIM),
    Shape("fc2", _DIM, _FFN),
)


@dataclass(frozen=True)
class Way:
    """How the GEMM is run: eagerly, or compiled with these Inductor options."""

    name: str
    inductor_options: dict[str, Any] | None


WAYS = (
    Way("cublas", None),
    Way("max-autotune", {"max_autotune": True, "max_autotune_gemm_backends": "ATEN,TRITON"}),
    Way(
        "max-autotune-tma",
        {
            "max_autotune": True,
            "max_autotune_gemm_backends": "ATEN,TRITON",
            "triton.enable_persistent_tma_matmul": True,
        },
    ),
)


def scaled_mm(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor) -> torch.Tensor:
    """The engine's call (:class:`~virnucpro_trt.engines.inductor_fp8.Fp8RowwiseLinear`): row-wise
    scales, bf16 out, fast accumulation, no bias."""
    return torch._scaled_mm(
        a, b, scale_a=scale_a, scale_b=scale_b, out_dtype=torch.bfloat16, use_fast_accum=True
    )


def inputs(shape: Shape, m: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """A [M, K] e4m3 activation and a column-major [K, N] e4m3 weight (the layout ``_scaled_mm`` takes),
    with positive fp32 scales [M, 1] and [1, N]."""
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(m, shape.k, device=device, generator=gen).to(FP8_DTYPE)
    b = torch.randn(shape.n, shape.k, device=device, generator=gen).to(FP8_DTYPE).t()
    scale_a = torch.rand(m, 1, device=device, generator=gen) * 0.01 + 0.001
    scale_b = torch.rand(1, shape.n, device=device, generator=gen) * 0.01 + 0.001
    return a, b, scale_a, scale_b


def kernel_names(call: Callable[[], Any]) -> list[str]:
    """The GPU kernels one call launches, longest first."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        call()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    return [e.key for e in sorted(events, key=lambda e: -e.device_time_total)]


def way_call(way: Way, args: tuple[torch.Tensor, ...]) -> Callable[[], torch.Tensor]:
    """The call to time: eager, or freshly compiled (dynamo reset, so each way autotunes on its own)."""
    if way.inductor_options is None:
        return lambda: scaled_mm(*args)
    torch._dynamo.reset()
    compiled = torch.compile(scaled_mm, dynamic=False, options=way.inductor_options)
    return lambda: compiled(*args)


def measure(shape: Shape, args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    base = {"linear": shape.linear, "m": args.m, "n": shape.n, "k": shape.k}
    reason = fp8_unavailable_reason(device)
    if reason is not None:
        return [{**base, "way": way.name, "status": "unavailable", "reason": reason} for way in WAYS]
    tensors = inputs(shape, args.m, device)
    want = scaled_mm(*tensors).float()
    flops = 2 * args.m * shape.n * shape.k
    rows: list[dict[str, Any]] = []
    for way in WAYS:
        row: dict[str, Any] = {**base, "way": way.name}
        try:
            call = way_call(way, tensors)
            got = call().float()
            times = call_times_ms(call, device, args.warmup, args.iters)
            ms = statistics.median(times)
            row.update(
                status="ok",
                ms=round(ms, 4),
                min_ms=round(min(times), 4),
                tflops=round(flops / ms / 1e9, 1),
                kernels=kernel_names(call)[:3],
                max_diff_of_max=round(((got - want).abs().max() / want.abs().max()).item(), 6),
            )
        except Exception as exc:  # a way this torch or GPU cannot take is reported, the others still run
            row.update(status="failed", error=f"{type(exc).__name__}: {str(exc)[:300]}")
        print(row, file=sys.stderr, flush=True)
        rows.append(row)
    timed = [r for r in rows if r["status"] == "ok"]
    cublas = next((r for r in timed if r["way"] == "cublas"), None)
    for row in timed:
        row["vs_cublas"] = round(cublas["ms"] / row["ms"], 3) if cublas else None
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", type=int, default=195 * 168, help="tokens: one 500 bp batch's")
    parser.add_argument("--linears", default=",".join(s.linear for s in SHAPES))
    add_call_timing_options(parser)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    wanted = set(chosen_names(parser, "--linears", args.linears, [s.linear for s in SHAPES]))
    report: dict[str, Any] = {
        "benchmark": "fp8_gemm_autotune",
        "command": "python3 benchmarks/diagnostics/fp8_gemm_autotune.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "environment": script_environment(device, with_onnxruntime=False),
        "results": [],
    }
    for shape in SHAPES:
        if shape.linear in wanted:
            report["results"] += measure(shape, args, device)
            if args.json:
                write_json(report, args.json)  # after every shape, so a call cut short keeps its figures
    if args.json:
        write_json(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
