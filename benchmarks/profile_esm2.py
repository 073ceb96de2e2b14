"""One ESM-2 3B forward at the workload, broken down per kernel, for each way of running it.

The batch is the one the project's batcher makes for 168-token proteins (500 bp reads) at the CUDA token
budget (32768: 195 x 168). Each variant runs that batch through its ``embed_padded`` (what a run calls),
warms up, times ``--forwards`` forwards (median) and profiles ``--profiled`` more under
``torch.profiler``; every kernel is classified (:mod:`virnucpro_trt.bench.kernel_profile`, whose
``KERNEL_CLASSES`` table is written into the JSON) and each GEMM shape's achieved TFLOP/s is set against
the peak this script measures on the same shape (``torch.matmul`` in bf16, ``torch._scaled_mm`` row-wise
e4m3 with and without fast accumulation).

Variants (``--variants``), each at every ``--precisions`` entry it supports:

* ``engine``: the project's AOTInductor engine from ``--engines DIR`` (repeatable; the manifest says
  its precision), or built here by the real build code (``engines.build.build_engines``, i.e. ``virnucpro-trt
  build --backend inductor``) with ``--build`` (~3-5 min per precision for full size);
* ``compile``: the native model under ``torch.compile``; at fp8 torchao's float8 row-wise quantisation
  first (the ``bench`` peer, :mod:`virnucpro_trt.bench.peer`);
* ``fp8-linears``: the engine's own fp8 linears (``engines.inductor_fp8``) under ``torch.compile`` (fp8
  only): the same compiler as ``compile``, so torchao's quantisation and ours can be told apart;
* ``eager``: the native model in eager PyTorch (no fp8).

Full size builds the random-weight model directly on the GPU; ``--tiny`` runs the tiny model on the CPU
(CPU operator events instead of kernels), which the test suite uses.

    python3 benchmarks/profile_esm2.py --precisions bf16,fp8 --variants engine,compile \\
        --engines /tmp/vtb/engines-inductor-bf16 --engines /tmp/vtb/engines-inductor-fp8 \\
        --json benchmarks/results/h200_profile_esm2.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from virnucpro_trt.bench.hardware import script_environment
from virnucpro_trt.bench.kernel_profile import (
    CLASS_NAMES,
    KERNEL_CLASSES,
    LayerGemm,
    records_from_profiler,
    significant,
    summarize,
)
from virnucpro_trt.bench.peer import compile_backends, peer_unavailable_reason, torchao_version
from virnucpro_trt.bench.report import write_json
from virnucpro_trt.bench.timing import synchronize
from virnucpro_trt.engines.inductor_fp8 import FP8_DTYPE, convert_linears_to_fp8, fp8_unavailable_reason
from virnucpro_trt.models.esm2 import ESM2_T36_3B_CONFIG, Esm2Config
from virnucpro_trt.models.random_checkpoints import TINY_ESM2_CONFIG, random_esm2, random_proteins
from virnucpro_trt.models.tokenization import ProteinTokenizer, pad_batch
from virnucpro_trt.runtime.batching import token_budget_batches
from virnucpro_trt.runtime.embedding import TorchBackend

VARIANTS = ("engine", "compile", "fp8-linears", "eager")
PRECISIONS = ("fp32", "bf16", "fp8")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp8": torch.bfloat16}
SEED = 2  # bench/models.py's ESM-2 seed


class Unavailable(Exception):
    """This variant cannot run here; the message is the one-line reason."""


# ----------------------------------------------------------------------------- the batch
def workload_batch(tokens: int, budget: int, tiny: bool) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The first batch the project's batcher makes from proteins of ``tokens`` tokens at ``budget``."""
    tokenizer = ProteinTokenizer()
    count = 2 * max(1, budget // tokens) + 1
    proteins = random_proteins(count, tokens - 2, tokens - 2, seed=7)
    ids = tokenizer.encode_batch(proteins)
    batch = token_budget_batches([len(t) for t in ids], budget)[0]
    input_ids, mask = pad_batch([ids[i] for i in batch], tokenizer.pad_id)
    facts = {
        "model": "ESM-2 tiny (2 x 64)" if tiny else "ESM-2 3B (esm2_t36_3B_UR50D shape)",
        "weights": "random",
        "tokens_per_protein": tokens,
        "max_batch_tokens": budget,
        "batch": list(input_ids.shape),
        "batcher": "virnucpro_trt.runtime.batching.token_budget_batches",
    }
    return input_ids, mask, facts


def layer_gemms(config: Esm2Config) -> list[LayerGemm]:
    """ESM-2's linears in the order a layer runs them (models/esm2.py: fused qkv, out_proj, fc1, fc2)."""
    d, f = config.embed_dim, config.ffn_dim
    return [
        LayerGemm("qkv", 3 * d, d),
        LayerGemm("out_proj", d, d),
        LayerGemm("fc1", f, d),
        LayerGemm("fc2", d, f),
    ]


# ----------------------------------------------------------------------------- measured peaks
def _time(fn: Any, device: torch.device, iters: int = 10, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak(m: int, n: int, k: int, kind: str, device: torch.device) -> float | None:
    """TFLOP/s of one ``[m, k] x [k, n]`` product laid out as a linear layer's (weight [n, k] transposed).

    ``bf16``/``fp32``: ``torch.matmul``. ``fp8`` / ``fp8-fast-accum``: ``torch._scaled_mm`` on e4m3 with
    row-wise scales (scale_a [m, 1], scale_b [1, n], bf16 out), as the fp8 linears call it; None where
    this device has no fp8 GEMM.
    """
    gen = torch.Generator(device=device).manual_seed(0)
    if kind.startswith("fp8"):
        if fp8_unavailable_reason(device) is not None:
            return None
        a = torch.randn(m, k, device=device, generator=gen).to(FP8_DTYPE)
        w = torch.randn(n, k, device=device, generator=gen).to(FP8_DTYPE)
        sa = torch.ones(m, 1, device=device)
        sb = torch.ones(1, n, device=device)
        fast = kind == "fp8-fast-accum"

        def run() -> Any:
            return torch._scaled_mm(
                a, w.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16, use_fast_accum=fast
            )

    else:
        dtype = DTYPES[kind]
        a = torch.randn(m, k, device=device, dtype=dtype, generator=gen)
        w = torch.randn(n, k, device=device, dtype=dtype, generator=gen)

        def run() -> Any:
            return torch.matmul(a, w.t())

    with torch.inference_mode():
        seconds = _time(run, device)
    return 2.0 * m * n * k / seconds / 1e12


class Peaks:
    """Measured peaks per (m, n, k) and kind, measured on first use."""

    def __init__(self, device: torch.device):
        self.device = device
        self.table: dict[tuple[str, int, int, int], float | None] = {}

    def get(self, kind: str, m: int, n: int, k: int) -> float | None:
        key = (kind, m, n, k)
        if key not in self.table:
            self.table[key] = matmul_peak(m, n, k, kind, self.device)
        return self.table[key]

    def for_precision(
        self, precision: str, shapes: list[tuple[int, int, int]]
    ) -> dict[tuple[int, int, int], float]:
        kind = "fp8" if precision == "fp8" else precision
        return {s: p for s in shapes if (p := self.get(kind, *s)) is not None}

    def to_json(self) -> list[dict[str, Any]]:
        return [
            {"kind": kind, "m": m, "n": n, "k": k, "tflops": None if v is None else significant(v)}
            for (kind, m, n, k), v in sorted(self.table.items())
        ]


# ----------------------------------------------------------------------------- variants
def open_variant(
    name: str, precision: str, args: argparse.Namespace, ctx: dict[str, Any]
) -> tuple[Any, dict]:
    """``(backend with embed_padded, facts)``; raises :class:`Unavailable`."""
    device: torch.device = ctx["device"]
    config: Esm2Config = ctx["config"]
    pad_id = ProteinTokenizer().pad_id
    if precision == "fp8" and (reason := fp8_unavailable_reason(device)) is not None:
        raise Unavailable(reason)
    if name == "engine":
        return _open_engine(precision, args, ctx)
    if name == "eager":
        if precision == "fp8":
            raise Unavailable("eager PyTorch has no fp8 path")
        model = random_esm2(config, device=device, dtype=DTYPES[precision], seed=SEED)
        return TorchBackend(model, config.embed_dim, pad_id, device, DTYPES[precision]), {}
    if name == "compile":
        if (reason := peer_unavailable_reason(precision, device)) is not None:
            raise Unavailable(reason)
        model = random_esm2(config, device=device, dtype=DTYPES[precision], seed=SEED)
        backend = TorchBackend(model, config.embed_dim, pad_id, device, DTYPES[precision])
        peer = compile_backends([backend], precision)
        ctx["finish"] = peer.finish
        return backend, peer.facts
    if name == "fp8-linears":
        if precision != "fp8":
            raise Unavailable("fp8-linears is the fp8 variant of compile: give --precisions fp8")
        model = random_esm2(config, device=device, dtype=torch.bfloat16, seed=SEED)
        converted = convert_linears_to_fp8(model)
        backend = TorchBackend(model, config.embed_dim, pad_id, device, torch.bfloat16)
        peer = compile_backends([backend], "bf16")
        ctx["finish"] = peer.finish
        return backend, {**peer.facts, "quantization": f"engines.inductor_fp8 ({converted} linears)"}
    raise Unavailable(f"unknown variant {name!r} (choose from {', '.join(VARIANTS)})")


def _open_engine(precision: str, args: argparse.Namespace, ctx: dict[str, Any]) -> tuple[Any, dict]:
    from virnucpro_trt.engines.engine_set import open_engine_set

    device: torch.device = ctx["device"]
    folder = ctx["engine_dirs"].get(precision)
    source = "given"
    if folder is None:
        if not args.build:
            raise Unavailable(
                f"no {precision} engine directory: give --engines DIR (`virnucpro-trt build --backend "
                f"inductor --precision {precision}`) or --build"
            )
        folder, source = _built(precision, args, ctx)
    engines = open_engine_set(folder, device, {})
    manifest = engines.manifest
    entry = manifest.models["esm2"]
    facts = {
        "dir": str(folder),
        "source": source,
        "backend": manifest.backend,
        "build_s": manifest.build.seconds,
        "attention": entry.facts.get("attention"),  # what the engine calls, not what `--attention` asked
        "extern_kernels": entry.facts.get("extern_kernels"),
        "inductor_configs": {
            k: v
            for k, v in (entry.facts.get("inductor_configs") or {}).items()
            if k != "aot_inductor.metadata"
        },
        "build_parity": entry.parity.to_json() if entry.parity is not None else {},
    }
    return engines.esm.backend, facts


def _built(precision: str, args: argparse.Namespace, ctx: dict[str, Any]) -> tuple[Path, str]:
    """An inductor engine set built (or reused) in ``--workdir`` by the real build code, which keeps a
    set that is what it would build now (``engines/finished_build.py``)."""
    from virnucpro_trt.bench.models import random_models_in
    from virnucpro_trt.engines.build import BuildSettings, build_engines

    device: torch.device = ctx["device"]
    size = "tiny" if args.tiny else "full"
    models = random_models_in(args.workdir, size, device)  # type: ignore[arg-type]
    folder = args.workdir / f"engines-inductor-{precision}"
    settings = BuildSettings(
        str(models.dnabert), str(models.esm), str(models.classifier), folder, "inductor", precision,
        str(device), args.max_batch_tokens,
    )  # fmt: skip
    outcome = build_engines(settings, ["python3", "benchmarks/profile_esm2.py", "--build"])
    return folder, "built" if outcome.built else "reused"


# ----------------------------------------------------------------------------- one variant
def profile_variant(
    name: str,
    precision: str,
    args: argparse.Namespace,
    ctx: dict[str, Any],
    batch: tuple[np.ndarray, np.ndarray],
) -> dict[str, Any]:
    device: torch.device = ctx["device"]
    row: dict[str, Any] = {"variant": name, "precision": precision, "status": "ok", "reason": None}
    ctx["finish"] = None
    started = time.perf_counter()
    try:
        backend, facts = open_variant(name, precision, args, ctx)
    except Unavailable as exc:
        return {**row, "status": "unavailable", "reason": str(exc)}
    except Exception as exc:  # a build or load that breaks is this variant's failure, not the run's
        return {**row, "status": "failed", "reason": _one_line(exc)}
    try:
        row["facts"] = facts
        ids, mask = batch
        warm = time.perf_counter()
        for _ in range(args.warmup):
            backend.embed_padded(ids, mask)
        synchronize(device)
        row["setup_s"] = round(warm - started, 2)
        row["warmup_s"] = round(time.perf_counter() - warm, 2)
        times = []
        for _ in range(args.forwards):
            synchronize(device)
            t0 = time.perf_counter()
            backend.embed_padded(ids, mask)
            synchronize(device)
            times.append(time.perf_counter() - t0)
        forward_s = statistics.median(times)
        rows, length = ids.shape
        computed = getattr(backend, "computed_shape", None)
        m_rows, m_length = computed(rows, length) if computed else (rows, length)
        tokens = m_rows * m_length
        row.update(
            forward_ms=round(forward_s * 1000, 3),
            forwards_timed=len(times),
            proteins_per_s=round(rows / forward_s, 1),
            computed_batch=[m_rows, m_length],
        )
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities, record_shapes=True) as prof:
            for _ in range(args.profiled):
                backend.embed_padded(ids, mask)
            synchronize(device)
        kernels, calls = records_from_profiler(prof.events(), device.type)
        gemms = ctx["layer_gemms"]
        shapes = sorted({(c.m, c.n, c.k) for c in calls} | {(tokens, g.n, g.k) for g in gemms})
        peaks = ctx["peaks"].for_precision(precision, shapes)
        summary = summarize(kernels, args.profiled, calls, gemms, ctx["config"].num_layers, tokens, peaks)
        row.update(summary.to_json())
        row["idle_ms"] = round(row["forward_ms"] - summary.kernel_ms, 3) if device.type == "cuda" else None
    except Exception as exc:  # a variant that breaks is a row, the others still run
        row.update(status="failed", reason=_one_line(exc))
    finally:
        if ctx["finish"] is not None:
            ctx["finish"]()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:400]}"


