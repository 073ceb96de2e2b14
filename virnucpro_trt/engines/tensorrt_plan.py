"""The decisions behind a TensorRT build, as plain data and small functions testable without TensorRT.

TensorRT cannot be installed on this project's machines, so everything that can be decided without it
lives here and is unit-tested against a fake ``trt`` namespace: the optimisation profile from a
:class:`ShapeRange`, the precision strategy from the precision and the enum names the installed TensorRT
has, the builder-config calls (one optimization profile per entry of
:func:`~virnucpro_trt.engines.tensorrt_profiles.derive_profiles`), the timing cache file, the plan's
sidecar file, TensorRT -> torch dtypes, and the runner's per-batch calls, each result checked: TensorRT
reports most failures by returning ``False``, ``None`` or ``0`` and logging the reason, not by raising.
:mod:`~virnucpro_trt.engines.tensorrt_backend` calls these with the real module.

Runtime module. The full ``tensorrt`` package builds and runs; the lean runtime, a separate wheel whose
module is ``tensorrt_lean``, only deserializes version-compatible plans. :data:`RUNTIME_MODULES` is the
order they are looked for in when loading.

Precision strategy. TensorRT >= 9.1 can build a *strongly typed* network: every tensor keeps the type
the ONNX graph gives it, so the fp32 islands the export keeps on purpose (LayerNorm statistics, softmax,
rotary, pooling, the ESM residual stream) stay fp32 and the matmuls run in the ONNX weights' fp16/bf16.
Precision builder flags are not allowed with it (TensorRT 11 removed them altogether). Older TensorRT
gets a weakly typed network: the ONNX stays in the target dtype, the FP16/BF16 flag lets TensorRT pick
half kernels, and normalization/softmax/reduce layers are pinned to fp32 with precision constraints.
fp32 engines clear TF32 (on by default in TensorRT): fp32 is the exact reference. fp8 is planned only
as far as the flags go: TensorRT uses fp8 only where the graph has Q/DQ nodes from a calibration step
(e.g. NVIDIA ModelOpt), which this project does not produce, so the backend refuses fp8.
"""

from __future__ import annotations

import importlib
import json
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from virnucpro_trt.engines.onnx_export import INPUT_NAMES
from virnucpro_trt.engines.tensorrt_profiles import Profile
from virnucpro_trt.errors import BuildError, EngineMismatchError, RunFailure, ShapeRangeError
from virnucpro_trt.files.atomic import write_bytes_atomic
from virnucpro_trt.files.json_fields import parse_json

log = logging.getLogger(__name__)

FP32_PINNED_LAYER_TYPES = ("NORMALIZATION", "SOFTMAX", "REDUCE")
HALF_FLAGS = {"fp16": "FP16", "bf16": "BF16"}
FP8_NOTE = (
    "FP8 takes effect only on tensors quantized by Q/DQ nodes from a calibration step (e.g. NVIDIA "
    "ModelOpt); without them TensorRT runs the fallback precision"
)
SIDECAR_SUFFIX = ".json"
BUILDER_MODULE = "tensorrt"
LEAN_MODULE = "tensorrt_lean"  # the lean runtime's own wheel and module: runs version-compatible plans only
RUNTIME_MODULES = (BUILDER_MODULE, LEAN_MODULE)


def enum_names(enum: Any) -> set[str]:
    """Member names of a pybind11 (or Python) enum; empty when the enum does not exist (older TensorRT)."""
    return set(getattr(enum, "__members__", {}) or {})


def trt_enum_names(trt: Any) -> dict[str, set[str]]:
    """The enum members a build plan depends on, read from the installed ``tensorrt`` module."""
    return {
        name: enum_names(getattr(trt, name, None))
        for name in (
            "NetworkDefinitionCreationFlag",
            "BuilderFlag",
            "HardwareCompatibilityLevel",
            "PreviewFeature",
            "MemoryPoolType",
        )
    }


