"""AOTInductor engines: ``torch.export`` with dynamic shapes, compiled ahead of time into one ``.pt2``.

Build: cast a copy of the fp32 encoder to the precision on the device (:mod:`inductor_model`; fp8 swaps
the linears for e4m3 row-wise ones, :mod:`inductor_fp8`), export it with dynamic ``batch`` and
``sequence`` dims bounded by the engine's :class:`ShapeRange`, and compile with
``torch._inductor.aoti_compile_and_package``. Load: ``aoti_load_package`` plus a runner that pads each
batch into the graph's box (:mod:`inductor_runner`). The package is bound to the torch (and triton)
version that built it and, on CUDA, to the GPU architecture, hence ``library_versions``.

Why these choices, for CUDA speed (measured on the H200: docs/measurements.md):

* Dynamic shapes cost little for these encoders. Every inner dimension (hidden 2560, heads 40 x 64, FFN
  10240) is static; batch and length only multiply into the GEMMs' M = B*T and into the row count of
  pointwise/reduction kernels. cuBLAS picks its kernel at run time from the real M, and Triton
  kernels take M as an argument. What does depend on the sizes is autotuning, so the export example
  sits at the opt point of the range (the batch the token-budget batcher produces, ~190 x 170 for ESM
  at 32768 tokens) and ``max_autotune`` benchmarks there (:mod:`inductor_shapes`, :mod:`inductor_configs`).
* ``sequence_multiple`` (``BuildOptions.extra["sequence_multiple"]``, default 1): the runner right-pads
  T to a multiple of m (pad id, mask 0: results do not change, tested) and the graph is exported with
  ``T = m * Dim``, so Inductor can prove that every T-strided buffer is m-element aligned. m=8 was the
  CUDA default, for the attention bias (the memory-efficient SDPA kernel wants its row stride to be a
  multiple of 8, and Inductor's SDPA lowering pads a bias whose alignment it cannot prove). But the pad
  tokens cost more than that re-layout: on Illumina-length reads (49-token proteins, which m=8 pads
  noticeably) m=1 embeds more proteins/s in ESM-2 and more frames/s in DNABERT-S, at the same parity on
  the H200 (measurement log, 2026-12-02, fifth session); 500 bp proteins (168 tokens) are multiples of
  8 anyway.
* Attention stays on a fused SDPA kernel. ESM-2 passes a boolean key-padding mask [B, 1, 1, T];
  DNABERT-S an additive ALiBi + padding bias [B, H, T, T]. On CPU Inductor lowers both to
  ``_scaled_dot_product_flash_attention_for_cpu``, the boolean mask turned into an additive float bias
  by one fused kernel (read from the generated wrapper; ``build`` records these calls in the facts as
  ``extern_kernels``). On CUDA an explicit mask rules out FlashAttention-2, so SDPA takes the
  memory-efficient (CUTLASS) kernel with the mask as a float bias that Inductor materialises as
  [B, 1, T, T] per layer (its query dimension cannot stay a stride-0 broadcast because of the alignment
  rule). Not cuDNN attention, which torch 2.11 prefers on Hopper: it plans per new shape, and a run's
  batches are nearly all new shapes (``BuildOptions.attention``,
  :mod:`virnucpro_trt.runtime.attention_kernel`). The build checks the lowered call (``extern_kernels``
  in the facts) against the request. Attention is ~1% of ESM-2 3B's FLOPs at 170 tokens (T / 6D), but the
  memory-efficient kernel is Ampere code and takes a far larger share of the bf16 forward than of its
  FLOPs on the H200 (profile: measurement log, 2026-12-02): the next lever once the GEMMs are at peak
  (DEVELOPERS.md, "Open problems").
* Batch 1: exported as a dynamic dim with ``min=1`` (torch 2.13 keeps it once the example batch is >= 2;
  2.11 not checked here). The runner pads any batch below the graph's minimum, as the exporter recorded
  it, by repeating row 0 (and drops those rows); ``extra["min_export_batch"]=2`` forces that path.
* Rotary tables are frozen (``extra["frozen_rotary"]``, default true): ESM-2's cos/sin for every
  position up to the graph's longest sequence are computed once at build time and stored in the
  package (0.5 MB: two fp32 tables, positions x head size), and the graph slices them. Computed in the
  graph from ``arange(T)``, Inductor fuses cos/sin into each layer's rotary kernel and so evaluates them
  36 times per forward.
* ESM-2's attention is the project's own Triton kernel in CUDA half-precision engines
  (``extra["rotary_attention_kernel"]``, default true; :mod:`~virnucpro_trt.engines.rotary_attention`):
  it reads q, k and v from the fused projection, applies rotary and the key padding as it loads them and
  writes out_proj's input layout, so the rotary/layout kernels and SDPA's mask bias go. The fp8 layers
  ran faster with it at the same parity on the H200 (measurement log, 2026-12-03, eleventh session).
  It replaces SDPA, and ``attention`` does not apply to it (DNABERT-S and fp32 or CPU ESM-2 engines
  keep SDPA); the build checks that the engine calls no SDPA kernel.
* With that kernel, fp8 ESM-2 leaves qkv's bias to it (``extra["fp8_qkv_bias_in_attention"]``, default
  true): with SDPA Inductor fused the add into the rotary/layout kernels, but it cannot fuse into a user
  Triton kernel, so the add after the GEMM became a pass of its own; the kernel adds the bias as it
  loads q, k and v, with the same rounding. The fp8 layers ran faster with it at the same parity on the
  H200 (measurement log, 2026-12-03, twelfth session).
* fp8 ESM-2 folds each layer's last residual add into the next layer's LayerNorm kernel
  (``extra["fp8_fold_residual"]``, default true): Inductor's standalone add kernel ran far slower inside
  the engine than in the same layers compiled for one static shape (measurement log, 2026-12-02, third
  session), and the fold was faster at the same parity on the H200 (measurement log, 2026-12-02, fifth
  session).
* bf16/fp16 ESM-2 on CUDA computes fc1 and GELU as one cuBLASLt GEMM with GELU in its epilogue
  (``extra["gelu_epilogue"]``, default true; :func:`~virnucpro_trt.models.esm2.linear_gelu`), GELU's
  tanh form, as the fp8 engines compute it: the [tokens, 10240] activation is written once instead of
  written, read and written again by Inductor's separate bias + GELU kernel. The bf16 engine ran faster
  at the same parity on the H200 (measurement log, 2026-12-04, seventeenth session). The build checks
  that the engine calls ``_addmm_activation`` once per layer (Inductor could otherwise decompose it).
* ESM-2's residual stream stays fp32 in half-precision engines (the native model's default, for
  bf16 parity); ``extra["residual_fp32"]=false`` keeps it in the engine's dtype (half the row kernels'
  traffic). That graph builds with torch 2.11's AOTInductor on CUDA only since the wrapper's size-array
  cache is off (:mod:`~virnucpro_trt.engines.aoti_int_arrays`; it named arrays it never declared).
* The ``.pt2`` holds code and kernels, and the graph box/kind/precision/width as AOTI metadata that
  ``load`` checks, with the vocabulary size (``virnucpro.vocab_size``) that the C++ host holds token ids
  to; the weights (bf16 ESM-2 3B's are 5.7 GB) are in ``<stem>.weights.safetensors`` beside it, since
  recipe 9 (:mod:`~virnucpro_trt.engines.package_weights`: why, and how they are checked).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
import re
import shutil
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from virnucpro_trt.engines.aoti_int_arrays import fresh_int_array_declarations
from virnucpro_trt.engines.inductor_cache import weights_in_library_compile
from virnucpro_trt.engines.inductor_configs import inductor_configs
from virnucpro_trt.engines.inductor_model import (
    DTYPES,
    device_copy,
    freeze_alibi_slopes,
    freeze_position_tables,
)
from virnucpro_trt.engines.inductor_runner import InductorRunner, check_metadata, extern_kernels, load_package
from virnucpro_trt.engines.inductor_shapes import META_PREFIX, GraphShapes, exported_bounds, tile_example
from virnucpro_trt.engines.package_weights import WEIGHTS_KEY, program_tensors, weights_file, write_weights
from virnucpro_trt.engines.spec import BuildRequest, BuiltArtifact, LoadRequest, vocab_size
from virnucpro_trt.errors import BuildError, EngineMismatchError
from virnucpro_trt.runtime.attention_kernel import attention_kernel, check_lowered_attention
from virnucpro_trt.runtime.embedding import EmbeddingBackend

log = logging.getLogger(__name__)

DEFAULT_SEQUENCE_MULTIPLE = 1  # pad tokens cost more than an unaligned attention bias (module docstring)
ENGINE_DEVICES = ("cpu", "cuda")
# What a build does with each ``BuildOptions.extra`` key nobody set (module docstring: why each).
EXTRA_DEFAULTS: dict[str, Any] = {
    "sequence_multiple": DEFAULT_SEQUENCE_MULTIPLE,
    "min_export_batch": 1,
    "frozen_rotary": True,
    "fp8_fold_residual": True,
    "rotary_attention_kernel": True,
    "fp8_qkv_bias_in_attention": True,
    "gelu_epilogue": True,
}
# Where ``gelu_epilogue`` applies: torch._addmm_activation is cuBLASLt's GEMM with GELU in its epilogue
# only on CUDA in half precision (addmm then GELU elsewhere, nothing gained).
GELU_EPILOGUE_DEVICES = ("cuda",)
GELU_EPILOGUE_PRECISIONS = ("bf16", "fp16")


def _extra(options: Any, key: str) -> Any:
    return options.extra.get(key, EXTRA_DEFAULTS[key])


def _first_line(exc: BaseException) -> str:
    """One line for a failed compile: the exception's first line and, where its text carries a C++
    compiler's output (AOTInductor's ``CppCompileError``), the first ``error:`` the compiler printed,
    which is what tells an upstream codegen bug from a broken toolchain."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[0] if lines else ""
    compiler = next((line for line in lines[1:] if "error:" in line), None)
    if compiler is not None:
        text += f" (first compiler error: {compiler.split('error:', 1)[1].strip()})"
    return f"{type(exc).__name__}: {text}"[:300]


