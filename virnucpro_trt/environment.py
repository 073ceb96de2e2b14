"""What this machine offers: library versions, devices, ONNX Runtime providers, TensorRT.

Used by ``virnucpro-trt env`` and recorded in run.json / engine manifests, so every number in a result
file can be traced to the software that produced it. Optional libraries are probed lazily and their
absence is reported, never raised.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import math
import os
import platform
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from virnucpro_trt import __version__
from virnucpro_trt.errors import RunFailure

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


def available_cpus(root: Path = Path("/"), environ: Mapping[str, str] | None = None) -> int:
    """CPUs this process can keep busy: the smallest of its CPU affinity, its cgroup CPU quota and
    ``SLURM_CPUS_PER_TASK``, at least 1. The default of every thread count (``--threads``).

    Why all three: the machine's count oversubscribes a process that was given less, and each of them
    gives less in its own way — taskset, cpusets and most container runtimes narrow the affinity; a
    CPU quota (``docker --cpus``, Kubernetes limits) leaves every CPU visible and throttles instead;
    Slurm without task affinity leaves the whole node visible to a job of a few CPUs. ``root`` and
    ``environ`` stand for ``/`` and ``os.environ`` (tests pass a fake file system).
    """
    environ = os.environ if environ is None else environ
    try:
        counts = [len(os.sched_getaffinity(0))]
    except AttributeError:  # pragma: no cover - non-Linux
        counts = [os.cpu_count() or 1]
    quota = cgroup_cpu_quota(root)
    if quota is not None:
        counts.append(max(1, math.floor(quota)))
    slurm = environ.get("SLURM_CPUS_PER_TASK", "").strip()
    if slurm.isdigit() and int(slurm) > 0:
        counts.append(int(slurm))
    return max(1, min(counts))


def cgroup_cpu_quota(root: Path = Path("/")) -> float | None:
    """The CPU quota (in CPUs) of this process's cgroup and its ancestors, the tightest one; None if
    none is set or none can be read.

    cgroup v2: ``cpu.max`` (``QUOTA PERIOD`` or ``max PERIOD``) under ``/sys/fs/cgroup``; v1:
    ``cpu.cfs_quota_us`` (-1: none) / ``cpu.cfs_period_us`` under the ``cpu`` controller's mount
    (``/sys/fs/cgroup/cpu,cpuacct`` or ``/sys/fs/cgroup/cpu``). The process's cgroup comes from
    ``/proc/self/cgroup``; inside a container whose cgroup is the mount's root, the path may not exist
    below the mount, so every existing folder from the process's cgroup up to the mount is read.
    """
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    base = root / "sys/fs/cgroup"
    quotas: list[float] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # v2 (the unified hierarchy)
            quotas += filter(None, (_v2_quota(folder) for folder in _cgroup_folders(base, path)))
        elif "cpu" in controllers.split(","):
            mounts = [base / name for name in ("cpu,cpuacct", "cpu", "cpuacct,cpu")]
            mount = next((m for m in mounts if m.is_dir()), None)
            if mount is not None:
                quotas += filter(None, (_v1_quota(folder) for folder in _cgroup_folders(mount, path)))
    return min(quotas) if quotas else None


def _cgroup_folders(mount: Path, path: str) -> list[Path]:
    """``mount/a/b``, ``mount/a``, ``mount`` for cgroup ``/a/b``: those that exist."""
    parts = [p for p in path.strip().split("/") if p and p not in (".", "..")]
    folders = [mount.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]
    return [f for f in folders if f.is_dir()]


def _words(path: Path) -> list[str] | None:
    try:
        return path.read_text().split()
    except OSError:
        return None


def _v2_quota(folder: Path) -> float | None:
    fields = _words(folder / "cpu.max")
    if not fields or len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _v1_quota(folder: Path) -> float | None:
    quota_text = _words(folder / "cpu.cfs_quota_us")
    period_text = _words(folder / "cpu.cfs_period_us")
    try:
        quota = int(quota_text[0]) if quota_text else -1
        period = int(period_text[0]) if period_text else 0
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def ensure_open_files(needed: int, why: str) -> None:
    """Let this process hold ``needed`` files open at once, for a job that must (``merge`` reads every
    part's highest-score table side by side): the soft limit is raised towards the hard one as far as
    needed, as any process may. Where the hard limit is lower, fail (exit 1) now, in one line, rather
    than past a thousand parts' work. Where the system has no such limits, nothing is done."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise RunFailure(
            f"{why} needs about {needed} open files at once, more than the hard limit of {hard} "
            "(ulimit -Hn): raise it and rerun the same command"
        )
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    except (ValueError, OSError) as exc:
        raise RunFailure(
            f"{why} needs about {needed} open files at once and the limit is {soft} (ulimit -n), which "
            f"could not be raised ({exc}): raise it and rerun the same command"
        ) from None


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


