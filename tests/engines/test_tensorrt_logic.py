"""TensorRT build/run logic against a fake ``trt`` namespace, plus a real build that needs TensorRT.

TensorRT cannot be installed on this project's machines: the fakes check the calls the builder code
makes (profiles, flags, timing cache, hardware compatibility) and the runner's helpers, including every
place TensorRT answers with ``False``, ``None`` or ``0`` instead of raising. The tests that need the real
library are marked ``tensorrt``; they skip, visibly, where it is absent, and fail instead when
``VIRNUCPRO_REQUIRE_TENSORRT=1`` (the GPU CI job sets it, so a missing TensorRT cannot pass as a skip).
"""

from __future__ import annotations

import enum
import importlib
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from virnucpro_trt.engines import tensorrt_plan as tp
from virnucpro_trt.engines.onnx_export import INPUT_NAMES, OUTPUT_NAME
from virnucpro_trt.engines.spec import BuildRequest, LoadRequest, ShapeRange
from virnucpro_trt.engines.tensorrt_backend import (
    TENSORRT_BACKEND,
    build_plan_file,
    engine_io,
    import_runtime,
    process_logger,
    tensorrt_problem,
)
from virnucpro_trt.engines.tensorrt_profiles import EncoderDims, Profile, derive_profiles
from virnucpro_trt.errors import BuildError, EngineMismatchError, RunFailure, ShapeRangeError, UserError

SHAPES = ShapeRange(min_batch=1, opt_batch=4, max_batch=8, min_length=2, opt_length=24, max_length=48)
# Two profiles, as a tight element limit (TIGHT_LIMIT) and a budget of 64 tokens make them for SHAPES and
# the tiny DNABERT-S (4 heads, widest layer 256).
TIGHT_LIMIT = 8 * 24 * 256
PROFILES = [Profile((1, 2), (2, 24), (8, 24)), Profile((1, 25), (2, 25), (2, 48))]
TRT10_NETWORK = ("EXPLICIT_BATCH", "STRONGLY_TYPED")
TRT10_FLAGS = ("FP16", "INT8", "TF32", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS")
TRT10_FLAGS += ("VERSION_COMPATIBLE", "FP8", "BF16")


# --------------------------------------------------------------------------- the fake tensorrt module
def _enum(name: str, members: tuple[str, ...]) -> type[enum.IntEnum]:
    return enum.IntEnum(name, list(members), start=0)


class FakeProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple] = {}
        self.extra_memory_target = 1.0  # TensorRT's default

    def set_shape(self, name: str, low, opt, high) -> None:
        self.shapes[name] = (low, opt, high)


class FakeCache:
    def __init__(self, data: bytes) -> None:
        self.data = bytes(data)

    def serialize(self) -> bytes:
        return self.data + b"+new-timings"


class FakeConfig:
    def __init__(
        self, accept_cache: bool = True, read_cache: bool = True, refuse_profile: bool = False
    ) -> None:
        self.flags: set[Any] = {"TF32-default-on"}
        self.set_calls: list[Any] = []
        self.cleared: list[Any] = []
        self.previews: list[tuple[Any, bool]] = []
        self.pools: dict[Any, int] = {}
        self.profiles: list[FakeProfile] = []
        self.caches: list[bytes] = []
        self.accept_cache = accept_cache
        self.read_cache = read_cache
        self.refuse_profile = refuse_profile
        self.hardware_compatibility_level = None
        self.builder_optimization_level = 3
        self.cache: FakeCache | None = None

    def set_flag(self, flag) -> None:
        self.set_calls.append(flag)

    def clear_flag(self, flag) -> None:
        self.cleared.append(flag)

    def set_preview_feature(self, feature, enabled: bool) -> None:
        self.previews.append((feature, enabled))

    def set_memory_pool_limit(self, pool, size: int) -> None:
        self.pools[pool] = size

    def add_optimization_profile(self, profile: FakeProfile) -> int:
        if self.refuse_profile:
            return -1  # IBuilderConfig::addOptimizationProfile on an invalid profile
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, data: bytes) -> FakeCache | None:
        self.caches.append(bytes(data))
        if data and not self.read_cache:
            return None  # the bindings' answer to bytes they cannot deserialize
        return FakeCache(data)

    def set_timing_cache(self, cache: FakeCache, ignore_mismatch: bool) -> bool:
        accepted = self.accept_cache or not cache.data
        if accepted:
            self.cache = cache
        return accepted

    def get_timing_cache(self) -> FakeCache | None:
        return self.cache


class FakeLayer:
    def __init__(self, layer_type) -> None:
        self.type = layer_type
        self.precision = None
        self.num_outputs = 1
        self.output_types: dict[int, Any] = {}

    def set_output_type(self, index: int, dtype) -> None:
        self.output_types[index] = dtype