def _triton_version() -> str | None:
    try:
        return importlib.import_module("triton").__version__
    except Exception:  # not installed, or a broken install: either way no triton to bind to
        return None


def _fp8_linears(
    model: torch.nn.Module, fast_accum: bool, fold_residual: bool, qkv_bias_in_attention: bool
) -> int:
    """:func:`~virnucpro_trt.engines.inductor_fp8.convert_to_fp8`, imported here: it brings the model code
    (ESM-2's layer) with it, which loading a package must not need."""
    from virnucpro_trt.engines.inductor_fp8 import convert_to_fp8

    return convert_to_fp8(
        model, fast_accum, fold_residual=fold_residual, qkv_bias_in_attention=qkv_bias_in_attention
    )


def _own_attention_kernel(model: torch.nn.Module, options: Any, device: torch.device, precision: str) -> bool:
    """Set ESM-2's ``attention_kernel`` from ``extra["rotary_attention_kernel"]`` (None otherwise, whatever
    the model arrived with); True when the engine will run the project's Triton attention: asked for, and
    a CUDA engine in half precision (fp8 engines compute attention in bf16) with a head size it takes."""
    if not hasattr(model, "attention_kernel"):
        return False
    model.attention_kernel = None
    if not _extra(options, "rotary_attention_kernel"):
        return False
    from virnucpro_trt.engines.rotary_attention import kernel_applies_to, register_kernel, rotary_attention

    if not kernel_applies_to(device, DTYPES[precision], model.config.head_dim):
        return False  # CPU and fp32 engines: SDPA (the kernel's function falls back to it anyway)
    register_kernel()  # before the export traces the op
    model.attention_kernel = rotary_attention
    return True


