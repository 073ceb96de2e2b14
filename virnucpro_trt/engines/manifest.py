"""The engine manifest: what an engine directory holds and what it may be used with.

An engine is only correct on the machine, libraries and weights it was built for. The manifest records
all of them (versioned schema) and :func:`check_manifest` compares them with the present before any
engine is loaded, so a mismatch stops with a message on how to rebuild instead of silently running a
wrong or incompatible artifact.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from virnucpro_trt import __version__
from virnucpro_trt.errors import EngineMismatchError

MANIFEST_NAME = "manifest.json"
SCHEMA = "virnucpro-trt/engine-manifest"
SCHEMA_VERSION = 1


def sha256_file(path: Path, block: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while data := handle.read(block):
            digest.update(data)
    return digest.hexdigest()


@dataclass
class ModelEntry:
    """One model of an engine directory."""

    kind: str  # "dnabert-s", "esm2" or "classifier"
    artifact: str  # file name inside the engine directory
    weights_sha256: str  # of the SOURCE checkpoint the artifact was built from
    source: str  # the spec / path it was built from (informational)
    dim: int = 0
    pad_id: int = 0
    tokenizer: str | None = None  # file name inside the engine directory
    shapes: dict[str, int] | None = None
    files: list[str] = field(default_factory=list)  # every file of the artifact (external data...)
    artifact_sha256: str = ""
    parity: dict[str, Any] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    # absolute path -> [size, mtime_ns, inode, device] of each source file when the build hashed it
    source_stamp: dict[str, list[int]] = field(default_factory=dict)


@dataclass
class EngineManifest:
    """Top of an engine directory (``manifest.json``)."""

    backend: str
    precision: str
    device: dict[str, Any]  # type, name, compute_capability, arch
    libraries: dict[str, str]
    models: dict[str, ModelEntry]
    build: dict[str, Any] = field(default_factory=dict)  # time, seconds, options, command
    schema: str = SCHEMA
    schema_version: int = SCHEMA_VERSION
    virnucpro_trt: str = __version__

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "schema_version": self.schema_version,
            "virnucpro_trt": self.virnucpro_trt,
            "backend": self.backend,
            "precision": self.precision,
            "device": self.device,
            "libraries": self.libraries,
            "build": self.build,
            "models": {name: vars(entry) for name, entry in self.models.items()},
        }

    def write(self, folder: Path) -> Path:
        path = folder / MANIFEST_NAME
        tmp = path.with_name(path.name + ".partial")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def read(cls, folder: Path) -> EngineManifest:
        path = folder / MANIFEST_NAME
        if not path.is_file():
            raise EngineMismatchError(
                f"{folder} is not an engine directory (no {MANIFEST_NAME}); build one with "
                "`virnucpro-trt build`"
            )
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise EngineMismatchError(f"{path} is not valid JSON ({exc})") from None
        if data.get("schema") != SCHEMA:
            raise EngineMismatchError(f"{path} is not a virnucpro-trt engine manifest")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise EngineMismatchError(
                f"{path} has manifest schema {data.get('schema_version')}, this version reads "
                f"{SCHEMA_VERSION}: rebuild the engines (`virnucpro-trt build`, or `--rebuild`)"
            )
        models = {name: ModelEntry(**entry) for name, entry in data["models"].items()}
        return cls(
            backend=data["backend"],
            precision=data["precision"],
            device=data["device"],
            libraries=data["libraries"],
            models=models,
            build=data.get("build", {}),
            schema=data["schema"],
            schema_version=data["schema_version"],
            virnucpro_trt=data.get("virnucpro_trt", "?"),
        )


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Present:
    """The facts of the machine and the run an engine directory is checked against."""

    device: dict[str, Any]
    libraries: dict[str, str]  # the backend's bound libraries, current versions
    weights: dict[str, str]  # kind -> sha256 of the checkpoint the user named (absent: not named)


def manifest_mismatches(manifest: EngineManifest, present: Present) -> list[str]:
    """Every reason the engines must not be used here (empty list: compatible)."""
    problems: list[str] = []
    want, have = manifest.device, present.device
    if want.get("type") != have.get("type"):
        problems.append(f"built for {want.get('type')}, running on {have.get('type')}")
    elif (
        want.get("type") == "cuda"
        and want.get("arch") != have.get("arch")
        and not manifest.build.get("hardware_compatible")
    ):
        problems.append(
            f"built for {want.get('name')} ({want.get('arch')}), "
            f"running on {have.get('name')} ({have.get('arch')})"
        )
    for library, version in manifest.libraries.items():
        current = present.libraries.get(library)
        if current != version:
            problems.append(f"built with {library} {version}, found {current or 'none'}")
    for kind, sha in present.weights.items():
        entry = manifest.models.get(kind)
        if entry is None:
            problems.append(f"the engines hold no {kind} model")
        elif entry.weights_sha256 != sha:
            problems.append(f"{kind} weights differ from the ones the engine was built from ({entry.source})")
    return problems


def check_manifest(manifest: EngineManifest, present: Present, folder: Path) -> None:
    """Raise :class:`EngineMismatchError` with every mismatch and the way out."""
    problems = manifest_mismatches(manifest, present)
    if problems:
        raise EngineMismatchError(
            f"engines in {folder} cannot be used here: {'; '.join(problems)}. Rebuild them with "
            f"`virnucpro-trt build ... -o {folder}` or add --rebuild"
        )


def verify_artifacts(manifest: EngineManifest, folder: Path) -> None:
    """Every file the manifest names exists (a half-copied directory fails here, not mid-run)."""
    for name, entry in manifest.models.items():
        for file_name in [
            entry.artifact,
            *(entry.files or []),
            *([entry.tokenizer] if entry.tokenizer else []),
        ]:
            if not (folder / file_name).exists():
                raise EngineMismatchError(f"engine directory {folder} lacks {file_name} ({name}); rebuild it")
