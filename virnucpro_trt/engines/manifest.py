"""The engine manifest: what an engine directory holds and what it may be used with.

An engine is only correct on the machine, libraries and weights it was built for. The manifest records
all of them (versioned schema) and :func:`check_manifest` compares them with the present before any
engine is loaded, so a mismatch stops with a message on how to rebuild instead of silently running a
wrong or incompatible artifact.

The manifest is also the directory's table of contents, and it is read as hostile input: every file it
names must be a plain name inside the folder (:mod:`virnucpro_trt.files.names`), and every file —
artifacts, their external data, tokenizers, the classifier — must have the SHA-256 recorded beside it
(:func:`verify_files`) before anything is loaded. Build-time stamps let an unchanged full-size set skip
the re-hash (:mod:`virnucpro_trt.files.stamps`).

The manifest is also what tells a later ``build`` into the same folder which files are its own
(:func:`own_file_names`): the files its models name plus ``build.own_files`` (by-products such as the
TensorRT timing cache, and an earlier build's files still in the folder).

Its blocks are typed where they are read: ``device`` is an :class:`EngineDevice`, ``build`` a
:class:`BuildFacts`, each encoder's ``parity`` a :class:`~virnucpro_trt.models.parity_result.ParityResult`,
each read from the JSON by bounded, typed readers (``files/json_fields.py``) that refuse a value of
another type in one line. Keys this version does not know are ignored there, as in the rest of the
manifest: a set built by an earlier version of schema 2 is still read (its ``build.attention``, since
renamed ``attention_option``), and the seal covers every key.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from virnucpro_trt import __version__
from virnucpro_trt.errors import EngineMismatchError, show_value
from virnucpro_trt.files.atomic import write_text_atomic
from virnucpro_trt.files.bounded_read import read_bounded
from virnucpro_trt.files.digests import sha256_bytes, sha256_file
from virnucpro_trt.files.json_fields import (
    SHA256,
    FieldError,
    count,
    flag,
    obj,
    parse_json,
    seconds,
    text,
    texts,
    within,
)
from virnucpro_trt.files.names import UnsafeMemberName, check_member_name, member_path
from virnucpro_trt.files.stamps import Stamp, file_stamp
from virnucpro_trt.models.kinds import MODEL_NAMES
from virnucpro_trt.models.parity_result import ParityResult
from virnucpro_trt.settings import MAX_BATCH_TOKENS

MANIFEST_NAME = "manifest.json"
CLASSIFIER_FILE = "classifier.safetensors"  # the name build gives an engine set's classifier
SCHEMA = "virnucpro-trt/engine-manifest"
# 2: every file of an entry carries its SHA-256 (file_sha256) and build-time stamp (file_stamps).
SCHEMA_VERSION = 2
MAX_MANIFEST_BYTES = 8 << 20
MAX_VOCAB_SIZE = 1 << 24  # an encoder's vocabulary, as the C++ host bounds it (kMaxVocab)
SEAL_KEY = "manifest_sha256"  # in ``build``: see :func:`manifest_seal`
OWN_FILES_KEY = "own_files"  # in ``build``: further files of the folder that virnucpro-trt made
# in ``build``: {name: SHA-256} of the earlier build's files this build removes once its manifest is in
# place; recorded, so a build killed before it removed them leaves them known to the next build
STALE_FILES_KEY = "stale_files"
# Bounds on the device and build blocks, read as hostile (the file itself is at most MAX_MANIFEST_BYTES).
MAX_FACT_CHARS = 1 << 16  # any text of them: a name, a time, the backend's reason, a parity failure
MAX_ARGUMENT_CHARS = 1 << 17  # an item of build.command: the longest argument Linux passes (MAX_ARG_STRLEN)
MAX_LISTED = 1 << 16  # items of build.command, own_files, stale_files, parity_failures_kept
# device.instruction_sets as the C++ host bounds them (runtime/src/manifest.cpp, kMaxInstructionSets and
# kMaxInstructionSetName): at most 4096 names of 1 to 64 letters, digits and "_.-"
MAX_INSTRUCTION_SETS = 4096
_INSTRUCTION_SET = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MIN_BATCH_TOKENS = 16  # build's --max-batch-tokens takes 16 and up


@dataclass(frozen=True)
class EngineDevice:
    """The manifest's ``device``: the device an engine set was built for (in :class:`Present`, the one a
    run is on), as ``build.device_facts`` describes it."""

    type: str  # torch's device type: "cuda" or "cpu"
    arch: str  # "sm90" for compute capability 9.0, or "cpu": the part of an artifact's name it is bound to
    name: str  # the GPU's name, or "cpu"
    compute_capability: str | None = None  # a GPU's ("9.0")
    # a CPU's instruction-set extensions, which AOTInductor compiles for (None: a set built before they
    # were recorded)
    instruction_sets: tuple[str, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"type": self.type, "arch": self.arch, "name": self.name}
        if self.compute_capability is not None:
            data["compute_capability"] = self.compute_capability
        if self.instruction_sets is not None:
            data["instruction_sets"] = list(self.instruction_sets)
        return data

    @classmethod
    def from_json(cls, data: Any) -> EngineDevice:
        """The block :meth:`to_json` writes; :class:`FieldError` naming the first field that is missing,
        of another type or out of bounds."""
        data = obj(data, "device")
        with within("device"):
            capability, sets = None, None
            if "compute_capability" in data:
                capability = text(data, "compute_capability", max_chars=MAX_FACT_CHARS)
            if "instruction_sets" in data:
                sets = texts(data, "instruction_sets", MAX_INSTRUCTION_SETS, MAX_FACT_CHARS)
                if not all(_INSTRUCTION_SET.fullmatch(name) for name in sets):
                    raise FieldError("instruction_sets: not instruction-set names (1 to 64 of A-Za-z0-9_.-)")
            return cls(
                type=text(data, "type", max_chars=MAX_FACT_CHARS),
                arch=text(data, "arch", max_chars=MAX_FACT_CHARS),
                name=text(data, "name", max_chars=MAX_FACT_CHARS),
                compute_capability=capability,
                instruction_sets=sets,
            )


@dataclass(frozen=True)
class BuildFacts:
    """The manifest's ``build``: how, when and by what the set was built, and the folder's bookkeeping.

    Every key is optional (None: absent, and not written), as sets built by earlier versions of schema 2
    lack some; a key that is there holds its type. Written in field order: what ``build`` writes.
    """

    time: str | None = None  # when it was built (ISO 8601, UTC)
    backend_choice: str | None = None  # why this backend (engines/registry.py, choose_backend)
    recipe_version: int | None = None  # the backend's build recipe
    max_batch_tokens: int | None = None  # the token budget the engines were built and gated for
    hardware_compatible: bool | None = None  # --hardware-compatible: runs on other GPU architectures
    attention_option: str | None = None  # --attention as asked (each model's facts say what it calls)
    parity_failures_kept: tuple[str, ...] | None = None  # the failed gates --keep-failing kept
    command: tuple[str, ...] | None = None  # the command line that built it
    virnucpro_trt: str | None = None  # the version that built it
    own_files: tuple[str, ...] | None = None  # OWN_FILES_KEY
    stale_files: dict[str, str] | None = None  # STALE_FILES_KEY: {name: SHA-256}
    seconds: float | None = None  # how long the build took
    manifest_sha256: str | None = None  # SEAL_KEY: see manifest_seal

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for name in (f.name for f in fields(self)):
            value = getattr(self, name)
            if value is not None:
                data[name] = list(value) if isinstance(value, tuple) else value
        return data

    @classmethod
    def from_json(cls, data: Any) -> BuildFacts:
        """The block :meth:`to_json` writes; :class:`FieldError` naming the first field of another type or
        out of bounds. Keys it does not know are ignored (see the module's docstring)."""
        data = obj(data, "build")
        with within("build"):
            return cls(**{name: read(data, name) for name, read in _BUILD_READERS.items() if name in data})


def _token_budget(data: dict[str, Any], key: str) -> int:
    try:
        return count(data, key, MIN_BATCH_TOKENS, MAX_BATCH_TOKENS)
    except FieldError:
        raise FieldError(
            f"{key} {show_value(data[key])} is not a token budget (an integer from {MIN_BATCH_TOKENS} to "
            f"{MAX_BATCH_TOKENS})"
        ) from None


def _file_names(data: dict[str, Any], key: str) -> tuple[str, ...]:
    names = texts(data, key, MAX_LISTED, MAX_FACT_CHARS)
    if not all(_plain_name(name) for name in names):
        raise FieldError(f"{key}: not plain names of files in the folder")
    return names


def _file_digests(data: dict[str, Any], key: str) -> dict[str, str]:
    digests = obj(data.get(key), key)
    if len(digests) > MAX_LISTED or not all(
        _plain_name(name) and isinstance(sha256, str) and SHA256.fullmatch(sha256)
        for name, sha256 in digests.items()
    ):
        raise FieldError(f"{key}: not plain names of files in the folder, each with its SHA-256")
    return dict(digests)


def _fact(data: dict[str, Any], key: str) -> str:
    return text(data, key, max_chars=MAX_FACT_CHARS)


# How each field of BuildFacts is read, in the order build writes them (BuildFacts.to_json's order).
_BUILD_READERS: dict[str, Callable[[dict[str, Any], str], Any]] = {
    "time": _fact,
    "backend_choice": _fact,
    "recipe_version": count,
    "max_batch_tokens": _token_budget,
    "hardware_compatible": flag,
    "attention_option": _fact,
    "parity_failures_kept": lambda data, key: texts(data, key, MAX_LISTED, MAX_FACT_CHARS),
    "command": lambda data, key: texts(data, key, MAX_LISTED, MAX_ARGUMENT_CHARS),
    "virnucpro_trt": _fact,
    OWN_FILES_KEY: _file_names,
    STALE_FILES_KEY: _file_digests,
    "seconds": seconds,
    SEAL_KEY: lambda data, key: text(data, key, SHA256),
}
assert tuple(_BUILD_READERS) == tuple(f.name for f in fields(BuildFacts)), "every field, in written order"


@dataclass
class ModelEntry:
    """One model of an engine directory."""

    kind: str  # "dnabert-s", "esm2" or "classifier"
    artifact: str  # file name inside the engine directory
    weights_sha256: str  # of the SOURCE checkpoint the artifact was built from
    source: str  # the spec / path it was built from (informational)
    dim: int = 0
    pad_id: int = 0
    vocab_size: int = 0  # rows of an encoder's token embedding; 0: not recorded (classifier, older builds)
    tokenizer: str | None = None  # file name inside the engine directory
    shapes: dict[str, int] | None = None
    files: list[str] = field(default_factory=list)  # every further file of the artifact (external data...)
    # file name -> SHA-256 of every file this entry loads (artifact, files, tokenizer)
    file_sha256: dict[str, str] = field(default_factory=dict)
    # file name -> its stamp when the build hashed it (see files/stamps.py)
    file_stamps: dict[str, Stamp] = field(default_factory=dict)
    parity: ParityResult | None = None  # the build's gate (None: the classifier, which has none)
    facts: dict[str, Any] = field(default_factory=dict)
    # absolute path -> stamp of each SOURCE checkpoint file when the build hashed it
    source_stamp: dict[str, Stamp] = field(default_factory=dict)

    def file_names(self) -> list[str]:
        """Every file of the engine directory this entry loads."""
        return [self.artifact, *self.files, *([self.tokenizer] if self.tokenizer else [])]

    def to_json(self) -> dict[str, Any]:
        """The entry as the manifest holds it: every field, in order; no gate is ``"parity": {}``."""
        return {**vars(self), "parity": self.parity.to_json() if self.parity is not None else {}}

    def record_files(self, folder: Path) -> None:
        """Hash and stamp every file of the entry (the build calls this once the files are final)."""
        for name in self.file_names():
            path = folder / name
            self.file_stamps[name] = file_stamp(path)  # before hashing: a change in between won't match
            self.file_sha256[name] = sha256_file(path)


# The JSON type of each ModelEntry field; a manifest with anything else is refused, not half-read.
_ENTRY_FIELDS: dict[str, tuple[type, ...]] = {
    "kind": (str,),
    "artifact": (str,),
    "weights_sha256": (str,),
    "source": (str,),
    "dim": (int,),
    "pad_id": (int,),
    "vocab_size": (int,),
    "tokenizer": (str, type(None)),
    "shapes": (dict, type(None)),
    "files": (list,),
    "file_sha256": (dict,),
    "file_stamps": (dict,),
    "parity": (dict,),
    "facts": (dict,),
    "source_stamp": (dict,),
}
_REQUIRED_FIELDS = ("kind", "artifact", "weights_sha256", "source", "file_sha256")


def _check_token_fields(entry: ModelEntry, what: str) -> None:
    """``vocab_size`` is 0 (not recorded: the classifier, encoders built before it was) or 1 to
    :data:`MAX_VOCAB_SIZE`; ``pad_id`` is a token id: below ``vocab_size`` when recorded, else below
    :data:`MAX_VOCAB_SIZE` (the C++ host's rule too); an unrecorded vocabulary is bounded more tightly
    where the tokenizer is read (``vocabularies.check_vocabularies``: the pad id must be its). A pad id
    of 2**70 failed every shard three times (OverflowError while padding), a negative one ran, indexing
    the embedding from its end."""
    vocab = entry.vocab_size
    if not 0 <= vocab <= MAX_VOCAB_SIZE:
        raise EngineMismatchError(
            f"{what}: vocab_size {vocab} is not a vocabulary size (0, not recorded, or 1 to {MAX_VOCAB_SIZE})"
        )
    if vocab and not 0 <= entry.pad_id < vocab:
        raise EngineMismatchError(f"{what}: pad_id {entry.pad_id} is outside its {vocab}-token vocabulary")
    if not 0 <= entry.pad_id < MAX_VOCAB_SIZE:
        raise EngineMismatchError(
            f"{what}: pad_id {entry.pad_id} is not a token id (0 to {MAX_VOCAB_SIZE - 1}); "
            "rebuild the engines"
        )


def _entry_from_json(kind: str, data: Any, path: Path) -> ModelEntry:
    if not isinstance(data, dict):
        raise EngineMismatchError(f"{path}: models.{kind} is not an object")
    missing = [name for name in _REQUIRED_FIELDS if name not in data]
    if missing:
        raise EngineMismatchError(f"{path}: models.{kind} lacks {', '.join(missing)}")
    values: dict[str, Any] = {}
    for name, types in _ENTRY_FIELDS.items():
        if name not in data:
            continue
        value = data[name]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise EngineMismatchError(f"{path}: models.{kind}.{name} has the wrong type")
        values[name] = value
    try:
        parity = values.pop("parity", None)
        if parity:  # {}: no gate (the classifier)
            with within(f"models.{kind}.parity"):
                values["parity"] = ParityResult.from_json(parity)
    except FieldError as exc:
        raise EngineMismatchError(f"{path}: {exc}") from None
    entry = ModelEntry(**values)
    what = f"{path}: models.{kind}"
    try:
        names = [check_member_name(n, what) for n in entry.file_names()]
    except UnsafeMemberName as exc:
        raise EngineMismatchError(str(exc)) from None
    if entry.kind != kind:
        raise EngineMismatchError(f"{what} says it is a {entry.kind!r}")
    if set(entry.file_sha256) != set(names) or not all(
        isinstance(v, str) and SHA256.fullmatch(v) for v in entry.file_sha256.values()
    ):
        raise EngineMismatchError(f"{what}: file_sha256 must give one SHA-256 for each of {', '.join(names)}")
    _check_token_fields(entry, what)
    if kind == "classifier" and not entry.artifact.endswith(".safetensors"):
        raise EngineMismatchError(f"{what}: the classifier of an engine directory must be .safetensors")
    return entry


@dataclass
class EngineManifest:
    """Top of an engine directory (``manifest.json``)."""

    backend: str
    precision: str
    device: EngineDevice
    libraries: dict[str, str]
    models: dict[str, ModelEntry]
    build: BuildFacts = field(default_factory=BuildFacts)
    schema: str = SCHEMA
    schema_version: int = SCHEMA_VERSION
    virnucpro_trt: str = __version__
    # Read back: whether the file still holds the SHA-256 of its own content that write() put in it
    # (``build.manifest_sha256``); not written itself.
    sealed: bool = field(default=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "schema_version": self.schema_version,
            "virnucpro_trt": self.virnucpro_trt,
            "backend": self.backend,
            "precision": self.precision,
            "device": self.device.to_json(),
            "libraries": self.libraries,
            "build": self.build.to_json(),
            "models": {name: entry.to_json() for name, entry in self.models.items()},
        }

    def identity(self) -> str:
        """SHA-256 naming what this engine set computes: backend, precision, source weights, every file."""
        what = {
            "backend": self.backend,
            "precision": self.precision,
            "models": {
                kind: {"weights_sha256": entry.weights_sha256, "files": entry.file_sha256}
                for kind, entry in sorted(self.models.items())
            },
        }
        return sha256_bytes(json.dumps(what, sort_keys=True).encode())

    def write(self, folder: Path) -> Path:
        """Write ``manifest.json``, sealed with the SHA-256 of its own content (:func:`manifest_seal`)."""
        self.build = replace(self.build, manifest_sha256=manifest_seal(self.to_json()))
        path = folder / MANIFEST_NAME
        write_text_atomic(path, json.dumps(self.to_json(), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, folder: Path) -> EngineManifest:
        path = folder / MANIFEST_NAME
        if path.is_symlink():  # like every file of the set: a plain file inside the folder, never elsewhere
            raise EngineMismatchError(f"{path} is a symbolic link; a manifest is a plain file in its folder")
        if not path.is_file():
            raise EngineMismatchError(
                f"{folder} is not an engine directory (no {MANIFEST_NAME}); build one with "
                "`virnucpro-trt build`"
            )
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise EngineMismatchError(f"{path} is {path.stat().st_size} bytes, too large for a manifest")
        try:
            data = parse_json(path.read_text(encoding="utf-8"))
        except ValueError as exc:  # UnicodeDecodeError included
            raise EngineMismatchError(f"{path} is not valid JSON ({exc})") from None
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise EngineMismatchError(f"{path} is not a virnucpro-trt engine manifest")
        if type(data.get("schema_version")) is not int or data["schema_version"] != SCHEMA_VERSION:  # not 2.0
            raise EngineMismatchError(
                f"{path} has manifest schema {show_value(data.get('schema_version'))}, this version reads "
                f"{SCHEMA_VERSION}: rebuild the engines (`virnucpro-trt build`, or `--rebuild`)"
            )
        for key, types in (("backend", str), ("precision", str), ("device", dict), ("libraries", dict)):
            if not isinstance(data.get(key), types):
                raise EngineMismatchError(f"{path}: '{key}' is missing or has the wrong type")
        models = data.get("models")
        if not isinstance(models, dict) or sorted(models) != sorted(MODEL_NAMES):
            raise EngineMismatchError(f"{path}: 'models' must hold exactly {', '.join(MODEL_NAMES)}")
        try:
            device = EngineDevice.from_json(data["device"])
            build = BuildFacts.from_json(data.get("build", {}))
        except FieldError as exc:
            raise EngineMismatchError(f"{path}: {exc}") from None
        return cls(
            backend=data["backend"],
            precision=data["precision"],
            device=device,
            libraries={str(k): str(v) for k, v in data["libraries"].items()},
            models={kind: _entry_from_json(kind, models[kind], path) for kind in MODEL_NAMES},
            build=build,
            schema=data["schema"],
            schema_version=data["schema_version"],
            virnucpro_trt=str(data.get("virnucpro_trt", "?")),
            sealed=build.manifest_sha256 == manifest_seal(data),
        )


def manifest_seal(data: dict[str, Any]) -> str:
    """SHA-256 of a manifest's JSON (sorted keys, compact) without its own ``build.manifest_sha256``.

    A rerun of ``build`` keeps a folder's set only while its manifest is the one a build wrote: an edited
    manifest (a dimension, a budget, a tokenizer dropped) may be one ``predict`` refuses, and "rebuild
    the engines" must then build, not find the set up to date. Not a signature: an engine folder is
    trusted like a binary (README, "Security model"); this catches edits, not forgery.
    """
    build = data.get("build")
    unsealed = {k: v for k, v in build.items() if k != SEAL_KEY} if isinstance(build, dict) else build
    text = json.dumps({**data, "build": unsealed}, sort_keys=True, separators=(",", ":"))
    return sha256_bytes(text.encode())


def own_file_names(folder: Path) -> set[str]:
    """The names ``folder/manifest.json`` records as files a virnucpro-trt build made there (empty set:
    no manifest, or not one of ours). Read leniently — any schema version, unknown fields ignored —
    because it only decides which files a rebuild may replace, never what is loaded; a symbolic link or
    anything but a plain name counts as nothing.
    """
    data = _lenient_manifest(folder)
    if data is None:
        return set()
    names: list[Any] = [MANIFEST_NAME]
    models = data.get("models")
    for entry in models.values() if isinstance(models, dict) else ():
        if isinstance(entry, dict):
            names += [entry.get("artifact"), entry.get("tokenizer")]
            names += _listed(entry.get("files")) + _listed(entry.get("file_sha256"))
    build = data.get("build")
    names += _listed(build.get(OWN_FILES_KEY)) if isinstance(build, dict) else []
    return {name for name in names if _plain_name(name)}


def recorded_digests(folder: Path) -> dict[str, tuple[Any, Any]]:
    """``{name: (sha256, stamp)}`` of each file whose SHA-256 ``folder/manifest.json`` records (read as
    leniently as :func:`own_file_names`): a rebuild takes such a file for its own only while it is still
    the file the build recorded, not one edited or replaced since (``files/stamps.digest_holds``)."""
    data = _lenient_manifest(folder)
    models = data.get("models") if data is not None else None
    digests: dict[str, tuple[Any, Any]] = {}
    for entry in models.values() if isinstance(models, dict) else ():
        hashes = entry.get("file_sha256") if isinstance(entry, dict) else None
        stamps = entry.get("file_stamps") if isinstance(entry, dict) else None
        for name, sha256 in hashes.items() if isinstance(hashes, dict) else ():
            stamp = stamps.get(name) if isinstance(stamps, dict) else None
            valid_stamp = isinstance(stamp, list) and all(type(v) is int for v in stamp)
            if _plain_name(name):
                digests[name] = (sha256, stamp if valid_stamp else None)
    return digests


def recorded_stale(folder: Path) -> dict[str, str]:
    """``{name: SHA-256}`` of the earlier build's files that ``folder/manifest.json`` (read leniently)
    records as stale (:data:`STALE_FILES_KEY`): removed right after that manifest was written, unless
    the build was killed in between. A file at such a name is the tool's only while it has that
    SHA-256 (``build.check_engine_folder``); once removed, the name is nobody's."""
    data = _lenient_manifest(folder)
    build = data.get("build") if data is not None else None
    recorded = build.get(STALE_FILES_KEY) if isinstance(build, dict) else None
    if not isinstance(recorded, dict):
        return {}
    return {
        name: sha256
        for name, sha256 in recorded.items()
        if _plain_name(name) and isinstance(sha256, str) and SHA256.fullmatch(sha256)
    }


def _lenient_manifest(folder: Path) -> dict[str, Any] | None:
    """``folder/manifest.json`` as a JSON object of this tool's schema, or None (missing, a link, not a
    regular file, too large, not JSON, another schema)."""
    path = folder / MANIFEST_NAME
    if path.is_symlink() or not path.is_file():
        return None
    try:
        data = parse_json(read_bounded(path, MAX_MANIFEST_BYTES))
    except (OSError, ValueError):  # FileTooLarge is a ValueError
        return None
    return data if isinstance(data, dict) and data.get("schema") == SCHEMA else None


def _listed(value: Any) -> list[Any]:
    """The items of a JSON list, or the keys of a JSON object; nothing otherwise."""
    return list(value) if isinstance(value, list | dict) else []


def _plain_name(name: Any) -> bool:
    try:
        check_member_name(name, "")
    except UnsafeMemberName:
        return False
    return True


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Present:
    """The facts of the machine and the run an engine directory is checked against."""

    device: EngineDevice
    libraries: dict[str, str]  # the backend's bound libraries, current versions
    weights: dict[str, str]  # kind -> sha256 of the checkpoint the user named (absent: not named)
    native_cpu_code: bool = False  # the backend's CPU artifacts hold machine code for the build's CPU


def manifest_mismatches(manifest: EngineManifest, present: Present) -> list[str]:
    """Every reason the engines must not be used here (empty list: compatible)."""
    problems: list[str] = []
    want, have = manifest.device, present.device
    if want.type != have.type:
        problems.append(f"built for {want.type}, running on {have.type}")
    elif want.type == "cuda" and want.arch != have.arch and not manifest.build.hardware_compatible:
        problems.append(f"built for {want.name} ({want.arch}), running on {have.name} ({have.arch})")
    elif want.type == "cpu" and present.native_cpu_code:
        lacking = sorted(set(want.instruction_sets or ()) - set(have.instruction_sets or ()))
        if lacking:  # the engine may use them: run here, it would die of SIGILL
            problems.append(
                f"built on a CPU with instructions this one lacks ({', '.join(map(str, lacking[:6]))}"
                f"{' ...' if len(lacking) > 6 else ''})"
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
            problems.append(
                f"{kind} weights differ from the ones the engine was built from ({entry.source}; compared "
                "by the checkpoint file's SHA-256, so the same weights in another file count as other)"
            )
    return problems


def check_manifest(manifest: EngineManifest, present: Present, folder: Path) -> None:
    """Raise :class:`EngineMismatchError` with every mismatch and the way out."""
    problems = manifest_mismatches(manifest, present)
    if problems:
        raise EngineMismatchError(
            f"engines in {folder} cannot be used here: {'; '.join(problems)}. Rebuild them with "
            f"`virnucpro-trt build ... -o {folder}` or add --rebuild"
        )


VerifiedFiles = dict[str, Stamp]  # resolved path -> stamp of a file whose SHA-256 was checked


def verify_files(
    manifest: EngineManifest, folder: Path, verified: Mapping[str, Stamp] | None = None
) -> VerifiedFiles:
    """Check every file the manifest names: inside ``folder``, present, and with its recorded SHA-256.

    A file is re-hashed unless it still carries the stamp recorded at build time, or the stamp of an
    earlier check in this run (``verified``: the coordinator checks once, its workers pass the result
    down). Returns the stamps of the files checked, for the next check.
    """
    checked: VerifiedFiles = {}
    for kind, entry in manifest.models.items():
        for name in entry.file_names():
            try:
                path = member_path(folder, name, f"engine directory {folder} ({kind})")
            except UnsafeMemberName as exc:
                raise EngineMismatchError(str(exc)) from None
            if not path.is_file():
                raise EngineMismatchError(f"engine directory {folder} lacks {name} ({kind}); rebuild it")
            resolved = str(path.resolve())
            stamp = file_stamp(resolved)
            known = stamp == entry.file_stamps.get(name) or (verified or {}).get(resolved) == stamp
            if not known and sha256_file(resolved) != entry.file_sha256[name]:
                raise EngineMismatchError(
                    f"engine directory {folder}: {name} ({kind}) does not match the SHA-256 its manifest "
                    "records: it was modified or damaged; rebuild the engines"
                )
            checked[resolved] = stamp
    return checked