def _gelu_epilogue(model: torch.nn.Module, options: Any, device: torch.device, precision: str) -> int:
    """Set ``gelu_epilogue`` on ESM-2's layers from ``extra["gelu_epilogue"]`` (cleared otherwise,
    whatever the model arrived with) where ``GELU_EPILOGUE_*`` say it applies; the number of layers set.
    Not fp8 (its layers quantise GELU's output in their own kernel, and are not these layers) nor fp32
    or CPU engines (no epilogue there; the exact GELU stays)."""
    layers = [m for m in model.modules() if hasattr(m, "gelu_epilogue")]  # ESM-2's Esm2Layer
    wanted = (
        bool(_extra(options, "gelu_epilogue"))
        and device.type in GELU_EPILOGUE_DEVICES
        and precision in GELU_EPILOGUE_PRECISIONS
    )
    for layer in layers:
        layer.gelu_epilogue = wanted
    return len(layers) if wanted else 0


def check_gelu_epilogue(kernels: dict[str, int], layers: int, what: str) -> None:
    """Fail the build when an engine built with ``layers`` GELU epilogues calls ``_addmm_activation``
    fewer times (``kernels``: the wrapper's aten calls): Inductor decomposing it into addmm + GELU would
    leave the engine slower than without the option while its facts claim it."""
    calls = sum(n for k, n in kernels.items() if "_addmm_activation" in k)
    if calls < layers:
        raise BuildError(f"{what}: built with {layers} GELU epilogues but calls _addmm_activation {calls}x")


