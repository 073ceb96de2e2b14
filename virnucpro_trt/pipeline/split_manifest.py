"""``split.json``: what ``split`` made, and how ``predict`` recognises one of its parts.

``PARTS_DIR/split.json`` names the whole input (path, SHA-256, size, records), the shard rule it was cut
with, and per part its file, SHA-256, record range and shard layout (records per shard, run-length
encoded). ``split_id`` is the SHA-256 of everything else in the file, so two splits never share it and a
changed file no longer matches its own id.

``predict PART`` looks for ``split.json`` beside its input and, if it lists a part with the input's
SHA-256, runs that part with its layout (:func:`settings_for_input`). The file is read as hostile: at
most :data:`MAX_SPLIT_JSON_BYTES`, every field type- and range-checked, the record ranges contiguous
and the layouts adding up; anything else refuses the run (exit 2) rather than predicting the part with
shards of its own, which ``merge`` would only refuse hours later. A part's records (and so its shards,
each of at least one record) are bounded by what its bytes can hold (:func:`max_records`), checked
against the part file itself before the layout is expanded: a few bytes of JSON must not make
``predict`` allocate one entry per claimed shard.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from virnucpro_trt.errors import UserError
from virnucpro_trt.files.atomic import write_text_atomic
from virnucpro_trt.files.bounded_read import FileTooLarge, read_bounded
from virnucpro_trt.files.json_fields import parse_json
from virnucpro_trt.settings import PredictSettings, SplitPart

log = logging.getLogger(__name__)

SPLIT_JSON = "split.json"
SPLIT_SCHEMA = 1
MAX_SPLIT_JSON_BYTES = 64 << 20
# Parts one split may cut: ~100x the 150-190 parts README's sizing gives 10^9 reads. Each part is a file
# (an empty one past the input's shards), and --parts 10^9 wrote parts until the machine ran out of memory.
MAX_PARTS = 10_000
PART_FILE = re.compile(r"part-(\d{4,9})\.fa(\.gz)?")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# The smallest FASTA record is 2 bytes (">" and a line end), and deflate expands at most 1032-fold, so
# a part file of N bytes holds at most N/2 records plain and 516*N gzip-compressed (split writes no other).
_MIN_RECORD_BYTES = 2
_GZIP_MAX_RATIO = 1032
_GZIP_MAGIC = b"\x1f\x8b"
_OTHER_COMPRESSION = (b"BZh", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd")


class SplitFileError(UserError):
    """``split.json`` is unreadable or inconsistent."""


def max_records(size_bytes: int, gzip: bool) -> int:
    """The most records a part file of ``size_bytes`` can hold (plain, or gzip-compressed).

    Why: ``split.json`` is hostile input and predict expands a part's layout to one entry per shard, so a
    claimed record count is only believed up to what the bytes it describes could ever contain.
    """
    decompressed = size_bytes * _GZIP_MAX_RATIO if gzip else size_bytes
    return (decompressed + 1) // _MIN_RECORD_BYTES


def part_label(index: int, parts: int) -> str:
    """``0001``: a part's number, zero-padded to at least 4 digits (the workflow names files by it)."""
    return f"{index:0{max(4, len(str(parts)))}d}"


def part_file_name(index: int, parts: int, gzip: bool = False) -> str:
    """``part-0001.fa`` (``.fa.gz`` with ``gzip``): part files are 2-line FASTA."""
    return f"part-{part_label(index, parts)}.fa" + (".gz" if gzip else "")


def run_length(sizes: list[int]) -> list[tuple[int, int]]:
    """``[256, 256, 100]`` -> ``[(256, 2), (100, 1)]``."""
    pairs: list[tuple[int, int]] = []
    for size in sizes:
        if pairs and pairs[-1][0] == size:
            pairs[-1] = (size, pairs[-1][1] + 1)
        else:
            pairs.append((size, 1))
    return pairs


@dataclass(frozen=True)
class PartEntry:
    """One part in ``split.json``."""

    index: int  # 1-based
    file: str  # name inside PARTS_DIR
    sha256: str
    size_bytes: int
    first_record: int  # 0-based, in the whole input
    records: int
    bases: int
    frames: int  # kept frames at the split's chunk length (what a GPU spends its time on)
    layout: tuple[tuple[int, int], ...]  # records per shard, run-length encoded

    @property
    def shards(self) -> int:
        return sum(count for _, count in self.layout)