@dataclass
class BuildPlan:
    """Everything a build sets on TensorRT, by enum *name* (resolved against the module at build time)."""

    precision: str
    onnx_precision: str
    strongly_typed: bool
    network_flags: list[str] = field(default_factory=list)
    set_flags: list[str] = field(default_factory=list)
    clear_flags: list[str] = field(default_factory=list)
    preview_features: list[str] = field(default_factory=list)
    pin_fp32_layers: bool = False
    hardware_compatibility: str | None = None
    workspace_bytes: int | None = None
    optimization_level: int | None = None
    profiles: list[Profile] = field(default_factory=list)
    # IOptimizationProfile.extra_memory_target of every profile after the first: 0 asks TensorRT not to
    # allocate more weight memory for it (the default, 1.0, lets each profile take up to a full copy,
    # which for ESM-2 3B is 5.6 GB per profile). A hint: TensorRT does not promise to meet it.
    extra_profile_memory: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "onnx_precision": self.onnx_precision,
            "strongly_typed": self.strongly_typed,
            "network_flags": self.network_flags,
            "set_flags": self.set_flags,
            "clear_flags": self.clear_flags,
            "preview_features": self.preview_features,
            "pin_fp32_layers": self.pin_fp32_layers,
            "hardware_compatibility": self.hardware_compatibility,
            "workspace_bytes": self.workspace_bytes,
            "optimization_level": self.optimization_level,
            "profiles": [profile.to_json() for profile in self.profiles],
            "extra_profile_memory": self.extra_profile_memory,
            "notes": self.notes,
        }


def plan_build(
    precision: str,
    profiles: list[Profile],
    names: dict[str, set[str]],
    *,
    strongly_typed: bool | None = None,
    hardware_compatible: bool = False,
    version_compatible: bool = False,
    workspace_bytes: int | None = None,
    optimization_level: int | None = None,
) -> BuildPlan:
    """Decide a build from the precision, the options and the enum ``names`` the TensorRT has.

    ``strongly_typed=None`` means: strongly typed wherever the TensorRT supports it.
    """
    network_names = names.get("NetworkDefinitionCreationFlag", set())
    flag_names = names.get("BuilderFlag", set())
    can_strong = "STRONGLY_TYPED" in network_names
    if strongly_typed and not can_strong:
        raise BuildError("this TensorRT cannot build strongly typed networks (TensorRT >= 9.1 can)")
    strong = can_strong if strongly_typed is None else strongly_typed
    if not strong and "BuilderFlag" in names and not flag_names:
        raise BuildError("this TensorRT has neither strongly typed networks nor precision builder flags")
    plan = BuildPlan(
        precision=precision,
        onnx_precision=precision,
        strongly_typed=strong,
        profiles=list(profiles),
        workspace_bytes=workspace_bytes,
        optimization_level=optimization_level,
    )
    if strong:
        plan.network_flags.append("STRONGLY_TYPED")
    elif "EXPLICIT_BATCH" in network_names:
        plan.network_flags.append("EXPLICIT_BATCH")  # needed before TensorRT 10, ignored since
    _plan_precision(plan, flag_names)
    if hardware_compatible:
        if "AMPERE_PLUS" not in names.get("HardwareCompatibilityLevel", set()):
            raise BuildError("this TensorRT has no AMPERE_PLUS hardware compatibility level (needs >= 8.6)")
        plan.hardware_compatibility = "AMPERE_PLUS"
        plan.notes.append(
            "hardware-compatible engines run on Ampere and newer but lose arch-specific kernels"
        )
    if version_compatible:
        if "VERSION_COMPATIBLE" not in flag_names:
            raise BuildError("this TensorRT has no VERSION_COMPATIBLE builder flag (needs >= 8.6)")
        plan.set_flags.append("VERSION_COMPATIBLE")
    if "RUNTIME_ACTIVATION_RESIZE_10_10" in names.get("PreviewFeature", set()):
        # Lets the runner size activation memory for each batch's shapes instead of its profile's
        # max corner (the largest batch at the longest length the profile allows).
        plan.preview_features.append("RUNTIME_ACTIVATION_RESIZE_10_10")
    return plan


def _plan_precision(plan: BuildPlan, flag_names: set[str]) -> None:
    precision = plan.precision
    if precision == "fp32":
        if "TF32" in flag_names:
            plan.clear_flags.append("TF32")
        return
    if precision == "fp8":
        plan.notes.append(FP8_NOTE)
        plan.onnx_precision = "bf16" if "BF16" in flag_names or plan.strongly_typed else "fp16"
        if not plan.strongly_typed:
            plan.set_flags += ["FP8", HALF_FLAGS[plan.onnx_precision]]
        return
    if precision not in HALF_FLAGS:
        raise BuildError(f"unknown precision {precision!r} for TensorRT (fp32, fp16, bf16, fp8)")
    if plan.strongly_typed:
        return  # the ONNX graph's types decide; precision flags are refused in this mode
    flag = HALF_FLAGS[precision]
    if flag not in flag_names:
        raise BuildError(f"this TensorRT has no {flag} builder flag; build fp32 or upgrade TensorRT")
    plan.set_flags += [flag, "PREFER_PRECISION_CONSTRAINTS"]
    plan.pin_fp32_layers = True


