"""Export a native encoder to ONNX, check it, and validate it on ONNX Runtime right away.

The file has inputs ``input_ids`` and ``attention_mask`` (int64 [batch, sequence]) and the output
``pooled`` (float32 [batch, D]); both axes are dynamic within a :class:`ShapeRange`. It feeds the
``onnxruntime`` backend directly and the ``tensorrt`` backend's ONNX parser.

Exporter: ``torch.onnx.export(..., dynamo=True)`` with ``dynamic_shapes`` (torch.export ``Dim`` bounds).
Both exporters produce correct graphs for these encoders (measured on the tiny models: max |diff| to
torch about 5e-7 in fp32 with either); the dynamo one is used because it is the maintained one (the
TorchScript exporter is deprecated), it proves the shape bounds while tracing, its graph is about half
the nodes (no Constant/Shape chains), and its ``onnx_ir`` model can be edited and written with external
data without ever building a >2 GB protobuf. Its cost is time: about 6-9 s per tiny model on 2 CPU
cores (torch.export and decompositions) against 0.3 s for the TorchScript exporter.

Precision: the model is cast to fp32/fp16/bf16 *in place* before tracing (the build computes its fp32
reference first). The encoders keep LayerNorm statistics, rotary tables, the ESM residual stream and
pooling in fp32 with explicit casts, so the graph has the same fp32 islands; the attention Softmax is
moved to fp32 by a graph pass. Every LayerNormalization is checked to have inputs of one type (the
mixed fp32/fp16 LayerNormalization ONNX Runtime refuses, docs/models.md). fp8 is not exported: it needs Q/DQ
calibration, which this project does not do.

Weights larger than ``external_data_threshold`` (1.5 GB: full-size ESM-2 3B is 5.6 GB in bf16, 11 GB
in fp32) go to ONE side file ``<name>.onnx.data`` next to the graph, which keeps the graph under
protobuf's 2 GB limit; smaller models are a single file.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from virnucpro_trt.engines.spec import ModelKind, ShapeRange
from virnucpro_trt.errors import BuildError, UserError

log = logging.getLogger(__name__)

INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "pooled"
MIN_OPSET = 18  # LayerNormalization is a standard op from 17; 18 is what the dynamo exporter targets
EXTERNAL_DATA_THRESHOLD = 1_500_000_000  # bytes of weights; protobuf's hard limit is 2 GiB
EXTERNAL_TENSOR_MIN_BYTES = 1024  # scalars and shape constants stay inside the graph file
ONNX_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}
EXPORTER = "torch.onnx.export(dynamo=True)"


def onnx_dtype(precision: str) -> torch.dtype:
    """The torch dtype an ONNX export in ``precision`` carries its weights in."""
    if precision == "fp8":
        raise UserError(
            "fp8 is not available for ONNX exports: fp8 needs Q/DQ nodes from a calibration step, which "
            "this project does not produce; use fp32, fp16 or bf16"
        )
    if precision not in ONNX_DTYPES:
        raise UserError(
            f"unknown precision {precision!r} for ONNX export; available: {', '.join(ONNX_DTYPES)}"
        )
    return ONNX_DTYPES[precision]


def external_data_name(out_path: Path) -> str:
    """``esm2.sm90.bf16.onnx`` -> ``esm2.sm90.bf16.onnx.data`` (relative: the pair can be moved)."""
    return out_path.name + ".data"


def export_onnx(
    model: torch.nn.Module,
    kind: ModelKind,
    example: tuple[torch.Tensor, torch.Tensor],
    shapes: ShapeRange,
    precision: str,
    out_path: Path,
    opset: int = MIN_OPSET,
    *,
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
    fp32_softmax: bool = True,
    validate_providers: list[Any] | None = None,
    validate: bool = True,
) -> dict[str, Any]:
    """Export ``model`` (cast in place to ``precision``) to ``out_path`` and return facts for the manifest.

    ``example`` is a padded int64 batch inside ``shapes``. ``validate_providers`` are the ONNX Runtime
    providers the file is run on right after writing (default: CPU); the facts carry the max abs
    difference to the torch model on the example (``validation_max_abs_diff``), or the reason it could not
    be run (``validation_error``, e.g. ORT CPU has no bf16 MatMul). ``validate=False`` skips that run
    (the TensorRT build does: it gates the engine itself, and ORT CPU on a 3B model takes minutes).
    """
    from virnucpro_trt.engines import onnx_graph  # imports onnx_ir: only when exporting

    dtype = onnx_dtype(precision)
    if opset < MIN_OPSET:
        raise UserError(f"ONNX opset {opset} is too old: LayerNormalization needs opset >= {MIN_OPSET}")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    model = model.to(dtype=dtype).eval()
    device = next(model.parameters()).device
    ids, mask = fit_example(*example, shapes)
    ids, mask = ids.to(device), mask.to(device)

    started = time.perf_counter()
    program = _export(model, (ids, mask), shapes, opset, kind, precision)
    export_s = time.perf_counter() - started
    graph = program.model.graph
    upcast = onnx_graph.upcast_softmax(graph) if fp32_softmax else 0
    onnx_graph.strip_trace_metadata(graph)
    mixed = onnx_graph.mixed_layernorms(graph)
    if mixed:
        raise BuildError(f"{kind} {precision} export has LayerNormalization with mixed input types: {mixed}")
    _check_signature(program.model, kind)
    for key, value in (("kind", kind), ("precision", precision), ("shapes", str(shapes.to_json()))):
        program.model.metadata_props[f"virnucpro_trt.{key}"] = value

    weight_bytes = _initializer_bytes(graph)
    external = weight_bytes > external_data_threshold
    files = _save(program.model, out_path, external)
    _check_model(out_path)
    facts: dict[str, Any] = {
        "exporter": EXPORTER,
        "opset": opset,
        "precision": precision,
        "export_seconds": round(export_s, 2),
        "weight_bytes": weight_bytes,
        "file_bytes": sum(p.stat().st_size for p in files),
        "files": [p.name for p in files],
        "external_data": [p.name for p in files if p != out_path],
        "softmax_upcast_to_fp32": upcast,
        "op_dtypes": onnx_graph.float_op_dtypes(graph),
        "library_versions": exporter_versions(),
    }
    if validate:
        with torch.inference_mode():
            reference = model(ids, mask).float().cpu().numpy()
        feeds = (ids.cpu().numpy(), mask.cpu().numpy())
        facts.update(validate_onnx(out_path, program.model, *feeds, reference, validate_providers))
    else:
        facts.update(validation_max_abs_diff=None, validation_error="skipped by the caller")
    layout = "with external data" if external else "single file"
    diff = facts.get("validation_max_abs_diff")
    size = _human(facts["file_bytes"])
    log.info(
        "exported %s %s to %s (%s, %s) in %.1fs; validation max |diff| %s",
        kind,
        precision,
        out_path.name,
        size,
        layout,
        export_s,
        diff,
    )
    return facts


def fit_example(
    ids: torch.Tensor, mask: torch.Tensor, shapes: ShapeRange
) -> tuple[torch.Tensor, torch.Tensor]:
    """The example batch, adjusted so that tracing does not specialise a dynamic axis.

    torch.export treats a size of 1 as a constant, so a batch of one row is repeated to two and a
    sequence of one token is padded (mask 0: padded positions never reach the output). A fixed axis
    (min == max) is made exactly that size.
    """
    if ids.shape != mask.shape or ids.dim() != 2:
        raise BuildError(
            f"example input_ids {tuple(ids.shape)} / attention_mask {tuple(mask.shape)} must be [B, T]"
        )
    ids, mask = ids.to(torch.int64), mask.to(torch.int64)
    want_batch = shapes.max_batch if shapes.min_batch == shapes.max_batch else max(2, ids.shape[0])
    want_batch = min(want_batch, shapes.max_batch)
    if ids.shape[0] < want_batch:
        reps = -(-want_batch // ids.shape[0])
        ids, mask = ids.repeat(reps, 1), mask.repeat(reps, 1)
    ids, mask = ids[:want_batch], mask[:want_batch]
    length = ids.shape[1]
    if length > shapes.max_length:
        raise BuildError(f"example has {length} tokens, more than the shape range's {shapes.max_length}")
    want_length = shapes.max_length if shapes.min_length == shapes.max_length else max(2, shapes.min_length)
    want_length = min(max(length, want_length), shapes.max_length)
    if length < want_length:
        extra = want_length - length
        ids = torch.cat([ids, ids[:, -1:].expand(-1, extra)], dim=1)
        mask = torch.cat([mask, torch.zeros_like(mask[:, :1]).expand(-1, extra)], dim=1)
    return ids.contiguous(), mask.contiguous()


def _dynamic_shapes(shapes: ShapeRange) -> dict[str, dict[int, Any]]:
    from torch.export import Dim

    axes: dict[int, Any] = {}
    if shapes.min_batch < shapes.max_batch:
        axes[0] = Dim("batch", min=shapes.min_batch, max=shapes.max_batch)
    if shapes.min_length < shapes.max_length:
        axes[1] = Dim("sequence", min=shapes.min_length, max=shapes.max_length)
    return {name: dict(axes) for name in INPUT_NAMES}


QUIET_LOGGERS = {
    "torch.onnx._internal.exporter._registration": logging.ERROR,  # one line per absent torchvision op
    "onnx_ir": logging.WARNING,  # one INFO line per deduplicated initializer: hundreds for ESM-2 3B
    "onnxscript": logging.WARNING,
}


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's per-op chatter (logs and warnings) for the duration of one export."""
    saved = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _export(
    model: torch.nn.Module,
    example: tuple[torch.Tensor, torch.Tensor],
    shapes: ShapeRange,
    opset: int,
    kind: str,
    precision: str,
) -> Any:
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter's translator; fail early with a clear message)
    except ImportError as exc:
        raise BuildError(f"ONNX export needs onnxscript, which is not importable here ({exc})") from None
    try:
        with _quiet_exporter(), torch.inference_mode(False), torch.no_grad():
            program = torch.onnx.export(
                model,
                example,
                input_names=list(INPUT_NAMES),
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamo=True,
                dynamic_shapes=_dynamic_shapes(shapes),
                optimize=True,
                verbose=False,
            )
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BuildError(f"ONNX export of {kind} ({precision}) failed: {first}") from exc
    if program is None:
        raise BuildError(f"ONNX export of {kind} ({precision}) returned no program")
    return program


