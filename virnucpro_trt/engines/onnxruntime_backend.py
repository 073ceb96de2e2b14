"""The ``onnxruntime`` engine backend: an ONNX export run by ONNX Runtime.

Build: :func:`~virnucpro_trt.engines.onnx_export.export_onnx` writes ``<model>.<arch>.<precision>.onnx``
(plus one ``.onnx.data`` side file for large models) and validates it on ONNX Runtime (the CUDA provider
when building for a GPU and onnxruntime-gpu is installed, else the CPU one).

Run:

* CPU: the CPU execution provider, all graph optimizations, intra-op threads = the CPUs this process
  may use. fp32 and fp16 graphs run; bf16 graphs do not (ORT CPU has no bf16 MatMul, Add, Mul, Div, Erf,
  Where or IsNaN kernels; measured with ORT 1.32), which :meth:`OnnxRuntimeBackend.availability` says.
* CUDA: the CUDA execution provider with I/O binding on device memory. The ids are copied to torch CUDA
  tensors and bound by pointer, the output is a preallocated torch CUDA buffer of ``max_batch`` rows, and
  ORT computes on torch's stream (``user_compute_stream``), so the only host transfers per batch are the
  ids in and the pooled vectors out, and no extra synchronisation is needed between them.
* TensorRT through ONNX Runtime: set ``VIRNUCPRO_ORT_PROVIDER=tensorrt`` (or construct
  ``OnnxRuntimeBackend(provider="tensorrt")``) where onnxruntime-gpu lists ``TensorrtExecutionProvider``.
  Its engines are cached in ``<artifact>.trt-cache/`` beside the artifact; the optimisation profile is the
  artifact's shape range. Never required: the default on CUDA is the CUDA provider.

onnxruntime is imported lazily. On CUDA, torch is imported before the session is created: onnxruntime-gpu
finds the CUDA and cuDNN libraries that torch has loaded. None of the CUDA paths has been run on this
project's development machine (no GPU); the CPU path is covered by tests.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from virnucpro_trt.engines.onnx_export import (
    EXTERNAL_DATA_THRESHOLD,
    INPUT_NAMES,
    ONNX_DTYPES,
    OUTPUT_NAME,
    export_onnx,
)
from virnucpro_trt.engines.onnx_session import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    TENSORRT_PROVIDER,
    available_providers,
    create_session,
    import_onnxruntime,
    onnxruntime_problem,
)
from virnucpro_trt.engines.spec import BuildRequest, BuiltArtifact, LoadRequest, ShapeRange
from virnucpro_trt.errors import EngineMismatchError, RunFailure, ShapeRangeError, UserError
from virnucpro_trt.runtime.out_of_memory import device_memory_errors

PROVIDER_ENV = "VIRNUCPRO_ORT_PROVIDER"
PROVIDER_CHOICES = {"cpu": CPU_PROVIDER, "cuda": CUDA_PROVIDER, "tensorrt": TENSORRT_PROVIDER}
CPU_BF16_GAP = "MatMul, Add, Mul, Div, Erf, Where and IsNaN"  # measured with onnxruntime 1.32


class OnnxRuntimeBackend:
    """:class:`~virnucpro_trt.engines.spec.EngineBackend` for ONNX Runtime.

    ``provider`` picks the CUDA-side execution provider (``cuda`` or ``tensorrt``); ``None`` reads
    ``$VIRNUCPRO_ORT_PROVIDER`` at load time and defaults to ``cuda``. CPU devices always use the CPU one.
    """

    name = "onnxruntime"
    extension = "onnx"
    recipe_version = 1
    native_cpu_code = False

    def __init__(self, provider: str | None = None):
        self.provider = provider

    # ------------------------------------------------------------------ interface
    def availability(self, device: torch.device, precision: str) -> str | None:
        """Why this backend cannot build *and* run ``precision`` on ``device`` here, or ``None``."""
        problem = self.run_problem(device, precision)
        if problem:
            return problem
        try:
            import onnxscript  # noqa: F401
        except ImportError as exc:
            return f"onnxscript is not importable here ({exc}); torch.onnx's exporter needs it"
        return None

    def run_problem(self, device: torch.device, precision: str) -> str | None:
        """Why an existing ONNX engine cannot run here (loading needs no exporter), or ``None``."""
        if precision == "fp8":
            return "fp8 needs Q/DQ nodes from calibration, which the ONNX export does not produce"
        if precision not in ONNX_DTYPES:
            return f"unknown precision {precision!r} (ONNX exports: {', '.join(ONNX_DTYPES)})"
        problem = onnxruntime_problem()
        if problem:
            return problem
        if device.type == "cpu":
            if precision == "bf16":
                return f"ONNX Runtime's CPU provider has no bf16 kernels for {CPU_BF16_GAP}; use fp32 on CPU"
            return None
        if device.type != "cuda":
            return f"ONNX Runtime engines run on cpu or cuda, not {device.type}"
        providers = available_providers()
        if CUDA_PROVIDER not in providers:
            return (
                f"onnxruntime has no {CUDA_PROVIDER} here (providers: {providers}); install onnxruntime-gpu"
            )
        if not torch.cuda.is_available():
            return f"torch sees no CUDA device (torch {torch.__version__})"
        try:
            wanted = self._cuda_provider()
        except UserError as exc:
            return str(exc)
        if wanted not in providers:
            return f"{PROVIDER_ENV} asks for {wanted}, which onnxruntime lacks here (providers: {providers})"
        return None

    def library_versions(self) -> dict[str, str]:
        """Nothing: an ONNX file is bound to its opset, which every ONNX Runtime since 1.14 runs; pinning
        the onnxruntime version would force rebuilds on every upgrade for no reason. The versions used
        at build time are kept in the artifact's facts instead."""
        return {}

    def build(self, request: BuildRequest) -> BuiltArtifact:
        options = request.options
        extra = options.extra
        out_path = Path(request.out_path)
        facts = export_onnx(
            request.model,
            request.kind,
            request.example,
            request.shapes,
            request.precision,
            out_path,
            options.opset,
            external_data_threshold=int(extra.get("onnx_external_data_threshold", EXTERNAL_DATA_THRESHOLD)),
            fp32_softmax=bool(extra.get("onnx_fp32_softmax", True)),
            validate_providers=validation_providers(request.device),
        )
        return BuiltArtifact(
            path=out_path, files=[out_path.with_name(n) for n in facts["files"]], facts=facts
        )

    def load(self, request: LoadRequest) -> OrtRunner:
        path, device, precision = Path(request.path), request.device, request.precision
        if not path.is_file():
            raise EngineMismatchError(f"ONNX engine {path} does not exist; rebuild the engines")
        if device.type == "cpu":
            session = _open(path, [CPU_PROVIDER], CPU_PROVIDER, precision, request.listed)
            return OrtRunner(session, request)
        if device.type != "cuda":
            raise UserError(f"ONNX Runtime engines run on cpu or cuda, not {device}")
        reason = self.run_problem(device, precision)
        if reason:
            raise UserError(f"cannot run the {request.kind} ONNX engine on {device}: {reason}")
        return OrtCudaRunner(request, self._cuda_provider())

    # ------------------------------------------------------------------ helpers
    def _cuda_provider(self) -> str:
        choice = (self.provider or os.environ.get(PROVIDER_ENV) or "cuda").strip().lower()
        if choice not in ("cuda", "tensorrt"):
            raise UserError(f"{PROVIDER_ENV}={choice!r}: expected cuda or tensorrt")
        return PROVIDER_CHOICES[choice]


