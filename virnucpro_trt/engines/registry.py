"""The one place engine backends are listed, what the project has verified of each, and ``--backend auto``.

Backends are looked up lazily by name so that importing the CLI never imports onnxruntime or tensorrt;
this module itself imports no torch either, so the CLI can build its help text from :data:`BACKENDS`.

``auto`` only ever picks a backend the project has built and run on that device type (its
``verified_on``). A backend that has never run anywhere (TensorRT: no builder can be installed on the
project's machines) is used only when asked for by name, with a one-line warning. When the GPU CI job
(``.github/workflows/gpu-bench.yml``, job ``tensorrt``) has passed somewhere, adding ``"cuda"`` to its
``verified_on`` is all it takes for ``auto`` to prefer it.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from virnucpro_trt.errors import UserError
from virnucpro_trt.settings import ENGINE_BACKENDS

if TYPE_CHECKING:
    import torch

    from virnucpro_trt.engines.spec import EngineBackend

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackendInfo:
    """Where a backend lives and where the project has built and run it."""

    module: str
    attribute: str
    label: str  # as the help texts name it
    verified_on: tuple[str, ...]  # device types it has been built, run and parity-gated on
    evidence: str  # what ran where (or why nothing did)


BACKENDS: dict[str, BackendInfo] = {
    "onnxruntime": BackendInfo(
        "virnucpro_trt.engines.onnxruntime_backend",
        "ONNXRUNTIME_BACKEND",
        "ONNX Runtime",
        ("cpu", "cuda"),
        "CPU in CI; CUDA execution provider on an H200",
    ),
    "inductor": BackendInfo(
        "virnucpro_trt.engines.inductor_backend",
        "INDUCTOR_BACKEND",
        "AOTInductor",
        ("cpu", "cuda"),
        "CPU in CI; CUDA on an H200 (build, predict, bench)",
    ),
    "tensorrt": BackendInfo(
        "virnucpro_trt.engines.tensorrt_backend",
        "TENSORRT_BACKEND",
        "TensorRT",
        (),
        "never run: no TensorRT builder can be installed on the project's machines",
    ),
}

assert tuple(BACKENDS) == ENGINE_BACKENDS, "settings.ENGINE_BACKENDS names the backends described here"

# Preference of ``auto`` per device type (fastest first); only verified backends are ever taken.
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "cuda": ("tensorrt", "inductor", "onnxruntime"),
    "cpu": ("onnxruntime",),
}


def auto_candidates(device_type: str) -> tuple[str, ...]:
    """The backends ``auto`` tries on ``device_type``, in order: the preferred ones verified there."""
    return tuple(n for n in AUTO_ORDER.get(device_type, ()) if device_type in BACKENDS[n].verified_on)


def unverified_note(name: str) -> str | None:
    """One line saying that ``name`` has never been run by the project, or ``None`` if it has."""
    info = BACKENDS[name]
    if info.verified_on:
        return None
    return (
        f"the {info.label} backend has never been run by this project ({info.evidence}); "
        "treat this as its first test"
    )


def auto_help() -> str:
    """What ``--backend auto`` does, for the CLI's help texts (derived from the tables above)."""
    per_device = []
    for device_type in ("cuda", "cpu"):
        labels = [BACKENDS[n].label for n in auto_candidates(device_type)]
        per_device.append(f"{' then '.join(labels)} on {device_type.upper()}")
    never = [BACKENDS[n].label for n, info in BACKENDS.items() if not info.verified_on]
    text = f"auto: the first available backend the project has verified: {'; '.join(per_device)}."
    if never:
        text += f" {', '.join(never)} only when named (never run by the project)."
    return text


def get_backend(name: str) -> EngineBackend:
    if name not in BACKENDS:
        raise UserError(f"unknown engine backend {name!r}; available: {', '.join(BACKENDS)}")
    info = BACKENDS[name]
    return getattr(importlib.import_module(info.module), info.attribute)


def require_available(backend: EngineBackend, device: torch.device, precision: str) -> None:
    reason = backend.availability(device, precision)
    if reason is not None:
        raise UserError(f"--backend {backend.name} cannot build {precision} engines for {device}: {reason}")


def choose_backend(requested: str, device: torch.device, precision: str) -> tuple[EngineBackend, str]:
    """A named backend (warned about when the project has never run it), or ``auto``'s choice.

    Returns the backend and the reason, which the build logs and records in the manifest.
    """
    if requested != "auto":
        backend = get_backend(requested)
        require_available(backend, device, precision)
        note = unverified_note(requested)
        if note:
            log.warning("--backend %s: %s", requested, note)
            return backend, f"--backend {requested} requested ({note})"
        return backend, f"--backend {requested} requested"
    skipped = [
        f"{name}: not verified by the project, only used when named"
        for name in AUTO_ORDER.get(device.type, ())
        if name not in auto_candidates(device.type)
    ]
    for name in auto_candidates(device.type):
        backend = get_backend(name)
        reason = backend.availability(device, precision)
        if reason is None:
            why = f"auto: {name} is the first verified backend available for {device.type}/{precision}"
            if skipped:
                why += f" ({'; '.join(skipped)})"
            return backend, why
        skipped.append(f"{name}: {reason}")
    raise UserError(
        f"--backend auto: no verified engine backend can build {precision} for {device}: {'; '.join(skipped)}"
    )