def attention_fact(options: Any, device: torch.device, own_kernel: bool) -> str:
    """The attention an engine runs, for its facts: the project's kernel (``rotary-triton``, the name the
    diagnostics time it under), else the SDPA kernel ``--attention`` baked in on CUDA, else ``cpu``."""
    if own_kernel:
        return "rotary-triton"
    return options.attention if device.type == "cuda" else "cpu"


def _export(model: torch.nn.Module, example: tuple[torch.Tensor, ...], graph: GraphShapes, kind: str) -> Any:
    """``torch.export`` with the graph's dynamic dims; if the exporter refuses a batch of 1 (a size-1
    specialisation complaint), export again from batch 2 up: the runner then pads batches of 1."""
    try:
        return torch.export.export(model, example, dynamic_shapes=graph.dynamic_shapes(), strict=False)
    except Exception as exc:
        message = str(exc)
        refused_one = "Constraints violated" in message or "specializ" in message.lower()
        if not (refused_one and graph.min_batch == 1 < graph.max_batch):
            raise BuildError(f"torch.export failed for {kind}: {_first_line(exc)}") from exc
        floor = dataclasses.replace(graph, min_batch=2)
        try:
            return torch.export.export(model, example, dynamic_shapes=floor.dynamic_shapes(), strict=False)
        except Exception as again:
            raise BuildError(f"torch.export failed for {kind}: {_first_line(again)}") from again


# AOTInductor's C++ wrapper sometimes names a size/stride array it never declared ("'int_array_196' was
# not declared in this scope"), at random: the same program compiles on another try (measurement log,
# tenth and sixteenth sessions; pytorch#193621). The build compiles with that declaration cache off
# (aoti_int_arrays), and tries again on that fault should it still come: other compile errors repeat on
# every try. GCC quotes the name with typographic quotes in a UTF-8 locale ('...' elsewhere); a retry that
# matched only the ASCII form never ran on the H200 (measurement log, 2026-12-04, sixteenth session).
COMPILE_ATTEMPTS = 3
_UNDECLARED_SIZE_ARRAY = re.compile(r"['\u2018`]int_array_\d+['\u2019] was not declared in this scope")