def validation_providers(device: torch.device) -> list[Any]:
    """Where a fresh export is run once: the build device's provider when ORT has it, else the CPU."""
    if device.type == "cuda" and onnxruntime_problem() is None and CUDA_PROVIDER in available_providers():
        return [(CUDA_PROVIDER, {"device_id": str(device.index or 0)}), CPU_PROVIDER]
    return [CPU_PROVIDER]


def _open(
    path: Path, providers: list[Any], wanted: str, precision: str, listed: frozenset[str] | None
) -> Any:
    """A session on ``providers`` that really runs on ``wanted`` (ORT silently falls back to the CPU when
    a GPU provider's libraries fail to load)."""
    try:
        session = create_session(path, providers, listed=listed)
    except UserError:  # the file itself refused (check_external_data): bad input, said as it is
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0]
        raise RunFailure(f"ONNX Runtime cannot open {path.name} ({precision}) on {wanted}: {first}") from exc
    if wanted not in session.get_providers():
        raise RunFailure(
            f"asked ONNX Runtime for {wanted}, the session runs on {session.get_providers()} "
            f"(available: {available_providers()}); check that onnxruntime-gpu matches torch's CUDA"
        )
    return session


def profile_shapes(shapes: ShapeRange) -> dict[str, str]:
    """TensorRT provider profile options (``input_ids:1x2,attention_mask:1x2``) from a shape range."""

    def spec(batch: int, length: int) -> str:
        return ",".join(f"{name}:{batch}x{length}" for name in INPUT_NAMES)

    return {
        "trt_profile_min_shapes": spec(shapes.min_batch, shapes.min_length),
        "trt_profile_opt_shapes": spec(shapes.opt_batch, shapes.opt_length),
        "trt_profile_max_shapes": spec(shapes.max_batch, shapes.max_length),
    }