class FakeNetwork:
    def __init__(self, flags: int, layer_types) -> None:
        self.flags = flags
        self.layers = [FakeLayer(t) for t in layer_types]

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def get_layer(self, index: int) -> FakeLayer:
        return self.layers[index]


def fake_trt(
    network_flags: tuple[str, ...] = TRT10_NETWORK,
    builder_flags: tuple[str, ...] = TRT10_FLAGS,
    hardware: tuple[str, ...] = ("NONE", "AMPERE_PLUS"),
    preview: tuple[str, ...] = ("RUNTIME_ACTIVATION_RESIZE_10_10",),
    *,
    parse_errors: tuple[str, ...] = (),
    build_fails: bool = False,
    accept_cache: bool = True,
    read_cache: bool = True,
    refuse_profile: bool = False,
) -> SimpleNamespace:
    """A stand-in for ``import tensorrt`` recording what the builder code asks of it."""
    trt = SimpleNamespace(__version__="10.99.0-fake", float32="float32")
    trt.NetworkDefinitionCreationFlag = _enum("NetworkDefinitionCreationFlag", network_flags)
    trt.BuilderFlag = _enum("BuilderFlag", builder_flags)
    trt.HardwareCompatibilityLevel = _enum("HardwareCompatibilityLevel", hardware)
    trt.PreviewFeature = _enum("PreviewFeature", preview)
    trt.MemoryPoolType = _enum("MemoryPoolType", ("WORKSPACE",))
    trt.LayerType = _enum(
        "LayerType", ("MATRIX_MULTIPLY", "NORMALIZATION", "SOFTMAX", "REDUCE", "ELEMENTWISE")
    )
    trt.calls = SimpleNamespace(builders=[], parsed=[])

    class ILogger:
        def __init__(self) -> None:
            pass

    class Builder:
        def __init__(self, logger) -> None:
            self.logger = logger
            self.config = FakeConfig(accept_cache, read_cache, refuse_profile)
            trt.calls.builders.append(self)

        def create_network(self, flags: int) -> FakeNetwork:
            self.network = FakeNetwork(flags, list(trt.LayerType))
            return self.network

        def create_builder_config(self) -> FakeConfig:
            return self.config

        def create_optimization_profile(self) -> FakeProfile:
            return FakeProfile()

        def build_serialized_network(self, network, config):
            if build_fails:
                self.logger.log(SimpleNamespace(name="ERROR"), "out of memory while timing MatMul")
                return None
            return b"PLAN-BYTES"

    class OnnxParser:
        def __init__(self, network, logger) -> None:
            self.num_errors = len(parse_errors)

        def parse_from_file(self, path: str) -> bool:
            trt.calls.parsed.append(path)
            return not parse_errors

        def get_error(self, index: int) -> str:
            return parse_errors[index]

    trt.ILogger, trt.Builder, trt.OnnxParser = ILogger, Builder, OnnxParser
    return trt


# --------------------------------------------------------------------------- pure planning
def test_enum_names_reads_members_and_tolerates_missing_enums() -> None:
    names = tp.trt_enum_names(fake_trt())
    assert "STRONGLY_TYPED" in names["NetworkDefinitionCreationFlag"] and "BF16" in names["BuilderFlag"]
    assert tp.enum_names(None) == set()


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_strongly_typed_half_builds_set_no_precision_flags(precision) -> None:
    plan = tp.plan_build(precision, PROFILES, tp.trt_enum_names(fake_trt()))
    assert plan.strongly_typed and plan.network_flags == ["STRONGLY_TYPED"]
    assert plan.onnx_precision == precision  # the ONNX graph carries the types
    assert plan.set_flags == [] and plan.clear_flags == [] and not plan.pin_fp32_layers
    assert plan.preview_features == ["RUNTIME_ACTIVATION_RESIZE_10_10"]


def test_fp32_build_turns_tf32_off() -> None:
    plan = tp.plan_build("fp32", PROFILES, tp.trt_enum_names(fake_trt()))
    assert plan.clear_flags == ["TF32"] and plan.set_flags == []


def test_weakly_typed_builds_use_flags_and_pin_fp32_layers() -> None:
    names = tp.trt_enum_names(fake_trt(network_flags=("EXPLICIT_BATCH",), preview=()))
    plan = tp.plan_build("fp16", PROFILES, names)
    assert not plan.strongly_typed and plan.network_flags == ["EXPLICIT_BATCH"]
    assert plan.set_flags == ["FP16", "PREFER_PRECISION_CONSTRAINTS"] and plan.pin_fp32_layers
    assert tp.plan_build("bf16", PROFILES, names).set_flags[0] == "BF16"
    assert plan.preview_features == []
    no_bf16 = tp.trt_enum_names(fake_trt(network_flags=("EXPLICIT_BATCH",), builder_flags=("FP16", "TF32")))
    with pytest.raises(BuildError, match="no BF16 builder flag"):
        tp.plan_build("bf16", PROFILES, no_bf16)
    with pytest.raises(BuildError, match="cannot build strongly typed"):
        tp.plan_build("fp16", PROFILES, no_bf16, strongly_typed=True)


