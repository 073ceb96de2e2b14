"""What this machine offers: library versions, devices, ONNX Runtime providers, TensorRT.

Used by ``virnucpro-trt env`` and recorded in run.json / engine manifests, so every number in a result
file can be traced to the software that produced it. Optional libraries are probed lazily and their
absence is reported, never raised.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import sys
from pathlib import Path
from typing import Any

from virnucpro_trt import __version__

_LIBRARIES = (
    "torch",
    "numpy",
    "tokenizers",
    "safetensors",
    "biopython",
    "h5py",
    "huggingface_hub",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "tensorrt",
    "transformers",
    "click",
    "rich",
)


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which containers and taskset narrow), not the
    machine's count: thread pools sized from the latter oversubscribe a narrowed process."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def library_versions() -> dict[str, str | None]:
    """Installed versions by distribution name (no import: ``env`` must be quick and side-effect free)."""
    return {name: _version(name) for name in _LIBRARIES}


def cuda_devices() -> list[dict[str, Any]]:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return []
    if not torch.cuda.is_available():
        return []
    devices = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        devices.append(
            {
                "index": index,
                "name": props.name,
                "compute_capability": f"{props.major}.{props.minor}",
                "memory_gib": round(props.total_memory / 2**30, 1),
            }
        )
    return devices


def onnxruntime_providers() -> list[str] | str:
    try:
        import onnxruntime
    except Exception as exc:
        return f"not importable ({type(exc).__name__}: {exc})"
    return list(onnxruntime.get_available_providers())


def tensorrt_status() -> dict[str, Any]:
    try:
        trt = importlib.import_module("tensorrt")
    except Exception as exc:
        return {"importable": False, "reason": f"{type(exc).__name__}: {exc}"}
    has_builder = hasattr(trt, "Builder")
    return {"importable": True, "version": getattr(trt, "__version__", "unknown"), "builder": has_builder}


def environment_report() -> dict[str, Any]:
    import torch

    return {
        "virnucpro_trt": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "libraries": library_versions(),
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cuda_devices": cuda_devices(),
        "cpu_threads": torch.get_num_threads(),
        "onnxruntime_providers": onnxruntime_providers(),
        "tensorrt": tensorrt_status(),
    }
