"""The one place engine backends are listed, and the ``--backend auto`` choice.

Backends are looked up lazily by name so that importing the CLI never imports onnxruntime or tensorrt.
"""

from __future__ import annotations

import importlib
import logging

import torch

from virnucpro_trt.engines.spec import EngineBackend
from virnucpro_trt.errors import UserError

log = logging.getLogger(__name__)

_BACKENDS = {
    "onnxruntime": ("virnucpro_trt.engines.onnxruntime_backend", "ONNXRUNTIME_BACKEND"),
    "inductor": ("virnucpro_trt.engines.inductor_backend", "INDUCTOR_BACKEND"),
    "tensorrt": ("virnucpro_trt.engines.tensorrt_backend", "TENSORRT_BACKEND"),
}


def get_backend(name: str) -> EngineBackend:
    if name not in _BACKENDS:
        raise UserError(f"unknown engine backend {name!r}; available: {', '.join(_BACKENDS)}")
    module, attribute = _BACKENDS[name]
    return getattr(importlib.import_module(module), attribute)


def require_available(backend: EngineBackend, device: torch.device, precision: str) -> None:
    reason = backend.availability(device, precision)
    if reason is not None:
        raise UserError(f"--backend {backend.name} cannot build {precision} engines for {device}: {reason}")


def choose_backend(requested: str, device: torch.device, precision: str) -> tuple[EngineBackend, str]:
    """``auto``: TensorRT where importable on CUDA, else AOTInductor on CUDA, else ONNX Runtime.

    Returns the backend and the reason, which the build logs and records in the manifest.
    """
    if requested != "auto":
        backend = get_backend(requested)
        require_available(backend, device, precision)
        return backend, f"--backend {requested} requested"
    order = ("tensorrt", "inductor", "onnxruntime") if device.type == "cuda" else ("onnxruntime",)
    skipped = []
    for name in order:
        backend = get_backend(name)
        reason = backend.availability(device, precision)
        if reason is None:
            why = f"auto: {name} is the first available for {device.type}/{precision}"
            if skipped:
                why += f" ({'; '.join(skipped)})"
            return backend, why
        skipped.append(f"{name}: {reason}")
    raise UserError(
        f"--backend auto: no engine backend can build {precision} for {device}: {'; '.join(skipped)}"
    )