def test_strong_typing_can_be_turned_off_where_available() -> None:
    plan = tp.plan_build("bf16", PROFILES, tp.trt_enum_names(fake_trt()), strongly_typed=False)
    assert not plan.strongly_typed and plan.set_flags == ["BF16", "PREFER_PRECISION_CONSTRAINTS"]


def test_fp8_plan_carries_the_calibration_note() -> None:
    names = tp.trt_enum_names(fake_trt(network_flags=("EXPLICIT_BATCH",)))
    plan = tp.plan_build("fp8", PROFILES, names)
    assert plan.set_flags == ["FP8", "BF16"] and "Q/DQ" in plan.notes[0]
    assert "Q/DQ" in TENSORRT_BACKEND.availability(torch.device("cuda"), "fp8")


def test_hardware_and_version_compatibility() -> None:
    names = tp.trt_enum_names(fake_trt())
    plan = tp.plan_build("fp16", PROFILES, names, hardware_compatible=True, version_compatible=True)
    assert plan.hardware_compatibility == "AMPERE_PLUS" and "VERSION_COMPATIBLE" in plan.set_flags
    old = tp.trt_enum_names(fake_trt(hardware=()))
    with pytest.raises(BuildError, match="AMPERE_PLUS"):
        tp.plan_build("fp16", PROFILES, old, hardware_compatible=True)


def test_network_flags_become_a_bit_mask() -> None:
    trt = fake_trt()
    plan = tp.plan_build("fp16", PROFILES, tp.trt_enum_names(trt))
    assert tp.network_creation_flags(trt, plan) == 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


# --------------------------------------------------------------------------- builder-config calls
def test_apply_plan_sets_profile_flags_pools_and_cache() -> None:
    trt = fake_trt()
    names = tp.trt_enum_names(trt)
    plan = tp.plan_build(
        "fp32", PROFILES, names, hardware_compatible=True, workspace_bytes=8 << 30, optimization_level=5
    )
    builder = trt.Builder(None)
    config = builder.create_builder_config()
    cache = tp.apply_plan(trt, builder, config, plan, b"old-timings")
    assert len(config.profiles) == 2  # one TensorRT profile per derived profile, in order
    for made, wanted in zip(config.profiles, PROFILES, strict=True):
        assert made.shapes == {name: (wanted.min, wanted.opt, wanted.max) for name in INPUT_NAMES}
    # Later profiles share the first one's weights instead of each taking a copy.
    assert [made.extra_memory_target for made in config.profiles] == [1.0, 0.0]
    assert config.cleared == [trt.BuilderFlag.TF32] and config.set_calls == []
    assert config.previews == [(trt.PreviewFeature.RUNTIME_ACTIVATION_RESIZE_10_10, True)]
    assert config.pools == {trt.MemoryPoolType.WORKSPACE: 8 << 30}
    assert config.hardware_compatibility_level == trt.HardwareCompatibilityLevel.AMPERE_PLUS
    assert config.builder_optimization_level == 5
    assert config.caches == [b"old-timings"] and cache is config.cache


def test_weak_flags_are_set_by_enum_member() -> None:
    trt = fake_trt(network_flags=("EXPLICIT_BATCH",))
    plan = tp.plan_build("fp16", PROFILES, tp.trt_enum_names(trt))
    builder = trt.Builder(None)
    tp.apply_plan(trt, builder, builder.create_builder_config(), plan, b"")
    assert builder.config.set_calls == [trt.BuilderFlag.FP16, trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS]


def test_rejected_timing_cache_is_replaced_by_an_empty_one() -> None:
    trt = fake_trt(accept_cache=False)
    builder = trt.Builder(None)
    plan = tp.plan_build("fp16", PROFILES, tp.trt_enum_names(trt))
    cache = tp.apply_plan(trt, builder, builder.create_builder_config(), plan, b"from-another-gpu")
    assert builder.config.caches == [b"from-another-gpu", b""] and cache.data == b""


def test_unreadable_timing_cache_falls_back_to_an_empty_one_with_a_warning(caplog) -> None:
    trt = fake_trt(read_cache=False)  # create_timing_cache returns None for these bytes
    builder = trt.Builder(None)
    plan = tp.plan_build("fp16", PROFILES, tp.trt_enum_names(trt))
    with caplog.at_level("WARNING"):
        cache = tp.apply_plan(trt, builder, builder.create_builder_config(), plan, b"truncated")
    assert builder.config.caches == [b"truncated", b""] and cache.data == b""
    assert cache is builder.config.cache
    assert "could not read the timing cache" in caplog.text