def _check_signature(model: Any, kind: str) -> None:
    """The exported inputs/outputs are exactly what the runners bind: names, int64 ids, fp32 output."""
    from virnucpro_trt.engines.onnx_graph import ir

    graph = model.graph
    got_inputs = [(v.name, v.dtype) for v in graph.inputs]
    want_inputs = [(name, ir.DataType.INT64) for name in INPUT_NAMES]
    got_outputs = [(v.name, v.dtype) for v in graph.outputs]
    if got_inputs != want_inputs or got_outputs != [(OUTPUT_NAME, ir.DataType.FLOAT)]:
        raise BuildError(
            f"{kind} export has inputs {got_inputs} and outputs {got_outputs}; expected {want_inputs} and "
            f"[({OUTPUT_NAME!r}, FLOAT)]"
        )


def _initializer_bytes(graph: Any) -> int:
    return sum(v.const_value.nbytes for v in graph.initializers.values() if v.const_value is not None)


def _save(model: Any, out_path: Path, external: bool) -> list[Path]:
    """Write the graph (and, if ``external``, every tensor over 1 KiB to one side file)."""
    from virnucpro_trt.engines.onnx_graph import ir

    data_path = out_path.with_name(external_data_name(out_path))
    with contextlib.suppress(FileNotFoundError):
        data_path.unlink()  # a stale side file from an earlier, larger export must not linger
    if external:
        ir.save(
            model,
            out_path,
            external_data=data_path.name,
            size_threshold_bytes=EXTERNAL_TENSOR_MIN_BYTES,
        )
        return [out_path, data_path]
    ir.save(model, out_path)
    return [out_path]


