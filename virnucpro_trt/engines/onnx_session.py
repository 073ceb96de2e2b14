"""Creating ONNX Runtime sessions: lazy import, provider lists and session options in one place.

Both the exporter (which validates every file it writes on ONNX Runtime right away) and the
``onnxruntime`` backend's runners create sessions; they must agree on the options, and neither may import
onnxruntime at module import time (the CLI has to start, and say what is missing, without it).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

from virnucpro_trt.environment import available_cpus

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
TENSORRT_PROVIDER = "TensorrtExecutionProvider"


def import_onnxruntime() -> ModuleType:
    """``onnxruntime``, imported on first use (ImportError propagates with its own message)."""
    import onnxruntime

    return onnxruntime


def onnxruntime_problem() -> str | None:
    """Why onnxruntime cannot be used here (one line), or ``None``."""
    try:
        import_onnxruntime()
    except ImportError as exc:
        return f"onnxruntime is not importable here ({exc})"
    return None


def available_providers() -> list[str]:
    return list(import_onnxruntime().get_available_providers())


def session_options(threads: int | None = None) -> Any:
    """All graph optimizations on; intra-op threads = available CPUs (ORT's default counts all cores).

    One inter-op thread: the encoders are a single chain of ops, parallel branches buy nothing.
    """
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or available_cpus()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: ORT's warnings about CPU fallbacks are reported by us
    return options


def create_session(path: Path, providers: list[Any], threads: int | None = None) -> Any:
    """An ``InferenceSession`` for ``path`` (external data is found next to it) with ``providers``."""
    ort = import_onnxruntime()
    return ort.InferenceSession(str(path), sess_options=session_options(threads), providers=providers)
