"""One frozen dataclass per command's settings: what run.json records and what a resume key hashes."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHUNK_LENGTHS = (300, 500)  # upstream trained one classifier for each
DEFAULT_CHUNK_LENGTH = 500
# The backends a compiled engine can be built with (engines/registry.py says where each lives and what
# it has been verified on, and checks that it describes exactly these).
ENGINE_BACKENDS = ("onnxruntime", "inductor", "tensorrt")
# "torch" runs the native models eagerly; the others are compiled engines (built into ENGINE_DIR or,
# without --engines, into OUTDIR/engines and reused while they match). "auto" picks an engine backend.
BACKENDS = ("torch", "auto", *ENGINE_BACKENDS)
# Encoder precisions: eager PyTorch runs the first three, fp8 only exists as engines on Hopper-class
# GPUs. Each runtime maps these names to its own types (runtime/device.py, engines/*: DTYPES).
PRECISIONS = ("fp32", "fp16", "bf16", "fp8")
DEFAULT_CPU_BATCH_TOKENS = 4096
# Attention kernels a CUDA engine can be built with (runtime/attention_kernel.py says why); here, torch-free,
# so the CLI offers the same names the runtime accepts.
ATTENTION_KERNELS = ("efficient", "cudnn", "auto")
DEFAULT_ATTENTION = "efficient"
DEFAULT_CUDA_BATCH_TOKENS = 32768
# Upper bounds an engine manifest's numbers are held to (read as hostile), and so the options that
# write them: far past any budget or length a device runs in one batch.
MAX_BATCH_TOKENS = 1 << 24
MAX_SHAPE = 1 << 20


_SHARE_CHARACTERS = frozenset("0123456789.eE+-")  # PaddingCap.parse's share: what the C++ host takes
_FLOOR = re.compile(r"-?[0-9]+")
_INT64_MAX = 2**63 - 1


def _parse_share(text: str) -> float:
    if text and set(text) <= _SHARE_CHARACTERS:
        with contextlib.suppress(ValueError):
            return float(text)
    raise ValueError(f"the share {text!r} is not a number")


def _parse_floor(text: str) -> int:
    if not text:
        return 0
    if _FLOOR.fullmatch(text) is None:
        raise ValueError(f"the floor {text!r} is not an integer")
    if abs(int(text)) > _INT64_MAX:
        raise ValueError(f"the floor {text!r} is out of range")
    return int(text)


@dataclass(frozen=True)
class PaddingCap:
    """Close a batch early, before an item that would make padding more than ``max_share`` of the
    batch's computed tokens, once the batch computes more than ``floor_tokens`` (``--max-padding``).

    Why: a group of items of many lengths fills one budget with every length, so much of a batch can be
    padding; cutting where the length falls trades that for more, smaller batches, and the floor keeps
    them large enough for the device. Opt-in, not the default: on an H200 it helped mixed-length reads
    and cost short reads of nearly one length more than it saved, while larger shards helped both
    (``runtime.shards``; measurement log, 2026-12-04, sixteenth session). The rule is runtime/batching.py's.
    """

    max_share: float
    floor_tokens: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.max_share < 1:
            raise ValueError(f"a padding cap's share must be in [0, 1), got {self.max_share}")
        if self.floor_tokens < 0:
            raise ValueError(f"a padding cap's floor must be >= 0 tokens, got {self.floor_tokens}")

    @classmethod
    def parse(cls, text: str) -> PaddingCap:
        """``SHARE:FLOOR`` (e.g. ``0.05:8192``) or ``SHARE``: the share in decimal or exponent notation,
        the floor a decimal integer; nothing else (no spaces, ``inf``, ``nan``, ``_`` or ``+`` on the
        floor), the grammar ``virnucpro-host --max-padding`` reads, so both take the same texts."""
        share, _, floor = text.partition(":")
        try:
            return cls(_parse_share(share), _parse_floor(floor))
        except ValueError as exc:  # the text's, or the rule's range (__post_init__)
            raise ValueError(
                f"padding cap {text!r}: {exc} (expected SHARE[:FLOOR_TOKENS], e.g. 0.05:8192)"
            ) from None


# The batcher's padding cap when the user gives none; None: batches are the token budget's alone.
DEFAULT_PADDING_CAP: PaddingCap | None = None


def parse_padding_cap(text: str) -> PaddingCap | None:
    """``--max-padding``'s value: ``SHARE[:FLOOR]`` or ``none`` (any case); ValueError otherwise."""
    return None if text.lower() == "none" else PaddingCap.parse(text)