def _check_model(path: Path) -> None:
    """``onnx.checker`` by path: the only form that follows external data and works past 2 GB."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise BuildError(f"{path.name} fails onnx.checker: {str(exc).strip().splitlines()[0]}") from exc


def validate_onnx(
    path: Path,
    model: Any,
    ids: np.ndarray,
    mask: np.ndarray,
    reference: np.ndarray,
    providers: list[Any] | None = None,
) -> dict[str, Any]:
    """Run ``path`` once on ONNX Runtime and compare with ``reference`` (optimum's post-export check).

    If the provider cannot create the session (ORT CPU has no bf16 kernels for MatMul and friends), the
    facts say so precisely, listing every op it lacks, instead of failing the export: the file is fine,
    this machine just cannot run it.
    """
    from virnucpro_trt.engines.onnx_graph import missing_kernels
    from virnucpro_trt.engines.onnx_session import CPU_PROVIDER, create_session, onnxruntime_problem

    providers = providers or [CPU_PROVIDER]
    facts: dict[str, Any] = {
        "validation_provider": _provider_name(providers[0]),
        "validation_batch": list(ids.shape),
        "validation_max_abs_diff": None,
    }
    problem = onnxruntime_problem()
    if problem:
        facts["validation_error"] = problem
        return facts
    try:
        session = create_session(path, providers)
    except Exception as exc:
        facts["validation_error"] = str(exc).strip().splitlines()[0]
        missing = missing_kernels(model, providers)
        if missing:
            facts["validation_missing_kernels"] = sorted(missing)
        return facts
    (out,) = session.run([OUTPUT_NAME], {INPUT_NAMES[0]: ids, INPUT_NAMES[1]: mask})
    facts["validation_max_abs_diff"] = max_abs_diff(out, reference)
    return facts


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Max |a - b| where NaN in both counts as equal (an empty ESM row is NaN by design) and NaN in
    only one of them counts as infinite."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    both_nan = np.isnan(a) & np.isnan(b)
    diff = np.where(both_nan, 0.0, np.abs(a - b))
    diff = np.where(np.isnan(diff), np.inf, diff)
    return float(diff.max()) if diff.size else 0.0


def _provider_name(provider: Any) -> str:
    return provider[0] if isinstance(provider, tuple) else str(provider)


def exporter_versions() -> dict[str, str]:
    import onnx
    import onnxscript

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxscript": onnxscript.__version__}


def _human(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e8 else f"{size / 1e6:.2f} MB"
