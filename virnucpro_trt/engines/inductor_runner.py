"""Loading an AOTInductor ``.pt2`` and running it as an :class:`EmbeddingBackend`.

The package is self-describing: the builder stores the graph's shape box, model kind, precision and
output width as AOTI metadata (``aot_inductor.metadata``, read back with ``get_metadata()``), so the
``.pt2`` file and its weights beside it (:mod:`~virnucpro_trt.engines.package_weights`) are all a worker
needs (no model code). Loading checks that metadata against what the manifest says, so a wrong or
foreign file fails in one line instead of producing wrong shapes.
"""

from __future__ import annotations

import contextlib
import inspect
import re
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from virnucpro_trt.engines.cxx_runtime import expose_cxx_runtime
from virnucpro_trt.engines.inductor_shapes import META_PREFIX, GraphShapes
from virnucpro_trt.engines.package_weights import load_weights
from virnucpro_trt.engines.spec import ShapeRange
from virnucpro_trt.errors import EngineMismatchError, ShapeRangeError, shown
from virnucpro_trt.files.unpacking import unpacking
from virnucpro_trt.runtime.out_of_memory import device_memory_errors

_EXTERN_CALL = re.compile(rb"aoti_torch_(?:cpu|cuda)_(\w+?)(?:_out)?\(")


@dataclass(frozen=True)
class LoadedPackage:
    """A package loaded on a device, its weights handed to it: ready to run."""

    model: Any  # PackageModel (torch's AOTICompiledModel where this torch has no C++ loader)
    metadata: dict[str, str]
    weights: dict[str, torch.Tensor]  # used in place by the model's loader: kept alive with it


def load_package(path: Path, device: torch.device, listed: frozenset[str] | None = None) -> LoadedPackage:
    """The package at ``path`` loaded on ``device`` (``device_index`` selects cuda:N in a multi-GPU worker)
    with its weights (:func:`~virnucpro_trt.engines.package_weights.load_weights`; ``listed``: the engine
    directory's files for it, None for a fresh build). One function, so no caller holds a package without
    its weights: run so, it would read unset constants.

    Why not plain ``aoti_load_package``: on its way to the C++ loader it calls
    ``torch._inductor.codecache.get_device_information``, whose ``pick_vec_isa()`` compiles a test
    program per CPU instruction set and runs each in a fresh interpreter that imports torch — most of a
    worker's start-up on the H200 host (measurement log, 2026-11-29; measured by
    benchmarks/diagnostics/first_load_profile.py), spent for a warning-only comparison that the engine
    manifest check already makes (for a CPU engine: the build CPU's instruction sets, which this one
    must have). The C++ loader is the one ``aoti_load_package`` ends up with, called through
    :class:`PackageModel` rather than torch's wrapper; where this torch lacks it (older releases), the
    public function is used.
    """
    expose_cxx_runtime()
    index = -1
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
    model = _load_code(path, device, index)
    metadata = dict(model.get_metadata())
    placed = torch.device("cuda", index) if device.type == "cuda" else device  # where the package runs
    return LoadedPackage(model, metadata, load_weights(model, metadata, path, placed, listed))


def _load_code(path: Path, device: torch.device, index: int) -> Any:
    with unpacking():  # the loader unpacks the whole package: into a folder that is removed for sure
        loader_class = getattr(getattr(torch._C, "_aoti", None), "AOTIModelPackageLoader", None)
        if loader_class is not None:
            try:
                return PackageModel(loader_class(str(path), "model", False, 1, index))
            except TypeError:  # another constructor signature: let torch's own function handle it
                pass
        load = torch._inductor.aoti_load_package
        if device.type == "cuda" and "device_index" in inspect.signature(load).parameters:
            return load(str(path), device_index=index)
        return load(str(path))


class PackageModel:
    """A loaded package's model: torch's C++ loader, called as ``aoti_load_package``'s wrapper
    (``AOTICompiledModel``) calls it, for the engines' graphs (two tensors in, one out).

    Why not that wrapper: importing it (``torch.export.pt2_archive``) imports TorchDynamo and SymPy,
    ~900 modules and seconds of a worker's start-up (DEVELOPERS.md, "Open problems": worker ready),
    all for flattening inputs and outputs that are plain tensors here.
    """

    def __init__(self, loader: Any):
        self.loader = loader

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        outputs = self.loader.boxed_run(list(inputs))  # as torch's wrapper calls it (the list is taken)
        if len(outputs) != 1:
            raise EngineMismatchError(f"the engine returned {len(outputs)} outputs, not its one embedding")
        return outputs[0]

    def get_metadata(self) -> dict[str, str]:
        return self.loader.get_metadata()

    def get_constant_fqns(self) -> list[str]:
        return self.loader.get_constant_fqns()

    def load_constants(
        self, constants: dict[str, torch.Tensor], *, check_full_update: bool, user_managed: bool
    ) -> None:
        self.loader.load_constants(constants, False, check_full_update, user_managed)  # False: the active set


