"""Using an engine directory: check its manifest against the present, then load runners and tokenizers.

``predict --engines DIR`` and ``embed --engines DIR`` come through here. The checks run before anything
is loaded: device type and GPU architecture, the versions of the libraries the artifacts are bound to,
when the user also names checkpoints the weights the engines were built from, and the SHA-256 of every
file the manifest names (:func:`~virnucpro_trt.engines.manifest.verify_files`). With ``rebuild`` a
mismatching (or missing) directory is rebuilt instead of refused.

An engine directory is code: a ``.pt2`` package holds a shared library that runs when it is loaded.
These checks catch damaged, half-copied and tampered files and paths leading out of the folder; they
cannot make a directory from an untrusted source safe (README, "Security model").
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from virnucpro_trt.engines.build import BuildSettings, build_engines, device_facts
from virnucpro_trt.engines.checkpoint_hashes import present_weights
from virnucpro_trt.engines.manifest import (
    MANIFEST_NAME,
    EngineManifest,
    Present,
    VerifiedFiles,
    check_manifest,
    manifest_mismatches,
    verify_files,
)
from virnucpro_trt.engines.registry import get_backend
from virnucpro_trt.engines.spec import LoadRequest, ShapeRange
from virnucpro_trt.engines.vocabularies import check_vocabularies
from virnucpro_trt.errors import EngineMismatchError, UserError
from virnucpro_trt.files.folders import nothing_there
from virnucpro_trt.models.classifier import ClassifierWeights, load_classifier_weights
from virnucpro_trt.models.kinds import ENCODER_NAMES, MODELS
from virnucpro_trt.models.origin import EncoderOrigin
from virnucpro_trt.models.tokenization import DnaTokenizer, ProteinTokenizer
from virnucpro_trt.runtime.encoder import LoadedEncoder
from virnucpro_trt.settings import DEFAULT_CPU_BATCH_TOKENS

log = logging.getLogger(__name__)


@dataclass
class EngineSet:
    """A checked and loaded engine directory; each encoder carries the build's token budget."""

    folder: Path
    manifest: EngineManifest
    dnabert: LoadedEncoder
    esm: LoadedEncoder
    classifier: ClassifierWeights
    classifier_path: Path


@dataclass(frozen=True)
class CheckedEngines:
    """An engine directory that passed every check, as the coordinator hands it to its workers."""

    folder: Path
    identity: str  # EngineManifest.identity(): what the set computes
    verified: VerifiedFiles  # the stamps of the files whose SHA-256 was checked
    backend: str  # the manifest's, so a run can refuse a --backend/--precision the set is not
    precision: str


def open_engine_set(
    folder: Path,
    device: torch.device,
    weights: dict[str, str | None],
    rebuild: BuildSettings | None = None,
    checked: CheckedEngines | None = None,
) -> EngineSet:
    """Check and load ``folder``; with ``rebuild`` settings, rebuild it first when it does not fit.

    ``checked`` is the coordinator's earlier check of the same folder: its file stamps spare the re-hash,
    and a manifest that no longer describes the same engines is refused.
    """
    manifest, _ = _check(folder, device, weights, rebuild, checked.verified if checked else None)
    if checked is not None and manifest.identity() != checked.identity:
        raise EngineMismatchError(f"the engines in {folder} changed during the run; rerun the command")
    return _load(folder, manifest, device)


def check_engine_set(
    folder: Path,
    device: torch.device,
    weights: dict[str, str | None],
    rebuild: BuildSettings | None = None,
) -> CheckedEngines:
    """``folder`` once it fits ``device``, these libraries and ``weights`` (rebuilding it first with
    ``rebuild`` settings when it does not) and every file has its recorded SHA-256; nothing is loaded.

    Kept apart from loading because ``predict`` checks (and builds) once in the main process, then each
    worker loads on its own device.
    """
    manifest, verified = _check(folder, device, weights, rebuild, None)
    # The classifier is small: read it now, so a bad one fails before any input is processed.
    load_classifier_weights(folder / manifest.models["classifier"].artifact)
    check_vocabularies(folder, manifest)
    for kind in ENCODER_NAMES:  # kept by `build --keep-failing`: used, but said once per run
        parity = manifest.models[kind].parity
        if parity is not None and not parity.passed:
            log.warning(
                "the %s engine in %s failed its parity gate when it was built (kept by `build "
                "--keep-failing`): its results may differ from the checkpoint's beyond the gate's rule",
                kind, folder,
            )  # fmt: skip
    return CheckedEngines(folder, manifest.identity(), verified, manifest.backend, manifest.precision)