def network_creation_flags(trt: Any, plan: BuildPlan) -> int:
    """The bit mask ``builder.create_network`` takes."""
    mask = 0
    for name in plan.network_flags:
        mask |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    return mask


def apply_plan(trt: Any, builder: Any, config: Any, plan: BuildPlan, timing_cache: bytes) -> Any:
    """Set ``plan`` on a builder config and attach a timing cache made from ``timing_cache`` bytes.

    Returns the timing cache object. A cache TensorRT cannot read (``create_timing_cache`` returns
    ``None``: a truncated or foreign file) or rejects (another TensorRT version or GPU) is replaced by an
    empty one, with a warning, rather than failing the build.
    """
    for name in plan.set_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    for name in plan.clear_flags:
        config.clear_flag(getattr(trt.BuilderFlag, name))
    for name in plan.preview_features:
        config.set_preview_feature(getattr(trt.PreviewFeature, name), True)
    if plan.workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(plan.workspace_bytes))
    if plan.hardware_compatibility:
        config.hardware_compatibility_level = getattr(
            trt.HardwareCompatibilityLevel, plan.hardware_compatibility
        )
    if plan.optimization_level is not None:
        config.builder_optimization_level = int(plan.optimization_level)
    if not plan.profiles:
        raise BuildError("a TensorRT build needs at least one optimization profile")
    for expected, shapes in enumerate(plan.profiles):
        profile = builder.create_optimization_profile()
        for name in INPUT_NAMES:  # set_shape raises on shapes TensorRT refuses
            profile.set_shape(name, shapes.min, shapes.opt, shapes.max)
        if expected > 0:  # ignored by TensorRT for the first profile
            profile.extra_memory_target = plan.extra_profile_memory
        index = config.add_optimization_profile(profile)
        if index != expected:  # -1: TensorRT found the profile invalid
            raise BuildError(
                f"TensorRT refused optimization profile {expected} ({shapes.to_json()}): returned {index}"
            )
    return attach_timing_cache(config, timing_cache)


def attach_timing_cache(config: Any, timing_cache: bytes) -> Any:
    """The timing cache made from ``timing_cache`` and set on ``config``, or an empty one if TensorRT
    cannot read or will not take it. Raises :class:`BuildError` if even an empty cache is refused."""
    if timing_cache:
        cache = config.create_timing_cache(timing_cache)
        if cache is None:
            log.warning("TensorRT could not read the timing cache (damaged?); starting an empty one")
        elif config.set_timing_cache(cache, False):
            return cache
        else:
            log.warning("TensorRT rejected the timing cache (other version or GPU?); starting an empty one")
    cache = config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, False):
        raise BuildError("TensorRT could not create an empty timing cache")
    return cache


def pin_fp32_layers(trt: Any, network: Any, layer_types: Iterable[str] = FP32_PINNED_LAYER_TYPES) -> int:
    """Weakly typed builds: run normalization/softmax/reduce layers in fp32; returns how many."""
    wanted = {getattr(trt.LayerType, name) for name in layer_types if hasattr(trt.LayerType, name)}
    pinned = 0
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.type in wanted:
            layer.precision = trt.float32
            for out in range(layer.num_outputs):
                layer.set_output_type(out, trt.float32)
            pinned += 1
    return pinned


def read_timing_cache(path: Path | None) -> bytes:
    """The persisted timing cache, or empty bytes for a first build (TensorRT starts a new cache)."""
    if path is None or not Path(path).is_file():
        return b""
    return Path(path).read_bytes()