def padding_cap_text(cap: PaddingCap | None) -> str:
    """``cap`` as ``--max-padding`` reads it (Python's and ``virnucpro-host``'s): the share's repr, which
    reads back as the same double, so a run passed on cuts where the first one did."""
    return "none" if cap is None else f"{cap.max_share!r}:{cap.floor_tokens}"


@dataclass(frozen=True)
class EncoderSettings:
    """How the encoders run: backend, device, precision, the batch token budget and padding cap.

    ``backend``/``precision`` are None when the user did not choose: eager torch in fp32, or whatever
    an engine directory's manifest says. ``padding_cap`` None: batches are the budget's alone.
    """

    backend: str | None = None
    device: str = "auto"
    precision: str | None = None
    max_batch_tokens: int | None = None
    threads: int | None = None
    padding_cap: PaddingCap | None = DEFAULT_PADDING_CAP

    def batch_tokens_for(self, device_type: str) -> int:
        if self.max_batch_tokens is not None:
            return self.max_batch_tokens
        return DEFAULT_CUDA_BATCH_TOKENS if device_type == "cuda" else DEFAULT_CPU_BATCH_TOKENS


# predict --stall-timeout: a worker holding shards that says nothing this long is stopped and respawned
# (runtime/stall_watch.py); longer than one ESM-2 3B batch on a few CPU threads.
DEFAULT_STALL_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class RunControl:
    """How a ``predict`` run is carried out, as opposed to what it computes.

    None of this changes a result byte (shard size does, so it lives in :class:`PredictSettings`), which
    is why it is left out of the fingerprint: a run interrupted on 4 GPUs may be resumed on 2.
    """

    gpus: tuple[int, ...] | None = None  # None: every visible CUDA device
    workers: int | None = None  # CPU worker count; None: 1
    keep_work: bool = False  # keep OUTDIR/.work after success
    force: bool = False  # discard unfinished work of another input or other settings
    workers_per_gpu: int = 1  # CUDA worker processes per GPU (each loads its own engines)
    stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S  # a worker silent this long is stopped; 0: never


def expand_layout(layout: Iterable[tuple[int, int]]) -> list[int]:
    """``[(256, 2), (100, 1)]`` -> ``[256, 256, 100]``: a run-length shard layout as records per shard."""
    return [records for records, shards in layout for _ in range(shards)]