def extern_kernels(path: Path) -> dict[str, int]:
    """How often the generated wrapper calls each ATen fallback (mm, addmm, SDPA variants...).

    Read from the C++ wrapper source inside the package: it tells which attention kernel the key-padding
    mask was lowered to and which GEMMs stayed on cuBLAS rather than Triton templates.
    """
    counts: Counter[str] = Counter()
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if name.endswith("wrapper.cpp"):
                counts.update(m.decode() for m in _EXTERN_CALL.findall(archive.read(name)))
    return dict(sorted(counts.items()))


class InductorRunner:
    """Runs a loaded package: numpy int64 [B, T] in, float32 [B, D] out, padded into the graph's box."""

    def __init__(
        self,
        package: LoadedPackage,
        graph: GraphShapes,
        device: torch.device,
        dim: int,
        pad_id: int,
        shapes: ShapeRange,
    ):
        self.name = "inductor"
        self.package = package  # holds the weights its model uses in place
        self.dim = dim
        self.pad_id = pad_id
        self.device = device
        self.graph = graph
        self.max_batch_size = shapes.max_batch
        self.max_length = shapes.max_length
        self._compiled = package.model

    def _device_guard(self) -> contextlib.AbstractContextManager[Any]:
        # A worker may hold cuda:N while the thread's current device is another one.
        return torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext()

    def computed_shape(self, batch: int, length: int) -> tuple[int, int]:
        """The shape the graph computes for a batch (padding statistics count it)."""
        return self.graph.padded_shape(batch, length)

    def embed_padded(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        if input_ids.ndim != 2 or input_ids.shape != attention_mask.shape or input_ids.shape[0] == 0:
            raise ShapeRangeError(
                f"inductor engine needs matching non-empty [B, T] inputs, got {input_ids.shape} and "
                f"{attention_mask.shape}"
            )
        batch, length = input_ids.shape
        if batch > self.max_batch_size or length > self.max_length:
            raise ShapeRangeError(
                f"batch {batch} x {length} tokens is outside the inductor engine's range "
                f"(<= {self.max_batch_size} x {self.max_length})"
            )
        ids, mask = self.graph.pad(
            np.ascontiguousarray(input_ids, dtype=np.int64),
            np.ascontiguousarray(attention_mask, dtype=np.int64),
            self.pad_id,
        )
        with (
            torch.inference_mode(),
            self._device_guard(),
            device_memory_errors(self.device, "inductor", torch_allocator=True),
        ):
            pooled = self._compiled(
                torch.from_numpy(ids).to(self.device, non_blocking=True),
                torch.from_numpy(mask).to(self.device, non_blocking=True),
            )
            return pooled[:batch].float().cpu().numpy()


def check_metadata(
    metadata: dict[str, str],
    path: Path,
    kind: str,
    precision: str,
    dim: int,
    shapes: ShapeRange,
    vocab_size: int | None = None,
) -> GraphShapes:
    """The graph box stored in the package, after checking that the package is the engine expected.

    ``vocab_size``: the manifest's (0: not recorded; None: no manifest, a fresh build's validation). The
    manifest's must be the package's own record (``virnucpro.vocab_size``), as the C++ host requires: the
    tokenizers are checked against the manifest's number, and an id past the package's embedding table
    aborts the process inside the compiled kernel (SIGABRT, no message), so a manifest claiming more
    rows than the package has, or none where it records some, is refused here."""
    try:
        graph = GraphShapes.from_metadata(metadata)
        found = {k: metadata[f"{META_PREFIX}{k}"] for k in ("kind", "precision", "dim")}
    except (KeyError, ValueError) as exc:
        raise EngineMismatchError(f"{path.name} was not built by virnucpro's inductor backend") from exc
    expected = {"kind": kind, "precision": precision, "dim": str(dim)}
    if found != expected:
        differ = [k for k in found if found[k] != expected[k]]
        diff = ", ".join(f"{k} {shown(found[k], 40)} (expected {expected[k]})" for k in differ)
        raise EngineMismatchError(f"{path.name} does not match its manifest: {diff}")
    if shapes.max_batch > graph.max_batch or shapes.max_length > graph.max_length:
        raise EngineMismatchError(
            f"{path.name} accepts at most {graph.max_batch} x {graph.max_length}, the manifest promises "
            f"{shapes.max_batch} x {shapes.max_length}; rebuild the engines"
        )
    recorded = metadata.get(f"{META_PREFIX}vocab_size")  # the text the build wrote, compared as dim is
    if vocab_size is not None and recorded != (str(vocab_size) if vocab_size else None):
        embeds = "an unrecorded number of" if recorded is None else shown(repr(recorded), 40)
        raise EngineMismatchError(
            f"{path.name} embeds {embeds} tokens but the manifest says {vocab_size or 'none'}; "
            "rebuild the engines"
        )
    return graph