def write_atomically(path: Path, data: bytes | memoryview) -> None:
    """Write ``data`` via a temporary file and rename: a crash never leaves half a cache or plan."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, bytes(data))


def save_timing_cache(cache: Any, path: Path | None) -> int:
    """Persist ``cache`` (an ``ITimingCache``) to ``path``; returns the bytes written (0: no path)."""
    if path is None:
        return 0
    data = memoryview(cache.serialize())
    write_atomically(Path(path), data)
    return data.nbytes


def sidecar_path(plan_path: Path) -> Path:
    """``esm2.sm90.bf16.plan`` -> ``esm2.sm90.bf16.plan.json``: what loading the plan needs to know."""
    return plan_path.with_name(plan_path.name + SIDECAR_SUFFIX)


def write_sidecar(plan_path: Path, facts: dict[str, Any]) -> Path:
    path = sidecar_path(plan_path)
    write_atomically(path, (json.dumps(facts, indent=2, sort_keys=True) + "\n").encode())
    return path


def read_sidecar(plan_path: Path) -> dict[str, Any]:
    path = sidecar_path(plan_path)
    if not path.is_file():
        return {}
    return parse_json(path.read_text())


TORCH_DTYPES: dict[str, torch.dtype] = {
    "FLOAT": torch.float32,
    "HALF": torch.float16,
    "BF16": torch.bfloat16,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "INT8": torch.int8,
    "UINT8": torch.uint8,
    "BOOL": torch.bool,
}


def torch_dtype(trt_dtype: Any) -> torch.dtype:
    """The torch dtype of a ``trt.DataType`` member (by its name, so fakes and real enums both work)."""
    name = getattr(trt_dtype, "name", str(trt_dtype).rsplit(".", 1)[-1])
    if name not in TORCH_DTYPES:
        raise BuildError(f"TensorRT tensor type {name} has no torch equivalent here")
    return TORCH_DTYPES[name]


def import_runtime(
    importer: Callable[[str], Any] = importlib.import_module, modules: Iterable[str] = RUNTIME_MODULES
) -> tuple[str, Any]:
    """``(module name, module)`` of the first TensorRT runtime importable here: the full ``tensorrt``,
    else the lean runtime ``tensorrt_lean``. Raises ImportError naming what each attempt said."""
    failures = []
    for name in modules:
        try:
            return name, importer(name)
        except Exception as exc:  # ImportError, or a broken install failing to load its libraries
            failures.append(f"{name}: {exc}")
    raise ImportError("; ".join(failures))


def check_runtime_fits(module_name: str, sidecar: dict[str, Any], plan_name: str) -> None:
    """The lean runtime deserializes only version-compatible plans: refuse any other one up front."""
    if module_name == LEAN_MODULE and not sidecar.get("version_compatible"):
        raise EngineMismatchError(
            f"only the lean TensorRT runtime ({LEAN_MODULE}) is installed here, and it runs only "
            f"version-compatible plans; {plan_name} is not one: install the full tensorrt package "
            "(pip install '.[tensorrt]')"
        )


class ErrorLog:
    """The errors a TensorRT logger received, numbered, so a caller can ask for the ones since a mark.

    TensorRT keeps one logger for the whole process (:func:`~virnucpro_trt.engines.tensorrt_backend.
    process_logger`), so errors of several builds and runners land here; each operation takes a
    :meth:`mark` before it starts and reports :meth:`since` that mark. Thread safe, as TensorRT requires
    of a logger; only the most recent ``keep`` errors are held.
    """

    def __init__(self, keep: int = 64):
        self._lock = threading.Lock()
        self._recent: deque[tuple[int, str]] = deque(maxlen=keep)
        self._count = 0

    def add(self, message: str) -> None:
        with self._lock:
            self._recent.append((self._count, message))
            self._count += 1

    def mark(self) -> int:
        with self._lock:
            return self._count

    def since(self, mark: int) -> list[str]:
        with self._lock:
            return [message for number, message in self._recent if number >= mark]

    def describe(self, mark: int, last: int = 3) -> str:
        """The last ``last`` errors since ``mark``, joined, or a pointer to the log when there are none."""
        errors = self.since(mark)[-last:]
        return "; ".join(errors) if errors else "no error logged by TensorRT"


def create_context(trt: Any, engine: Any) -> tuple[Any, bool]:
    """An execution context whose activation memory we allocate per batch, when TensorRT allows it.

    Returns (context, user_managed). The default (static) strategy reserves memory for the largest
    profile's max corner at once, more than most token-budget batches need. ``None`` from TensorRT
    (no context could be made, e.g. out of memory) is a :class:`RunFailure`.
    """
    strategy_enum = getattr(trt, "ExecutionContextAllocationStrategy", None)
    if strategy_enum is None or not hasattr(strategy_enum, "USER_MANAGED"):
        context, user_managed = engine.create_execution_context(), False
    else:
        user_managed = True
        try:
            context = engine.create_execution_context(strategy_enum.USER_MANAGED)
        except TypeError:  # a TensorRT that takes a runtime config instead of a strategy
            runtime_config = engine.create_runtime_config()
            runtime_config.set_execution_context_allocation_strategy(strategy_enum.USER_MANAGED)
            context = engine.create_execution_context(runtime_config)
    if context is None:
        raise RunFailure("TensorRT could not create an execution context (see the TensorRT errors logged)")
    return context, user_managed


def engine_profiles(engine: Any, names: Iterable[str] = INPUT_NAMES) -> list[Profile]:
    """The optimization profiles a deserialized engine holds (``get_tensor_profile_shape`` per profile),
    which must be the same for every input; the engine, not the manifest, is what the runner obeys."""
    names = list(names)
    profiles = []
    for index in range(int(engine.num_optimization_profiles)):
        per_input = {
            name: Profile(*(_dims2(dims) for dims in engine.get_tensor_profile_shape(name, index)))
            for name in names
        }
        first = per_input[names[0]]
        if any(profile != first for profile in per_input.values()):
            raise EngineMismatchError(f"profile {index} differs between the engine's inputs: {per_input}")
        profiles.append(first)
    if not profiles:
        raise EngineMismatchError("the TensorRT engine has no optimization profile")
    return profiles


def _dims2(dims: Any) -> tuple[int, int]:
    values = [int(v) for v in dims]
    if len(values) != 2:
        raise EngineMismatchError(f"expected [batch, length] profile shapes, the engine has {values}")
    return values[0], values[1]


class ProfileContexts:
    """One execution context per optimization profile, made the first time a batch needs it.

    A context selects its profile once (``set_optimization_profile_async`` on the stream the batches
    run on, so the selection is ordered before them); keeping a context per profile instead of
    switching one context avoids TensorRT's per-switch resource updates. All contexts share one
    :class:`ActivationMemory`: they run one at a time on one stream.
    """

    def __init__(self, trt: Any, engine: Any, count: int):
        self.trt = trt
        self.engine = engine
        self.count = count
        self.contexts: dict[int, Any] = {}
        self.user_managed: bool | None = None

    def get(self, index: int, stream_handle: int) -> Any:
        if not 0 <= index < self.count:
            raise ShapeRangeError(f"TensorRT profile {index} does not exist (the engine has {self.count})")
        if index not in self.contexts:
            context, user_managed = create_context(self.trt, self.engine)
            self.user_managed = user_managed
            select_profile(context, index, stream_handle)
            self.contexts[index] = context
        return self.contexts[index]


def select_profile(context: Any, index: int, stream_handle: int) -> None:
    """``set_optimization_profile_async``, whose failure the bindings report by raising or returning False."""
    try:
        selected = context.set_optimization_profile_async(index, stream_handle)
    except RuntimeError as exc:
        raise RunFailure(f"TensorRT refused to select optimization profile {index}: {exc}") from None
    if selected is False:
        raise RunFailure(f"TensorRT refused to select optimization profile {index}")


def run_context(
    context: Any,
    inputs: dict[str, torch.Tensor],
    output_name: str,
    output: torch.Tensor,
    stream_handle: int,
    memory: ActivationMemory | None,
) -> None:
    """Bind ``inputs`` (shapes and addresses), activation memory and ``output`` to ``context`` and
    enqueue it on ``stream_handle``; every refusal is raised (TensorRT logs its reason separately)."""
    for name, tensor in inputs.items():
        shape = tuple(tensor.shape)
        if not context.set_input_shape(name, shape):
            raise ShapeRangeError(f"TensorRT refused {name} of shape {shape} for its profile")
        if not context.set_tensor_address(name, tensor.data_ptr()):
            raise RunFailure(f"TensorRT refused the address of {name} (shape {shape})")
    if memory is not None:
        memory.provide(context)
    if not context.set_tensor_address(output_name, output.data_ptr()):
        raise RunFailure(f"TensorRT refused the address of {output_name} (shape {tuple(output.shape)})")
    if not context.execute_async_v3(stream_handle):
        raise RunFailure("TensorRT failed to enqueue the engine")


class ActivationMemory:
    """A growing torch CUDA byte buffer handed to user-managed execution contexts.

    It only grows, so after the largest batch no allocation happens. Freed buffers are safe to reuse
    because every batch runs on one stream and torch's allocator orders reuse on that stream.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.buffer: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return 0 if self.buffer is None else int(self.buffer.numel())

    def provide(self, context: Any) -> int:
        """Give ``context`` memory for the input shapes just set; returns the bytes it asked for.

        ``update_device_memory_size_for_shapes`` returns 0 on error (shapes or profile not set): an
        engine of these encoders always needs activation memory, so 0 is raised, never handed on.
        """
        need = int(context.update_device_memory_size_for_shapes())
        if need <= 0:
            raise RunFailure(f"TensorRT could not size the activation memory for these shapes (got {need})")
        if need > self.size or self.buffer is None:
            self.buffer = torch.empty(need, dtype=torch.uint8, device=self.device)
        if hasattr(context, "set_device_memory"):
            context.set_device_memory(self.buffer.data_ptr(), self.size)
        else:  # TensorRT 10.0
            context.device_memory = self.buffer.data_ptr()
        return need