@dataclasses.dataclass(frozen=True)
class _Compiled:
    graph: GraphShapes  # the exported bounds
    configs: dict[str, Any]  # the Inductor settings it was compiled with
    exported_at: float  # perf_counter() when the export finished
    attempts: int = 1  # compiles it took (more than one: a C++ wrapper fault, see COMPILE_ATTEMPTS)
    fresh_int_arrays: bool = False  # compiled with the wrapper's size-array cache off (aoti_int_arrays)
    weights: Path | None = None  # the weights file beside the package (package_weights), if not inside it


@contextlib.contextmanager
def _torch_deprecations_off() -> Iterator[None]:
    """Silence the deprecation torch's own export and packaging code trips over (``isinstance(treespec,
    LeafSpec)``, printed from ``copyreg`` twice per build with torch 2.11): nothing a user can act on,
    and the only lines a build printed besides its own. Other warnings pass."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning
        )
        yield


def _export_and_compile(
    model: torch.nn.Module,
    inputs: tuple[torch.Tensor, ...],
    requested: GraphShapes,
    request: BuildRequest,
    out_path: Path,
) -> _Compiled:
    """Export ``model`` with ``requested``'s dynamic dims and compile it into ``out_path``."""
    kind, shapes, precision, device, options = (
        request.kind, request.shapes, request.precision, request.device, request.options,
    )  # fmt: skip
    with attention_kernel(options.attention, device), _torch_deprecations_off():
        program = _export(model, inputs, requested, f"{kind} ({precision})")
    graph = exported_bounds(program, requested)
    if graph.max_batch < shapes.max_batch or graph.max_length < shapes.max_length:
        raise BuildError(f"torch.export narrowed {kind}'s shapes to {graph}, short of {shapes}")
    dim = int(program.graph_module.graph.find_nodes(op="output")[0].args[0][0].meta["val"].shape[-1])
    exported = time.perf_counter()
    metadata = {
        **graph.to_metadata(),
        f"{META_PREFIX}kind": kind,
        f"{META_PREFIX}precision": precision,
        f"{META_PREFIX}dim": str(dim),
        f"{META_PREFIX}vocab_size": str(vocab_size(request.model, kind)),
    }
    configs = inductor_configs(device, options, metadata)
    weights: Path | None = None
    if not configs["aot_inductor.package_constants_in_so"]:  # the weights beside the package
        weights = weights_file(out_path)
        configs["aot_inductor.metadata"][WEIGHTS_KEY] = write_weights(program_tensors(program), weights)
    attempt, fresh = 0, False
    try:
        for attempt in range(1, COMPILE_ATTEMPTS + 1):
            try:
                # Inductor lowers SDPA here; the wrapper declares each size array where it is used
                with (
                    attention_kernel(options.attention, device),
                    fresh_int_array_declarations() as fresh,
                    _torch_deprecations_off(),
                ):
                    # a library holding the weights leaves a copy of them in the cache: it goes
                    owned = (
                        weights_in_library_compile(metadata, out_path)
                        if weights is None
                        else contextlib.nullcontext()
                    )
                    with owned:
                        torch._inductor.aoti_compile_and_package(
                            program,
                            package_path=str(out_path),
                            inductor_configs=dict(configs),  # it adds keys
                        )
                break
            except Exception as exc:
                message = f"AOTInductor could not compile {kind} ({precision}): {_first_line(exc)}"
                if attempt == COMPILE_ATTEMPTS or not _UNDECLARED_SIZE_ARRAY.search(str(exc)):
                    raise BuildError(message) from exc
                log.warning("%s; compiling again (attempt %d of %d)", message, attempt + 1, COMPILE_ATTEMPTS)
    except BaseException:
        if weights is not None:
            weights.unlink(missing_ok=True)  # written above, for a package that never came
        raise
    finally:
        del program
    return _Compiled(graph, configs, exported, attempt, fresh, weights)


