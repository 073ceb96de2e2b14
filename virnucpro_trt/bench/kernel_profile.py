"""Where one encoder forward spends its time, kernel by kernel: classes, GEMM shapes, achieved TFLOP/s.

``benchmarks/profile_esm2.py`` runs forwards under ``torch.profiler`` and hands the events here. Each
kernel (on CUDA; on a CPU, each operator's self time) is put in one class by its name, the first rule of
:data:`KERNEL_CLASSES` that matches (the other classes its name also matches are kept: a LayerNorm fused
with the fp8 quantisation of its output is one kernel, ``quantisation`` + ``normalisation``).

GEMM shapes come from the operators that launched the GEMM kernels (``aten::mm``/``addmm``/``_scaled_mm``
with their input shapes: eager PyTorch and ``torch.compile``). An AOTInductor engine calls cuBLAS through
its C shims, which the profiler does not see as operators, so for it the GEMM kernels are matched to the
model's linear layers by order: a transformer layer runs its GEMMs in a fixed order (ESM-2: qkv,
out_proj, fc1, fc2), so when a forward has exactly layers x that many GEMM kernels, the i-th belongs to
linear ``i mod 4``; otherwise the shapes stay unknown (``shape_source`` says which applied).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

OTHER = "other"


@dataclass(frozen=True)
class KernelClass:
    name: str
    pattern: str  # case-insensitive regular expression searched in the kernel (or operator) name
    catches: str


KERNEL_CLASSES: tuple[KernelClass, ...] = (
    KernelClass(
        "attention",
        r"fmha|flash|attention|sdpa",
        "fused attention: memory-efficient (fmha_cutlassF_*), FlashAttention (flash_fwd_*), cuDNN SDPA "
        "(cudnn_*sdpa*); CPU: aten::_scaled_dot_product_*",
    ),
    KernelClass(
        "GEMM",
        r"^(?!triton_(?:poi|per|red)_)(?:.*(?:gemm|nvjet|xmma|wgmma|cutlass|cublas|splitk|gemv|scaled_mm"
        r"|triton_tem_\w*mm)|aten::(?:mm|addmm|bmm|linear|matmul)$|.*mkldnn_?(?:linear|matmul|mm))",
        "cuBLAS/cuBLASLt (sm90_xmma_gemm_*, nvjet_*, splitKreduce), CUTLASS (row-wise fp8 _scaled_mm), "
        "Inductor GEMM templates (triton_tem_*mm*); CPU: aten::mm/addmm/linear, mkldnn. Inductor's "
        "pointwise/reduction kernels (triton_poi/per/red_*) never count, even when named after an addmm "
        "whose epilogue they fuse",
    ),
    KernelClass(
        "quantisation",
        r"amax|float8|fp8|e4m3|e5m2|quantiz",
        "fp8 activation scaling and casts (row amax, divide, clamp, cast to e4m3): Inductor names its "
        "kernels after their ops (triton_*_abs_amax_clamp_div_*)",
    ),
    KernelClass(
        "normalisation",
        r"layer_?norm|rms_?norm|var_mean|rsqrt|batch_?norm",
        "LayerNorm (at::native layer_norm kernels, triton_*_native_layer_norm_*, var_mean)",
    ),
    KernelClass(
        "activation",
        r"gelu|erf|silu|relu|tanh|sigmoid",
        "GELU (erf) and other activations",
    ),
    KernelClass(
        "elementwise+copies",
        r"elementwise|copy|memcpy|memset|cat|fill|index|embedding|gather|scatter|clone|contiguous|"
        r"transpose|permute|triton_poi|add|mul|sub|div|neg|where|mask|cos|sin|arange|expand|pad",
        "pointwise work and data movement: residual adds, casts, rotary (sin/cos), masks, memcpy/memset, "
        "the embedding lookup, Inductor's other pointwise kernels (triton_poi_*)",
    ),
)
"""Rules in order; the first match is the kernel's class, no match is ``other`` (reductions such as the
pooling sum, anything unknown)."""

CLASS_NAMES: tuple[str, ...] = (*(c.name for c in KERNEL_CLASSES), OTHER)
_COMPILED = [(c.name, re.compile(c.pattern, re.IGNORECASE)) for c in KERNEL_CLASSES]
# cuBLAS's split-K reduction is GEMM time but not a GEMM of its own (it would shift the layer order).
_GEMM_AUXILIARY = re.compile(r"splitkreduce|reduce_kernel", re.IGNORECASE)
GEMM_OPS = {"aten::mm", "aten::addmm", "aten::_scaled_mm"}


def classify(name: str) -> tuple[str, tuple[str, ...]]:
    """``(class, every class the name matches)`` of a kernel or operator name."""
    matched = tuple(cls for cls, rx in _COMPILED if rx.search(name))
    return (matched[0] if matched else OTHER), matched


@dataclass(frozen=True)
class KernelRecord:
    """One kernel execution (CUDA) or one operator's self time (CPU), in time order."""

    name: str
    us: float