def test_a_timing_cache_tensorrt_cannot_even_start_empty_is_a_build_error() -> None:
    class NoCacheConfig(FakeConfig):
        def create_timing_cache(self, data: bytes) -> None:
            return None

    with pytest.raises(BuildError, match="could not create an empty timing cache"):
        tp.attach_timing_cache(NoCacheConfig(), b"")


def test_refused_or_missing_profiles_are_build_errors() -> None:
    trt = fake_trt(refuse_profile=True)
    builder = trt.Builder(None)
    plan = tp.plan_build("fp16", PROFILES, tp.trt_enum_names(trt))
    with pytest.raises(BuildError, match=r"refused optimization profile 0 .*returned -1"):
        tp.apply_plan(trt, builder, builder.create_builder_config(), plan, b"")
    empty = tp.plan_build("fp16", [], tp.trt_enum_names(trt))
    with pytest.raises(BuildError, match="at least one optimization profile"):
        tp.apply_plan(trt, builder, FakeConfig(), empty, b"")


def test_pin_fp32_layers_only_touches_numerically_sensitive_layers() -> None:
    trt = fake_trt()
    network = FakeNetwork(0, list(trt.LayerType))
    assert tp.pin_fp32_layers(trt, network) == 3
    pinned = {layer.type.name for layer in network.layers if layer.precision == "float32"}
    assert pinned == {"NORMALIZATION", "SOFTMAX", "REDUCE"}
    assert all(layer.output_types == {0: "float32"} for layer in network.layers if layer.precision)


# --------------------------------------------------------------------------- whole build with the fake
def test_profiles_derived_for_a_build_are_recorded_in_the_plan_facts(tmp_path: Path) -> None:
    trt = fake_trt()
    profiles = derive_profiles(SHAPES, EncoderDims(4, 256), 64, max_elements=TIGHT_LIMIT)
    assert profiles == PROFILES
    plan = tp.plan_build("bf16", profiles, tp.trt_enum_names(trt))
    facts = build_plan_file(trt, tmp_path / "m.onnx", plan, tmp_path / "x.plan", None, "dnabert-s")
    assert facts["plan"]["profiles"] == [p.to_json() for p in profiles]
    assert len(trt.calls.builders[0].config.profiles) == 2


def test_build_plan_file_writes_plan_and_persists_timing_cache(tmp_path: Path) -> None:
    trt = fake_trt()
    onnx_path, out, cache_path = tmp_path / "m.onnx", tmp_path / "esm2.sm90.bf16.plan", tmp_path / "t.cache"
    cache_path.write_bytes(b"earlier")
    plan = tp.plan_build("bf16", PROFILES, tp.trt_enum_names(trt))
    facts = build_plan_file(trt, onnx_path, plan, out, cache_path, "esm2")
    assert out.read_bytes() == b"PLAN-BYTES" and trt.calls.parsed == [str(onnx_path)]
    assert cache_path.read_bytes() == b"earlier+new-timings"
    assert facts["timing_cache_bytes_before"] == 7 and facts["plan"]["strongly_typed"]
    assert trt.calls.builders[0].network.flags == 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert not list(tmp_path.glob("*.partial-*"))  # atomic writes leave nothing behind


def test_parse_errors_are_reported(tmp_path: Path) -> None:
    trt = fake_trt(parse_errors=("node LayerNormalization_3: unsupported", "second", "third", "fourth"))
    plan = tp.plan_build("fp16", PROFILES, tp.trt_enum_names(trt))
    with pytest.raises(BuildError, match=r"cannot parse the esm2 ONNX graph: node LayerNorm.*\(\+1 more\)"):
        build_plan_file(trt, tmp_path / "m.onnx", plan, tmp_path / "x.plan", None, "esm2")
    assert not (tmp_path / "x.plan").exists()


def test_failed_build_names_the_tensorrt_error(tmp_path: Path) -> None:
    trt = fake_trt(build_fails=True)
    plan = tp.plan_build("fp16", PROFILES, tp.trt_enum_names(trt))
    with pytest.raises(BuildError, match="out of memory while timing MatMul"):
        build_plan_file(trt, tmp_path / "m.onnx", plan, tmp_path / "x.plan", None, "dnabert-s")


