"""The fp8 engine's row kernels alone, per launch: which chunk, warps and erf make them fastest?

The three Triton row kernels (:mod:`virnucpro_trt.engines.fp8_quantize`) take ~50 ms of a 195 x 168
ESM-2 3B batch, at ~30% (bias+GELU) and ~50% (LayerNorm/plain) of the memory bound, and a bf16 residual
stream did not speed them up (measurement log, fifth session): they are bound by their passes over a
row or by GELU's erf, not by bytes. This times each kernel on one batch's rows (``--rows``, default
195 x 168) for a grid of :class:`~virnucpro_trt.engines.fp8_quantize.RowLaunch` values, beside a plain
device copy of the same bytes (the practical bound), and checks every launch against the torch
reference (share of e4m3 codes that differ, largest dequantised difference in units of the row scale):

* ``bias_gelu`` — fc1's output [rows, 10240] bf16 + bias, GELU, quantised (fc2's input), with
  erf from libdevice (``erf`` 0) or the A&S polynomial (1, the engines' since the fifth session), or
  GELU's tanh form by the hardware tanh (2; its codes are compared with the erf form's, so they differ
  more);
* ``identity_10240`` — the same rows quantised without bias or GELU: what the GELU kernel would cost if
  GELU were free (the same two passes, the same bytes but the bias);
* ``layernorm`` — the fp32 residual stream [rows, 2560], LayerNorm'd and quantised (the first norm);
* ``add_layernorm`` — the same after adding fc2's or the attention's bf16 output and bias, the sum
  written back (the second norm, and the first one when the residual add is folded);
* ``identity`` — the attention output [rows, 2560] bf16, quantised (out-proj's input).

Each kernel is also timed with the whole row held in registers (``resident``: one read instead of
chunked passes that re-read the row from cache).

Each figure is the median of ``--iters`` calls (CUDA events, the stream held while the host enqueues a
call: :func:`~virnucpro_trt.bench.timing.call_times_ms`) after ``--warmup`` calls. Figures taken before
that hold (the results of the fifth to seventh sessions) include the Python launch path. Without CUDA and
triton every row is reported with the reason (the CPU test runs that way).

    python3 benchmarks/diagnostics/row_kernels.py --json benchmarks/results/h200_row_kernels.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from virnucpro_trt.bench.hardware import script_environment
from virnucpro_trt.bench.report import write_json
from virnucpro_trt.bench.timing import add_call_timing_options, call_times_ms, chosen_names
from virnucpro_trt.engines import fp8_quantize as fq
from virnucpro_trt.engines.fp8_quantize import ERF_LIBDEVICE, ERF_POLYNOMIAL, GELU_TANH, ROW_LAUNCH, RowLaunch
from virnucpro_trt.engines.inductor_fp8 import fp8_unavailable_reason
from virnucpro_trt.models.esm2 import ESM2_T36_3B_CONFIG


@dataclass(frozen=True)
class Case:
    """One kernel on one shape: the row width, the input dtype and the bytes a call must move."""

    name: str
    cols: int
    dtype: torch.dtype
    mode: int
    has_delta: bool = False

    def bytes_moved(self, rows: int) -> int:
        """Reads and writes a call cannot avoid: the input (and the delta, and the sum written back),
        the e4m3 output and the fp32 scales. The per-column vectors (bias, weight) stay in cache and
        are left out (< 0.01% of a batch's bytes)."""
        width = self.dtype.itemsize
        per_row = self.cols * (width + 1) + 4
        if self.has_delta:
            per_row += self.cols * (2 + width)  # bf16 delta in, the sum (x's dtype) out
        return rows * per_row


_DIM, _FFN = ESM2_T36_3B_CONFIG.embed_dim, ESM2_T36_3B_CONFIG.ffn_dim
CASES = (
    Case("bias_gelu", _FFN, torch.bfloat16, fq.BIAS_GELU),
    Case(f"identity_{_FFN}", _FFN, torch.bfloat16, fq.IDENTITY),
    Case("layernorm", _DIM, torch.float32, fq.LAYERNORM),
    Case("add_layernorm", _DIM, torch.float32, fq.LAYERNORM, has_delta=True),
    Case("identity", _DIM, torch.bfloat16, fq.IDENTITY),
)


def launches(case: Case) -> list[RowLaunch]:
    """The engines' launch first, then the grid: chunks that divide the row, 4-16 warps (1-8 for the
    2560-wide rows), for the GELU kernel each of the three ways of computing GELU; then the resident row."""
    default = ROW_LAUNCH[case.mode]
    wide = case.cols >= 8192
    chunks = (1024, 2048) if wide else (256, 512)
    warps = (4, 8, 16) if wide else (1, 2, 4, 8)
    gelu = case.mode == fq.BIAS_GELU
    erfs = (ERF_LIBDEVICE, ERF_POLYNOMIAL, GELU_TANH) if gelu else (ERF_LIBDEVICE,)
    grid = [RowLaunch(c, w, e) for e in erfs for c in chunks for w in warps]
    grid += [  # the row held in registers: one read (chunk unused, 0)
        RowLaunch(0, w, e, resident=True)
        for e in ((ERF_POLYNOMIAL, GELU_TANH) if gelu else (ERF_LIBDEVICE,))
        for w in ((8, 16, 32) if wide else (2, 4, 8))
    ]
    return [default] + [launch for launch in grid if launch != default]


def inputs(case: Case, rows: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Activations like the layer's: fc1 outputs ~N(0, 2), a residual stream with a large mean and an
    outlier channel, attention outputs ~N(0, 1)."""
    gen = torch.Generator(device=device).manual_seed(case.cols)
    x = torch.randn(rows, case.cols, generator=gen, device=device)
    if case.mode == fq.LAYERNORM:
        x = x * 2 + 3
        x[:, 5] *= 40
    elif case.mode == fq.BIAS_GELU:
        x = x * 2
    tensors = {"x": x.to(case.dtype)}
    if case.mode != fq.IDENTITY:  # fc1's bias, or the LayerNorm's
        tensors["bias"] = (0.1 * torch.randn(case.cols, generator=gen, device=device)).to(torch.bfloat16)
    if case.mode == fq.LAYERNORM:
        tensors["weight"] = 1 + 0.1 * torch.randn(case.cols, generator=gen, device=device)
        tensors["bias"] = tensors["bias"].float()
    if case.has_delta:
        tensors["delta"] = torch.randn(rows, case.cols, generator=gen, device=device).to(torch.bfloat16)
        tensors["delta_bias"] = (0.1 * torch.randn(case.cols, generator=gen, device=device)).to(
            torch.bfloat16
        )
    return tensors


def kernel_call(case: Case, t: dict[str, torch.Tensor], launch: RowLaunch) -> Callable[[], tuple]:
    """The launcher of ``case``'s kernel, returning (e4m3, scales)."""
    if case.mode == fq.BIAS_GELU:
        return lambda: fq._launch_bias_gelu_rows(t["x"], t["bias"], launch)
    weight, bias = (t["weight"], t["bias"]) if case.mode == fq.LAYERNORM else (None, None)

    def call() -> tuple[torch.Tensor, torch.Tensor]:
        _, q, scale = fq._launch_quantize_normalised_rows(
            t["x"], t.get("delta"), t.get("delta_bias"), weight, bias, 1e-5, launch
        )
        return q, scale

    return call


def reference(case: Case, t: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    if case.has_delta:
        _, q, scale = fq.add_layernorm_rows_reference(
            t["x"], t["delta"], t["delta_bias"], t["weight"], t["bias"], 1e-5
        )
        return q, scale
    return fq.quantize_rows_reference(t["x"], case.mode, t.get("weight"), t.get("bias"), 1e-5)


def copy_bound_ms(nbytes: int, device: torch.device, warmup: int, iters: int) -> float:
    """Median ms of a device copy moving ``nbytes`` (half read, half written): the practical bound."""
    src = torch.empty(nbytes // 2, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return statistics.median(call_times_ms(lambda: dst.copy_(src), device, warmup, iters))


def unavailable_reason(device: torch.device) -> str | None:
    """Why the kernels cannot run on ``device`` (None when they can): Triton, CUDA and e4m3 needed."""
    if fq.triton is None:
        return "the row kernels are Triton kernels, and triton is not importable"
    return fp8_unavailable_reason(device)


def measure(case: Case, args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    rows_out: list[dict[str, Any]] = []
    dtype = str(case.dtype).removeprefix("torch.")
    base = {"case": case.name, "cols": case.cols, "dtype": dtype, "rows": args.rows}
    nbytes = case.bytes_moved(args.rows)
    reason = unavailable_reason(device)
    if reason is not None:
        return [
            {**base, **asdict(launch), "bytes": nbytes, "status": "unavailable", "reason": reason}
            for launch in launches(case)
        ]
    t = inputs(case, args.rows, device)
    want_q, want_scale = reference(case, t)
    bound = copy_bound_ms(nbytes, device, args.warmup, args.iters)
    fastest = None
    for launch in launches(case):
        row: dict[str, Any] = {**base, **asdict(launch), "bytes": nbytes, "copy_ms": round(bound, 4)}
        try:
            call = kernel_call(case, t, launch)
            q, scale = call()
            times = call_times_ms(call, device, args.warmup, args.iters)
            ms = statistics.median(times)
            differ = (q.view(torch.uint8) != want_q.view(torch.uint8)).float().mean().item()
            worst = ((q.float() * scale - want_q.float() * want_scale).abs() / want_scale).max().item()
            row.update(
                status="ok",
                ms=round(ms, 4),
                min_ms=round(min(times), 4),
                gb_per_s=round(nbytes / ms / 1e6, 1),
                of_copy_bound=round(bound / ms, 3),
                codes_differ=round(differ, 6),
                max_diff_in_scales=round(worst, 3),
                default=launch == ROW_LAUNCH[case.mode],
            )
            fastest = row if fastest is None or ms < fastest["ms"] else fastest
        except Exception as exc:  # a launch this GPU cannot take is reported, the others still run
            row.update(status="failed", error=f"{type(exc).__name__}: {str(exc)[:300]}")
        print(
            f"{case.name:15s} chunk {launch.chunk:5d} warps {launch.num_warps:2d} erf {launch.erf}"
            f"{' resident' if launch.resident else ''}: "
            + (f"{row['ms']:.4f} ms, {row['of_copy_bound']:.2f} of the copy bound" if row["status"] == "ok"
               else row["error"]),
            flush=True,
        )  # fmt: skip
        rows_out.append(row)
    if fastest is not None:
        fastest["fastest"] = True
    return rows_out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=195 * 168, help="one 500 bp batch's tokens")
    parser.add_argument("--cases", default=",".join(c.name for c in CASES))
    add_call_timing_options(parser)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    known = {c.name: c for c in CASES}
    chosen = chosen_names(parser, "--cases", args.cases, list(known))
    results: list[dict[str, Any]] = []
    report = {
        "benchmark": "row_kernels",
        "command": "python3 benchmarks/diagnostics/row_kernels.py " + " ".join(argv or sys.argv[1:]),
        "environment": script_environment(device, with_onnxruntime=False),
        "results": results,
    }
    for name in chosen:
        results.extend(measure(known[name], args, device))
        if args.json:
            write_json(report, args.json)  # after every case, so a call cut short keeps its figures
    return 0


if __name__ == "__main__":
    sys.exit(main())
