"""What a figure was measured on: GPU, driver, CPU and library versions.

A throughput number means nothing without its machine (docs/performance.md: "record GPU name, driver, torch,
CUDA and precision with every number"), so every benchmark result carries this block. Nothing here may
fail a run: a fact that cannot be read is recorded as ``None`` (or ``"unknown"`` for the driver).
"""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from virnucpro_trt import __version__
from virnucpro_trt.bench.peer import torchao_version
from virnucpro_trt.environment import (
    CudaProperties,
    available_cpus,
    cpu_model,
    library_versions,
    onnxruntime_providers,
)


def driver_version() -> str:
    """The NVIDIA driver version (first GPU), from nvidia-smi or the kernel module; ``unknown`` if neither."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, check=True, timeout=30,
        ).stdout  # fmt: skip
        if out.strip():
            return out.strip().splitlines()[0].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
        for word in text.split():
            if word.count(".") >= 1 and word.replace(".", "").isdigit():
                return word
    except OSError:
        pass
    return "unknown"


def gpu_facts(device: torch.device) -> dict[str, Any]:
    """Name, compute capability and memory of a CUDA device."""
    gpu = CudaProperties.of(device)
    return {"gpu": gpu.name, "compute_capability": gpu.compute_capability, "gpu_memory_gib": gpu.memory_gib}


def hardware_report(device: torch.device) -> dict[str, Any]:
    """The ``hardware`` block of a bench result: the device used, the machine and the software stack."""
    versions = library_versions()
    cuda = device.type == "cuda"
    report: dict[str, Any] = {
        "device": str(device),
        "gpu": None,
        "gpu_count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "compute_capability": None,
        "gpu_memory_gib": None,
        "driver": driver_version() if cuda else None,
        "cpu": cpu_model(),
        "cpu_count": available_cpus(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "virnucpro_trt": __version__,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "onnxruntime": versions.get("onnxruntime-gpu") or versions.get("onnxruntime"),
        "onnxruntime_providers": onnxruntime_providers(),
        "tensorrt": versions.get("tensorrt"),
        "triton": _triton_version(),
        "torchao": torchao_version(),
    }
    if cuda:
        report.update(gpu_facts(device))
    return report


def _triton_version() -> str | None:
    try:
        return importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        return None


def script_environment(device: torch.device | None, with_onnxruntime: bool) -> dict[str, Any]:
    """The ``environment`` block of the ``benchmarks/*.py`` result files (their committed format).

    ``device`` None means "the first CUDA device if there is one" (``predict_full_size.py``).
    """
    env: dict[str, Any] = {
        "virnucpro_trt": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpu_count": available_cpus(),
    }
    if with_onnxruntime:
        try:
            from virnucpro_trt.environment import import_onnxruntime

            onnxruntime = import_onnxruntime()
            env["onnxruntime"] = onnxruntime.__version__
            env["onnxruntime_providers"] = onnxruntime.get_available_providers()
        except ImportError:
            env["onnxruntime"] = None
    if device is None and torch.cuda.is_available():
        device = torch.device("cuda:0")
    if device is not None and device.type == "cuda":
        facts = gpu_facts(device)
        env.update(gpu=facts["gpu"], compute_capability=facts["compute_capability"], driver=driver_version())
    return env