def _check(
    folder: Path,
    device: torch.device,
    weights: dict[str, str | None],
    rebuild: BuildSettings | None,
    verified: VerifiedFiles | None,
) -> tuple[EngineManifest, VerifiedFiles]:
    try:
        manifest = _read_or_none(folder)
    except EngineMismatchError as exc:  # unreadable, foreign or older schema: rebuildable, else refused
        if rebuild is None:
            raise
        manifest, unreadable = None, str(exc)
    else:
        unreadable = f"no {MANIFEST_NAME} in {folder}"
    weights_here = present_weights(weights, manifest)
    if manifest is not None:
        backend = get_backend(manifest.backend)
        present = Present(
            device_facts(device), backend.library_versions(), weights_here, backend.native_cpu_code
        )
        problems = manifest_mismatches(manifest, present)
        if not problems:
            try:
                return manifest, verify_files(manifest, folder, verified)
            except EngineMismatchError as exc:
                if rebuild is None:
                    raise
                problems = [str(exc)]
    else:
        problems = [unreadable]
    if rebuild is None:
        if manifest is None and not folder.exists():
            raise EngineMismatchError(
                f"engine directory {folder}: no such directory; build one there with "
                f"`virnucpro-trt build ... -o {folder}` (or check the path)"
            )
        if manifest is None:
            raise EngineMismatchError(
                f"{folder} is not an engine directory (no {MANIFEST_NAME}); build one with "
                "`virnucpro-trt build` or add --rebuild"
            )
        check_manifest(manifest, present, folder)  # raises with every problem listed
    first = False  # nothing there yet, or an empty folder (an unreadable one is not taken for either)
    with contextlib.suppress(OSError):
        first = manifest is None and nothing_there(folder)
    manifest = rebuild_engine_set(folder, weights, rebuild, None if first else "; ".join(problems))
    return manifest, verify_files(manifest, folder)


def rebuild_engine_set(
    folder: Path, weights: dict[str, str | None], rebuild: BuildSettings, reason: str | None
) -> EngineManifest:
    """Build ``rebuild``'s set into ``folder`` in place of what it holds, warning of ``reason`` once
    (None: the folder is missing or empty, a first build, said as such); the checkpoints named in
    ``weights`` are what it is built from, so all three must be named."""
    missing = [model.flag for kind, model in MODELS.items() if not weights.get(kind)]
    if missing:
        raise UserError(f"--rebuild needs the checkpoints to build from: missing {', '.join(missing)}")
    if reason is None:
        log.info("building engines in %s (none there yet)", folder)
    else:
        log.warning("rebuilding engines in %s: %s", folder, reason)
    return build_engines(rebuild).manifest


def _read_or_none(folder: Path) -> EngineManifest | None:
    if not (folder / MANIFEST_NAME).is_file():
        return None
    return EngineManifest.read(folder)


def _load(folder: Path, manifest: EngineManifest, device: torch.device) -> EngineSet:
    backend = get_backend(manifest.backend)
    # a budget the manifest records is one (BuildFacts.from_json): a worker would fail on any other
    budget = manifest.build.max_batch_tokens or DEFAULT_CPU_BATCH_TOKENS
    encoders = {}
    for kind in ENCODER_NAMES:
        entry = manifest.models[kind]
        if entry.tokenizer is None or entry.shapes is None:
            raise EngineMismatchError(f"{folder}: the manifest gives {kind} no tokenizer or shape range")
        try:
            shapes = ShapeRange.from_json(entry.shapes)
        except (KeyError, TypeError, ValueError):
            raise EngineMismatchError(f"{folder}: the manifest's {kind} shape range is malformed") from None
        artifact = folder / entry.artifact
        listed = frozenset(entry.file_names())  # an artifact reads no file beside it the manifest skips
        runner = backend.load(
            LoadRequest(
                artifact,
                kind,
                device,
                manifest.precision,
                entry.dim,
                entry.pad_id,
                shapes,
                listed,
                vocab_size=entry.vocab_size,
            )
        )
        tokenizer_path = folder / entry.tokenizer
        tokenizer = (
            DnaTokenizer.from_file(tokenizer_path)
            if kind == "dnabert-s"
            else ProteinTokenizer.from_vocab_file(tokenizer_path)
        )
        origin = EncoderOrigin(
            spec=str(folder),
            path=str(artifact),
            format=f"{manifest.backend} engine",
            layout=entry.artifact,
            weights_sha256=entry.weights_sha256,
            source=entry.source,
            parity=entry.parity,
        )
        encoders[kind] = LoadedEncoder(kind, runner, tokenizer, entry.dim, budget, origin)
        log.info("loaded %s engine %s (%s, %s)", kind, entry.artifact, manifest.backend, manifest.precision)
    classifier_path = folder / manifest.models["classifier"].artifact
    return EngineSet(
        folder,
        manifest,
        encoders["dnabert-s"],
        encoders["esm2"],
        load_classifier_weights(classifier_path),
        classifier_path,
    )