def test_timing_cache_and_sidecar_round_trip(tmp_path: Path) -> None:
    assert tp.read_timing_cache(None) == b"" and tp.read_timing_cache(tmp_path / "absent") == b""
    assert tp.save_timing_cache(FakeCache(b"x"), tmp_path / "sub" / "cache") == len(b"x+new-timings")
    assert tp.read_timing_cache(tmp_path / "sub" / "cache") == b"x+new-timings"
    plan_path = tmp_path / "dnabert-s.sm90.fp16.plan"
    assert tp.sidecar_path(plan_path).name == "dnabert-s.sm90.fp16.plan.json"
    tp.write_sidecar(plan_path, {"version_compatible": True, "tensorrt": "10.9"})
    assert tp.read_sidecar(plan_path) == {"tensorrt": "10.9", "version_compatible": True}
    assert tp.read_sidecar(tmp_path / "other.plan") == {}


# --------------------------------------------------------------------------- runner helpers
def test_tensorrt_types_map_to_torch_by_name() -> None:
    names = _enum("DataType", ("FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8", "FP8", "BF16", "INT64"))
    assert tp.torch_dtype(names.INT64) is torch.int64 and tp.torch_dtype(names.BF16) is torch.bfloat16
    with pytest.raises(BuildError, match="FP8"):
        tp.torch_dtype(names.FP8)


def test_engine_io_lists_modes_and_dtypes() -> None:
    modes = _enum("TensorIOMode", ("NONE", "INPUT", "OUTPUT"))
    types = _enum("DataType", ("FLOAT", "INT64"))
    tensors = {"input_ids": (modes.INPUT, types.INT64), "pooled": (modes.OUTPUT, types.FLOAT)}
    engine = SimpleNamespace(
        num_io_tensors=2,
        get_tensor_name=lambda i: list(tensors)[i],
        get_tensor_mode=lambda n: tensors[n][0],
        get_tensor_dtype=lambda n: tensors[n][1],
    )
    assert engine_io(None, engine) == {
        "input_ids": ("INPUT", torch.int64),
        "pooled": ("OUTPUT", torch.float32),
    }


def test_contexts_get_user_managed_memory_where_possible() -> None:
    strategies = _enum("ExecutionContextAllocationStrategy", ("STATIC", "ON_PROFILE_CHANGE", "USER_MANAGED"))
    trt10 = SimpleNamespace(ExecutionContextAllocationStrategy=strategies)
    engine = SimpleNamespace(create_execution_context=lambda strategy=None: ("context", strategy))
    assert tp.create_context(trt10, engine) == (("context", strategies.USER_MANAGED), True)
    assert tp.create_context(SimpleNamespace(), engine) == (("context", None), False)

    class Trt11Engine:  # takes a runtime config, not a strategy
        def create_runtime_config(self):
            return SimpleNamespace(set_execution_context_allocation_strategy=lambda s: setattr(self, "s", s))

        def create_execution_context(self, config=None):
            if isinstance(config, enum.Enum):
                raise TypeError("incompatible function arguments")
            return "context11"

    trt11_engine = Trt11Engine()
    assert tp.create_context(trt10, trt11_engine) == ("context11", True)
    assert trt11_engine.s == strategies.USER_MANAGED


def test_activation_memory_grows_only_and_is_handed_to_the_context() -> None:
    class Context:
        def __init__(self) -> None:
            self.sizes = [100, 40, 300]
            self.given: list[tuple[int, int]] = []

        def update_device_memory_size_for_shapes(self) -> int:
            return self.sizes.pop(0)

        def set_device_memory(self, pointer: int, size: int) -> None:
            self.given.append((pointer, size))

    memory, context = tp.ActivationMemory(torch.device("cpu")), Context()
    assert [memory.provide(context) for _ in range(3)] == [100, 40, 300]
    assert [size for _, size in context.given] == [100, 100, 300]
    assert context.given[0][0] == context.given[1][0]  # no reallocation for the smaller batch


def test_logger_keeps_errors_for_messages() -> None:
    logger = process_logger(fake_trt())
    mark = logger.errors.mark()
    logger.log(SimpleNamespace(name="WARNING"), "slow tactic")
    logger.log(SimpleNamespace(name="ERROR"), "no implementation for node X")
    assert logger.errors.since(mark) == ["no implementation for node X"]
    assert logger.errors.describe(logger.errors.mark()) == "no error logged by TensorRT"


def test_one_logger_per_process_and_errors_reported_per_build(tmp_path: Path) -> None:
    """TensorRT keeps one logger pointer: every Builder gets the same logger object, and a build's error
    message carries its own errors, not those of an earlier build."""
    trt = fake_trt(build_fails=True)
    plan = tp.plan_build("fp16", PROFILES, tp.trt_enum_names(trt))
    for attempt in range(2):
        with pytest.raises(BuildError) as failed:
            build_plan_file(trt, tmp_path / "m.onnx", plan, tmp_path / "x.plan", None, "esm2")
        assert str(failed.value).count("out of memory while timing MatMul") == 1, attempt
    first, second = trt.calls.builders
    assert first.logger is second.logger is process_logger(trt)
    assert process_logger(fake_trt()) is not process_logger(trt)  # another module, its own logger