# ----------------------------------------------------------------------------- report
def print_table(report: dict[str, Any]) -> None:
    columns = [
        "GEMM",
        "attention",
        "normalisation",
        "activation",
        "quantisation",
        "elementwise+copies",
        "other",
    ]
    head = f"{'variant':22s} {'proteins/s':>10s} {'fwd ms':>9s} " + " ".join(f"{c[:9]:>9s}" for c in columns)
    print("\n" + head + f" {'idle':>7s}")
    for r in report["variants"]:
        label = f"{r['variant']}-{r['precision']}"
        if r["status"] != "ok":
            print(f"{label:22s} {r['status']}: {(r['reason'] or '')[:150]}")
            continue
        cells = " ".join(f"{r['classes'][c]['ms']:9.2f}" for c in columns)
        idle = "-" if r.get("idle_ms") is None else f"{r['idle_ms']:7.2f}"
        print(f"{label:22s} {r['proteins_per_s']:10.1f} {r['forward_ms']:9.2f} {cells} {idle}")
    print("(ms per forward; GEMM share of kernel time and per-shape TFLOP/s vs the measured peak below)")
    for r in report["variants"]:
        if r["status"] != "ok":
            continue
        split = r["gemm_vs_rest"]
        share = "-" if split["gemm_share"] is None else f"{100 * split['gemm_share']:.1f}%"
        print(
            f"{r['variant']}-{r['precision']}: GEMM {split['gemm_ms']:.2f} ms ({share}), "
            f"rest {split['rest_ms']:.2f} ms; shapes from {r['shape_source']}"
        )
        for g in r["gemm_shapes"]:
            peak = "-" if g["peak_tflops"] is None else f"{g['peak_tflops']:.4g}"
            of = "-" if g["of_peak"] is None else f"{100 * g['of_peak']:.0f}%"
            print(f"   {g['linear']!s:9s} {g['m']}x{g['n']}x{g['k']}: {g['calls']:g}/fwd "
                  f"{g['us_per_call']:.1f} us {g['tflops']:.4g} TFLOP/s (peak {peak}, {of})")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precisions", default="bf16,fp8", help="comma-separated: fp32, bf16, fp8")
    parser.add_argument(
        "--variants", default="engine,compile", help=f"comma-separated: {', '.join(VARIANTS)}"
    )
    parser.add_argument(
        "--engines", type=Path, action="append", default=[], help="engine directory (repeatable)"
    )
    parser.add_argument("--build", action="store_true", help="build missing engines into --workdir")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/vt-profile"))
    parser.add_argument("--tiny", action="store_true", help="tiny model on the CPU (tests)")
    parser.add_argument("--device", default=None, help="default: cuda, or cpu with --tiny")
    parser.add_argument("--tokens", type=int, default=168, help="tokens per protein (500 bp reads: 168)")
    parser.add_argument("--max-batch-tokens", type=int, default=32768)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--forwards", type=int, default=5, help="timed forwards (median)")
    parser.add_argument("--profiled", type=int, default=2, help="forwards under the profiler")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cpu" if args.tiny else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device: run on a GPU host, or use --tiny (CPU)")
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [p for p in precisions if p not in PRECISIONS] + [v for v in variants if v not in VARIANTS]
    if bad:
        parser.error(f"unknown precision/variant {', '.join(bad)}")
    from virnucpro_trt.engines.manifest import EngineManifest
    from virnucpro_trt.runtime.device import configure_fp32_reference

    configure_fp32_reference()
    config = TINY_ESM2_CONFIG if args.tiny else ESM2_T36_3B_CONFIG
    engine_dirs = {EngineManifest.read(folder).precision: folder for folder in args.engines}
    ids, mask, workload = workload_batch(args.tokens, args.max_batch_tokens, args.tiny)
    ctx: dict[str, Any] = {
        "device": device, "config": config, "engine_dirs": engine_dirs, "layer_gemms": layer_gemms(config),
        "peaks": Peaks(device), "finish": None,
    }  # fmt: skip
    environment = script_environment(device, with_onnxruntime=False)
    environment.update(
        cudnn=torch.backends.cudnn.version() if device.type == "cuda" else None,
        triton=_version("triton"),
        torchao=torchao_version(),
    )
    report: dict[str, Any] = {
        "benchmark": "profile_esm2",
        "command": " ".join(
            ["python3", "benchmarks/profile_esm2.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "environment": environment,
        "workload": workload,
        "kernel_classes": [
            {"class": c.name, "pattern": c.pattern, "catches": c.catches} for c in KERNEL_CLASSES
        ]
        + [{"class": CLASS_NAMES[-1], "pattern": None, "catches": "everything else (reductions, unknown)"}],
        "peaks": {},
        "variants": [],
    }

    def save() -> None:
        if args.json:
            write_json(report, args.json)

    tokens = int(ids.shape[0] * ids.shape[1])
    dense = 8192 if device.type == "cuda" else 256
    for kind in ("bf16", "fp8", "fp8-fast-accum") if device.type == "cuda" else ("fp32", "bf16"):
        ctx["peaks"].get(kind, dense, dense, dense)
        for g in ctx["layer_gemms"]:
            ctx["peaks"].get(kind, tokens, g.n, g.k)
    for precision in precisions:
        for variant in variants:
            print(f"{variant}-{precision} ...", flush=True)
            row = profile_variant(variant, precision, args, ctx, (ids, mask))
            report["variants"].append(row)
            report["peaks"] = {"measured": ctx["peaks"].to_json()}
            save()
            print(
                f"{variant}-{precision}: {row['status']} {row.get('proteins_per_s', row.get('reason'))}",
                flush=True,
            )
    report["peaks"] = {"measured": ctx["peaks"].to_json()}
    save()
    print_table(report)
    return 0


def _version(name: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    raise SystemExit(main())
