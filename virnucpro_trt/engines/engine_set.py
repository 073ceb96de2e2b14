"""Using an engine directory: check its manifest against the present, then load runners and tokenizers.

``predict --engines DIR`` and ``embed --engines DIR`` come through here. The checks run before anything
is loaded: device type and GPU architecture, the versions of the libraries the artifacts are bound to,
and — when the user also names checkpoints — the weights the engines were built from. With ``rebuild``
a mismatching (or missing) directory is rebuilt instead of refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from virnucpro_trt.engines.build import BuildSettings, build_engines, device_facts
from virnucpro_trt.engines.manifest import (
    MANIFEST_NAME,
    EngineManifest,
    Present,
    check_manifest,
    manifest_mismatches,
    verify_artifacts,
)
from virnucpro_trt.engines.registry import get_backend
from virnucpro_trt.engines.source_stamp import unchanged
from virnucpro_trt.engines.spec import ShapeRange
from virnucpro_trt.errors import EngineMismatchError, UserError
from virnucpro_trt.models.checkpoint_io import checkpoint_files, weights_sha256
from virnucpro_trt.models.classifier import ClassifierWeights, load_classifier_weights
from virnucpro_trt.models.resolve import resolve_model
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


def _user_weights(specs: dict[str, str | None], manifest: EngineManifest | None) -> dict[str, str]:
    """sha256 of the checkpoints the user named (to check the engines were built from them).

    Files that are still exactly the ones the build read (:mod:`~virnucpro_trt.engines.source_stamp`)
    take the recorded digest instead of being read again.
    """
    from virnucpro_trt.engines.manifest import sha256_file

    hashes: dict[str, str] = {}
    for kind, spec in specs.items():
        if not spec:
            continue
        resolved = resolve_model(spec, {"dnabert-s": "dnabert", "esm2": "esm"}.get(kind, kind))
        files = checkpoint_files(resolved)
        entry = manifest.models.get(kind) if manifest is not None else None
        if entry is not None and unchanged(entry.source_stamp, files):
            log.debug("%s: %s unchanged since the engine build, not re-hashed", kind, resolved)
            hashes[kind] = entry.weights_sha256
        elif kind == "classifier":
            hashes[kind] = sha256_file(resolved)
        else:
            hashes[kind] = weights_sha256(files)
    return hashes


def open_engine_set(
    folder: Path,
    device: torch.device,
    weights: dict[str, str | None],
    rebuild: BuildSettings | None = None,
) -> EngineSet:
    """Check and load ``folder``; with ``rebuild`` settings, rebuild it first when it does not fit."""
    return _load(folder, check_engine_set(folder, device, weights, rebuild), device)


def check_engine_set(
    folder: Path,
    device: torch.device,
    weights: dict[str, str | None],
    rebuild: BuildSettings | None = None,
) -> EngineManifest:
    """The manifest of ``folder`` once it fits ``device``, these libraries and ``weights`` (rebuilding it
    first with ``rebuild`` settings when it does not); nothing is loaded.

    Kept apart from loading because ``predict`` checks (and builds) once in the main process, then each
    worker loads on its own device.
    """
    manifest = _read_or_none(folder)
    present_weights = _user_weights(weights, manifest)
    if manifest is not None:
        backend = get_backend(manifest.backend)
        present = Present(device_facts(device), backend.library_versions(), present_weights)
        problems = manifest_mismatches(manifest, present)
    else:
        problems = [f"no {MANIFEST_NAME} in {folder}"]
    if problems:
        if rebuild is None:
            if manifest is None:
                raise EngineMismatchError(
                    f"{folder} is not an engine directory (no {MANIFEST_NAME}); build one with "
                    "`virnucpro-trt build` or add --rebuild"
                )
            check_manifest(manifest, present, folder)  # raises with every problem listed
        missing = [
            flag
            for flag, kind in (("--dnabert", "dnabert-s"), ("--esm", "esm2"), ("--classifier", "classifier"))
            if not weights.get(kind)
        ]
        if missing:
            raise UserError(f"--rebuild needs the checkpoints to build from: missing {', '.join(missing)}")
        log.warning("rebuilding engines in %s: %s", folder, "; ".join(problems))
        manifest = build_engines(rebuild)
    assert manifest is not None
    verify_artifacts(manifest, folder)
    return manifest


def _read_or_none(folder: Path) -> EngineManifest | None:
    if not (folder / MANIFEST_NAME).is_file():
        return None
    return EngineManifest.read(folder)


def _load(folder: Path, manifest: EngineManifest, device: torch.device) -> EngineSet:
    backend = get_backend(manifest.backend)
    budget = int(manifest.build.get("max_batch_tokens") or DEFAULT_CPU_BATCH_TOKENS)
    encoders = {}
    for kind in ("dnabert-s", "esm2"):
        entry = manifest.models[kind]
        assert entry.shapes is not None and entry.tokenizer is not None
        shapes = ShapeRange.from_json(entry.shapes)
        runner = backend.load(
            folder / entry.artifact, kind, device, manifest.precision, entry.dim, entry.pad_id, shapes
        )
        tokenizer_path = folder / entry.tokenizer
        tokenizer = (
            DnaTokenizer.from_file(tokenizer_path)
            if kind == "dnabert-s"
            else ProteinTokenizer.from_vocab_file(tokenizer_path)
        )
        info = {
            "spec": str(folder),
            "path": str(folder / entry.artifact),
            "format": f"{manifest.backend} engine",
            "layout": entry.artifact,
            "weights_sha256": entry.weights_sha256,
            "source": entry.source,
            "parity": entry.parity,
        }
        encoders[kind] = LoadedEncoder(kind, runner, tokenizer, entry.dim, budget, info)
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