def test_error_log_numbers_errors_and_keeps_the_recent_ones() -> None:
    errors = tp.ErrorLog(keep=3)
    for text in ("a", "b"):
        errors.add(text)
    mark = errors.mark()
    for text in ("c", "d", "e"):
        errors.add(text)
    assert errors.since(0) == ["c", "d", "e"] and errors.since(mark) == ["c", "d", "e"]
    assert errors.describe(mark, last=2) == "d; e" and errors.since(errors.mark()) == []


# --------------------------------------------------------------------------- runtime module, contexts, calls
def test_lean_runtime_is_found_under_its_own_module_name() -> None:
    lean = SimpleNamespace(__version__="10.16-lean")

    def only_lean(name: str) -> Any:
        if name != "tensorrt_lean":
            raise ImportError(f"No module named {name!r}")
        return lean

    assert tp.import_runtime(only_lean) == ("tensorrt_lean", lean)
    assert tp.import_runtime(lambda name: name)[0] == "tensorrt"  # the full TensorRT comes first

    def nothing(name: str) -> Any:
        raise ImportError(f"No module named {name!r}")

    with pytest.raises(ImportError, match=r"tensorrt: .*; tensorrt_lean: "):
        tp.import_runtime(nothing)
    tp.check_runtime_fits("tensorrt_lean", {"version_compatible": True}, "x.plan")
    tp.check_runtime_fits("tensorrt", {}, "x.plan")
    with pytest.raises(EngineMismatchError, match=r"only version-compatible plans; x\.plan is not one"):
        tp.check_runtime_fits("tensorrt_lean", {"version_compatible": False}, "x.plan")


def test_loading_without_any_tensorrt_runtime_is_one_clear_error(tmp_path: Path) -> None:
    try:
        import_runtime()
    except ImportError:
        pass
    else:
        pytest.skip("a TensorRT runtime is installed here")
    with pytest.raises(UserError, match=r"no TensorRT runtime here .*tensorrt_lean"):
        cuda = torch.device("cuda:0")
        TENSORRT_BACKEND.load(LoadRequest(tmp_path / "x.plan", "esm2", cuda, "bf16", 8, 1, SHAPES))
    assert "no TensorRT runtime here" in (TENSORRT_BACKEND.run_problem(torch.device("cuda:0"), "bf16") or "")
    assert "CUDA devices, not cpu" in (TENSORRT_BACKEND.run_problem(torch.device("cpu"), "fp32") or "")


class FakeEngine:
    """An ICudaEngine with profiles (get_tensor_profile_shape answers like the bindings: 3 shapes)."""

    def __init__(self, profiles: list[Profile], context_fails: bool = False, select=lambda i, s: True):
        self.profiles = profiles
        self.num_optimization_profiles = len(profiles)
        self.contexts: list[FakeContext] = []
        self.context_fails = context_fails
        self.select = select

    def get_tensor_profile_shape(self, name: str, index: int) -> list[tuple[int, ...]]:
        profile = self.profiles[index]
        return [profile.min, profile.opt, profile.max]

    def create_execution_context(self, strategy=None):
        if self.context_fails:
            return None
        context = FakeContext(self.select)
        self.contexts.append(context)
        return context


class FakeContext:
    def __init__(self, select=lambda i, s: True, refuse: tuple[str, ...] = (), memory: int = 4096) -> None:
        self.select = select
        self.refuse = refuse
        self.memory = memory
        self.calls: list[tuple] = []

    def set_optimization_profile_async(self, index: int, stream: int) -> bool:
        self.calls.append(("profile", index, stream))
        return self.select(index, stream)

    def set_input_shape(self, name: str, shape: tuple) -> bool:
        self.calls.append(("shape", name, shape))
        return "shape" not in self.refuse

    def set_tensor_address(self, name: str, pointer: int) -> bool:
        self.calls.append(("address", name, pointer))
        return f"address:{name}" not in self.refuse

    def update_device_memory_size_for_shapes(self) -> int:
        return self.memory

    def set_device_memory(self, pointer: int, size: int) -> None:
        self.calls.append(("memory", size))

    def execute_async_v3(self, stream: int) -> bool:
        self.calls.append(("execute", stream))
        return "execute" not in self.refuse