class InductorBackend:
    """:class:`~virnucpro_trt.engines.spec.EngineBackend` for AOTInductor (``.pt2`` packages)."""

    name = "inductor"
    extension = "pt2"
    # 2: sequence multiple 1, frozen rotary tables, fp8 folded residual and polynomial erf (2026-12);
    # 3: ESM-2 batches without padding take unmasked attention; 4: that path off again (failed the gate;
    #    removed since);
    # 5: ESM-2's attention by the project's Triton kernel on CUDA (rotary and layout in it);
    # 6: that kernel by halves, 64 x 32 keys, and fp8's qkv bias added in it;
    # 7: bf16/fp16 ESM-2's fc1 + GELU as one cuBLASLt GEMM (gelu_epilogue);
    # 8: the package records its vocabulary size (virnucpro.vocab_size), which the C++ host requires;
    # 9: the weights in a safetensors file beside the package (package_weights), not in its library.
    recipe_version = 9
    native_cpu_code = True

    def availability(self, device: torch.device, precision: str) -> str | None:
        if precision not in DTYPES:
            return f"inductor backend has no precision {precision!r} (choose from {', '.join(DTYPES)})"
        if not all(hasattr(torch._inductor, f) for f in ("aoti_compile_and_package", "aoti_load_package")):
            return f"AOTInductor packaging needs torch >= 2.6; this is torch {torch.__version__}"
        if device.type not in ENGINE_DEVICES:
            return f"inductor backend runs on cpu or cuda, not {device.type}"
        if device.type == "cuda":
            if not torch.cuda.is_available():
                built = torch.version.cuda or "no CUDA"
                return f"CUDA requested but torch {torch.__version__} ({built}) sees no CUDA device"
            if device.index is not None and device.index >= torch.cuda.device_count():
                return f"{device} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            if _triton_version() is None:
                return "AOTInductor on CUDA needs triton, which is not importable"
        if precision == "fp8":
            from virnucpro_trt.engines.inductor_fp8 import fp8_unavailable_reason  # build time: model code

            if (reason := fp8_unavailable_reason(device)) is not None:
                return reason
        if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
            return "AOTInductor needs a C++ compiler (g++) on PATH to build packages"
        return None

    def library_versions(self) -> dict[str, str]:
        versions = {"torch": torch.__version__}
        if (triton := _triton_version()) is not None:
            versions["triton"] = triton
        return versions

    def build(self, request: BuildRequest) -> BuiltArtifact:
        kind, shapes, precision = request.kind, request.shapes, request.precision
        device, options = request.device, request.options
        if (reason := self.availability(device, precision)) is not None:
            raise BuildError(reason)
        multiple = int(_extra(options, "sequence_multiple"))
        if multiple < 1:
            raise BuildError(f"sequence_multiple must be >= 1, got {multiple}")
        requested = GraphShapes.plan(shapes, multiple, int(_extra(options, "min_export_batch")))
        hint = requested.hint(shapes)

        started = time.perf_counter()
        engine_model = device_copy(request.model, device, DTYPES[precision])
        fold_residual = bool(_extra(options, "fp8_fold_residual"))
        qkv_bias_in_attention = bool(_extra(options, "fp8_qkv_bias_in_attention"))
        if (
            precision == "fp8"
            and _fp8_linears(engine_model, options.fp8_fast_accum, fold_residual, qkv_bias_in_attention) == 0
        ):
            raise BuildError(
                f"{kind} has no linear layer that fp8 can take (features must be multiples of 16)"
            )
        if "residual_fp32" in options.extra and hasattr(engine_model, "residual_fp32"):
            engine_model.residual_fp32 = bool(options.extra["residual_fp32"])  # ESM-2's residual stream
        residual_fp32 = getattr(engine_model, "residual_fp32", None)
        own_kernel = _own_attention_kernel(engine_model, options, device, precision)
        gelu_epilogues = _gelu_epilogue(engine_model, options, device, precision)
        frozen = 0
        freeze_alibi_slopes(engine_model)
        if _extra(options, "frozen_rotary"):
            frozen = freeze_position_tables(engine_model, requested.max_length)
        inputs = tuple(t.to(device) for t in tile_example(request.example, *hint))
        prepared = time.perf_counter()
        out_path = Path(request.out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        what = f"{kind} ({precision})"
        try:
            done = _export_and_compile(engine_model, inputs, requested, request, out_path)
        finally:
            del engine_model
        compiled = time.perf_counter()
        graph, exported = done.graph, done.exported_at
        kernels = extern_kernels(out_path)
        check_lowered_attention(kernels, options.attention, device, what, own_kernel=own_kernel)
        check_gelu_epilogue(kernels, gelu_epilogues, what)

        facts = {
            **self.library_versions(),
            "prepare_seconds": round(prepared - started, 2),  # cast copy on the device (+ fp8 quantisation)
            "export_seconds": round(exported - prepared, 2),
            "compile_seconds": round(compiled - exported, 2),
            "compile_attempts": done.attempts,
            "fresh_int_arrays": done.fresh_int_arrays,
            "inductor_configs": done.configs,
            "dynamic_dims": {
                "batch": [graph.min_batch, graph.max_batch],
                "sequence": [graph.min_length, graph.max_length],
                "sequence_multiple": graph.sequence_multiple,
            },
            "export_example": list(hint),
            "attention": attention_fact(options, device, own_kernel),
            "extern_kernels": kernels,
            "frozen_rotary_tables": frozen,
        }
        if residual_fp32 is not None:
            facts["residual_fp32"] = residual_fp32
        if hasattr(request.model, "attention_kernel"):  # ESM-2
            facts["rotary_attention_kernel"] = own_kernel
            facts["gelu_epilogue_layers"] = gelu_epilogues
            if own_kernel:
                from virnucpro_trt.engines.rotary_attention import launch_facts

                facts["rotary_attention_launch"] = launch_facts()
        if precision == "fp8":
            from virnucpro_trt.engines.fp8_quantize import row_launch_facts  # triton: fp8 builds only

            facts["fp8"] = {
                "fast_accumulation": options.fp8_fast_accum,
                "fused_quantisation": kind == "esm2",
                "fold_residual": fold_residual and kind == "esm2",
                "qkv_bias_in_attention": qkv_bias_in_attention and own_kernel,
                "row_kernels": row_launch_facts() if kind == "esm2" else None,
            }
        files = [out_path] if done.weights is None else [out_path, done.weights]
        return BuiltArtifact(path=out_path, files=files, facts=facts)

    def load(self, request: LoadRequest) -> EmbeddingBackend:
        device = request.device
        path = Path(request.path)
        if not path.is_file():
            raise EngineMismatchError(f"inductor engine {path} is missing")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise EngineMismatchError(f"{path.name} needs CUDA, which torch {torch.__version__} cannot see")
        try:
            package = load_package(path, device, request.listed)
        except EngineMismatchError:  # its weights file refused: said as it is
            raise
        except Exception as exc:
            raise EngineMismatchError(f"cannot load {path.name}: {_first_line(exc)}") from exc
        metadata = package.metadata
        built_for = metadata.get("AOTI_DEVICE_KEY", device.type)
        if built_for != device.type:
            raise EngineMismatchError(f"{path.name} was built for {built_for}, not {device.type}")
        graph = check_metadata(
            metadata, path, request.kind, request.precision, request.dim, request.shapes, request.vocab_size
        )
        return InductorRunner(package, graph, device, request.dim, request.pad_id, request.shapes)


INDUCTOR_BACKEND = InductorBackend()
