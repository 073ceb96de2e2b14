"""Whether an engine folder already holds what ``build`` was asked to make: then the build is skipped.

A rerun of ``build`` with nothing changed used to compile again (minutes at full size) to write the same
set. The folder's set is taken as this build's only when everything that decides what the engines
compute, and how fast, is what this build would record:

* the strict manifest reader takes the folder's manifest, still sealed as the build wrote it
  (``manifest.manifest_seal``: an edited manifest may be one ``predict`` refuses), and every file it
  names still has its SHA-256 (stamps spare the re-hash), with no earlier build's stale file left;
* the same program version and build recipe, backend (``auto`` resolved as this build resolves it),
  precision, device facts (type, architecture, name; a CPU's instruction sets, which AOTInductor
  compiles for), bound library versions and, for an ONNX export, the exporter's (torch, onnx,
  onnxscript), token budget, shape ranges (``--max-length``), ``--hardware-compatible``, ``--attention``;
* the same three checkpoints by content (their ``weights_sha256``: weights, config and tokenizer files);
* every encoder passed its parity gate (a set kept by ``--keep-failing`` is built again);
* its tokenizers bound by the vocabularies the manifest records (``vocabularies.check_vocabularies``):
  a set that ``predict`` would refuse is never taken as finished, so "rebuild the engines" always works.

``build --force`` builds again regardless; ``predict --rebuild`` only builds a set that does not fit.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

from virnucpro_trt import __version__
from virnucpro_trt.engines.checkpoint_hashes import present_weights
from virnucpro_trt.engines.manifest import MANIFEST_NAME, EngineDevice, EngineManifest, verify_files
from virnucpro_trt.engines.spec import EngineBackend, default_shape_range
from virnucpro_trt.engines.vocabularies import check_vocabularies
from virnucpro_trt.errors import CheckpointError, EngineMismatchError
from virnucpro_trt.models.kinds import ENCODER_NAMES, checkpoint_specs

if TYPE_CHECKING:
    from virnucpro_trt.engines.build import BuildSettings


def build_differences(
    settings: BuildSettings, device_facts: EngineDevice, backend: EngineBackend, budget: int
) -> list[str]:
    """Why the set in ``settings.outdir`` is not the one this build would make (empty: it is).

    ``device_facts``, ``backend`` and ``budget`` are what the build resolved for this run.
    """
    out = settings.outdir
    if not (out / MANIFEST_NAME).is_file():
        return [f"no {MANIFEST_NAME}"]
    try:
        manifest = EngineManifest.read(out)
    except (EngineMismatchError, OSError, ValueError) as exc:
        return [f"its manifest is not readable ({exc})"]
    if not manifest.sealed:
        return ["its manifest was edited since the build wrote it (or written before builds sealed it)"]
    differences = _setting_differences(manifest, settings, device_facts, backend, budget)
    if differences:  # before any hashing: a changed option is reason enough
        return differences
    differences += _weight_differences(manifest, settings)
    if any(os.path.lexists(out / name) for name in manifest.build.stale_files or {}):
        differences.append("an earlier build's files are still to be removed")
    if not differences:
        try:
            verify_files(manifest, out)
            check_vocabularies(out, manifest)
        except (EngineMismatchError, CheckpointError, OSError) as exc:
            differences.append(str(exc))
    return differences


def _setting_differences(
    manifest: EngineManifest,
    settings: BuildSettings,
    device_facts: EngineDevice,
    backend: EngineBackend,
    budget: int,
) -> list[str]:
    build = manifest.build
    asked = {
        "virnucpro-trt version": (manifest.virnucpro_trt, __version__),
        "backend": (manifest.backend, backend.name),
        "build recipe": (build.recipe_version, backend.recipe_version),
        "precision": (manifest.precision, settings.precision),
        "device": (manifest.device.to_json(), device_facts.to_json()),
        "libraries": (manifest.libraries, backend.library_versions()),
        "token budget": (build.max_batch_tokens, budget),
        "--hardware-compatible": (build.hardware_compatible, settings.hardware_compatible),
        "--attention": (build.attention_option, settings.attention),
    }
    differences = [_differ(what, was, now) for what, (was, now) in asked.items() if _json(was) != _json(now)]
    for kind in ENCODER_NAMES:
        entry = manifest.models[kind]
        shapes = default_shape_range(kind, budget, settings.max_length).to_json()
        exported = entry.facts.get("library_versions")
        if _json(entry.shapes) != _json(shapes):
            differences.append(_differ(f"{kind} shapes", entry.shapes, shapes))
        elif exported is not None and _json(exported) != _json(now := _exporter_versions()):
            differences.append(_differ(f"{kind} exported with", exported, now))
        elif entry.parity is None or not entry.parity.passed:
            differences.append(f"the {kind} engine did not pass its parity gate (kept by --keep-failing)")
    if build.parity_failures_kept:
        differences.append("engines that failed their parity gate were kept")
    return differences


def _json(value: object) -> str:
    """Compared as JSON text: 512.0 is not the budget 512, whatever Python's == says."""
    return json.dumps(value, sort_keys=True)


def _differ(what: str, was: object, now: object) -> str:
    """``what: built X, asked Y``, naming only the keys that differ where both are objects."""
    if isinstance(was, dict) and isinstance(now, dict):
        keys = sorted(k for k in {*was, *now} if _json(was.get(k)) != _json(now.get(k)))
        was, now = ({k: d.get(k) for k in keys} for d in (was, now))
    return f"{what}: built {was}, asked {now}"


def _exporter_versions() -> dict[str, str] | None:
    """The versions an ONNX export would record now (None where the exporter cannot be imported)."""
    try:
        from virnucpro_trt.engines.onnx_export import exporter_versions

        return exporter_versions()
    except ImportError:
        return None


def _weight_differences(manifest: EngineManifest, settings: BuildSettings) -> list[str]:
    """The checkpoints named now against those the set was built from, by content (stamps first: the
    rule ``predict`` checks an engine set's weights by). A checkpoint that cannot be read fails here
    as the build itself would, in its words."""
    named = checkpoint_specs(settings.dnabert, settings.esm, settings.classifier)
    return [
        f"{kind} checkpoint differs from the one the set was built from"
        for kind, sha256 in present_weights(dict(named), manifest).items()
        if sha256 != manifest.models[kind].weights_sha256
    ]
