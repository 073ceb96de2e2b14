"""The ``tensorrt`` engine backend: ONNX export -> TensorRT plan, run with torch CUDA tensors.

NOT RUN HERE. TensorRT cannot be installed on this project's machines (its builder wheels download
from a host they cannot reach). This module is written against the TensorRT 10 Python bindings
(``pip install '.[tensorrt]'`` installs TensorRT 10.x) and checked only through unit tests with a fake
``trt`` namespace (:mod:`tests.engines.test_tensorrt_logic`); the real build/run tests are marked
``tensorrt`` and run in the ``tensorrt`` job of ``.github/workflows/gpu-bench.yml``. Treat the first run
on a machine with TensorRT as the first test; ``--backend auto`` never picks this backend
(:mod:`~virnucpro_trt.engines.registry`).

Build (:meth:`TensorRTBackend.build`):

1. export the encoder to ONNX with :func:`~virnucpro_trt.engines.onnx_export.export_onnx` in the
   precision the plan asks for (a temporary folder beside the engines, removed afterwards unless
   ``options.extra["keep_onnx"]``; large models use an external-data side file, which the parser finds);
2. ``trt.Builder`` network (strongly typed where TensorRT has it, see
   :mod:`~virnucpro_trt.engines.tensorrt_plan`), ``OnnxParser.parse_from_file`` with every parser error
   reported;
3. optimization profiles derived from the shape range and the token budget
   (:mod:`~virnucpro_trt.engines.tensorrt_profiles`: every profile's largest tensor within TensorRT's
   2^31-element limit), precision flags, ``options.hardware_compatible`` ->
   ``HardwareCompatibilityLevel.AMPERE_PLUS``, workspace limit
   (``options.extra["tensorrt_workspace_bytes"]``), ``options.extra["tensorrt_version_compatible"]``;
4. the timing cache is read from ``options.timing_cache`` and written back after the build (it is shared
   by every engine of a directory and makes rebuilds much faster); one TensorRT cannot read is replaced
   by an empty one;
5. the serialized plan is written to ``out_path``, with a ``.plan.json`` sidecar (TensorRT version, tensor
   names, the plan with its profiles) that loading reads; the same facts go into the manifest.

Run (:class:`TensorRTRunner`): the full ``tensorrt`` runtime, or the lean ``tensorrt_lean`` one for
version-compatible plans, deserializes the plan; each batch runs on the profile chosen for its shape
(:func:`~virnucpro_trt.engines.tensorrt_profiles.batch_chunks`), through one execution context per
profile with user-managed activation memory sized per batch, ``set_input_shape`` +
``set_tensor_address`` on torch CUDA tensors and ``execute_async_v3`` on torch's current stream.

One logger per process (:func:`process_logger`): TensorRT holds a single logger pointer, so a second
Builder or Runtime created with a logger of its own would leave earlier objects logging into a freed one.
``tensorrt`` is imported lazily.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from virnucpro_trt.engines import tensorrt_plan as tp
from virnucpro_trt.engines import tensorrt_profiles as profiles_
from virnucpro_trt.engines.onnx_export import INPUT_NAMES, OUTPUT_NAME, export_onnx
from virnucpro_trt.engines.spec import BuildRequest, BuiltArtifact, LoadRequest
from virnucpro_trt.errors import BuildError, EngineMismatchError, RunFailure, ShapeRangeError, UserError
from virnucpro_trt.runtime.out_of_memory import device_memory_errors

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "bf16")
# Modules the TensorRT path imports that the ``tensorrt`` extra deliberately does not install, and why
# (tests/engines/test_tensorrt_install.py checks every other import is covered by the extra).
OPTIONAL_IMPORTS = {
    "onnxruntime": "only for options.extra['tensorrt_validate_onnx'], whose absence is reported, not fatal",
    tp.LEAN_MODULE: "the runtime-only alternative to tensorrt (its own wheel), used when tensorrt is absent",
}


def import_tensorrt() -> Any:
    """The full TensorRT (builder, ONNX parser and runtime)."""
    import tensorrt

    return tensorrt


def import_runtime() -> tuple[str, Any]:
    """``(module name, module)``: the full ``tensorrt``, else the lean runtime ``tensorrt_lean``."""

    def importer(name: str) -> Any:
        if name == tp.BUILDER_MODULE:
            return import_tensorrt()
        import tensorrt_lean

        return tensorrt_lean

    return tp.import_runtime(importer)


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


_LOGGERS: dict[int, tuple[Any, Any]] = {}  # id(module) -> (module, its logger); the module kept alive
_LOGGERS_LOCK = threading.Lock()


def process_logger(trt: Any) -> Any:
    """The one ``trt.ILogger`` of this process for the module ``trt`` (``tensorrt`` or ``tensorrt_lean``,
    whose libraries each keep their own logger pointer), made on first use and never released.

    It forwards to Python logging and numbers the errors in ``logger.errors`` (:class:`tp.ErrorLog`):
    callers take ``errors.mark()`` before an operation and report ``errors.describe(mark)``.
    """
    with _LOGGERS_LOCK:
        known = _LOGGERS.get(id(trt))
        if known is None:
            known = (trt, _make_logger(trt))
            _LOGGERS[id(trt)] = known
        return known[1]


def _make_logger(trt: Any) -> Any:
    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors = tp.ErrorLog()

        def log(self, severity: Any, msg: str) -> None:
            name = getattr(severity, "name", str(severity))
            if name in ("INTERNAL_ERROR", "ERROR"):
                self.errors.add(msg)
                log.error("TensorRT: %s", msg)
            elif name == "WARNING":
                log.warning("TensorRT: %s", msg)
            else:
                log.debug("TensorRT: %s", msg)

    return _Logger()


def encoder_dims(model: torch.nn.Module) -> profiles_.EncoderDims:
    """Attention heads and widest per-token activation of a native encoder (what sizes its profiles)."""
    config = getattr(model, "config", None)
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "attention_heads", None)
    widths = [m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if not heads or not widths:
        raise BuildError(f"cannot tell the attention heads and layer widths of {type(model).__name__}")
    return profiles_.EncoderDims(int(heads), max(widths))


class TensorRTBackend:
    """:class:`~virnucpro_trt.engines.spec.EngineBackend` for TensorRT plans."""

    name = "tensorrt"
    extension = "plan"
    recipe_version = 1
    native_cpu_code = False

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
            tp.plan_build(precision, [], tp.trt_enum_names(import_tensorrt()))
        except BuildError as exc:
            return str(exc)
        return None

    def library_versions(self) -> dict[str, str]:
        """A plan only deserializes with the TensorRT version that built it (version-compatible plans
        excepted, which the manifest does not distinguish): the version of the runtime found here, full
        or lean."""
        try:
            return {"tensorrt": str(import_runtime()[1].__version__)}
        except ImportError:
            return {"tensorrt": "none"}

    def build(self, request: BuildRequest) -> BuiltArtifact:
        kind, shapes, precision = request.kind, request.shapes, request.precision
        device, options = request.device, request.options
        reason = self.availability(device, precision)
        if reason:
            raise UserError(f"cannot build a {precision} TensorRT engine on {device}: {reason}")
        trt = import_tensorrt()
        out_path = Path(request.out_path)
        extra = options.extra
        dims = encoder_dims(request.model)
        max_elements = int(extra.get("tensorrt_max_elements", profiles_.MAX_ELEMENTS))
        profiles = profiles_.derive_profiles(shapes, dims, options.max_batch_tokens, max_elements)
        plan = tp.plan_build(
            precision,
            profiles,
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
                request.model,
                kind,
                request.example,
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
        facts["profile_inputs"] = {
            **dims.to_json(),
            "max_batch_tokens": options.max_batch_tokens,
            "max_elements": max_elements,
        }
        if keep_onnx:
            facts["onnx_dir"] = str(onnx_dir)
        sidecar = tp.write_sidecar(out_path, {**facts, "kind": kind, "shapes": shapes.to_json()})
        return BuiltArtifact(path=out_path, files=[out_path, sidecar], facts=facts)

    def load(self, request: LoadRequest) -> TensorRTRunner:
        problem = self.run_problem(request.device, request.precision)
        if problem:
            raise UserError(f"cannot run the {request.kind} TensorRT engine: {problem}")
        return TensorRTRunner(request)

    def run_problem(self, device: torch.device, precision: str) -> str | None:
        """Why an existing plan cannot run here (loading needs no builder: the lean runtime will do for a
        version-compatible plan), or ``None``."""
        if device.type != "cuda":
            return f"TensorRT engines run on CUDA devices, not {device}"
        try:
            import_runtime()
        except ImportError as exc:
            return f"no TensorRT runtime here ({exc})"
        return None


def build_plan_file(
    trt: Any, onnx_path: Path, plan: tp.BuildPlan, out_path: Path, timing_cache: Path | None, kind: str
) -> dict[str, Any]:
    """Parse ``onnx_path``, build with ``plan``, write the plan and the timing cache; returns facts."""
    logger = process_logger(trt)
    mark = logger.errors.mark()
    builder = trt.Builder(logger)
    if builder is None:
        detail = logger.errors.describe(mark)
        raise BuildError(f"TensorRT {trt.__version__} could not create a builder: {detail}")
    network = builder.create_network(tp.network_creation_flags(trt, plan))
    config = builder.create_builder_config()
    if network is None or config is None:
        detail = logger.errors.describe(mark)
        raise BuildError(f"TensorRT {trt.__version__} could not start a build: {detail}")
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        shown = "; ".join(errors[:3]) + (f" (+{len(errors) - 3} more)" if len(errors) > 3 else "")
        raise BuildError(
            f"TensorRT {trt.__version__} cannot parse the {kind} ONNX graph: {shown or 'no detail'}"
        )
    pinned = tp.pin_fp32_layers(trt, network) if plan.pin_fp32_layers else 0
    cache_in = tp.read_timing_cache(timing_cache)
    cache = tp.apply_plan(trt, builder, config, plan, cache_in)
    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    build_s = time.perf_counter() - started
    if serialized is None:
        detail = logger.errors.describe(mark)
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
    """:class:`~virnucpro_trt.runtime.embedding.EmbeddingBackend` over a TensorRT engine's profiles."""

    name = "tensorrt"

    def __init__(self, request: LoadRequest):
        path, kind, shapes = Path(request.path), request.kind, request.shapes
        if not path.is_file():
            raise EngineMismatchError(f"TensorRT engine {path} does not exist; rebuild the engines")
        module_name, trt = import_runtime()
        sidecar = tp.read_sidecar(path)
        tp.check_runtime_fits(module_name, sidecar, path.name)
        self.trt = trt
        self.kind = kind
        self.dim = request.dim
        self.pad_id = request.pad_id
        self.shapes = shapes
        self.max_batch_size = shapes.max_batch
        self.max_length = shapes.max_length
        index = request.device.index
        self.device = torch.device("cuda", index if index is not None else 0)
        self.logger = process_logger(trt)
        mark = self.logger.errors.mark()
        self.runtime = trt.Runtime(self.logger)
        if self.runtime is None:
            raise RunFailure(f"TensorRT could not create a runtime: {self.logger.errors.describe(mark)}")
        if sidecar.get("version_compatible"):
            self.runtime.engine_host_code_allowed = True  # the plan embeds its own lean runtime
        with torch.cuda.device(self.device):
            self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            built = sidecar.get("tensorrt", "an unknown version")
            raise EngineMismatchError(
                f"TensorRT {trt.__version__} ({module_name}) cannot load {path.name} (built with TensorRT "
                f"{built}: {self.logger.errors.describe(mark)}): rebuild the engines on this machine"
            )
        self.io = engine_io(trt, self.engine)
        missing = [n for n in (*INPUT_NAMES, OUTPUT_NAME) if n not in self.io]
        if missing:
            raise EngineMismatchError(f"{path.name} lacks tensors {missing}; it has {sorted(self.io)}")
        self.profiles = tp.engine_profiles(self.engine)
        profiles_.check_coverage(self.profiles, shapes)
        self.contexts = tp.ProfileContexts(trt, self.engine, len(self.profiles))
        self.memory: tp.ActivationMemory | None = None
        self.side_stream: torch.cuda.Stream | None = None
        log.debug("%s TensorRT engine profiles: %s", kind, [p.to_json() for p in self.profiles])

    def embed_padded(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        batch, length = input_ids.shape
        if input_ids.shape != attention_mask.shape or not self.shapes.contains(batch, length):
            raise ShapeRangeError(
                f"a {self.kind} batch of {input_ids.shape} / {attention_mask.shape} is outside the TensorRT "
                f"engine's range (batch <= {self.shapes.max_batch}, length {self.shapes.min_length}.."
                f"{self.shapes.max_length})"
            )
        chunks = profiles_.batch_chunks(self.profiles, batch, length)
        stream = self._stream()
        outputs = []
        with (
            torch.cuda.device(self.device),
            torch.cuda.stream(stream),
            device_memory_errors(self.device, "tensorrt"),
        ):
            for index, start, stop in chunks:
                mark = self.logger.errors.mark()
                context = self.contexts.get(index, stream.cuda_stream)
                if self.memory is None and self.contexts.user_managed:
                    self.memory = tp.ActivationMemory(self.device)
                # Fresh tensors per chunk: TensorRT wants 256-byte aligned addresses, which row slices
                # of one tensor are not in general; the caching allocator's blocks are.
                inputs = {
                    INPUT_NAMES[0]: self._to_device(input_ids[start:stop], self.io[INPUT_NAMES[0]][1]),
                    INPUT_NAMES[1]: self._to_device(attention_mask[start:stop], self.io[INPUT_NAMES[1]][1]),
                }
                out = torch.empty((stop - start, self.dim), dtype=self.io[OUTPUT_NAME][1], device=self.device)
                try:
                    tp.run_context(context, inputs, OUTPUT_NAME, out, stream.cuda_stream, self.memory)
                except RunFailure as exc:
                    raise RunFailure(
                        f"{exc} ({self.kind}, {stop - start} x {length} on profile {index}): "
                        f"{self.logger.errors.describe(mark)}"
                    ) from None
                outputs.append(out)
            pooled = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
            return pooled.float().cpu().numpy()

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
