"""The checkpoints a user names, by content, for comparing with an engine set's manifest.

``predict --engines`` checks that the engines were built from the weights it is given, and ``build``
whether the folder's set was built from the checkpoints it is asked to build (``finished_build``): both
by the same hashes, and both spare the re-hash of a file that still carries the stamp the manifest
recorded when the build hashed it.
"""

from __future__ import annotations

from virnucpro_trt.engines.manifest import EngineManifest
from virnucpro_trt.models.identity import WeightsIdentity, identify_checkpoint
from virnucpro_trt.models.kinds import MODELS
from virnucpro_trt.models.resolve import resolve_model


def present_weights(specs: dict[str, str | None], manifest: EngineManifest | None) -> dict[str, str]:
    """sha256 of the checkpoints the user named (to check the engines were built from them).

    Files that are still exactly the ones the build read (their stamps in the manifest) take the
    recorded digest instead of being read again.
    """
    hashes: dict[str, str] = {}
    for kind, spec in specs.items():
        if not spec:
            continue
        resolved = resolve_model(spec, MODELS[kind].short)
        entry = manifest.models.get(kind) if manifest is not None else None
        known = WeightsIdentity(entry.weights_sha256, entry.source_stamp) if entry is not None else None
        hashes[kind] = identify_checkpoint(kind, resolved, known).sha256
    return hashes
