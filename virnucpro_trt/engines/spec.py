"""What every engine backend shares: shape ranges, artifact names and the backend interface.

A backend turns a native encoder (``forward(input_ids, attention_mask) -> pooled [B, D] fp32``) into an
artifact for one device and precision (``build``), and loads that artifact back as an
:class:`~virnucpro_trt.runtime.embedding.EmbeddingBackend` (``load``). Shapes are dynamic within a
:class:`ShapeRange` recorded in the manifest: TensorRT needs it as an optimization profile, torch.export
as ``Dim`` bounds, and the runtime batcher must respect it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from virnucpro_trt.errors import BuildError
from virnucpro_trt.files.json_fields import count
from virnucpro_trt.models.kinds import ENCODERS, EncoderName
from virnucpro_trt.runtime.embedding import EmbeddingBackend
from virnucpro_trt.settings import DEFAULT_ATTENTION, MAX_SHAPE

ModelKind = EncoderName  # the encoders an engine directory holds, by name
MIN_LENGTH = 2  # [CLS] [SEP] / <cls> <eos>: the shortest real input


@dataclass(frozen=True)
class ShapeRange:
    """Dynamic input shapes an engine accepts: batch and sequence (token) dimensions, min/opt/max."""

    min_batch: int
    opt_batch: int
    max_batch: int
    min_length: int
    opt_length: int
    max_length: int

    def __post_init__(self) -> None:
        if not (1 <= self.min_batch <= self.opt_batch <= self.max_batch):
            raise ValueError(f"bad batch range {self.min_batch}/{self.opt_batch}/{self.max_batch}")
        if not (1 <= self.min_length <= self.opt_length <= self.max_length):
            raise ValueError(f"bad length range {self.min_length}/{self.opt_length}/{self.max_length}")

    def contains(self, batch: int, length: int) -> bool:
        return self.min_batch <= batch <= self.max_batch and self.min_length <= length <= self.max_length

    def to_json(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShapeRange:
        """From a manifest, read as hostile: each bound a JSON integer of at most :data:`MAX_SHAPE`
        (a ``ValueError`` otherwise: a float, a string or 10**12 rows is no shape an engine was built for)."""
        return cls(**{f.name: count(data, f.name, 1, MAX_SHAPE) for f in dataclasses.fields(cls)})


def default_shape_range(model: ModelKind, max_batch_tokens: int, max_length: int | None = None) -> ShapeRange:
    """Shapes for a token budget: the batcher never exceeds ``max_batch_tokens`` padded tokens per batch.

    The largest batch is what the budget allows for short items (capped so TensorRT profiles and
    activation memory stay sane); the opt point is a full batch at the workload's typical length.
    """
    max_len = max_length or ENCODERS[model].max_length
    opt_len = min(ENCODERS[model].opt_length, max_len)
    max_batch = max(1, min(max_batch_tokens // 16, 4096))
    opt_batch = max(1, min(max_batch, max_batch_tokens // opt_len))
    return ShapeRange(1, opt_batch, max_batch, min(MIN_LENGTH, max_len), opt_len, max_len)


def arch_tag(device: torch.device) -> str:
    """``cpu``, or ``sm90`` for compute capability 9.0: the part of a name an engine is bound to."""
    if device.type != "cuda":
        return "cpu"
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm{major}{minor}"


def artifact_name(model: ModelKind, arch: str, precision: str, extension: str) -> str:
    """``esm2.sm90.bf16.pt2``: model, architecture, precision, backend's file type."""
    return f"{model}.{arch}.{precision}.{extension}"


def vocab_size(model: torch.nn.Module, kind: str) -> int:
    """Rows of an encoder's token embedding (``config.vocab_size``, which the checkpoint loaders hold to
    the table's shape). Recorded in the manifest and in an AOTInductor package, because a token id at or
    past it makes a compiled embedding kernel abort the process (its bounds check is an assert, not an
    exception): the C++ host refuses such ids, and a pad id outside the table, before any kernel runs."""
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise BuildError(f"{kind}: the model declares no vocabulary size (config.vocab_size)")
    return size


