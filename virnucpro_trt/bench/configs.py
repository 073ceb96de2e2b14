"""Which configurations a run compares, and how each one is opened.

* ``reference`` — upstream's way: PyTorch fp32 with TF32 off, DNABERT-S one sequence per forward (no
  padding), ESM-2 in fair-esm's length-sorted batches of ``toks_per_batch`` 2048 padded tokens. (fair-esm
  counts residues + 1 per sequence, the batcher here the tokens actually fed, residues + 2: at the 500 bp
  workload's 168-token proteins both make batches of 12.)
* ``torch`` — the native models eagerly at each chosen precision, in token-budget batches.
* ``compile`` — the peer: the same eager models under ``torch.compile`` (fp8: torchao's float8
  quantisation first), see :mod:`.peer`.
* one configuration per engine backend (``onnxruntime``, ``inductor``, ``tensorrt``), built on the fly by
  the real build code (:func:`virnucpro_trt.engines.build.build_engines`, parity gate included; in a child
  process, see :mod:`.build_worker`) into ``WORKDIR/engines-<backend>-<precision>`` and reused there
  while it holds the set ``build`` would make now, build recipe and token budget included (else rebuilt:
  a bench's figures are the current recipe's and budget's), or taken from an ``--engines`` directory as it is.

Every configuration is opened by ``predict``'s own code (:func:`virnucpro_trt.pipeline.encoders.open_models`)
and runs ``predict``'s own path (:mod:`virnucpro_trt.runtime.frame_path`); the reference differs only in
its token budgets. A configuration that cannot run here raises :class:`Unavailable` with a one-line
reason; the runner records it instead of dropping it, so a result file always says what was *not*
measured and why.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from virnucpro_trt.bench.config_names import (
    AUTO_PRECISION,
    BENCH_BACKENDS,
    EAGER,
    PEER,
    REFERENCE,
    parse_precisions,
)
from virnucpro_trt.bench.models import MasterEncoders, ModelSet
from virnucpro_trt.bench.peer import compile_backends, peer_unavailable_reason
from virnucpro_trt.engines.manifest import MAX_MANIFEST_BYTES
from virnucpro_trt.errors import UserError, one_line
from virnucpro_trt.files.bounded_read import read_bounded
from virnucpro_trt.models.kinds import ENCODER_NAMES
from virnucpro_trt.models.parity_result import ParityResult
from virnucpro_trt.runtime.frame_path import FrameModels
from virnucpro_trt.settings import ENGINE_BACKENDS, EncoderSettings

log = logging.getLogger(__name__)

# Upstream's batching: DNABERT-S embedded one read frame at a time (a budget of one token gives batches
# of one without padding), ESM-2 through fair-esm's extract loop with toks_per_batch=2048.
REFERENCE_DNABERT_BATCH_TOKENS = 1
REFERENCE_ESM_TOKS_PER_BATCH = 2048


class Unavailable(Exception):
    """This configuration cannot run on this machine; the message is the one-line reason."""


@dataclass(frozen=True)
class ConfigSpec:
    """One configuration: a backend at a precision, optionally from a given engine directory."""

    backend: str  # reference | torch | compile | onnxruntime | inductor | tensorrt
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

    ``reference`` is accepted and ignored (it always runs). An empty value (an unset shell variable) is
    refused rather than read as the default set.
    """
    if not any(raw.strip() for raw in text.split(",")):
        raise UserError(f"--backends: empty; name one or more of {', '.join(BENCH_BACKENDS)}")
    names: list[str] = []
    for raw in text.split(","):
        name = raw.strip().lower()
        if not name or name == REFERENCE or name in names:
            continue
        if name not in BENCH_BACKENDS:
            raise UserError(f"--backends: unknown backend {name!r}; available: {', '.join(BENCH_BACKENDS)}")
        names.append(name)
    return tuple(names)


def resolve_precisions(text: str, device: torch.device) -> tuple[str, ...]:
    """The run's precisions; ``auto`` is bf16 on a GPU (the fast path the goals are stated for) and fp32 on
    a CPU."""
    auto = "bf16" if device.type == "cuda" else "fp32"
    resolved: list[str] = []
    for name in parse_precisions(text):
        name = auto if name == AUTO_PRECISION else name
        if name not in resolved:
            resolved.append(name)
    return tuple(resolved)


