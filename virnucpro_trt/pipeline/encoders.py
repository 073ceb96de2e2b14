"""Opening the models of a run: eager PyTorch encoders, or a compiled engine directory.

Kept apart from the pipelines so ``embed``, ``predict`` (and the benchmark) load models the same way and
record the same facts about them (path, layout, weights hash, backend, precision). Engine directories
come from ``--engines DIR``, or — when ``--backend`` names an engine backend without ``--engines`` —
from ``OUTDIR/engines``, built on first use and reused while its manifest matches.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from virnucpro_trt.environment import available_cpus
from virnucpro_trt.errors import EngineMismatchError, UserError
from virnucpro_trt.models.checkpoints import load_encoder
from virnucpro_trt.models.classifier import ClassifierWeights, load_classifier_weights
from virnucpro_trt.models.identity import WeightsIdentity
from virnucpro_trt.models.kinds import MODELS, EncoderName
from virnucpro_trt.models.origin import EncoderOrigin
from virnucpro_trt.models.resolve import resolve_model
from virnucpro_trt.runtime.device import (
    configure_fp32_reference,
    resolve_device,
    resolve_dtype,
)
from virnucpro_trt.runtime.embedding import TorchBackend
from virnucpro_trt.runtime.encoder import LoadedEncoder
from virnucpro_trt.runtime.frame_path import FrameModels
from virnucpro_trt.settings import EncoderSettings

__all__ = ["EncoderLoader", "LoadedEncoder", "RunModels", "RunWeights", "engine_dir_for_run", "open_models"]

if TYPE_CHECKING:
    from virnucpro_trt.engines.engine_set import CheckedEngines
    from virnucpro_trt.engines.manifest import BuildFacts

log = logging.getLogger(__name__)

EncoderLoader = Callable[
    [str, Path, "WeightsIdentity | None"], tuple[torch.nn.Module, Any, EncoderOrigin, int]
]
"""``(kind, path, known identity) -> (fp32 CPU module, tokenizer, origin, width)``: :func:`load_encoder`'s
signature. A caller that opens the same checkpoints many times (``bench``) passes one that hands out
copies of modules it loaded once."""


@dataclass
class RunModels:
    """Everything a run embeds and classifies with, and how it runs."""

    device: torch.device
    backend: str
    precision: str
    encoders: dict[str, LoadedEncoder]
    classifier: ClassifierWeights | None = None
    classifier_path: Path | None = None
    engine_dir: Path | None = None
    engine_build: BuildFacts | None = None  # engines only: how the set was built (its manifest's build)
    engine_identity: str | None = None

    def frame_models(self) -> FrameModels:
        """Both encoders and the classifier (checked against them, placed on the device) for
        :mod:`virnucpro_trt.runtime.frame_path`."""
        if self.classifier is None:
            raise UserError("missing --classifier (or give --engines ENGINE_DIR)")
        return FrameModels.create(
            self.encoders["dnabert-s"], self.encoders["esm2"], self.classifier, self.device,
            self.classifier_path,
        )  # fmt: skip


@dataclass(frozen=True)
class RunWeights:
    """What a run's coordinator checked before its workers open the models (they get it with the job).

    ``weights``: per kind (``dnabert-s``, ``esm2``, ``classifier``) the identity of the checkpoint
    named; ``engines``: the checked engine directory. Workers reuse both instead of hashing again, and a
    file that changed since is refused rather than mixed into the results.
    """

    weights: dict[str, WeightsIdentity] = field(default_factory=dict)
    engines: CheckedEngines | None = None


def _load_eager(
    kind: EncoderName,
    spec: str,
    device: torch.device,
    dtype: torch.dtype,
    budget: int,
    loader: EncoderLoader = load_encoder,
    known: WeightsIdentity | None = None,
) -> LoadedEncoder:
    started = time.perf_counter()
    path = resolve_model(spec, MODELS[kind].short)
    model, tokenizer, origin, dim = loader(kind, path, known)
    backend = TorchBackend(model, dim, tokenizer.pad_id, device, dtype)
    log.info(
        "loaded %s from %s (%d-wide, %s, %s) in %.1fs",
        kind,
        path,
        dim,
        device,
        dtype,
        time.perf_counter() - started,
    )
    return LoadedEncoder(kind, backend, tokenizer, dim, budget, dataclasses.replace(origin, spec=spec))


def engine_dir_for_run(
    encoders: EncoderSettings,
    specs: dict[str, str | None],
    engines: Path | None,
    rebuild: bool,
    engine_cache: Path | None,
    build: bool = True,
) -> CheckedEngines | None:
    """The engine directory a multi-worker run loads, checked — and built when allowed — here, once.

    Called by the coordinator before any worker starts, because two workers must never build the same
    directory at once. The workers then open it with ``open_models(..., engines=folder, checked=...)``
    and without checkpoint names, so the checkpoints and engine files are hashed here, not once per GPU.
    Returns None for eager PyTorch. Raises exactly what :func:`open_models` would (mismatch, not an
    engine directory, a damaged file...). ``build=False`` only checks: a directory that would need a
    (re)build raises :class:`~virnucpro_trt.errors.EngineMismatchError`.
    """
    choice = _engine_choice(encoders, engines, engine_cache)
    if choice is None:
        return None
    backend, folder = choice
    device = resolve_device(encoders.device)
    may_rebuild = build and (rebuild or engines is None)
    checked = _checked_engines(encoders, specs, device, folder, backend, may_rebuild)
    if device.type == "cuda":  # the build's models are gone; give their memory back to the workers
        torch.cuda.empty_cache()
    return checked


def _checked_engines(
    encoders: EncoderSettings,
    specs: dict[str, str | None],
    device: torch.device,
    folder: Path,
    backend: str,
    may_rebuild: bool,
) -> CheckedEngines:
    """The one check of an engine folder before anything in it loads. A folder that may be rebuilt
    (predict's OUTDIR/engines, or one named with --rebuild) is rebuilt when it does not fit this machine,
    these libraries or the weights named, or holds another backend or precision than asked; one that may
    not is refused for any of these (:func:`refuse_other_engines` for the last two)."""
    from virnucpro_trt.engines.engine_set import check_engine_set, rebuild_engine_set

    settings = _build_settings(encoders, specs, device, folder, backend) if may_rebuild else None
    checked = check_engine_set(folder, device, specs, settings)
    if settings is not None and _asks_other(encoders, backend, checked.backend, checked.precision):
        built, asked = f"{checked.backend} {checked.precision}", f"{settings.backend} {settings.precision}"
        rebuild_engine_set(folder, specs, settings, f"they are {built}, {asked} asked")
        checked = check_engine_set(folder, device, specs, None)
    refuse_other_engines(encoders, backend, folder, checked.backend, checked.precision)
    return checked


def _asks_other(encoders: EncoderSettings, backend: str, built_backend: str, built_precision: str) -> bool:
    """Whether ``--precision``/``--backend`` name a set other than the one built: what
    :func:`refuse_other_engines` refuses where no rebuild is allowed (one rule for both)."""
    try:
        refuse_other_engines(encoders, backend, Path(), built_backend, built_precision)
    except EngineMismatchError:
        return True
    return False


def refuse_other_engines(
    encoders: EncoderSettings, backend: str, folder: Path, built_backend: str, built_precision: str
) -> None:
    """Refuse (one line, exit 2) an engine set other than the ``--precision``/``--backend`` asked for
    (``backend``: as :func:`_engine_choice` resolved it). Checked where a set is checked and where it is
    loaded, so a rerun that finds its results made (whose settings fingerprint leaves both out for a
    named set: the set's identity stands for them) refuses what a fresh run would.
    """
    if encoders.precision and encoders.precision != built_precision:
        raise EngineMismatchError(
            f"--precision {encoders.precision} asked, but the engines in {folder} are {built_precision}; "
            "rebuild them or drop --precision"
        )
    if backend not in ("engine", "auto") and backend != built_backend:
        raise EngineMismatchError(
            f"--backend {backend} asked, but the engines in {folder} are {built_backend}"
        )


def _engine_choice(
    encoders: EncoderSettings, engines: Path | None, engine_cache: Path | None
) -> tuple[str, Path] | None:
    """(backend, engine folder) of a run on engines, or None for eager PyTorch; bad combinations raise."""
    backend = encoders.backend or ("engine" if engines else "torch")
    if backend == "torch" and engines is None:
        return None
    if backend == "torch":
        raise UserError("--backend torch runs the PyTorch models: it cannot be combined with --engines")
    folder = engines or engine_cache
    if folder is None:
        raise UserError(f"--backend {backend} needs --engines DIR (an engine directory)")
    return backend, folder


def _build_settings(
    encoders: EncoderSettings, specs: dict[str, str | None], device: torch.device, folder: Path, backend: str
) -> Any:
    from virnucpro_trt.engines.build import BuildSettings

    return BuildSettings(
        dnabert=specs.get("dnabert-s") or "",
        esm=specs.get("esm2") or "",
        classifier=specs.get("classifier") or "",
        outdir=folder,
        backend=backend if backend != "engine" else "auto",
        precision=encoders.precision or "fp32",
        device=str(device),
        max_batch_tokens=encoders.max_batch_tokens,
        replace_changed=True,  # --rebuild is the remedy for an engine file modified or damaged in place
    )


def open_models(
    encoders: EncoderSettings,
    specs: dict[str, str | None],
    kinds: tuple[EncoderName, ...],
    need_classifier: bool,
    engines: Path | None = None,
    rebuild: bool = False,
    engine_cache: Path | None = None,
    loader: EncoderLoader = load_encoder,
    known: RunWeights | None = None,
) -> RunModels:
    """Load the encoders ``kinds`` (and the classifier) as the settings ask.

    ``specs`` maps ``dnabert-s``/``esm2``/``classifier`` to what the user named (None: not named; with
    engines the directory's own copies are used). ``loader`` reads an eager checkpoint (default: from
    its files). ``known`` is what a run's coordinator already checked (weights identities, or the engine
    directory): reused where the files are unchanged, refused where they now hold something else.
    """
    device = resolve_device(encoders.device)
    torch.set_num_threads(encoders.threads or available_cpus())
    choice = _engine_choice(encoders, engines, engine_cache)
    if choice is None:
        models = _open_eager(encoders, specs, kinds, need_classifier, device, loader, known)
    else:
        backend, folder = choice
        checked = known.engines if known is not None else None
        models = _open_engines(encoders, specs, device, folder, rebuild or engines is None, backend, checked)
    for kind, encoder in models.encoders.items():
        models.encoders[kind] = dataclasses.replace(encoder, padding_cap=encoders.padding_cap)
    return models


def _open_eager(
    encoders: EncoderSettings,
    specs: dict[str, str | None],
    kinds: tuple[EncoderName, ...],
    need_classifier: bool,
    device: torch.device,
    loader: EncoderLoader = load_encoder,
    known: RunWeights | None = None,
) -> RunModels:
    precision = encoders.precision or "fp32"
    dtype = resolve_dtype(precision, device)
    if dtype is torch.float32:
        configure_fp32_reference()
    budget = encoders.batch_tokens_for(device.type)
    classifier = classifier_path = None
    if need_classifier:
        classifier_path = resolve_model(_required(specs, "classifier"), "classifier")
        expected = known.weights.get("classifier") if known is not None else None
        classifier = load_classifier_weights(classifier_path, expected)
    loaded = {
        kind: _load_eager(
            kind,
            _required(specs, kind),
            device,
            dtype,
            budget,
            loader,
            known.weights.get(kind) if known else None,
        )
        for kind in kinds
    }
    return RunModels(device, "torch", precision, loaded, classifier, classifier_path)


def _required(specs: dict[str, str | None], kind: str) -> str:
    value = specs.get(kind)
    if not value:
        raise UserError(f"missing {MODELS[kind].flag} (or give --engines ENGINE_DIR)")
    return value


def _open_engines(
    encoders: EncoderSettings,
    specs: dict[str, str | None],
    device: torch.device,
    folder: Path,
    may_rebuild: bool,
    backend: str,
    checked: CheckedEngines | None,
) -> RunModels:
    from virnucpro_trt.engines.engine_set import open_engine_set

    if checked is None:  # checked (and rebuilt if it may be and must) before anything loads
        checked = _checked_engines(encoders, specs, device, folder, backend, may_rebuild)
    engine_set = open_engine_set(folder, device, specs, None, checked)  # a set changed since: refused
    manifest = engine_set.manifest
    # The engine set's encoders carry the build's budget; --max-batch-tokens overrides it.
    loaded = {
        kind: dataclasses.replace(enc, max_batch_tokens=encoders.max_batch_tokens or enc.max_batch_tokens)
        for kind, enc in (("dnabert-s", engine_set.dnabert), ("esm2", engine_set.esm))
    }
    return RunModels(
        device,
        manifest.backend,
        manifest.precision,
        loaded,
        engine_set.classifier,
        engine_set.classifier_path,
        engine_dir=folder,
        engine_build=manifest.build,
        engine_identity=manifest.identity(),
    )