def test_engine_profiles_are_read_back_and_checked() -> None:
    assert tp.engine_profiles(FakeEngine(PROFILES)) == PROFILES
    with pytest.raises(EngineMismatchError, match="no optimization profile"):
        tp.engine_profiles(FakeEngine([]))

    class Skewed(FakeEngine):
        def get_tensor_profile_shape(self, name, index):
            shapes = super().get_tensor_profile_shape(name, index)
            return shapes if name == INPUT_NAMES[0] else [(1, 2), (1, 2), (1, 3)]

    with pytest.raises(EngineMismatchError, match="differs between the engine's inputs"):
        tp.engine_profiles(Skewed(PROFILES))

    class ThreeD(FakeEngine):
        def get_tensor_profile_shape(self, name, index):
            return [(1, 2, 3)] * 3

    with pytest.raises(EngineMismatchError, match=r"\[batch, length\]"):
        tp.engine_profiles(ThreeD(PROFILES))


def test_a_context_per_profile_selects_its_profile_once_on_the_run_stream() -> None:
    strategies = _enum("ExecutionContextAllocationStrategy", ("STATIC", "ON_PROFILE_CHANGE", "USER_MANAGED"))
    trt = SimpleNamespace(ExecutionContextAllocationStrategy=strategies)
    engine = FakeEngine(PROFILES)
    contexts = tp.ProfileContexts(trt, engine, len(PROFILES))
    second = contexts.get(1, 77)
    assert contexts.get(1, 78) is second and len(engine.contexts) == 1  # made lazily, once
    first = contexts.get(0, 77)
    assert first is not second and contexts.user_managed
    assert second.calls == [("profile", 1, 77)] and first.calls == [("profile", 0, 77)]
    with pytest.raises(ShapeRangeError, match="profile 2 does not exist"):
        contexts.get(2, 77)


def _bindings_raise(index: int, stream: int) -> bool:
    raise RuntimeError("Error in set optimization profile async.")  # what the bindings raise on failure


@pytest.mark.parametrize(
    ("engine", "message"),
    [
        (FakeEngine(PROFILES, context_fails=True), "could not create an execution context"),
        (FakeEngine(PROFILES, select=lambda i, s: False), "refused to select optimization profile 1"),
        (FakeEngine(PROFILES, select=_bindings_raise), "refused to select optimization profile 1: Error in"),
    ],
)
def test_contexts_tensorrt_refuses_are_run_failures(engine: FakeEngine, message: str) -> None:
    contexts = tp.ProfileContexts(SimpleNamespace(), engine, len(PROFILES))
    with pytest.raises(RunFailure, match=message):
        contexts.get(1, 5)


CPU = torch.device("cpu")


def _bound(context: FakeContext) -> None:
    inputs = {name: torch.ones((2, 7), dtype=torch.int64) for name in INPUT_NAMES}
    tp.run_context(context, inputs, OUTPUT_NAME, torch.empty((2, 8)), 9, tp.ActivationMemory(CPU))


def test_run_context_binds_shapes_addresses_memory_and_output() -> None:
    context = FakeContext()
    inputs = {name: torch.ones((2, 7), dtype=torch.int64) for name in INPUT_NAMES}
    output = torch.empty((2, 8))
    memory = tp.ActivationMemory(CPU)
    tp.run_context(context, inputs, OUTPUT_NAME, output, 9, memory)
    assert context.calls == [
        ("shape", "input_ids", (2, 7)),
        ("address", "input_ids", inputs["input_ids"].data_ptr()),
        ("shape", "attention_mask", (2, 7)),
        ("address", "attention_mask", inputs["attention_mask"].data_ptr()),
        ("memory", 4096),
        ("address", OUTPUT_NAME, output.data_ptr()),
        ("execute", 9),
    ]


@pytest.mark.parametrize(
    ("refuse", "error", "message"),
    [
        ("shape", ShapeRangeError, "refused input_ids of shape"),
        ("address:attention_mask", RunFailure, "refused the address of attention_mask"),
        (f"address:{OUTPUT_NAME}", RunFailure, f"refused the address of {OUTPUT_NAME}"),
        ("execute", RunFailure, "failed to enqueue"),
    ],
)
def test_run_context_raises_on_every_refusal(refuse: str, error: type, message: str) -> None:
    context = FakeContext(refuse=(refuse,))
    with pytest.raises(error, match=message):
        _bound(context)
    assert ("execute", 9) not in context.calls or refuse == "execute"


def test_zero_activation_memory_is_tensorrts_error_value() -> None:
    with pytest.raises(RunFailure, match="could not size the activation memory"):
        _bound(FakeContext(memory=0))


# --------------------------------------------------------------------------- the backend on this machine
def test_backend_identity_and_availability_without_tensorrt() -> None:
    assert (TENSORRT_BACKEND.name, TENSORRT_BACKEND.extension) == ("tensorrt", "plan")
    problem = tensorrt_problem()
    if problem is None:
        pytest.skip("TensorRT is installed here: the absent-TensorRT messages cannot be checked")
    assert problem.startswith("TensorRT is not importable here (")
    assert TENSORRT_BACKEND.availability(torch.device("cuda"), "bf16") == problem
    assert TENSORRT_BACKEND.library_versions() == {"tensorrt": "none"}