def plan_configurations(
    backends: tuple[str, ...], precisions: str | Sequence[str], engine_dirs: tuple[Path, ...] = ()
) -> list[ConfigSpec]:
    """The reference, then each requested backend at each precision (precision by precision), then each
    given engine directory.

    A backend/precision pair that an ``--engines`` directory provides is not built again.
    """
    from virnucpro_trt.engines.manifest import EngineManifest

    if isinstance(precisions, str):
        precisions = (precisions,)
    given = []
    for folder in engine_dirs:
        manifest = EngineManifest.read(folder)  # not an engine directory: a usage error, exit 2
        given.append(ConfigSpec(manifest.backend, manifest.precision, folder))
    provided = {(spec.backend, spec.precision) for spec in given}
    specs = [ConfigSpec(REFERENCE, "fp32")]
    specs += [ConfigSpec(b, p) for p in precisions for b in backends if (b, p) not in provided]
    return specs + given


@dataclass
class OpenContext:
    """What opening a configuration needs: the checkpoints, their loaded masters, device and budgets."""

    models: ModelSet
    masters: MasterEncoders
    device: torch.device
    workdir: Path
    max_batch_tokens: int | None = None
    threads: int | None = None

    @property
    def batch_tokens(self) -> int:
        """``--max-batch-tokens``, or ``predict``'s default for the device."""
        return EncoderSettings(max_batch_tokens=self.max_batch_tokens).batch_tokens_for(self.device.type)

    def encoder_settings(self, backend: str, precision: str, max_batch_tokens: int | None) -> EncoderSettings:
        return EncoderSettings(backend, str(self.device), precision, max_batch_tokens, self.threads)


@dataclass
class Opened:
    """A configuration ready to run, and the facts its result row records.

    ``finish`` (when set) is called once the configuration has run, before its row is written, and also
    when it failed: it completes ``compile`` and undoes process-wide side effects.
    """

    models: FrameModels
    batching: dict[str, Any]
    engine: dict[str, Any] | None
    open_s: float
    compile: dict[str, Any] | None = None
    finish: Callable[[], None] | None = None


def open_configuration(spec: ConfigSpec, ctx: OpenContext) -> Opened:
    """Load (building if needed) ``spec``; raises :class:`Unavailable` when it cannot run here."""
    started = time.perf_counter()
    if spec.backend == REFERENCE:
        opened = _open_eager(ctx, "fp32", (REFERENCE_DNABERT_BATCH_TOKENS, REFERENCE_ESM_TOKS_PER_BATCH))
        opened.batching["rule"] = "upstream: DNABERT-S one sequence per forward, ESM-2 toks_per_batch 2048"
    elif spec.backend == EAGER:
        _check_eager_precision(spec.precision, ctx.device)
        opened = _open_eager(ctx, spec.precision, (ctx.batch_tokens, ctx.batch_tokens))
        opened.batching["rule"] = "token budget"
    elif spec.backend == PEER:
        opened = _open_peer(spec, ctx)
    elif spec.is_engine:
        opened = _open_engines(spec, ctx)
    else:
        raise UserError(f"unknown configuration backend {spec.backend!r}")
    opened.open_s = round(time.perf_counter() - started, 2)
    return opened


def _check_eager_precision(precision: str, device: torch.device) -> None:
    from virnucpro_trt.runtime.device import PRECISIONS as DTYPES

    if precision not in DTYPES:
        raise Unavailable(f"eager PyTorch has no {precision} path ({precision} is an engine precision)")
    if device.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise Unavailable(f"{torch.cuda.get_device_name(device)} does not support bf16")


def _open_eager(ctx: OpenContext, precision: str, budgets: tuple[int, int]) -> Opened:
    """The eager models as ``predict --backend torch`` opens them (copies of the loaded fp32 masters),
    with DNABERT-S's and ESM-2's token budgets."""
    from virnucpro_trt.pipeline.encoders import open_models
    from virnucpro_trt.runtime.device import configure_fp32_reference

    configure_fp32_reference()  # TF32 off: fp32 means fp32, for the reference and for eager fp32 alike
    run = open_models(
        ctx.encoder_settings("torch", precision, None), ctx.models.specs(), ENCODER_NAMES, True,
        loader=ctx.masters,
    )  # fmt: skip
    for kind, budget in zip(ENCODER_NAMES, budgets, strict=True):
        run.encoders[kind] = dataclasses.replace(run.encoders[kind], max_batch_tokens=budget)
    batching = {"dnabert_max_batch_tokens": budgets[0], "esm_max_batch_tokens": budgets[1]}
    return Opened(run.frame_models(), batching, None, 0.0)