def cuda_provider_list(
    wanted: str, device_index: int, stream_handle: int, precision: str, shapes: ShapeRange, cache_dir: Path
) -> list[Any]:
    """Provider list for a CUDA session computing on the torch stream ``stream_handle``."""
    stream = {"has_user_compute_stream": "1", "user_compute_stream": str(stream_handle)}
    cuda: dict[str, str] = {
        "device_id": str(device_index),
        "arena_extend_strategy": "kSameAsRequested",
        **stream,
    }
    if precision == "fp32":
        cuda["use_tf32"] = "0"  # fp32 engines are the exact reference: no TF32 matmuls
    providers: list[Any] = [(CUDA_PROVIDER, cuda), CPU_PROVIDER]
    if wanted == TENSORRT_PROVIDER:
        trt: dict[str, str] = {
            "device_id": str(device_index),
            **stream,
            "trt_engine_cache_enable": "1",
            "trt_engine_cache_path": str(cache_dir),
            "trt_timing_cache_enable": "1",
            "trt_timing_cache_path": str(cache_dir),
            **profile_shapes(shapes),
        }
        if precision == "fp16":
            trt["trt_fp16_enable"] = "1"
        elif precision == "bf16":
            trt["trt_bf16_enable"] = "1"
        providers.insert(0, (TENSORRT_PROVIDER, trt))
    return providers


def work_stream(device: torch.device) -> torch.cuda.Stream:
    """The caller's current stream, unless it is the legacy default stream (handle 0), which
    synchronises with every other stream: then a stream of our own."""
    current = torch.cuda.current_stream(device)
    return current if current.cuda_stream != 0 else torch.cuda.Stream(device)


def _check_metadata(session: Any, request: LoadRequest) -> None:
    """The session's model must be the engine its manifest says (kind, precision, output width), as the
    inductor backend checks its packages: two engines swapped (their hashes rewritten) otherwise failed
    at the first batch in every worker, three times, with ONNX Runtime's own error lines."""
    meta = session.get_modelmeta().custom_metadata_map
    found = {k: meta.get(f"virnucpro_trt.{k}") for k in ("kind", "precision")}
    outputs = session.get_outputs()
    width = outputs[0].shape[-1] if outputs and outputs[0].shape else None
    found["dim"] = str(width) if isinstance(width, int) else None
    expected = {"kind": request.kind, "precision": request.precision, "dim": str(request.dim)}
    wrong = [f"{k} {found[k]} (expected {expected[k]})" for k in expected if found[k] != expected[k]]
    if wrong:
        name = Path(request.path).name
        raise EngineMismatchError(f"{name} does not match its manifest: {', '.join(wrong)}; rebuild them")