REQUIRE_TENSORRT = "VIRNUCPRO_REQUIRE_TENSORRT"


def _real_tensorrt() -> Any:
    """The real TensorRT on a CUDA machine; a skip here, a failure where the CI job requires TensorRT."""
    required = os.environ.get(REQUIRE_TENSORRT) == "1"
    try:
        trt = importlib.import_module("tensorrt")
    except Exception as exc:
        (pytest.fail if required else pytest.skip)(f"TensorRT is not installed: {exc}")
    if not torch.cuda.is_available():
        (pytest.fail if required else pytest.skip)("TensorRT tests need a CUDA GPU")
    return trt


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_real_tensorrt_build_matches_torch(tmp_path: Path, precision: str) -> None:
    """Builds and runs a tiny DNABERT-S engine with the real TensorRT (never run on this project's
    machines, which cannot install TensorRT)."""
    _real_tensorrt()
    from virnucpro_trt.engines.spec import BuildOptions
    from virnucpro_trt.models.random_checkpoints import random_dnabert
    from virnucpro_trt.models.tokenization import pad_batch

    device = torch.device("cuda:0")
    rng = np.random.default_rng(0)
    rows = [np.concatenate([[1], rng.integers(5, 256, n), [2]]).astype(np.int64) for n in (30, 7, 45, 12)]
    ids, mask = pad_batch(rows, 3)
    reference = random_dnabert(seed=5).to(device)
    with torch.inference_mode():
        want = reference(torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)).cpu().numpy()
    options = BuildOptions(workdir=tmp_path, timing_cache=tmp_path / "tensorrt.timing-cache")
    path = tmp_path / f"dnabert-s.sm.{precision}.plan"
    example = (torch.from_numpy(ids[:2]), torch.from_numpy(mask[:2]))
    model = random_dnabert(seed=5).to(device)
    request = BuildRequest(model, "dnabert-s", example, SHAPES, precision, device, path, options)
    built = TENSORRT_BACKEND.build(request)
    assert path.is_file() and options.timing_cache.is_file() and tp.sidecar_path(path) in built.files
    runner = TENSORRT_BACKEND.load(request.load_request(path, 64, 3))
    got = runner.embed_padded(ids, mask)
    tolerance = 1e-4 if precision == "fp32" else 5e-3
    np.testing.assert_allclose(got, want, atol=tolerance, rtol=0)


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_real_tensorrt_engine_with_several_profiles_runs_every_profile(tmp_path: Path) -> None:
    """A tight element limit gives the tiny DNABERT-S two profiles: batches of short rows run on the
    first, long rows on the second, and a long batch larger than the second's max batch in chunks."""
    _real_tensorrt()
    from virnucpro_trt.engines.spec import BuildOptions
    from virnucpro_trt.models.random_checkpoints import random_dnabert
    from virnucpro_trt.models.tokenization import pad_batch

    device = torch.device("cuda:0")
    extra = {"tensorrt_max_elements": TIGHT_LIMIT}
    options = BuildOptions(workdir=tmp_path, max_batch_tokens=64, extra=extra)
    rng = np.random.default_rng(1)
    lengths = (10, 20, 44, 45, 30, 3)
    rows = [np.concatenate([[1], rng.integers(5, 256, n), [2]]).astype(np.int64) for n in lengths]
    path = tmp_path / "dnabert-s.sm.fp32.plan"
    ids, mask = pad_batch(rows[:2], 3)
    model = random_dnabert(seed=7).to(device)
    example = (torch.from_numpy(ids), torch.from_numpy(mask))
    request = BuildRequest(model, "dnabert-s", example, SHAPES, "fp32", device, path, options)
    built = TENSORRT_BACKEND.build(request)
    assert built.facts["plan"]["profiles"] == [p.to_json() for p in PROFILES]
    assert tp.read_sidecar(path)["plan"]["profiles"] == [p.to_json() for p in PROFILES]
    runner = TENSORRT_BACKEND.load(request.load_request(path, 64, 3))
    assert len(runner.profiles) == 2
    reference = random_dnabert(seed=7).to(device)
    for batch in (rows[:2], rows[2:5], rows):  # profile 0; profile 1 in 2 chunks; all rows in 3 chunks
        ids, mask = pad_batch(batch, 3)
        with torch.inference_mode():
            want = reference(torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device))
        np.testing.assert_allclose(runner.embed_padded(ids, mask), want.cpu().numpy(), atol=1e-4, rtol=0)
    assert sorted(runner.contexts.contexts) == [0, 1]