# /proc/cpuinfo flags that name instructions a compiler may emit under -march=native (x86); the rest
# (hypervisor, constant_tsc, bug workarounds...) differ between machines that run the same code.
_X86_ISA_FLAG = re.compile(
    r"(mmx|sse|ssse|pni|avx|fma|f16c|bmi|adx|aes|pclmul|sha|movbe|rdrand|rdseed|abm|lzcnt|popcnt|tbm|xop|"
    r"vaes|vpclmul|gfni|amx|cx16|clflushopt|clwb|xsave|fsgsbase|3dnow|movdir|serialize|waitpkg|cldemote)"
)


def cpu_instruction_sets(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """The instruction-set extensions of this CPU, sorted (Linux: ``flags`` on x86, ``Features`` on Arm;
    empty elsewhere). AOTInductor compiles a CPU engine with ``-march=native``: the engine may use any
    of these, and dies of SIGILL on a CPU that lacks one, so the manifest records them."""
    try:
        lines = cpuinfo.read_text(errors="replace").splitlines()
    except OSError:
        return []
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return sorted({flag for flag in value.split() if _X86_ISA_FLAG.match(flag)})
        if key.strip() == "Features":
            return sorted(set(value.split()))
    return []


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def library_versions() -> dict[str, str | None]:
    """Installed versions by distribution name (no import: ``env`` must be quick and side-effect free)."""
    return {name: _version(name) for name in _LIBRARIES}


@dataclasses.dataclass(frozen=True)
class CudaProperties:
    """What every record of a GPU states about it (run.json, manifests, bench reports, ``env``), read
    from the driver in one place."""

    name: str
    compute_capability: str  # "9.0"
    memory_gib: float  # rounded to 0.1

    @classmethod
    def of(cls, device: Any) -> CudaProperties:
        """Of ``device`` (a ``torch.device`` or an index); torch is imported here, not by ``env``."""
        import torch

        props = torch.cuda.get_device_properties(device)
        return cls(props.name, f"{props.major}.{props.minor}", round(props.total_memory / 2**30, 1))


def cuda_devices() -> list[dict[str, Any]]:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return []
    if not torch.cuda.is_available():
        return []
    devices = []
    for index in range(torch.cuda.device_count()):
        gpu = CudaProperties.of(index)
        devices.append({"index": index, **dataclasses.asdict(gpu)})
    return devices


# ONNX Runtime's Linux wheels (1.32 here) carry 1DS telemetry: a few seconds after the first session a
# background thread looks up its collector, mobile.events.data.microsoft.com:443. The variable is read
# when the library loads, so it is set before the first import (a user's own value is kept).
ORT_TELEMETRY_VARIABLE = "ORT_DISABLE_TELEMETRY"


def stay_offline() -> None:
    """Nothing but ``download`` reaches the network: Hugging Face lookups are forced offline for this
    process (and the workers it starts, which inherit the variables), and ONNX Runtime's telemetry is
    turned off before any library (onnxscript, torch.onnx) can load onnxruntime ahead of
    :func:`import_onnxruntime`. A user's own values are kept."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault(ORT_TELEMETRY_VARIABLE, "1")


def import_onnxruntime() -> ModuleType:
    """``onnxruntime`` with its telemetry off; every import of it in this package goes through here
    (nothing but ``download`` may reach the network). ImportError propagates with its own message."""
    os.environ.setdefault(ORT_TELEMETRY_VARIABLE, "1")
    import onnxruntime

    return onnxruntime


def onnxruntime_providers() -> list[str] | str:
    try:
        onnxruntime = import_onnxruntime()
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
        "available_cpus": available_cpus(),
        "onnxruntime_providers": onnxruntime_providers(),
        "tensorrt": tensorrt_status(),
    }
