"""The ``tensorrt`` engine backend: ONNX export -> TensorRT plan, run with torch CUDA tensors.

NOT RUN HERE. TensorRT cannot be installed on this project's machines (its builder wheels download
from a host they cannot reach; only the lean runtime exists, which cannot build). This module is written
against the TensorRT 10 Python API documentation and checked only through unit tests with a fake
``trt`` namespace (:mod:`tests.engines.test_tensorrt_logic`); the real build/run test is marked
``tensorrt`` and skips here. Treat the first run on a machine with TensorRT as the first test.

Build (:meth:`TensorRTBackend.build`):

1. export the encoder to ONNX with :func:`~virnucpro_trt.engines.onnx_export.export_onnx` in the
   precision the plan asks for (a temporary folder beside the engines, removed afterwards unless
   ``options.extra["keep_onnx"]``; large models use an external-data side file, which the parser finds);
2. ``trt.Builder`` network (strongly typed where TensorRT has it, see
   :mod:`~virnucpro_trt.engines.tensorrt_plan`), ``OnnxParser.parse_from_file`` with every parser error
   reported;
3. one optimisation profile from the :class:`ShapeRange` (min/opt/max for both inputs), precision
   flags, ``options.hardware_compatible`` -> ``HardwareCompatibilityLevel.AMPERE_PLUS``, workspace limit
   (``options.extra["tensorrt_workspace_bytes"]``), ``options.extra["tensorrt_version_compatible"]``;
4. the timing cache is read from ``options.timing_cache`` and written back after the build (it is shared
   by every engine of a directory and makes rebuilds much faster);
5. the serialized plan is written to ``out_path``, with a ``.plan.json`` sidecar (TensorRT version, tensor
   names, the plan) that loading reads.

Run (:class:`TensorRTRunner`): ``trt.Runtime`` deserializes the plan, one execution context with
user-managed activation memory where TensorRT allows it (sized per batch, not for the profile's
max-batch x max-length corner), and per batch ``set_input_shape`` + ``set_tensor_address`` on torch CUDA
tensors + ``execute_async_v3`` on torch's current stream. ``tensorrt`` is imported lazily.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from virnucpro_trt.engines import tensorrt_plan as tp
from virnucpro_trt.engines.onnx_export import INPUT_NAMES, OUTPUT_NAME, export_onnx
from virnucpro_trt.engines.spec import BuildOptions, BuiltArtifact, ModelKind, ShapeRange
from virnucpro_trt.errors import BuildError, EngineMismatchError, RunFailure, ShapeRangeError, UserError
from virnucpro_trt.runtime.out_of_memory import device_memory_errors

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "bf16")


def import_tensorrt() -> Any:
    import tensorrt

    return tensorrt


def tensorrt_problem() -> str | None:
    """Why TensorRT cannot build here (one line), or ``None``."""
    try:
        trt = import_tensorrt()
    except Exception as exc:  # ImportError, or a broken install failing to load its libraries
        return f"TensorRT is not importable here ({exc})"
    if not hasattr(trt, "Builder") or not hasattr(trt, "OnnxParser"):
        version = getattr(trt, "__version__", "?")
        return f"the installed TensorRT {version} has no builder/ONNX parser (runtime only)"
    return None


def make_logger(trt: Any) -> Any:
    """A ``trt.ILogger`` that forwards to Python logging and keeps the errors for the exception text."""

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            name = getattr(severity, "name", str(severity))
            if name in ("INTERNAL_ERROR", "ERROR"):
                self.errors.append(msg)
                log.error("TensorRT: %s", msg)
            elif name == "WARNING":
                log.warning("TensorRT: %s", msg)
            else:
                log.debug("TensorRT: %s", msg)

    return _Logger()


class TensorRTBackend:
    """:class:`~virnucpro_trt.engines.spec.EngineBackend` for TensorRT plans."""

    name = "tensorrt"
    extension = "plan"

    def availability(self, device: torch.device, precision: str) -> str | None:
        if precision == "fp8":
            return f"fp8 is not built: {tp.FP8_NOTE}, and this project does not calibrate"
        if precision not in PRECISIONS:
            return f"unknown precision {precision!r} (TensorRT engines: {', '.join(PRECISIONS)})"
        problem = tensorrt_problem()
        if problem:
            return problem
        if device.type != "cuda":
            return f"TensorRT engines need a CUDA device, not {device.type}"
        if not torch.cuda.is_available():
            return f"torch sees no CUDA device (torch {torch.__version__})"
        try:
            import onnxscript  # noqa: F401
        except ImportError as exc:
            return f"onnxscript is not importable here ({exc}); the ONNX export needs it"
        try:
            tp.plan_build(precision, ShapeRange(1, 1, 1, 1, 1, 1), tp.trt_enum_names(import_tensorrt()))
        except BuildError as exc:
            return str(exc)
        return None

    def library_versions(self) -> dict[str, str]:
        """A plan only deserializes with the TensorRT version that built it (version-compatible plans
        excepted, which the manifest does not distinguish)."""
        try:
            return {"tensorrt": str(import_tensorrt().__version__)}
        except Exception:
            return {"tensorrt": "none"}

    def build(
        self,
        model: torch.nn.Module,
        kind: ModelKind,
        example: tuple[torch.Tensor, torch.Tensor],
        shapes: ShapeRange,
        precision: str,
        device: torch.device,
        out_path: Path,
        options: BuildOptions,
    ) -> BuiltArtifact:
        reason = self.availability(device, precision)
        if reason:
            raise UserError(f"cannot build a {precision} TensorRT engine on {device}: {reason}")
        trt = import_tensorrt()
        out_path = Path(out_path)
        extra = options.extra
        plan = tp.plan_build(
            precision,
            shapes,
            tp.trt_enum_names(trt),
            strongly_typed=extra.get("tensorrt_strongly_typed"),
            hardware_compatible=options.hardware_compatible,
            version_compatible=bool(extra.get("tensorrt_version_compatible", False)),
            workspace_bytes=extra.get("tensorrt_workspace_bytes"),
            optimization_level=extra.get("tensorrt_optimization_level"),
        )
        workdir = Path(options.workdir or out_path.parent)
        workdir.mkdir(parents=True, exist_ok=True)
        keep_onnx = bool(extra.get("keep_onnx", False))
        onnx_dir = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.onnx-", dir=workdir))
        try:
            onnx_path = onnx_dir / f"{out_path.stem}.onnx"
            onnx_facts = export_onnx(
                model,
                kind,
                example,
                shapes,
                plan.onnx_precision,
                onnx_path,
                options.opset,
                fp32_softmax=bool(extra.get("onnx_fp32_softmax", True)),
                validate=bool(extra.get("tensorrt_validate_onnx", False)),
            )
            with torch.cuda.device(device):
                facts = build_plan_file(trt, onnx_path, plan, out_path, options.timing_cache, kind)
        finally:
            if not keep_onnx:
                shutil.rmtree(onnx_dir, ignore_errors=True)
        facts["onnx"] = onnx_facts
        if keep_onnx:
            facts["onnx_dir"] = str(onnx_dir)
        sidecar = tp.write_sidecar(out_path, {**facts, "kind": kind, "shapes": shapes.to_json()})
        return BuiltArtifact(path=out_path, files=[out_path, sidecar], facts=facts)

    def load(
        self,
        path: Path,
        kind: ModelKind,
        device: torch.device,
        precision: str,
        dim: int,
        pad_id: int,
        shapes: ShapeRange,
    ) -> TensorRTRunner:
        if device.type != "cuda":
            raise UserError(f"TensorRT engines run on CUDA devices, not {device}")
        problem = tensorrt_problem()
        if problem and "runtime only" not in problem:  # a runtime-only TensorRT can still load plans
            raise UserError(f"cannot run the {kind} TensorRT engine: {problem}")
        return TensorRTRunner(Path(path), kind, device, dim, pad_id, shapes)


def build_plan_file(
    trt: Any, onnx_path: Path, plan: tp.BuildPlan, out_path: Path, timing_cache: Path | None, kind: str
) -> dict[str, Any]:
    """Parse ``onnx_path``, build with ``plan``, write the plan and the timing cache; returns facts."""
    logger = make_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(tp.network_creation_flags(trt, plan))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        shown = "; ".join(errors[:3]) + (f" (+{len(errors) - 3} more)" if len(errors) > 3 else "")
        raise BuildError(
            f"TensorRT {trt.__version__} cannot parse the {kind} ONNX graph: {shown or 'no detail'}"
        )
    pinned = tp.pin_fp32_layers(trt, network) if plan.pin_fp32_layers else 0
    config = builder.create_builder_config()
    cache_in = tp.read_timing_cache(timing_cache)
    cache = tp.apply_plan(trt, builder, config, plan, cache_in)
    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    build_s = time.perf_counter() - started
    if serialized is None:
        detail = "; ".join(logger.errors[-3:]) or "see the TensorRT log"
        raise BuildError(f"TensorRT {trt.__version__} failed to build the {kind} engine: {detail}")
    data = memoryview(serialized)
    tp.write_atomically(out_path, data)
    cache_bytes = tp.save_timing_cache(cache, timing_cache)
    log.info("TensorRT built %s in %.0fs: %s (%.1f MB)", kind, build_s, out_path.name, data.nbytes / 1e6)
    return {
        "tensorrt": str(trt.__version__),
        "plan": plan.to_json(),
        "fp32_pinned_layers": pinned,
        "trt_build_seconds": round(build_s, 1),
        "plan_bytes": data.nbytes,
        "timing_cache": str(timing_cache) if timing_cache else None,
        "timing_cache_bytes_before": len(cache_in),
        "timing_cache_bytes_after": cache_bytes,
        "version_compatible": "VERSION_COMPATIBLE" in plan.set_flags,
        "inputs": list(INPUT_NAMES),
        "outputs": [OUTPUT_NAME],
    }


class TensorRTRunner:
    """:class:`~virnucpro_trt.runtime.embedding.EmbeddingBackend` over one TensorRT execution context."""

    name = "tensorrt"

    def __init__(
        self, path: Path, kind: str, device: torch.device, dim: int, pad_id: int, shapes: ShapeRange
    ):
        if not path.is_file():
            raise EngineMismatchError(f"TensorRT engine {path} does not exist; rebuild the engines")
        self.trt = trt = import_tensorrt()
        self.kind = kind
        self.dim = dim
        self.pad_id = pad_id
        self.shapes = shapes
        self.max_batch_size = shapes.max_batch
        self.max_length = shapes.max_length
        self.device = torch.device("cuda", device.index if device.index is not None else 0)
        self.logger = make_logger(trt)
        self.runtime = trt.Runtime(self.logger)
        sidecar = tp.read_sidecar(path)
        if sidecar.get("version_compatible"):
            self.runtime.engine_host_code_allowed = True  # the plan embeds its own lean runtime
        with torch.cuda.device(self.device):
            self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
            if self.engine is None:
                built = sidecar.get("tensorrt", "an unknown version")
                raise EngineMismatchError(
                    f"TensorRT {trt.__version__} cannot load {path.name} (built with TensorRT {built}): "
                    "rebuild the engines on this machine"
                )
            self.io = engine_io(trt, self.engine)
            self.context, self.user_managed = tp.create_context(trt, self.engine)
        missing = [n for n in (*INPUT_NAMES, OUTPUT_NAME) if n not in self.io]
        if missing:
            raise EngineMismatchError(f"{path.name} lacks tensors {missing}; it has {sorted(self.io)}")
        self.memory = tp.ActivationMemory(self.device) if self.user_managed else None
        self.side_stream: torch.cuda.Stream | None = None
        out_dtype = self.io[OUTPUT_NAME][1]
        self.output = torch.empty((shapes.max_batch, dim), dtype=out_dtype, device=self.device)

    def embed_padded(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        batch, length = input_ids.shape
        if input_ids.shape != attention_mask.shape or not self.shapes.contains(batch, length):
            raise ShapeRangeError(
                f"a {self.kind} batch of {input_ids.shape} / {attention_mask.shape} is outside the TensorRT "
                f"engine's range (batch <= {self.shapes.max_batch}, length {self.shapes.min_length}.."
                f"{self.shapes.max_length})"
            )
        stream = self._stream()
        with (
            torch.cuda.device(self.device),
            torch.cuda.stream(stream),
            device_memory_errors(self.device, "tensorrt"),
        ):
            tensors = {
                INPUT_NAMES[0]: self._to_device(input_ids, self.io[INPUT_NAMES[0]][1]),
                INPUT_NAMES[1]: self._to_device(attention_mask, self.io[INPUT_NAMES[1]][1]),
            }
            for name, tensor in tensors.items():
                if not self.context.set_input_shape(name, tuple(tensor.shape)):
                    raise ShapeRangeError(f"TensorRT refused {name} of shape {tuple(tensor.shape)}")
                self.context.set_tensor_address(name, tensor.data_ptr())
            if self.memory is not None:
                self.memory.provide(self.context)
            out = self.output[:batch]
            self.context.set_tensor_address(OUTPUT_NAME, out.data_ptr())
            if not self.context.execute_async_v3(stream.cuda_stream):
                detail = "; ".join(self.logger.errors[-2:])
                raise RunFailure(
                    f"TensorRT failed to run the {self.kind} engine on {batch} x {length}: {detail}"
                )
            return out.float().cpu().numpy()

    def _stream(self) -> torch.cuda.Stream:
        """torch's current stream; a stream of our own instead of the legacy default stream (handle 0),
        on which TensorRT warns that ``execute_async_v3`` needs extra synchronisation."""
        current = torch.cuda.current_stream(self.device)
        if current.cuda_stream != 0:
            return current
        if self.side_stream is None:
            self.side_stream = torch.cuda.Stream(self.device)
        return self.side_stream

    def _to_device(self, array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device).to(dtype).contiguous()


def engine_io(trt: Any, engine: Any) -> dict[str, tuple[str, torch.dtype]]:
    """``{tensor name: ("INPUT" | "OUTPUT", torch dtype)}`` of an engine's I/O tensors."""
    io = {}
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        mode = engine.get_tensor_mode(name)
        io[name] = (getattr(mode, "name", str(mode)), tp.torch_dtype(engine.get_tensor_dtype(name)))
    return io


TENSORRT_BACKEND = TensorRTBackend()