@dataclass
class BuildOptions:
    """Backend-specific knobs gathered from the CLI (unknown ones are ignored by other backends)."""

    workdir: Path | None = None
    timing_cache: Path | None = None  # TensorRT: persisted beside the engines
    hardware_compatible: bool = False  # TensorRT: engines that run on Ampere and newer
    # The token budget the engines are built for (TensorRT derives its optimization profiles from it).
    max_batch_tokens: int | None = None
    opset: int = 18  # ONNX
    # AOTInductor on CUDA. Off by default: it adds minutes of GEMM benchmarking, and cuBLAS already wins
    # the large GEMMs (docs/measurements.md).
    max_autotune: bool = False
    # AOTInductor on CUDA: the fused attention kernel baked into the engine (runtime/attention_kernel.py).
    attention: str = DEFAULT_ATTENTION
    # AOTInductor fp8: cuBLASLt's fast fp8 accumulation in the row-wise GEMMs (engines/inductor_fp8.py).
    fp8_fast_accum: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class BuiltArtifact:
    """What ``build`` produced: the main file, every file that belongs to it, and facts for the manifest."""

    path: Path
    files: list[Path]
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadRequest:
    """What loading a built artifact needs: the file, for which encoder, device and precision, the
    embedding width and pad id the runner pads with, and the shapes it must honour."""

    path: Path
    kind: ModelKind
    device: torch.device
    precision: str
    dim: int
    pad_id: int
    shapes: ShapeRange
    # From an engine directory: the file names its manifest lists (and hashes) for this model; a file
    # the artifact reads beside it must be one of them. None: a fresh build's own file (its validation).
    listed: frozenset[str] | None = None
    # From an engine directory: the vocabulary size its manifest records (0: none recorded), which a
    # package that records its own must have. None: a fresh build's own file (its validation).
    vocab_size: int | None = None


@dataclass(frozen=True)
class BuildRequest:
    """What building one encoder's artifact needs.

    ``model`` is the fp32 encoder on the CPU or the build device, in eval mode (a backend never changes
    it: it is also the parity gate's reference); ``example`` a padded (input_ids, attention_mask) int64
    batch inside ``shapes`` on the CPU; ``out_path`` the artifact's file.
    """

    model: torch.nn.Module
    kind: ModelKind
    example: tuple[torch.Tensor, torch.Tensor]
    shapes: ShapeRange
    precision: str
    device: torch.device
    out_path: Path
    options: BuildOptions = field(default_factory=BuildOptions)

    def load_request(self, path: Path, dim: int, pad_id: int) -> LoadRequest:
        """Loading what this request built (``path``: the artifact ``build`` returned)."""
        return LoadRequest(Path(path), self.kind, self.device, self.precision, dim, pad_id, self.shapes)


class EngineBackend(Protocol):
    """A compiled-engine backend (one module per backend implements it)."""

    name: str
    extension: str
    # The build recipe: raised whenever a build default changes what an engine computes or how fast
    # (tests pin the defaults to it). Recorded in the manifest; ``build`` (so ``bench`` too) builds a
    # folder's set again when theirs differs, so a bench's figures are this version's. ``predict``
    # ignores it: an older engine still gives its answers.
    recipe_version: int
    # Whether an artifact built for the CPU holds machine code for the build machine's CPU (AOTInductor's
    # -march=native): then a CPU lacking one of the recorded instruction sets must not load it.
    native_cpu_code: bool

    def availability(self, device: torch.device, precision: str) -> str | None:
        """``None`` if this backend can build and run here, else the reason it cannot (one line)."""
        ...

    def library_versions(self) -> dict[str, str]:
        """Versions of the libraries an artifact is bound to (checked before the artifact is used)."""
        ...

    def build(self, request: BuildRequest) -> BuiltArtifact:
        """Compile ``request.model`` for its device and precision into ``request.out_path``."""
        ...

    def load(self, request: LoadRequest) -> EmbeddingBackend:
        """A runner for a built artifact, honouring ``request.shapes`` (exposed as ``max_batch_size`` /
        ``max_length`` attributes for the batcher)."""
        ...
