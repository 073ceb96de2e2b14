"""What do the engines' dynamic shapes cost a pointwise kernel, and what takes it back?

The fp8 engine's profile (measurement log, third session) shows its residual add at 19.1 ms and its
rotary kernels at 15.8 ms per 195 x 168 batch, against 6.9 and 7.9 ms for the same layers compiled for
that one shape. Two suspects, timed here in isolation on the engine's batch so an engine rebuild is
only spent on what wins:

* **indexing** — the export's box (batch <= 2048, length <= 1026, both dynamic) cannot be proven under
  2^31 elements, so Inductor writes int64 index arithmetic. Cases: ``static``; ``dynamic`` (bounded as
  :func:`default_shape_range`); ``dynamic-i32`` (``assume_32bit_indexing``); ``dynamic-check`` (a
  ``torch._check`` that batch x length fits the token budget, which the batcher guarantees).
* **rotary tables** — the engine computes cos/sin from ``arange(length)`` inside the graph, and
  Inductor recomputes them in every layer's rotary kernel. Cases ``rotary-inline`` (as the engine) and
  ``rotary-tables`` (cos/sin passed in, as the per-layer compile sees them).

Each ``jit`` case is ``torch.compile`` with ``mark_dynamic`` bounds, timed with CUDA events (median of
``--iters``), and reports whether its generated code indexes in int64. A JIT compile may guard on the
sizes it sees where an exported engine must prove its bounds, so ``--modes aoti`` builds each case as
the engines are (``torch.export`` + AOTInductor); that runs on the CPU but crashed the process
(segmentation fault) on the H200 with torch 2.11, so it is not the default.

    python3 benchmarks/diagnostics/dynamic_shapes.py --json dynamic.json
    python3 benchmarks/diagnostics/dynamic_shapes.py --device cpu --batch 4 --length 24 --iters 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch._inductor.utils import run_and_get_code

from virnucpro_trt.bench.hardware import script_environment
from virnucpro_trt.bench.report import write_json
from virnucpro_trt.bench.timing import call_times_ms
from virnucpro_trt.engines.spec import default_shape_range
from virnucpro_trt.models.esm2 import ESM2_T36_3B_CONFIG, RotaryEmbedding, apply_rotary

CASES = ("static", "dynamic", "dynamic-i32", "dynamic-check")
ROTARY = ("rotary-tables", "rotary-inline")


def residual_add(budget: int | None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The fp8 layer's last op: fp32 residual stream + fc2's bf16 output (``budget``: the check)."""

    def add(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        if budget is not None:
            torch._check(x.shape[0] * x.shape[1] <= budget)
        return x + delta.to(x.dtype)

    return add


def rotary(inline: bool, rotary_embedding: RotaryEmbedding) -> Callable[..., torch.Tensor]:
    """q and k rotated, tables built in the graph (``inline``, as the engine) or passed in."""

    def tables_given(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return apply_rotary(q, cos, sin) + apply_rotary(k, cos, sin)

    def tables_inline(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        cos, sin = rotary_embedding.tables(q.shape[2], q.device)
        return apply_rotary(q, cos, sin) + apply_rotary(k, cos, sin)

    return tables_inline if inline else tables_given


class Wrapped(torch.nn.Module):
    """``fn`` as a module, for ``torch.export``."""

    def __init__(self, fn: Callable[..., torch.Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.fn(*inputs)


def compiled_case(
    fn: Callable[..., torch.Tensor], inputs: list[torch.Tensor], dims: list[tuple[int, int, str, int]],
    configs: dict[str, Any], device: torch.device, iters: int, aoti: bool,
) -> dict[str, Any]:  # fmt: skip
    """Compile ``fn`` with ``dims`` (input, dim, name, max; one name = one symbol) dynamic; time it.

    ``aoti``: ``torch.export`` with those dims, then AOTInductor, as the engines are built (a JIT
    compile may guard on the sizes it sees, which an exported engine cannot); else ``torch.compile``
    with ``mark_dynamic``, whose Triton code is looked at for int64 indexing.
    """
    torch._dynamo.reset()
    int64: bool | None = None
    with torch._inductor.config.patch(configs):
        if aoti:
            symbols = {name: torch.export.Dim(name, min=2, max=high) for _, _, name, high in dims}
            shapes: list[dict[int, Any] | None] = [None] * len(inputs)
            for index, dim, name, _ in dims:
                shapes[index] = {**(shapes[index] or {}), dim: symbols[name]}
            program = torch.export.export(Wrapped(fn), tuple(inputs), dynamic_shapes=(tuple(shapes),))
            package = torch._inductor.aoti_compile_and_package(program, inductor_configs=dict(configs))
            compiled = torch._inductor.aoti_load_package(package)
        else:
            for index, dim, _, high in dims:
                torch._dynamo.mark_dynamic(inputs[index], dim, min=2, max=high)
            compiled = torch.compile(fn)
            _, code = run_and_get_code(compiled, *inputs)
            source = "\n".join(code)
            int64 = "tl.int64" in source if device.type == "cuda" else None  # C++ kernels: always int64
        ms = statistics.median(call_times_ms(lambda: compiled(*inputs), device, 2, iters))
    return {"ms": round(ms, 4), "int64_indexing": int64}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=195)
    parser.add_argument("--length", type=int, default=168)
    parser.add_argument("--max-batch-tokens", type=int, default=32768)
    parser.add_argument("--layers", type=int, default=36, help="per-call times are also given x this")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument(
        "--modes", default="jit", help="jit: torch.compile; aoti: export + AOTInductor (crashed on the H200)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    config = ESM2_T36_3B_CONFIG
    shapes = default_shape_range("esm2", args.max_batch_tokens)
    b, n = args.batch, args.length
    generator = torch.Generator(device="cpu").manual_seed(0)

    def randn(*shape: int, dtype: torch.dtype) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(device=device, dtype=dtype)

    rows: list[dict[str, Any]] = []
    report = {
        "benchmark": "dynamic_shapes",
        "command": " ".join(["python3", "benchmarks/diagnostics/dynamic_shapes.py", *(argv or sys.argv[1:])]),
        "environment": script_environment(device, with_onnxruntime=False),
        "shape": {"batch": b, "length": n, "dim": config.embed_dim, "heads": config.attention_heads,
                  "bounds": {"max_batch": shapes.max_batch, "max_length": shapes.max_length}},
        "results": rows,
    }  # fmt: skip
    batch, length = ("batch", shapes.max_batch), ("length", shapes.max_length)
    x, delta = (
        randn(b, n, config.embed_dim, dtype=torch.float32),
        randn(b, n, config.embed_dim, dtype=torch.bfloat16),
    )
    rotary_embedding = RotaryEmbedding(config.head_dim).to(device)
    q, k = (randn(b, config.attention_heads, n, config.head_dim, dtype=torch.bfloat16) for _ in range(2))
    cos, sin = rotary_embedding.tables(n, device)
    for mode in args.modes.split(","):
        for case in CASES:
            dims = (
                []
                if case == "static"
                else [(i, d, *sym) for i in (0, 1) for d, sym in ((0, batch), (1, length))]
            )
            configs = {"assume_32bit_indexing": True} if case == "dynamic-i32" else {}
            fn = residual_add(args.max_batch_tokens if case == "dynamic-check" else None)
            row = {"op": "residual_add", "mode": mode, "case": case}
            rows.append(
                row | compiled_case(fn, [x, delta], dims, configs, device, args.iters, mode == "aoti")
            )
        for name in ROTARY:
            inline = name == "rotary-inline"
            for case in ("static", "dynamic", "dynamic-i32"):
                inputs = [q, k] if inline else [q, k, cos, sin]
                dims = (
                    []
                    if case == "static"
                    else [(i, d, *sym) for i in (0, 1) for d, sym in ((0, batch), (2, length))]
                )
                if case != "static" and not inline:
                    dims += [(2, 0, *length), (3, 0, *length)]
                configs = {"assume_32bit_indexing": True} if case == "dynamic-i32" else {}
                row = {"op": name, "mode": mode, "case": case}
                fn = rotary(inline, rotary_embedding)
                rows.append(
                    row | compiled_case(fn, inputs, dims, configs, device, args.iters, mode == "aoti")
                )
    for row in rows:
        row["ms_per_forward"] = round(row["ms"] * args.layers, 2)
        print(f"{row['mode']:5s} {row['op']:14s} {row['case']:14s} {row['ms']:8.4f} ms  x{args.layers} = "
              f"{row['ms_per_forward']:7.2f} ms  int64 {row['int64_indexing']}")  # fmt: skip
    if args.json:
        write_json(report, args.json)
        print(f"written {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