@dataclass(frozen=True)
class GemmCall:
    """A GEMM whose shape is known: ``[m, k] x [k, n]``, and the kernel time it took."""

    m: int
    n: int
    k: int
    us: float
    op: str


@dataclass(frozen=True)
class LayerGemm:
    """A linear layer of the model as a GEMM: ``name``, out features ``n``, in features ``k``."""

    name: str
    n: int
    k: int


def gemm_shape(op: str, input_shapes: Sequence[Sequence[int]] | None) -> tuple[int, int, int] | None:
    """(m, n, k) of an ``aten::mm``/``addmm``/``_scaled_mm`` call from its recorded input shapes."""
    shapes = [list(s) for s in (input_shapes or []) if isinstance(s, list | tuple)]
    operands = shapes[1:3] if op == "aten::addmm" else shapes[:2]
    if len(operands) < 2 or any(len(s) != 2 for s in operands):
        return None
    (m, k), (k2, n) = operands
    return (int(m), int(n), int(k)) if k == k2 else None


@dataclass
class ProfileSummary:
    """Per forward: time by class, GEMM time against the rest, and each GEMM shape's achieved TFLOP/s."""

    forwards: int
    kernel_ms: float
    classes: dict[str, dict[str, float]]
    class_sets: dict[str, float]
    gemm_shapes: list[dict[str, Any]]
    shape_source: str | None
    top_kernels: list[dict[str, Any]] = field(default_factory=list)

    @property
    def gemm_ms(self) -> float:
        return self.classes["GEMM"]["ms"]

    def to_json(self) -> dict[str, Any]:
        rest = self.kernel_ms - self.gemm_ms
        return {
            "forwards_profiled": self.forwards,
            "kernel_ms": round(self.kernel_ms, 4),
            "gemm_vs_rest": {
                "gemm_ms": round(self.gemm_ms, 4),
                "rest_ms": round(rest, 4),
                "gemm_share": round(self.gemm_ms / self.kernel_ms, 4) if self.kernel_ms else None,
            },
            "classes": self.classes,
            "class_sets_ms": self.class_sets,
            "gemm_shapes": self.gemm_shapes,
            "shape_source": self.shape_source,
            "top_kernels": self.top_kernels,
        }


def summarize(
    kernels: Iterable[KernelRecord],
    forwards: int,
    gemm_calls: Sequence[GemmCall] = (),
    layer_gemms: Sequence[LayerGemm] = (),
    layers: int = 0,
    tokens: int = 0,
    peaks: dict[tuple[int, int, int], float] | None = None,
    top: int = 25,
) -> ProfileSummary:
    """Summarise ``forwards`` profiled forwards. ``gemm_calls`` are the GEMMs with shapes from their
    operators; without them, ``layer_gemms`` x ``layers`` with ``tokens`` rows attribute the GEMM
    kernels by order (see the module docstring). ``peaks`` maps (m, n, k) to the measured TFLOP/s."""
    records = [k for k in kernels if k.us > 0]
    forwards = max(forwards, 1)
    total_us = sum(k.us for k in records)
    by_class: dict[str, list[float]] = {name: [0.0, 0] for name in CLASS_NAMES}  # type: ignore[misc]
    by_set: dict[str, float] = defaultdict(float)
    by_name: dict[str, list[Any]] = {}
    gemm_kernels: list[KernelRecord] = []
    for record in records:
        cls, matched = classify(record.name)
        by_class[cls][0] += record.us
        by_class[cls][1] += 1
        by_set["+".join(matched) or OTHER] += record.us
        entry = by_name.setdefault(record.name, [cls, matched, 0, 0.0])
        entry[2] += 1
        entry[3] += record.us
        if cls == "GEMM" and not _GEMM_AUXILIARY.search(record.name):
            gemm_kernels.append(record)
    classes = {
        name: {
            "ms": round(us / forwards / 1000, 4),
            "share": round(us / total_us, 4) if total_us else 0.0,
            "kernels": round(count / forwards, 2),
        }
        for name, (us, count) in by_class.items()
    }
    calls, source = _gemm_calls(gemm_calls, gemm_kernels, forwards, layer_gemms, layers, tokens)
    ranked = sorted(by_name.items(), key=lambda item: -item[1][3])[:top]
    top_kernels = [
        {
            "name": name[:200],
            "class": cls,
            "classes": list(matched),
            "calls": round(n / forwards, 2),
            "ms": round(us / forwards / 1000, 4),
        }
        for name, (cls, matched, n, us) in ranked
    ]
    return ProfileSummary(
        forwards,
        total_us / forwards / 1000,
        classes,
        {k: round(v / forwards / 1000, 4) for k, v in sorted(by_set.items(), key=lambda kv: -kv[1])},
        _shape_table(calls, forwards, peaks or {}),
        source,
        top_kernels,
    )