@dataclass(frozen=True)
class SplitManifest:
    """The whole ``split.json``."""

    input: str  # as the user named it
    input_sha256: str
    input_size_bytes: int
    records: int
    bases: int
    frames: int
    chunk_length: int
    shard_records: int | None  # split --shard-records (None: the default rule)
    records_per_shard: int  # the rule's value for the whole input
    parts: tuple[PartEntry, ...]
    version: str

    def body(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["parts"] = [
            {**dataclasses.asdict(p), "layout": [list(pair) for pair in p.layout]} for p in self.parts
        ]
        return data

    @property
    def split_id(self) -> str:
        return hashlib.sha256(json.dumps(self.body(), sort_keys=True).encode()).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {"schema": SPLIT_SCHEMA, "tool": "virnucpro-trt", "split_id": self.split_id, **self.body()}

    def split_part(self, entry: PartEntry) -> SplitPart:
        """What ``predict`` of this part records in its settings."""
        return SplitPart(
            split_id=self.split_id,
            index=entry.index,
            parts=len(self.parts),
            sha256=entry.sha256,
            first_record=entry.first_record,
            records=entry.records,
            layout=entry.layout,
            shard_records=self.shard_records,
            records_per_shard=self.records_per_shard,
            input=self.input,
            input_sha256=self.input_sha256,
            input_size_bytes=self.input_size_bytes,
        )


def write_split_manifest(
    folder: Path, manifest: SplitManifest, on_create: Callable[[Path], None] | None = None
) -> Path:
    """``folder/split.json``, written whole; ``on_create`` is told its temporary file (a lock notes it)."""
    path = folder / SPLIT_JSON
    write_text_atomic(path, json.dumps(manifest.to_json(), indent=1) + "\n", on_create)
    return path


def read_split_manifest(path: Path) -> SplitManifest:
    """The manifest at ``path``, checked; raises :class:`SplitFileError` naming the first problem."""
    try:
        raw = read_bounded(path, MAX_SPLIT_JSON_BYTES)
    except FileTooLarge:
        limit = MAX_SPLIT_JSON_BYTES >> 20
        raise SplitFileError(f"{path}: larger than {limit} MiB: not a split file") from None
    except OSError as exc:
        raise SplitFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = parse_json(raw.decode("utf-8"))
        manifest = _parse(data)
    except ValueError as exc:  # UnicodeDecodeError included
        raise SplitFileError(f"{path}: not a valid split file: {exc}") from None
    return manifest


def _count(data: dict[str, Any], key: str, minimum: int = 0) -> int:
    value = data.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{key}: expected an integer >= {minimum}")
    return value


# What a patterned field must hold, for the refusal (a part's file name: no folder, no "..").
_EXPECTED = {PART_FILE: "a part's file name (part-NNNN.fa or part-NNNN.fa.gz)", _SHA256: "a SHA-256"}


def _text(data: dict[str, Any], key: str, pattern: re.Pattern[str] | None = None) -> str:
    value = data.get(key)
    if not isinstance(value, str) or (pattern is not None and not pattern.fullmatch(value)):
        raise ValueError(f"{key}: expected {_EXPECTED[pattern] if pattern is not None else 'a string'}")
    return value


def _layout(value: Any, records: int) -> tuple[tuple[int, int], ...]:
    if not isinstance(value, list):
        raise ValueError("layout: expected a list")
    pairs = []
    for pair in value:
        if not (isinstance(pair, list) and len(pair) == 2):
            raise ValueError("layout: expected [records, shards] pairs")
        pairs.append((_count({"n": pair[0]}, "n", 1), _count({"n": pair[1]}, "n", 1)))
    if sum(r * n for r, n in pairs) != records:
        raise ValueError("layout: does not add up to the part's records")
    return tuple(pairs)


def _parse(data: Any) -> SplitManifest:
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    if data.get("schema") != SPLIT_SCHEMA or data.get("tool") != "virnucpro-trt":
        raise ValueError(f"not a virnucpro-trt split file of schema {SPLIT_SCHEMA}")
    raw_parts = data.get("parts")
    if not isinstance(raw_parts, list) or not raw_parts:
        raise ValueError("parts: expected a non-empty list")
    parts = []
    next_record = 0
    for number, item in enumerate(raw_parts, start=1):
        if not isinstance(item, dict):
            raise ValueError(f"part {number}: expected an object")
        records = _count(item, "records")
        entry = PartEntry(
            index=_count(item, "index", 1),
            file=_text(item, "file", PART_FILE),
            sha256=_text(item, "sha256", _SHA256),
            size_bytes=_count(item, "size_bytes"),
            first_record=_count(item, "first_record"),
            records=records,
            bases=_count(item, "bases"),
            frames=_count(item, "frames"),
            layout=_layout(item.get("layout"), records),
        )
        if records > max_records(entry.size_bytes, gzip=True):
            raise ValueError(
                f"part {number}: {records} records cannot fit in its {entry.size_bytes}-byte file"
            )
        if entry.index != number or entry.first_record != next_record:
            raise ValueError(
                f"part {number}: out of order (index {entry.index}, first record {entry.first_record})"
            )
        next_record += records
        parts.append(entry)
    shard_records = data.get("shard_records")
    manifest = SplitManifest(
        input=_text(data, "input"),
        input_sha256=_text(data, "input_sha256", _SHA256),
        input_size_bytes=_count(data, "input_size_bytes"),
        records=_count(data, "records"),
        bases=_count(data, "bases"),
        frames=_count(data, "frames"),
        chunk_length=_count(data, "chunk_length", 1),
        shard_records=None if shard_records is None else _count(data, "shard_records", 1),
        records_per_shard=_count(data, "records_per_shard", 1),
        parts=tuple(parts),
        version=_text(data, "version"),
    )
    if next_record != manifest.records:
        raise ValueError(f"the parts hold {next_record} records, the input {manifest.records}")
    if len({p.file for p in parts}) != len(parts):
        raise ValueError("two parts have the same file name")
    if data.get("split_id") != manifest.split_id:
        raise ValueError("split_id does not match the file's content (the file was changed)")
    return manifest


def find_part(path: Path, sha256: str) -> SplitPart | None:
    """The part ``path`` is, if a ``split.json`` beside it lists a part with this SHA-256.

    Identical bytes can only be two empty parts; the file name then says which one it is. A file under a
    listed part's name but with other bytes is refused: run as an ordinary input, a truncated copy of a
    part gave complete-looking results that only ``merge`` refused, as "not a part of a split".
    """
    manifest_path = path.parent / SPLIT_JSON
    if not manifest_path.is_file():
        return None
    manifest = read_split_manifest(manifest_path)
    matches = [p for p in manifest.parts if p.sha256 == sha256]
    named = [p for p in matches if p.file == path.name]
    chosen = named or matches
    if not chosen:
        listed = next((p for p in manifest.parts if p.file == path.name), None)
        if listed is not None:  # its name is a part's, its bytes are not: a damaged or replaced part file
            raise SplitFileError(
                f"{path}: {manifest_path} lists part {listed.index} under this name with other content "
                f"({listed.size_bytes} bytes, SHA-256 {listed.sha256[:12]}...): the part file was damaged or "
                "replaced; copy it again from the split's folder (or split again)"
            )
        log.debug("%s is not one of the parts listed in %s", path, manifest_path)
        return None
    if len(chosen) > 1:
        raise SplitFileError(
            f"{path}: parts {', '.join(str(p.index) for p in chosen)} of {manifest_path} have its content; "
            "keep the part files under their own names"
        )
    check_part_holds(path, chosen[0], manifest_path)
    return manifest.split_part(chosen[0])


def check_part_holds(path: Path, entry: PartEntry, manifest_path: Path) -> None:
    """Refuse a part whose listed size or record count its file cannot have (before any layout is used).

    The SHA-256 already matched, so a size that differs, a compression split never writes (gzip
    content exactly when the listed name ends in ``.gz``), or more records than the bytes can hold means
    the entry was forged: one line, exit 2, nothing allocated.
    """
    where = f"{manifest_path}: part {entry.index}"
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError as exc:
        raise SplitFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if size != entry.size_bytes:
        raise SplitFileError(f"{where} lists {entry.size_bytes} bytes, its file {path} has {size}")
    gzip = head.startswith(_GZIP_MAGIC)
    if head.startswith(_OTHER_COMPRESSION) or gzip != entry.file.endswith(".gz"):
        raise SplitFileError(f"{where}: {path} is compressed in a way split never writes (refused)")
    limit = max_records(size, gzip=gzip)
    if entry.records > limit:
        raise SplitFileError(
            f"{where} lists {entry.records} records, more than its {size}-byte file can hold ({limit}): "
            "split.json was forged or damaged (refused)"
        )


def settings_for_input(settings: PredictSettings, path: Path, sha256: str) -> PredictSettings:
    """``settings`` for this input: a part of a split runs with the split's shard layout.

    An explicit ``--shard-records`` other than the one the split was made with is refused: the part's
    shards must be the whole input's, or the merged result would not be the same bytes.
    """
    if settings.input == "-" or settings.part is not None:
        return settings
    part = find_part(path, sha256)
    if part is None:
        return settings
    if settings.shard_records is not None and settings.shard_records != part.shard_records:
        made = f"--shard-records {part.shard_records}" if part.shard_records else "the default shard size"
        raise UserError(
            f"{settings.input} is part {part.index} of {part.parts} of a split made with {made}; "
            f"--shard-records {settings.shard_records} conflicts with it (leave --shard-records out)"
        )
    log.info(
        "%s is part %d of %d of a split of %s: records %d-%d in the split's %d shard(s)",
        settings.input, part.index, part.parts, part.input, part.first_record + 1,
        part.first_record + part.records, sum(n for _, n in part.layout),
    )  # fmt: skip
    # The part runs with the whole input's records per shard (its layout holds the exact boundaries).
    return dataclasses.replace(settings, shard_records=part.records_per_shard, part=part)
