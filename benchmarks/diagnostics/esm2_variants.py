"""ESM-2 variants side by side under Inductor: which change to the engine is worth building?

Building a full-size AOTInductor engine takes 3-5 minutes on the H200 and device time is scarce, so the
candidates are measured here first under ``torch.compile`` of the same native module (the kernels
Inductor generates are the same ones AOTInductor packages; each layer is compiled once and its code
reused for the 36 identical layers, which keeps compiling to seconds). Every variant embeds the same
proteins through the project's token-budget batcher, is timed as the median of several passes after a
warm-up, and is checked against the fp32 eager model (min pooled cosine). With ``--profile`` one batch
of each variant is profiled and its CUDA time split into kernel categories. ``--row-launch`` gives the
``fp8-fused-fold-launch`` variant other row kernel launches (traced under
:func:`~virnucpro_trt.engines.fp8_quantize.launches_in_effect`, compiled without caches).

    python3 benchmarks/diagnostics/esm2_variants.py --variants bf16,fp8,fp8-fast --json out.json
    python3 benchmarks/diagnostics/esm2_variants.py --tiny --device cpu --variants bf16   # smoke run
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import re
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from virnucpro_trt.bench.hardware import script_environment
from virnucpro_trt.bench.report import write_json
from virnucpro_trt.bench.timing import measure
from virnucpro_trt.bench.workload import frame_sequences
from virnucpro_trt.engines.fp8_quantize import (
    BIAS_GELU,
    ERF_LIBDEVICE,
    ERF_POLYNOMIAL,
    GELU_TANH,
    LAYERNORM,
    MODE_NAMES,
    MODES,
    ROW_LAUNCH,
    TRITON_MODES,
    RowLaunch,
    launches_in_effect,
    residual_sum,
    scale_rows_to_e4m3,
)
from virnucpro_trt.engines.inductor_fp8 import (
    Fp8Esm2Layer,
    convert_linears_to_fp8,
    convert_to_fp8,
    fp8_unavailable_reason,
)
from virnucpro_trt.engines.parity import compare
from virnucpro_trt.engines.spec import default_shape_range
from virnucpro_trt.models.esm2 import ESM2_T36_3B_CONFIG, AttentionKernel
from virnucpro_trt.models.layers import Fp32LayerNorm
from virnucpro_trt.models.random_checkpoints import TINY_ESM2_CONFIG, random_esm2
from virnucpro_trt.models.tokenization import ProteinTokenizer, pad_batch
from virnucpro_trt.runtime.device import configure_fp32_reference
from virnucpro_trt.runtime.embedding import TorchBackend, embed_sequences
from virnucpro_trt.sequences.synthetic import LENGTH_MIXES


@dataclass(frozen=True)
class Variant:
    # bf16 | fp8 (row-wise linears) | fp8-fused (the engine's: ESM-2 layers with fused input quantisation)
    # | torchao-fp8 (the peer: torchao's float8 dynamic row-wise on our model)
    precision: str
    attention: str = "efficient"
    residual_fp32: bool = True
    fast_accum: bool = False
    kernel_modes: frozenset[int] = TRITON_MODES  # fp8-fused: quantisations done by our Triton kernels
    layernorm_bf16: bool = False  # fp8-fused: quantise the LayerNorm's bf16 output (torchao's order)
    # compile batch and length as dynamic dims bounded like the engines' export (their kernels), not for
    # the first shape seen; and Inductor settings for the compile, e.g. (("assume_32bit_indexing", True),)
    engine_shapes: bool = False
    gemm_bias: bool = False  # fp8-fused: qkv's and fc2's biases in the GEMM epilogue
    fold_residual: bool = False  # fp8-fused: fc2's residual add inside the next layer's LayerNorm kernel
    inductor: tuple[tuple[str, Any], ...] = ()
    row_launch: bool = False  # fp8-fused: the row kernels launched as --row-launch says
    attention_kernel: bool = False  # the engines' own Triton attention (rotary and layout in it)
    qkv_bias_in_attention: bool = False  # fp8-fused with the kernel: qkv's bias added by the kernel
    gelu_epilogue: bool = False  # bf16: fc1 + GELU as one cuBLASLt GEMM (models.esm2.linear_gelu)


VARIANTS = {
    "bf16": Variant("bf16"),
    "bf16-cudnn": Variant("bf16", attention="cudnn"),
    "bf16-res16": Variant("bf16", residual_fp32=False),
    "fp8": Variant("fp8"),
    "fp8-fast": Variant("fp8", fast_accum=True),
    "fp8-fast-res16": Variant("fp8", fast_accum=True, residual_fp32=False),
    "fp8-fast-cudnn": Variant("fp8", attention="cudnn", fast_accum=True),
    "fp8-fused": Variant("fp8-fused", fast_accum=True),
    "fp8-fused-res16": Variant("fp8-fused", fast_accum=True, residual_fp32=False),
    "fp8-fused-cudnn": Variant("fp8-fused", attention="cudnn", fast_accum=True),
    "fp8-fused-inductor": Variant("fp8-fused", fast_accum=True, kernel_modes=frozenset()),
    "fp8-fused-lnbf16": Variant("fp8-fused", fast_accum=True, layernorm_bf16=True),
    "fp8-fused-ln": Variant("fp8-fused", fast_accum=True, kernel_modes=frozenset({BIAS_GELU, LAYERNORM})),
    "fp8-fused-kernels": Variant("fp8-fused", fast_accum=True, kernel_modes=frozenset(MODES)),
    "torchao-fp8": Variant("torchao-fp8"),
    # the engines' dynamic-shape penalty (measurement log, 2026-12-02 third session) and its suspect
    "fp8-fused-dynamic": Variant("fp8-fused", fast_accum=True, engine_shapes=True),
    "fp8-fused-dynamic-i32": Variant(
        "fp8-fused", fast_accum=True, engine_shapes=True, inductor=(("assume_32bit_indexing", True),)
    ),
    "fp8-fused-dynamic-bias": Variant("fp8-fused", fast_accum=True, engine_shapes=True, gemm_bias=True),
    "fp8-fused-fold": Variant("fp8-fused", fast_accum=True, fold_residual=True),  # engines' to recipe 4
    "fp8-fused-fold-launch": Variant("fp8-fused", fast_accum=True, fold_residual=True, row_launch=True),
    "fp8-fused-fold-kernel": Variant("fp8-fused", fast_accum=True, fold_residual=True, attention_kernel=True),
    "fp8-fused-fold-kernel-bias": Variant(  # the engines' layers (recipe 6)
        "fp8-fused", fast_accum=True, fold_residual=True, attention_kernel=True, qkv_bias_in_attention=True
    ),
    "bf16-kernel": Variant("bf16", attention_kernel=True),  # the bf16 engines' layers to recipe 6
    "bf16-kernel-gelu": Variant("bf16", attention_kernel=True, gelu_epilogue=True),  # recipe 7
    "bf16-kernel-res16": Variant("bf16", residual_fp32=False, attention_kernel=True),
    "bf16-dynamic": Variant("bf16", engine_shapes=True),
    "bf16-dynamic-i32": Variant("bf16", engine_shapes=True, inductor=(("assume_32bit_indexing", True),)),
}

# Kernel categories by name, first match wins (Inductor names its Triton kernels after the fused ops).
KERNEL_CATEGORIES = (  # attention first: its CUTLASS kernels would match the GEMM patterns
    ("attention", re.compile(r"fmha|attention|attn|flash|sdpa", re.I)),
    ("gemm", re.compile(r"gemm|cutlass|xmma|nvjet|cublas|wgmma|sm90_|addmm|aten::mm|_mm\b|matmul|bmm", re.I)),
    ("quantisation", re.compile(r"amax|float8|fp8|e4m3|quant", re.I)),  # incl. the fused LN/GELU ones
    ("normalisation", re.compile(r"layer_norm|var_mean|rsqrt", re.I)),
    ("activation", re.compile(r"gelu|erf", re.I)),
    ("copies", re.compile(r"copy|memcpy|memset|cat_|clone|transpose", re.I)),
    ("elementwise", re.compile(r"triton|elementwise|vectorized|reduce", re.I)),
)


def categorise(name: str) -> str:
    return next((label for label, pattern in KERNEL_CATEGORIES if pattern.search(name)), "other")


def kernel_breakdown(runner: TorchBackend, batch: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
    """Device (CPU: operator) time of one batch per kernel category, and the top kernels."""
    from torch.profiler import ProfilerActivity, profile

    device = runner.device
    activities = [ProfilerActivity.CUDA] if device.type == "cuda" else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        runner.embed_padded(*batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    per_kernel: dict[str, float] = defaultdict(float)
    for event in prof.events():
        us = event.device_time if device.type == "cuda" else event.self_cpu_time_total
        if device.type == "cuda" and event.device_type.name != "CUDA":
            continue
        per_kernel[event.name] += float(us)
    total = sum(per_kernel.values()) or 1.0
    categories: dict[str, float] = defaultdict(float)
    for name, us in per_kernel.items():
        categories[categorise(name)] += us
    top = sorted(per_kernel.items(), key=lambda kv: -kv[1])[:15]
    ordered = sorted(categories.items(), key=lambda kv: -kv[1])
    return {
        "total_ms": round(total / 1000, 3),
        "categories_pct": {k: round(100 * v / total, 2) for k, v in ordered},
        "top_kernels": [
            {"name": n[:160], "ms": round(us / 1000, 3), "pct": round(100 * us / total, 2)} for n, us in top
        ],
    }


def profile_batch(tokens: list[np.ndarray], budget: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """One full batch of the workload's longest proteins, as the batcher would form it."""
    ordered = sorted(tokens, key=len, reverse=True)
    size = max(1, budget // len(ordered[0]))
    return pad_batch(ordered[:size], pad_id)


class Bf16LayerNormFp8Layer(Fp8Esm2Layer):
    """The engine's fp8 layer, except that each LayerNorm runs as the model's own module (bf16 output)
    and that output is quantised: the order of torchao's float8 path, whose Inductor kernels for
    LayerNorm + quantise were much faster than the engine's fused fp32 form (measurement log). A
    candidate for the engine, to keep only if it is faster at parity."""

    def _normalised(self, x: torch.Tensor, norm: Fp32LayerNorm) -> tuple[torch.Tensor, torch.Tensor]:
        return scale_rows_to_e4m3(norm(x).reshape(-1, x.shape[-1]).float())

    def _added_normalised(
        self, norm: Fp32LayerNorm, x: torch.Tensor, delta: torch.Tensor, delta_bias: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        total = residual_sum(x, delta, delta_bias)
        return total, *self._normalised(total, norm)


class EngineShapes(torch.nn.Module):
    """One compiled ESM-2 layer whose batch and length are dynamic dims bounded as the engines export
    them (:func:`virnucpro_trt.engines.spec.default_shape_range` at the run's budget), so that Inductor
    writes kernels for any shape in that box instead of ones for the first shape it sees. Not the
    engines' kernels in every respect: a JIT compile may guard on the sizes it sees where an exported
    engine must prove its bounds (32-bit indexing, for one: measurement log, fourth session)."""

    def __init__(self, layer: torch.nn.Module, max_batch: int, max_length: int):
        super().__init__()
        self.layer, self.max_batch, self.max_length = layer, max_batch, max_length

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        key_mask: torch.Tensor,
        kernel: AttentionKernel | None = None,
    ) -> torch.Tensor:
        mark = torch._dynamo.mark_dynamic
        if x.shape[0] > 1:  # a size of 1 is specialised whatever the marks say
            mark(x, 0, min=2, max=self.max_batch)
            mark(key_mask, 0, min=2, max=self.max_batch)
        mark(x, 1, min=2, max=self.max_length)
        mark(key_mask, 3, min=2, max=self.max_length)
        for table in (cos, sin):
            if table.shape[0] == x.shape[1]:
                mark(table, 0, min=2, max=self.max_length)
        return self.layer(x, cos, sin, key_mask, kernel)


def build_variant(
    reference: torch.nn.Module,
    variant: Variant,
    device: torch.device,
    compile_: bool,
    budget: int,
) -> Any:
    model = copy.deepcopy(reference).to(dtype=torch.bfloat16)
    model.residual_fp32 = variant.residual_fp32
    if variant.attention_kernel:
        from virnucpro_trt.engines.rotary_attention import register_kernel, rotary_attention

        register_kernel()  # before Dynamo traces the op
        model.attention_kernel = rotary_attention
    for layer in model.layers:
        layer.gelu_epilogue = variant.gelu_epilogue
    if variant.precision != "bf16" and (reason := fp8_unavailable_reason(device)):
        raise RuntimeError(reason)
    if variant.precision == "fp8":
        convert_linears_to_fp8(model, fast_accum=variant.fast_accum)
    elif variant.precision == "fp8-fused":
        convert_to_fp8(
            model,
            variant.fast_accum,
            variant.kernel_modes,
            variant.gemm_bias,
            variant.fold_residual,
            variant.qkv_bias_in_attention,
        )
        if variant.layernorm_bf16:
            for layer in model.layers:
                layer.__class__ = Bf16LayerNormFp8Layer  # same state, other LayerNorm quantisation
    elif variant.precision == "torchao-fp8":
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

        quantize_(model, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
    if compile_:
        for layer in model.layers:  # regional: one layer's code serves all 36
            layer.compile()
    if variant.engine_shapes:
        shapes = default_shape_range("esm2", budget)
        for index, layer in enumerate(model.layers):
            model.layers[index] = EngineShapes(layer, shapes.max_batch, shapes.max_length)
    return model


def parse_row_launch(text: str) -> tuple[int, RowLaunch]:
    """``MODE=CHUNK,WARPS[,ERF]`` or ``MODE=resident,WARPS[,ERF]`` (MODE layernorm, identity or
    bias_gelu; ERF 0, 1 or 2 as :class:`RowLaunch`'s, the engines' when left out) as (mode, launch)."""
    modes = {name: mode for mode, name in MODE_NAMES.items()}
    name, _, spec = text.partition("=")
    try:
        chunk_text, warps_text, *erf_text = spec.split(",")
        resident = chunk_text == "resident"
        default = ROW_LAUNCH[modes[name]]
        erf = int(erf_text[0]) if len(erf_text) == 1 else default.erf
        if len(erf_text) > 1 or erf not in (ERF_LIBDEVICE, ERF_POLYNOMIAL, GELU_TANH):
            raise ValueError(spec)
        launch = RowLaunch(0 if resident else int(chunk_text), int(warps_text), erf, resident)
        return modes[name], launch
    except (KeyError, ValueError) as exc:
        expected = "expected MODE=CHUNK,WARPS[,ERF] or MODE=resident,WARPS[,ERF]"
        raise argparse.ArgumentTypeError(f"{text!r}: {expected}") from exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="bf16,bf16-cudnn,bf16-res16,fp8,fp8-fast,fp8-fast-res16")
    parser.add_argument("--items", type=int, default=2048)
    parser.add_argument(
        "--length-mix",
        choices=list(LENGTH_MIXES),
        default="fixed",
        help="read lengths of the frames (fixed: 500 bp, batches without padding; mixed/illumina: padded)",
    )
    parser.add_argument("--parity-items", type=int, default=256)
    parser.add_argument("--max-batch-tokens", type=int, default=32768)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="one batch's time per kernel category")
    parser.add_argument("--no-compile", action="store_true", help="eager (for a quick CPU smoke run)")
    parser.add_argument("--tiny", action="store_true", help="tiny random model (CPU smoke run)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--row-launch", type=parse_row_launch, action="append", default=[],
        help="MODE=CHUNK,WARPS[,ERF] or MODE=resident,WARPS[,ERF]: the launch variant's",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if any(VARIANTS[n].row_launch for n in args.variants.split(",") if n in VARIANTS) and not args.row_launch:
        parser.error("the fp8-fused-fold-launch variant needs --row-launch MODE=CHUNK,WARPS (or =resident,W)")
    device = torch.device(args.device)
    config = TINY_ESM2_CONFIG if args.tiny else ESM2_T36_3B_CONFIG
    tokenizer = ProteinTokenizer()
    _, proteins = frame_sequences(args.items, length_mix=args.length_mix)
    tokens = tokenizer.encode_batch(proteins[: args.items])
    budget = args.max_batch_tokens
    configure_fp32_reference()
    reference = random_esm2(config, device=device, dtype=torch.float32, seed=2)
    ref_n = min(args.parity_items, len(tokens))
    fp32 = TorchBackend(reference, config.embed_dim, tokenizer.pad_id, device, torch.float32)
    expected = embed_sequences(fp32, tokens[:ref_n], budget)
    rows: list[dict[str, Any]] = []
    report = {
        "benchmark": "esm2_variants",
        "command": " ".join(["python3", "benchmarks/diagnostics/esm2_variants.py", *(argv or sys.argv[1:])]),
        "environment": script_environment(device, with_onnxruntime=False),
        "workload": {"proteins": len(tokens), "length_mix": args.length_mix,
                     "mean_tokens": float(np.mean([len(t) for t in tokens])),
                     "max_batch_tokens": budget, "model": "tiny" if args.tiny else "esm2_t36_3B (random)"},
        "results": rows,
    }  # fmt: skip
    torch.backends.cuda.matmul.allow_tf32 = False
    # AOTAutograd's cache keys a graph by the ops it calls, not by the Python they run: a row op whose
    # Triton kernel or launch changed would be served the old compiled graph (seen on the H200: a
    # launch variant bit-identical to the default). Off here, where kernels are what is compared.
    torch._functorch.config.enable_autograd_cache = False
    for name in args.variants.split(","):
        variant = VARIANTS[name]
        row: dict[str, Any] = {
            "variant": name,
            **variant.__dict__,
            "kernel_modes": sorted(variant.kernel_modes),
            "inductor": dict(variant.inductor),
        }
        launches = dict(args.row_launch) if variant.row_launch else {}
        if variant.row_launch:
            row["row_launches"] = {MODE_NAMES[m]: dataclasses.asdict(lau) for m, lau in launches.items()}
        gate_precision = "bf16" if variant.precision == "bf16" else "fp8"
        try:
            torch._dynamo.reset()  # each variant traces anew (the attention choice is made while tracing)
            started = time.perf_counter()
            model = build_variant(reference, variant, device, not args.no_compile, budget)
            runner = TorchBackend(model, config.embed_dim, tokenizer.pad_id, device, torch.bfloat16,
                                  attention=variant.attention)  # fmt: skip
            # compiles on first use; a launch variant's graph must not come from the FX graph cache
            # (its key does not see the launches: fp8_quantize.launches_in_effect)
            cache = {"fx_graph_cache": False} if launches else {}
            inductor = torch._inductor.config.patch({**dict(variant.inductor), **cache})
            with inductor, launches_in_effect(launches):
                result = measure(
                    lambda _, runner=runner: embed_sequences(runner, tokens, budget), args.repeats, device
                )
            row.update(
                status="ok",
                # compile + first pass (the build, in an engine's terms)
                warmup_s=round(time.perf_counter() - started - sum(result.passes_s), 1),
                median_s=round(result.median_s, 4),
                proteins_per_s=round(len(tokens) / result.median_s, 1),
                parity=compare(expected, result.results[-1][:ref_n], gate_precision).to_json(),
            )
            if args.profile:
                with inductor, launches_in_effect(launches):
                    row["profile"] = kernel_breakdown(runner, profile_batch(tokens, budget, tokenizer.pad_id))
            del runner, model
        except Exception as exc:  # a failing variant is reported, the others still run
            text = str(exc)
            row.update(status="failed", error=f"{type(exc).__name__}: {text[:300]} ... {text[-900:]}")
        if device.type == "cuda":
            torch.cuda.empty_cache()
        print(json.dumps({k: v for k, v in row.items() if k != "profile"}), flush=True)
        rows.append(row)
        if args.json:
            write_json(report, args.json)
    print(f"\n{'variant':16s} {'proteins/s':>11s} {'min cos':>9s}  categories")
    for r in rows:
        if r["status"] == "ok":
            shares = (r.get("profile") or {}).get("categories_pct", {})
            cats = ", ".join(f"{k} {v}%" for k, v in shares.items())
            print(f"{r['variant']:16s} {r['proteins_per_s']:11.1f} {r['parity']['min_cosine']:9.5f}  {cats}")
        else:
            print(f"{r['variant']:16s} FAILED: {r['error'][:150]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
