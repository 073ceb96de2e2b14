"""Device and precision selection with user-facing errors instead of CUDA tracebacks."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from virnucpro_trt.environment import CudaProperties
from virnucpro_trt.errors import UserError
from virnucpro_trt.files.json_fields import count, number, obj, optional_text, text

log = logging.getLogger(__name__)


PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` -> first CUDA device if any, else CPU; ``cuda``/``cuda:N`` must exist."""
    spec = spec.strip().lower()
    if spec == "auto":
        return torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {spec}: no CUDA device is available (torch {torch.__version__})")
        index = 0 if spec == "cuda" else _parse_index(spec)
        count = torch.cuda.device_count()
        if index >= count:
            raise UserError(
                f"--device {spec}: only {count} CUDA device(s) visible (cuda:0..cuda:{count - 1})"
            )
        return torch.device(f"cuda:{index}")
    raise UserError(f"--device {spec}: expected auto, cpu, cuda or cuda:N")


def _parse_index(spec: str) -> int:
    try:
        return int(spec.split(":", 1)[1])
    except ValueError:
        raise UserError(f"--device {spec}: the device index must be a number") from None


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """Map ``fp32|fp16|bf16`` to a dtype; warn where the device makes a precision slow or unsupported."""
    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision}: expected one of {', '.join(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    if device.type == "cpu" and dtype is not torch.float32:
        log.warning(
            "--precision %s on CPU runs in emulation and is slow; fp32 is the reference there", precision
        )
    if device.type == "cuda" and dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise UserError(f"--precision bf16: {torch.cuda.get_device_name(device)} does not support bf16")
    return dtype


def computing_releases(engine_backend: str | None = None) -> dict[str, str]:
    """The releases of the libraries that compute a run's results and that no engine manifest pins, kept
    in the identity of what it computes (predict's resume key and finished-run rule, merge's check of
    parts, embed's skip): another release may pick other kernels, so results of two are never mixed or
    reused as one run's.

    torch always computes (the classifier, and an eager run's encoders; its CUDA build tag included). An
    ONNX Runtime engine set does not pin onnxruntime (any release since 1.14 runs its opset), so the
    release found here is named too; AOTInductor and TensorRT sets pin theirs in their manifests, which
    the set's identity covers.
    """
    releases = {"torch": torch.__version__}
    if engine_backend == "onnxruntime":
        from virnucpro_trt.environment import import_onnxruntime

        releases["onnxruntime"] = str(import_onnxruntime().__version__)
    return releases


def configure_fp32_reference() -> None:
    """Keep fp32 exact: no TF32 in matmuls/convolutions (upstream ran plain fp32)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


@dataclass(frozen=True)
class DeviceFacts:
    """What run.json records about the device: CUDA properties on a GPU, torch's threads on a CPU."""

    device: str
    torch: str
    name: str
    compute_capability: str | None = None  # CUDA only
    memory_gib: float | None = None  # CUDA only
    cuda: str | None = None  # CUDA only: torch's CUDA version
    threads: int | None = None  # CPU only

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"device": self.device, "torch": self.torch, "name": self.name}
        if self.is_cuda:
            data.update(
                compute_capability=self.compute_capability, memory_gib=self.memory_gib, cuda=self.cuda
            )
        else:
            data["threads"] = self.threads
        return data

    @classmethod
    def from_json(cls, data: Any) -> DeviceFacts:
        data = obj(data, "device")
        device = text(data, "device")
        extra = ("compute_capability", "memory_gib", "cuda") if device.startswith("cuda") else ("threads",)
        obj(data, "device", ("device", "torch", "name", *extra))
        base = (device, text(data, "torch"), text(data, "name"))
        if not device.startswith("cuda"):
            return cls(*base, threads=count(data, "threads", 1))
        memory = number(data, "memory_gib", 0.0)
        return cls(*base, text(data, "compute_capability"), memory, optional_text(data, "cuda"))


def describe_device(device: torch.device) -> DeviceFacts:
    """What run.json records about the device."""
    if device.type == "cuda":
        gpu = CudaProperties.of(device)
        name, capability, memory = gpu.name, gpu.compute_capability, gpu.memory_gib
        return DeviceFacts(str(device), torch.__version__, name, capability, memory, torch.version.cuda)
    return DeviceFacts(str(device), torch.__version__, "cpu", threads=torch.get_num_threads())