class OrtRunner:
    """:class:`~virnucpro_trt.runtime.embedding.EmbeddingBackend` on the ORT CPU provider."""

    name = "onnxruntime"

    def __init__(self, session: Any, request: LoadRequest):
        _check_metadata(session, request)
        self.session = session
        self.kind = request.kind
        self.dim = request.dim
        self.pad_id = request.pad_id
        self.shapes = request.shapes
        self.max_batch_size = request.shapes.max_batch
        self.max_length = request.shapes.max_length
        self.providers = list(session.get_providers())

    def check_shape(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[int, int]:
        """The batch's (B, T), refused outside the shape range the engine was exported for."""
        if input_ids.shape != attention_mask.shape or input_ids.ndim != 2:
            raise ValueError(f"input_ids {input_ids.shape} and attention_mask {attention_mask.shape} differ")
        batch, length = input_ids.shape
        if not self.shapes.contains(batch, length):
            s = self.shapes
            raise ShapeRangeError(
                f"a {self.kind} batch of {batch} x {length} tokens is outside the engine's range "
                f"(batch {s.min_batch}..{s.max_batch}, length {s.min_length}..{s.max_length})"
            )
        return batch, length

    def embed_padded(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        self.check_shape(input_ids, attention_mask)
        feeds = {
            INPUT_NAMES[0]: np.ascontiguousarray(input_ids, dtype=np.int64),
            INPUT_NAMES[1]: np.ascontiguousarray(attention_mask, dtype=np.int64),
        }
        with device_memory_errors(torch.device("cpu"), "onnxruntime"):
            (pooled,) = self.session.run([OUTPUT_NAME], feeds)
        return np.asarray(pooled, dtype=np.float32)


class OrtCudaRunner(OrtRunner):
    """ORT on the CUDA (or TensorRT) provider with I/O bound to torch CUDA tensors."""

    def __init__(self, request: LoadRequest, wanted: str):
        import_onnxruntime()  # after torch (imported above): ORT uses the CUDA/cuDNN libraries torch loaded
        device = request.device
        self.device = torch.device("cuda", device.index if device.index is not None else 0)
        self.stream = work_stream(self.device)
        path = Path(request.path)
        cache_dir = path.with_name(path.name + ".trt-cache")
        stream = self.stream.cuda_stream
        providers = cuda_provider_list(
            wanted, self.device.index, stream, request.precision, request.shapes, cache_dir
        )
        super().__init__(_open(path, providers, wanted, request.precision, request.listed), request)
        self.output = torch.empty(
            (request.shapes.max_batch, request.dim), dtype=torch.float32, device=self.device
        )
        self.binding = self.session.io_binding()

    def _bind(self, name: str, tensor: torch.Tensor, output: bool = False) -> None:
        bind = self.binding.bind_output if output else self.binding.bind_input
        bind(
            name=name,
            device_type="cuda",
            device_id=self.device.index,
            element_type=np.float32 if output else np.int64,
            shape=tuple(tensor.shape),
            buffer_ptr=tensor.data_ptr(),
        )

    def embed_padded(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        batch, _ = self.check_shape(input_ids, attention_mask)
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            ids = torch.from_numpy(np.ascontiguousarray(input_ids, dtype=np.int64)).to(self.device)
            mask = torch.from_numpy(np.ascontiguousarray(attention_mask, dtype=np.int64)).to(self.device)
            out = self.output[:batch]  # leading rows of a contiguous buffer: contiguous
            self.binding.clear_binding_inputs()
            self.binding.clear_binding_outputs()
            self._bind(INPUT_NAMES[0], ids)
            self._bind(INPUT_NAMES[1], mask)
            self._bind(OUTPUT_NAME, out, output=True)
            with device_memory_errors(self.device, "onnxruntime"):
                self.session.run_with_iobinding(self.binding)
            return out.cpu().numpy()


ONNXRUNTIME_BACKEND = OnnxRuntimeBackend()