def _gemm_calls(
    from_ops: Sequence[GemmCall],
    gemm_kernels: list[KernelRecord],
    forwards: int,
    layer_gemms: Sequence[LayerGemm],
    layers: int,
    tokens: int,
) -> tuple[list[tuple[str | None, GemmCall]], str | None]:
    if from_ops:
        names = {(g.n, g.k): g.name for g in layer_gemms}
        return [(names.get((c.n, c.k)), c) for c in from_ops], "profiler operators (input shapes)"
    per_layer = len(layer_gemms)
    if per_layer and layers and tokens and len(gemm_kernels) == forwards * layers * per_layer:
        calls = []
        for i, kernel in enumerate(gemm_kernels):
            gemm = layer_gemms[i % per_layer]
            calls.append((gemm.name, GemmCall(tokens, gemm.n, gemm.k, kernel.us, kernel.name)))
        return calls, f"layer order ({per_layer} GEMM kernels per layer x {layers} layers)"
    return [], None


def _shape_table(
    calls: list[tuple[str | None, GemmCall]], forwards: int, peaks: dict[tuple[int, int, int], float]
) -> list[dict[str, Any]]:
    groups: dict[tuple[str | None, int, int, int], list[float]] = defaultdict(list)
    for name, call in calls:
        groups[(name, call.m, call.n, call.k)].append(call.us)
    table = []
    for (name, m, n, k), times in sorted(groups.items(), key=lambda kv: -sum(kv[1])):
        mean_us = sum(times) / len(times)
        tflops = 2.0 * m * n * k / (mean_us * 1e-6) / 1e12
        peak = peaks.get((m, n, k))
        table.append(
            {
                "linear": name,
                "m": m,
                "n": n,
                "k": k,
                "calls": round(len(times) / forwards, 2),
                "ms": round(sum(times) / forwards / 1000, 4),
                "us_per_call": round(mean_us, 2),
                "tflops": significant(tflops),
                "peak_tflops": None if peak is None else significant(peak),
                "of_peak": None if not peak else round(tflops / peak, 4),
            }
        )
    return table


def significant(value: float, digits: int = 4) -> float:
    """Rounded to ``digits`` significant digits (TFLOP/s span 1e-3 on a CPU to 1e3 on an H200)."""
    return float(f"{value:.{digits}g}")


def records_from_profiler(
    events: Iterable[Any], device_type: str
) -> tuple[list[KernelRecord], list[GemmCall]]:
    """Kernel records and shaped GEMM calls from ``torch.profiler``'s ``events()``.

    CUDA: every device-side event (kernels, memcpy, memset) by its GPU duration; GEMM shapes from the
    operators that launched GEMM kernels. CPU: every operator's self time (nested operators would
    otherwise count twice); GEMM shapes from the GEMM operators themselves.
    """
    from torch.autograd import DeviceType

    events = list(events)
    kernels: list[KernelRecord] = []
    calls: list[GemmCall] = []
    if device_type == "cuda":
        device_events = [e for e in events if e.device_type == DeviceType.CUDA]
        device_events.sort(key=lambda e: e.time_range.start)
        kernels = [KernelRecord(e.name, float(e.time_range.elapsed_us())) for e in device_events]
        for op in events:
            if op.device_type != DeviceType.CPU or op.name not in GEMM_OPS or not op.kernels:
                continue
            shape = gemm_shape(op.name, op.input_shapes)
            gemm_us = sum(k.duration for k in op.kernels if classify(k.name)[0] == "GEMM")
            if shape is not None and gemm_us > 0:
                calls.append(GemmCall(*shape, float(gemm_us), op.name))
        return kernels, calls
    cpu_events = [e for e in events if e.device_type == DeviceType.CPU]
    cpu_events.sort(key=lambda e: e.time_range.start)
    for op in cpu_events:
        kernels.append(KernelRecord(op.name, float(op.self_cpu_time_total)))
        if op.name in GEMM_OPS and (shape := gemm_shape(op.name, op.input_shapes)) is not None:
            calls.append(GemmCall(*shape, float(op.self_cpu_time_total), op.name))
    return kernels, calls