def _open_peer(spec: ConfigSpec, ctx: OpenContext) -> Opened:
    """The ``torch`` row's models under ``torch.compile`` (fp8: torchao's quantisation of the bf16 ones)."""
    if (reason := peer_unavailable_reason(spec.precision, ctx.device)) is not None:
        raise Unavailable(reason)
    eager_precision = "bf16" if spec.precision == "fp8" else spec.precision
    _check_eager_precision(eager_precision, ctx.device)
    opened = _open_eager(ctx, eager_precision, (ctx.batch_tokens, ctx.batch_tokens))
    backends = [opened.models.dnabert.backend, opened.models.esm.backend]
    peer = compile_backends(backends, spec.precision)  # type: ignore[arg-type]
    opened.batching["rule"] = "token budget"
    opened.compile = peer.facts
    opened.finish = peer.finish
    return opened


def _open_engines(spec: ConfigSpec, ctx: OpenContext) -> Opened:
    from virnucpro_trt.engines.manifest import MANIFEST_NAME
    from virnucpro_trt.engines.registry import get_backend
    from virnucpro_trt.errors import EngineMismatchError
    from virnucpro_trt.pipeline.encoders import open_models

    backend = get_backend(spec.backend)
    given = spec.engines is not None
    # An existing engine only needs to load and run; building also needs the exporter.
    check = getattr(backend, "run_problem", None) if given else None
    reason = (check or backend.availability)(ctx.device, spec.precision)
    if reason:
        raise Unavailable(reason)
    folder = spec.engines or ctx.workdir / f"engines-{spec.backend}-{spec.precision}"
    before = _manifest_text(folder / MANIFEST_NAME)
    if not given:
        _build_if_needed(spec, ctx, folder, before is not None)
    try:
        run = open_models(
            ctx.encoder_settings(spec.backend, spec.precision, ctx.max_batch_tokens), ctx.models.specs(),
            ENCODER_NAMES, True, engines=folder, rebuild=False,
        )  # fmt: skip
    except EngineMismatchError as exc:
        if given:  # built for another GPU, other libraries or other weights: cannot run here
            raise Unavailable(one_line(exc, 400, name=False)) from None
        raise
    budget = run.encoders["esm2"].max_batch_tokens
    source = "given" if given else ("reused" if before == _manifest_text(folder / MANIFEST_NAME) else "built")
    engine = {
        "dir": str(folder),
        "source": source,
        "build_s": run.engine_build.seconds if run.engine_build is not None else None,
        "build_parity": {kind: _gate_figures(run.encoders[kind].origin.parity) for kind in ENCODER_NAMES},
        "libraries": _manifest_libraries(folder),
    }
    batching = {"dnabert_max_batch_tokens": budget, "esm_max_batch_tokens": budget, "rule": "token budget"}
    return Opened(run.frame_models(), batching, engine, 0.0)


def _gate_figures(parity: ParityResult | None) -> dict[str, Any]:
    """An encoder's parity gate at build time, as its manifest records it (None each: no gate recorded)."""
    if parity is None:
        return dict.fromkeys(("min_cosine", "max_abs", "passed"))
    return {"min_cosine": parity.min_cosine, "max_abs": parity.max_abs, "passed": parity.passed}


def _manifest_libraries(folder: Path) -> dict[str, str]:
    from virnucpro_trt.engines.manifest import EngineManifest

    return dict(EngineManifest.read(folder).libraries)


def _build_if_needed(spec: ConfigSpec, ctx: OpenContext, folder: Path, exists: bool) -> None:
    """Leave ``folder`` holding engines that fit: reused while it holds the set ``build`` would make now
    (``engines/finished_build.py``: the same checkpoints, settings, token budget and build recipe, every
    file intact), else built in a child process (a crash while building becomes this configuration's
    failure, not the run's)."""
    from virnucpro_trt.bench.build_worker import build_in_child
    from virnucpro_trt.engines.build import BuildPlan, BuildSettings

    settings = BuildSettings(
        str(ctx.models.dnabert), str(ctx.models.esm), str(ctx.models.classifier), folder,
        spec.backend, spec.precision, str(ctx.device), ctx.batch_tokens,
    )  # fmt: skip
    if exists:
        try:
            differences = BuildPlan.of(settings).differences(settings)
        except Exception as exc:  # the child's build meets it again and fails this configuration alone
            differences = [one_line(exc, 400, name=False)]
        if not differences:
            log.info("reusing the %s engines in %s (what a build would make now)", spec.name, folder)
            return
        log.warning("rebuilding %s engines in %s: %s", spec.name, folder, "; ".join(differences))
    log.info("building %s engines in %s (in a child process)", spec.name, folder)
    build_in_child(settings)


def _manifest_text(path: Path) -> str | None:
    """The manifest's text, to tell a reused engine set from one just built; None when there is no
    readable one (read as hostile: bounded, a regular file, so a FIFO or /dev/zero cannot stall bench)."""
    try:
        return read_bounded(path, MAX_MANIFEST_BYTES).decode("utf-8", "replace")
    except (OSError, ValueError):
        return None