@dataclass(frozen=True)
class SplitPart:
    """Which part of which split a ``predict`` input is, and the shard layout it must be run with.

    ``virnucpro-trt split`` cuts the input on the shard boundaries one ``predict`` of the whole input
    would use and lists each part in ``split.json`` (pipeline/split_manifest.py); ``predict`` finds its
    input there by SHA-256 and runs it with exactly those shards, which is what makes the merged parts
    the same bytes as one run. ``layout`` is records per shard, run-length encoded as ``(records,
    shards)`` pairs (nearly every shard of a split has the same size, so it stays a few pairs long).
    """

    split_id: str  # SHA-256 identifying the split (split.json's content)
    index: int  # 1-based
    parts: int
    sha256: str  # this part file's
    first_record: int  # 0-based index of its first record in the whole input
    records: int
    layout: tuple[tuple[int, int], ...]
    shard_records: int | None  # what ``split --shard-records`` was given (None: the default rule)
    records_per_shard: int  # the whole input's records per shard (that rule's value)
    input: str  # the whole input, as split named it
    input_sha256: str
    input_size_bytes: int

    def shard_sizes(self) -> list[int]:
        """Records of each shard, in order (the layout expanded)."""
        return expand_layout(self.layout)

    @classmethod
    def from_json(cls, data: Any) -> SplitPart:
        """Strictly typed, or ValueError naming the field (run.json of a part is read by ``merge``)."""
        if not isinstance(data, dict) or set(data) != set(cls.__dataclass_fields__):
            raise ValueError("part: not the expected fields")
        for name in ("split_id", "sha256", "input_sha256"):
            if not _is_sha256(data[name]):
                raise ValueError(f"part.{name}: not a SHA-256")
        for name in ("index", "parts", "first_record", "records", "records_per_shard", "input_size_bytes"):
            if not _is_count(data[name]):
                raise ValueError(f"part.{name}: not a non-negative integer")
        if data["shard_records"] is not None and not _is_count(data["shard_records"], 1):
            raise ValueError("part.shard_records: not a positive integer")
        if not isinstance(data["input"], str):
            raise ValueError("part.input: not a string")
        if not 1 <= data["index"] <= data["parts"]:
            raise ValueError("part.index: outside 1..parts")
        layout = data["layout"]
        pairs_ok = isinstance(layout, list | tuple) and all(
            isinstance(pair, list | tuple) and len(pair) == 2 and all(_is_count(n, 1) for n in pair)
            for pair in layout
        )
        if not pairs_ok:
            raise ValueError("part.layout: not a list of [records, shards] pairs")
        if sum(records * shards for records, shards in layout) != data["records"]:
            raise ValueError("part.layout: does not add up to the part's records")
        return cls(**{**data, "layout": tuple((int(r), int(n)) for r, n in layout)})


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _is_count(value: Any, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


@dataclass(frozen=True)
class PredictSettings:
    """Everything that decides what ``predict`` writes (plus, in ``run``, how the run is carried out)."""

    input: str
    outdir: Path
    dnabert: str | None  # None: taken from --engines
    esm: str | None
    classifier: str | None
    chunk_length: int = DEFAULT_CHUNK_LENGTH
    encoders: EncoderSettings = dataclasses.field(default_factory=EncoderSettings)
    save_embeddings: bool = False
    engines: Path | None = None
    rebuild: bool = False
    # Records per shard (None: the input-size rule in runtime/shards.py). Shards are batched on their
    # own, so this changes fp32 sums in the last bits: it is part of the fingerprint.
    shard_records: int | None = None
    run: RunControl = dataclasses.field(default_factory=RunControl)
    # Set when the input is a part of a split (pipeline/split_manifest.py): its shards are the split's.
    part: SplitPart | None = None
    # Reads shorter than this are not chunked or scored (status too_short); 0 scores every read, as
    # upstream does.
    min_length: int = 0

    def to_json(self, device_type: str | None = None) -> dict[str, Any]:
        """The settings as JSON; with ``device_type`` (``cpu`` or ``cuda``: where the run computes), the
        encoder choices as they act (:func:`_encoders_as_run`), as run.json and ``.work`` record them."""
        data = dataclasses.asdict(self)
        data["outdir"] = str(self.outdir)
        data["engines"] = str(self.engines) if self.engines else None
        gpus = self.run.gpus
        data["run"]["gpus"] = list(gpus) if gpus is not None else None
        if device_type is not None:
            data["encoders"] = _encoders_as_run(data["encoders"], device_type, self.engines is not None)
        return data

    def fingerprint(self, device_type: str | None = None) -> str:
        """Hash of the settings that change results (not where they are written, nor by how many workers).

        It is the resume key of ``OUTDIR/.work`` together with the input's SHA-256 and the model identity.
        Model and engine paths stay out: the identity (content hashes) stands for them, so a moved
        checkpoint folder still resumes while a file replaced at the same path does not. ``device_type``:
        as in :meth:`to_json` (a run always gives it).
        """
        return settings_fingerprint(self.to_json(device_type))


def _encoders_as_run(encoders: dict[str, Any], device_type: str, engine_set: bool) -> dict[str, Any]:
    """``EncoderSettings`` JSON with each choice as it acts, so that naming a default is the same run as
    leaving it out (``--precision fp32``, ``--backend torch``, in an eager run the device's default
    ``--max-batch-tokens``, ``--device cpu`` where ``auto`` is the CPU): a rerun resumes and ``merge``
    takes the parts, as their result bytes are the same. A default stays spelled as None (the
    fingerprint runs had without the option); the device is its type, as ``cuda:0`` and ``cuda:1`` of
    one machine compute alike. With an engine set named (``--engines``) its identity stands for backend
    and precision, which must match it.
    """
    data = dict(encoders, device=device_type)
    if data.get("backend") == "torch" or engine_set:
        data["backend"] = None
    if data.get("precision") == "fp32" or engine_set:  # eager and engine builds both default to fp32
        data["precision"] = None
    # Eager only: with engines (named, or built into OUTDIR/engines) an unset budget is the one the set
    # was built for, whatever the device's default is.
    eager = not engine_set and data.get("backend") is None
    if eager and data.get("max_batch_tokens") == EncoderSettings().batch_tokens_for(device_type):
        data["max_batch_tokens"] = None
    return data


# Settings that never change a result byte: where results go, rebuilding engines, how the run is carried
# out, the torch thread count (see RunControl), and where the input and the models are read from — their
# content stands in the resume key instead (the input's SHA-256, the model identity).
_NOT_RESULTS = ("outdir", "rebuild", "run", "input", "dnabert", "esm", "classifier", "engines")
# What may differ between the parts of one split: the part itself (its file and shard layout) and
# whether embeddings were saved (merge writes embeddings.h5 only when every part has them).
_PER_PART = ("input", "part", "save_embeddings")


def settings_fingerprint(settings: dict[str, Any], across_parts: bool = False) -> str:
    """SHA-256 of the settings that change results, from :meth:`PredictSettings.to_json` (or run.json).

    ``across_parts`` leaves out what the parts of one split may differ in, so ``merge`` can require the
    rest to be the same for every part.
    """
    data = json.loads(json.dumps(settings))  # a deep copy, as JSON
    for key in _NOT_RESULTS + (_PER_PART if across_parts else ()):
        data.pop(key, None)
    if data.get("part", 0) is None:  # not a part: the fingerprint a run had before splits existed
        data.pop("part")
    if data.get("min_length", 1) == 0:  # upstream's behaviour: the fingerprint before --min-length existed
        data.pop("min_length")
    if isinstance(data.get("encoders"), dict):
        data["encoders"].pop("threads", None)
        if data["encoders"].get("padding_cap", 0) is None:  # the fingerprint before --max-padding existed
            data["encoders"].pop("padding_cap")
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def settings_difference(a: dict[str, Any], b: dict[str, Any], across_parts: bool = False) -> str:
    """The first setting that changes results and differs between two recorded settings (run.json), as
    ``name: x vs y``, for a refusal; the keys :func:`settings_fingerprint` leaves out are passed over."""
    skipped = _NOT_RESULTS + (_PER_PART if across_parts else ())
    return _first_difference(a, b, "", skipped) or "fingerprints differ"


def _first_difference(
    a: dict[str, Any], b: dict[str, Any], prefix: str, skipped: tuple[str, ...]
) -> str | None:
    for key in sorted(set(a) | set(b)):
        if not prefix and key in skipped:
            continue
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            inner = _first_difference(va, vb, f"{prefix}{key}.", skipped)
            if inner:
                return inner
        elif va != vb and not (prefix == "encoders." and key == "threads"):
            return f"{prefix}{key}: {va} vs {vb}"
    return None


@dataclass(frozen=True)
class EmbedSettings:
    """Everything that decides what ``embed`` writes."""

    input: str
    output: Path
    model: str
    weights: str | None
    encoders: EncoderSettings = dataclasses.field(default_factory=EncoderSettings)
    engines: Path | None = None
    rebuild: bool = False
    # esm2: embed records made only of nucleotide letters as protein instead of refusing the input
    allow_nucleotide_letters: bool = False
    # replace a file at the output path that virnucpro-trt did not write (files/ownership.py)
    force: bool = False

    def to_json(self, device_type: str) -> dict[str, Any]:
        """The settings as JSON, the encoder choices as they act on ``device_type`` (as predict's)."""
        data = dataclasses.asdict(self)
        data["output"] = str(self.output)
        data["engines"] = str(self.engines) if self.engines else None
        data["encoders"] = _encoders_as_run(data["encoders"], device_type, self.engines is not None)
        return data

    def fingerprint(self, device_type: str) -> str:
        """Hash of the settings that change the embeddings, by :func:`settings_fingerprint`'s rule: not
        where they are written, nor the checkpoint's or engines' paths (their content identity stands for
        them), nor ``--force``."""
        data = self.to_json(device_type)
        for key in ("output", "weights", "force"):
            data.pop(key)
        return settings_fingerprint(data)


@dataclass(frozen=True)
class SplitSettings:
    """``split``: the input, where the parts go, how many, and the shard rule they are cut on."""

    input: str
    outdir: Path
    parts: int | None = None  # exactly this many parts (some empty when the input has fewer shards)
    records_per_part: int | None = None  # or parts of about this many records
    chunk_length: int = DEFAULT_CHUNK_LENGTH  # only for the kept-frame counts split.json reports per part
    shard_records: int | None = None  # as predict's --shard-records (None: its default rule)
    gzip: bool = False


@dataclass(frozen=True)
class MergeSettings:
    """``merge``: the output folders of every part's ``predict``, and where the merged results go."""

    parts: tuple[Path, ...]
    outdir: Path
    force: bool = False  # replace what OUTDIR holds at merge's result names
