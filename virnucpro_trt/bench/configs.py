"""Which configurations a run compares, and how each one is opened.

* ``reference`` — upstream's way: PyTorch fp32 with TF32 off, DNABERT-S one sequence per forward (no
  padding), ESM-2 in fair-esm's length-sorted batches of ``toks_per_batch`` 2048 padded tokens. (fair-esm
  counts residues + 1 per sequence, the batcher here the tokens actually fed, residues + 2: at the 500 bp
  workload's 168-token proteins both make batches of 12.)
* ``torch`` — the native models eagerly at the chosen precision, in token-budget batches.
* one configuration per engine backend (``onnxruntime``, ``inductor``, ``tensorrt``), built on the fly by
  the real build code (:func:`virnucpro_trt.engines.build.build_engines`, parity gate included; in a child
  process, see :mod:`.build_worker`) into ``WORKDIR/engines-<backend>-<precision>`` and reused there
  while its manifest matches, or taken from an ``--engines`` directory.

A configuration that cannot run here raises :class:`Unavailable` with a one-line reason; the runner
records it instead of dropping it, so a result file always says what was *not* measured and why.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from virnucpro_trt.bench.models import EagerModels, ModelSet
from virnucpro_trt.bench.path import Encoder, PathModels
from virnucpro_trt.errors import UserError

log = logging.getLogger(__name__)

REFERENCE = "reference"
EAGER = "torch"
ENGINE_BACKENDS = ("onnxruntime", "inductor", "tensorrt")
BENCH_BACKENDS = (EAGER, *ENGINE_BACKENDS)
PRECISIONS = ("fp32", "fp16", "bf16", "fp8")
# Upstream's batching: DNABERT-S embedded one read frame at a time (a budget of one token gives batches
# of one without padding), ESM-2 through fair-esm's extract loop with toks_per_batch=2048.
REFERENCE_DNABERT_BATCH_TOKENS = 1
REFERENCE_ESM_TOKS_PER_BATCH = 2048
# The same defaults as ``predict --max-batch-tokens``.
DEFAULT_BATCH_TOKENS = {"cpu": 4096, "cuda": 32768}


class Unavailable(Exception):
    """This configuration cannot run on this machine; the message is the one-line reason."""


@dataclass(frozen=True)
class ConfigSpec:
    """One configuration: a backend at a precision, optionally from a given engine directory."""

    backend: str  # reference | torch | onnxruntime | inductor | tensorrt
    precision: str
    engines: Path | None = None

    @property
    def name(self) -> str:
        return REFERENCE if self.backend == REFERENCE else f"{self.backend}-{self.precision}"

    @property
    def is_engine(self) -> bool:
        return self.backend in ENGINE_BACKENDS


def parse_backends(text: str) -> tuple[str, ...]:
    """``torch,inductor`` -> ``("torch", "inductor")``: known names only, duplicates dropped, order kept.

    ``reference`` is accepted and ignored (it always runs).
    """
    names: list[str] = []
    for raw in text.split(","):
        name = raw.strip().lower()
        if not name or name == REFERENCE or name in names:
            continue
        if name not in BENCH_BACKENDS:
            raise UserError(f"--backends: unknown backend {name!r}; available: {', '.join(BENCH_BACKENDS)}")
        names.append(name)
    return tuple(names)


def plan_configurations(
    backends: tuple[str, ...], precision: str, engine_dirs: tuple[Path, ...] = ()
) -> list[ConfigSpec]:
    """The reference, then each requested backend at ``precision``, then each given engine directory.

    A backend/precision pair that an ``--engines`` directory provides is not built again.
    """
    from virnucpro_trt.engines.manifest import EngineManifest

    given = []
    for folder in engine_dirs:
        manifest = EngineManifest.read(folder)  # not an engine directory: a usage error, exit 2
        given.append(ConfigSpec(manifest.backend, manifest.precision, folder))
    provided = {(spec.backend, spec.precision) for spec in given}
    specs = [ConfigSpec(REFERENCE, "fp32")]
    specs += [ConfigSpec(b, precision) for b in backends if (b, precision) not in provided]
    return specs + given


@dataclass
class OpenContext:
    """What opening a configuration needs: the checkpoints, their loaded masters, device and budgets."""

    models: ModelSet
    eager: EagerModels
    device: torch.device
    workdir: Path
    max_batch_tokens: int | None = None

    @property
    def batch_tokens(self) -> int:
        return self.max_batch_tokens or DEFAULT_BATCH_TOKENS.get(self.device.type, 4096)


@dataclass
class Opened:
    """A configuration ready to run, and the facts its result row records."""

    models: PathModels
    batching: dict[str, Any]
    engine: dict[str, Any] | None
    open_s: float


def open_configuration(spec: ConfigSpec, ctx: OpenContext) -> Opened:
    """Load (building if needed) ``spec``; raises :class:`Unavailable` when it cannot run here."""
    started = time.perf_counter()
    if spec.backend == REFERENCE:
        opened = _open_eager(ctx, torch.float32, REFERENCE_DNABERT_BATCH_TOKENS, REFERENCE_ESM_TOKS_PER_BATCH)
        opened.batching["rule"] = "upstream: DNABERT-S one sequence per forward, ESM-2 toks_per_batch 2048"
    elif spec.backend == EAGER:
        opened = _open_eager(
            ctx, _eager_dtype(spec.precision, ctx.device), ctx.batch_tokens, ctx.batch_tokens
        )
        opened.batching["rule"] = "token budget"
    elif spec.is_engine:
        opened = _open_engines(spec, ctx)
    else:
        raise UserError(f"unknown configuration backend {spec.backend!r}")
    opened.open_s = round(time.perf_counter() - started, 2)
    return opened


def _eager_dtype(precision: str, device: torch.device) -> torch.dtype:
    from virnucpro_trt.runtime.device import PRECISIONS as DTYPES

    if precision not in DTYPES:
        raise Unavailable(f"eager PyTorch has no {precision} path ({precision} is an engine precision)")
    if device.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise Unavailable(f"{torch.cuda.get_device_name(device)} does not support bf16")
    return DTYPES[precision]


def _open_eager(ctx: OpenContext, dtype: torch.dtype, dna_budget: int, esm_budget: int) -> Opened:
    """Deep copies of the fp32 masters, moved and cast (TorchBackend casts the module in place)."""
    from virnucpro_trt.models.classifier import MLPClassifier
    from virnucpro_trt.runtime.device import configure_fp32_reference
    from virnucpro_trt.runtime.embedding import TorchBackend

    configure_fp32_reference()  # TF32 off: fp32 means fp32, for the reference and for eager fp32 alike
    eager, device = ctx.eager, ctx.device
    dna = TorchBackend(
        copy.deepcopy(eager.dnabert), eager.dnabert_dim, eager.dnabert_tokenizer.pad_id, device, dtype
    )
    esm = TorchBackend(copy.deepcopy(eager.esm), eager.esm_dim, eager.esm_tokenizer.pad_id, device, dtype)
    models = PathModels(
        Encoder(dna, eager.dnabert_tokenizer, dna_budget),
        Encoder(esm, eager.esm_tokenizer, esm_budget),
        MLPClassifier.from_weights(eager.classifier),
        device,
    )
    batching = {"dnabert_max_batch_tokens": dna_budget, "esm_max_batch_tokens": esm_budget}
    return Opened(models, batching, None, 0.0)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:400]


def _open_engines(spec: ConfigSpec, ctx: OpenContext) -> Opened:
    from virnucpro_trt.engines.engine_set import open_engine_set
    from virnucpro_trt.engines.manifest import MANIFEST_NAME
    from virnucpro_trt.engines.registry import get_backend
    from virnucpro_trt.errors import EngineMismatchError
    from virnucpro_trt.models.classifier import MLPClassifier

    backend = get_backend(spec.backend)
    given = spec.engines is not None
    # An existing engine only needs to load and run; building also needs the exporter.
    check = getattr(backend, "run_problem", None) if given else None
    reason = (check or backend.availability)(ctx.device, spec.precision)
    if reason:
        raise Unavailable(reason)
    folder = spec.engines or ctx.workdir / f"engines-{spec.backend}-{spec.precision}"
    before = _manifest_text(folder / MANIFEST_NAME)
    try:
        if given:
            engines = open_engine_set(folder, ctx.device, ctx.models.specs())
        else:
            engines = _built_engines(spec, ctx, folder, before is not None)
    except EngineMismatchError as exc:
        if given:  # built for another GPU, other libraries or other weights: cannot run here
            raise Unavailable(_one_line(exc)) from None
        raise
    manifest = engines.manifest
    budget = ctx.max_batch_tokens or int(manifest.build.get("max_batch_tokens") or ctx.batch_tokens)
    models = PathModels(
        Encoder(engines.dnabert.backend, engines.dnabert.tokenizer, budget),
        Encoder(engines.esm.backend, engines.esm.tokenizer, budget),
        MLPClassifier.from_weights(engines.classifier),
        ctx.device,
    )
    source = "given" if given else ("reused" if before == _manifest_text(folder / MANIFEST_NAME) else "built")
    engine = {
        "dir": str(folder),
        "source": source,
        "build_s": manifest.build.get("seconds"),
        "build_parity": {
            kind: {k: manifest.models[kind].parity.get(k) for k in ("min_cosine", "max_abs", "passed")}
            for kind in ("dnabert-s", "esm2")
        },
        "libraries": manifest.libraries,
    }
    batching = {"dnabert_max_batch_tokens": budget, "esm_max_batch_tokens": budget, "rule": "token budget"}
    return Opened(models, batching, engine, 0.0)


def _built_engines(spec: ConfigSpec, ctx: OpenContext, folder: Path, exists: bool) -> Any:
    """The engine set in ``folder``: reused while its manifest matches, else built in a child process."""
    from virnucpro_trt.bench.build_worker import build_in_child
    from virnucpro_trt.engines.build import BuildSettings
    from virnucpro_trt.engines.engine_set import open_engine_set
    from virnucpro_trt.errors import EngineMismatchError

    if exists:
        try:
            return open_engine_set(folder, ctx.device, ctx.models.specs())
        except EngineMismatchError as exc:
            log.warning("rebuilding %s engines in %s: %s", spec.name, folder, _one_line(exc))
    log.info("building %s engines in %s (in a child process)", spec.name, folder)
    settings = BuildSettings(
        str(ctx.models.dnabert), str(ctx.models.esm), str(ctx.models.classifier), folder,
        spec.backend, spec.precision, str(ctx.device), ctx.batch_tokens,
    )  # fmt: skip
    build_in_child(settings)
    return open_engine_set(folder, ctx.device, ctx.models.specs())


def _manifest_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None
