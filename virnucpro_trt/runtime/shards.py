"""Shards: the input cut into files of consecutive records, the unit of work, retry and resume.

A shard is processed on its own (its frames are length-sorted and batched by the token budget inside
it), so its results depend only on its records and the settings — never on which worker ran it or how
many workers there were. That is what makes a 1-GPU and an 8-GPU run byte-identical, and why the shard
size must come from the input alone:

* ``--shard-records N``: every shard holds N records;
* default: ``clamp(records / 64, 4096, 16384)`` rounded to a multiple of 256 — about 64 shards on large
  inputs, so 8 GPUs get ~8 each and a lost shard costs little; but never under 4,096 records, because a
  shard is batched on its own: a few hundred reads of mixed lengths fill about one token budget with every
  length, so much of ESM-2's computed work is padding, and such small shards ran mixed-length reads
  markedly slower than 4,096-record ones on an H200 (measurement log, 2026-12-04, sixteenth session). The
  cost is balance on many GPUs for inputs under ~260,000 records, at most one shard's time (a few seconds);
* either way a shard also closes once it holds :data:`MAX_SHARD_BASES` bases, so inputs of long
  records (contigs, genomes) keep a shard's frames comfortably in memory.

The record count is only known once the whole input has been read, but the shards are written during
that same (validation) pass: records go into *pieces* of 256 records as they stream past, and at the end
consecutive pieces are joined into shards. Shard files are 2-line FASTA (``>id`` / sequence as read), so
a worker re-reads exactly the records the user gave, already validated.

A part of a split (pipeline/split.py) comes with a *layout* instead: the records of each shard, as the
rule above cut the whole input. Then every piece is one shard of exactly that many records, so the part
is run with the shard boundaries of one run of the whole input (bases-based closes included).
``split`` itself plans the whole input with this same class (:meth:`ShardSplitter.plan`).

Each shard file is hashed once when it is written, and its SHA-256 kept in ``index.json`` with the
file's stamp (``files/stamps.py``); a resume trusts a shard that still carries its stamp without reading
it again, and hashes any other (:func:`read_shard_index`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from virnucpro_trt.errors import InputFormatError
from virnucpro_trt.files.atomic import write_text_atomic
from virnucpro_trt.files.bounded_read import read_bounded
from virnucpro_trt.files.digests import sha256_file
from virnucpro_trt.files.json_fields import SHA256, FieldError, count, obj, parse_json, text
from virnucpro_trt.files.stamps import digest_holds, file_stamp
from virnucpro_trt.sequences.prepare import PreparedBlock
from virnucpro_trt.sequences.reader import SeqRecord

PIECE_RECORDS = 256
TARGET_SHARDS = 64
MIN_SHARD_RECORDS = 4096
MAX_SHARD_RECORDS = 16384
MAX_SHARD_BASES = 32_000_000
_WRITE_BUFFER = 1 << 20
SHARD_FILE = re.compile(r"shard-\d{6}\.fa")
MAX_INDEX_BYTES = 256 << 20  # ~1 million shards' entries: far beyond any input
INDEX_SCHEMA = 3  # 2: each shard's SHA-256; 3: and its stamp (an older index is stale: sharded again)

log = logging.getLogger(__name__)


def default_shard_records(records: int) -> int:
    """``clamp(records / 64, 4096, 16384)`` rounded to a whole number of 256-record pieces."""
    pieces = round(records / TARGET_SHARDS / PIECE_RECORDS)
    fewest = max(1, MIN_SHARD_RECORDS // PIECE_RECORDS)
    return PIECE_RECORDS * max(fewest, min(MAX_SHARD_RECORDS // PIECE_RECORDS, pieces))


PIECE_FILE = re.compile(r"piece-\d{7}\.fa")


def piece_file_name(index: int) -> str:
    """``piece-0000042.fa``: the 42nd run of records written while the input is read (see the class)."""
    return f"piece-{index:07d}.fa"


def shard_stem(shard_id: int) -> str:
    """``shard-000042``: the prefix of every file of shard 42."""
    return f"shard-{shard_id:06d}"


@dataclass(frozen=True)
class ShardSpec:
    """One shard: which records it holds (0-based, end-exclusive), its file and what it will cost."""

    id: int
    first: int
    records: int
    bases: int
    chunks: int
    frames: int
    file: str
    size_bytes: int
    sha256: str  # of the shard file when it was written: a resume trusts the file only while it matches
    stamp: list[int] = field(default_factory=list)  # the file's stamp, taken before hashing (none: hash)

    @property
    def end(self) -> int:
        return self.first + self.records

    @property
    def stem(self) -> str:
        """Prefix of every file that belongs to this shard (its input and its results)."""
        return shard_stem(self.id)

    def describe(self) -> str:
        """How messages name a shard: ``shard 3 (records 769-1024)``, 1-based and inclusive."""
        return f"shard {self.id} (records {self.first + 1}-{self.end})"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> ShardSpec:
        """A shard as the index records it; :class:`FieldError` for anything else (a stale index)."""
        data = obj(data, "shard", cls.__dataclass_fields__)
        stamp = data["stamp"]
        if not isinstance(stamp, list) or not all(type(v) is int for v in stamp):  # bool is not int here
            raise FieldError("stamp: not a list of integers")
        return cls(
            **{key: count(data, key) for key in ("id", "first", "records", "bases", "chunks", "frames")},
            file=text(data, "file", SHARD_FILE),
            size_bytes=count(data, "size_bytes"),
            sha256=text(data, "sha256", SHA256),
            stamp=list(stamp),
        )


@dataclass(frozen=True)
class InputCounts:
    """What the validation pass counted in the whole input. The shard index keeps it, so a resumed run
    takes it from there instead of reading the input again."""

    sha256: str
    size_bytes: int
    records: int
    empty_records: int
    bases: int
    chunks: int
    frames: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> InputCounts:
        data = obj(data, "input", cls.__dataclass_fields__)
        numbers = {key: count(data, key) for key in cls.__dataclass_fields__ if key != "sha256"}
        return cls(sha256=text(data, "sha256", SHA256), **numbers)


@dataclass(frozen=True)
class ShardIndex:
    """``.work/shards/index.json``: the shard files, the input they were cut from and the shard size."""

    shards: list[ShardSpec]
    input: InputCounts
    records_per_shard: int


@dataclass
class _Piece:
    first: int
    path: Path
    records: int = 0
    bases: int = 0
    chunks: int = 0
    frames: int = 0


@dataclass(frozen=True)
class PlannedShard:
    """A shard before its file exists: its records and counts, and the piece files it is made of."""

    first: int
    records: int
    bases: int
    chunks: int
    frames: int
    pieces: tuple[Path, ...]


class ShardSplitter:
    """Writes records into piece files as they stream past, counts chunks/frames per piece, and joins
    pieces into shards at the end (:meth:`finish`).

    Use :meth:`wrap` around the record stream and feed every prepared block to :meth:`count`.
    ``layout`` (records per shard, for a part of a split) replaces the size rule; ``titles`` writes each
    record's whole title line instead of its id (``split``'s part files keep the records as read).
    """

    def __init__(
        self,
        folder: Path,
        shard_records: int | None = None,
        layout: Sequence[int] | None = None,
        titles: bool = False,
    ):
        self.folder = Path(folder)
        self.shard_records = shard_records
        self.layout = list(layout) if layout is not None else None
        self.titles = titles
        self._piece_records = shard_records or PIECE_RECORDS
        self._pieces: list[_Piece] = []
        self._starts: list[int] = []
        self._records = 0

    def _is_full(self, piece: _Piece) -> bool:
        if self.layout is not None:
            return piece.records >= self.layout[len(self._pieces) - 1]
        return piece.records >= self._piece_records or piece.bases >= MAX_SHARD_BASES

    def _check_layout(self, more: bool) -> None:
        """A layout must be filled exactly: ``more`` records arriving after it is full, or too few."""
        if self.layout is None:
            return
        if (
            more
            or len(self._pieces) != len(self.layout)
            or (self._pieces and self._pieces[-1].records != self.layout[-1])
        ):
            raise InputFormatError(
                f"the input holds {'more' if more else 'fewer'} records than the shard layout it must be "
                f"run with ({sum(self.layout)} records in {len(self.layout)} shards)"
            )

    def wrap(self, records: Iterable[SeqRecord]) -> Iterator[SeqRecord]:
        """Yield ``records`` unchanged, writing each one into the current piece first."""
        self.folder.mkdir(parents=True, exist_ok=True)
        lines: list[str] = []
        handle = None
        piece: _Piece | None = None
        try:
            for record in records:
                if piece is None:
                    if self.layout is not None and len(self._pieces) >= len(self.layout):
                        self._check_layout(more=True)
                    piece = _Piece(record.index, self.folder / piece_file_name(len(self._pieces)))
                    self._pieces.append(piece)
                    self._starts.append(record.index)
                    handle = open(piece.path, "w", encoding="utf-8", newline="\n")  # noqa: SIM115
                lines.append(f">{record.description if self.titles else record.id}\n{record.sequence}\n")
                piece.records += 1
                piece.bases += len(record.sequence)
                self._records += 1
                full = self._is_full(piece)
                if full or len(lines) >= 256:
                    assert handle is not None
                    handle.write("".join(lines))
                    lines.clear()
                if full:
                    assert handle is not None
                    handle.close()
                    handle, piece = None, None
                yield record
            if handle is not None:
                handle.write("".join(lines))
        finally:
            if handle is not None:
                handle.close()

    def count(self, block: PreparedBlock) -> None:
        """Add a block's chunks and kept frames to the pieces its records were written to."""
        if not block.n_records:
            return
        piece_of = np.searchsorted(np.asarray(self._starts), block.record_index, side="right") - 1
        chunks = np.diff(block.chunk_offsets)
        frames = np.diff(block.frame_offsets)
        for index in np.unique(piece_of).tolist():
            mask = piece_of == index
            self._pieces[index].chunks += int(chunks[mask].sum())
            self._pieces[index].frames += int(frames[mask].sum())

    def plan(self) -> list[PlannedShard]:
        """Which consecutive pieces form each shard (see the module docstring for the rule)."""
        self._check_layout(more=False)
        per_shard = 1
        if not self.shard_records and self.layout is None:
            per_shard = default_shard_records(self._records) // PIECE_RECORDS
        groups: list[list[_Piece]] = []
        for piece in self._pieces:
            group = groups[-1] if groups else None
            if (
                group is None
                or len(group) >= per_shard
                or sum(p.bases for p in group) + piece.bases > MAX_SHARD_BASES
            ):
                groups.append([piece])
            else:
                group.append(piece)
        return [
            PlannedShard(
                first=group[0].first,
                records=sum(p.records for p in group),
                bases=sum(p.bases for p in group),
                chunks=sum(p.chunks for p in group),
                frames=sum(p.frames for p in group),
                pieces=tuple(p.path for p in group),
            )
            for group in groups
        ]

    def finish(self) -> list[ShardSpec]:
        """Join the pieces of each planned shard into its shard file."""
        shards = []
        for shard_id, planned in enumerate(self.plan()):
            name = f"{shard_stem(shard_id)}.fa"
            target = self.folder / name
            sha256 = None
            if len(planned.pieces) == 1:
                os.replace(planned.pieces[0], target)
            else:
                with open(target, "wb") as out:
                    sha256 = append_files(planned.pieces, out, remove=True)  # hashed as written
            # A moved piece is hashed after this stamp (a change in between will not match it); a joined
            # shard was hashed as written, so only a change in the instant before this stat, in the
            # tool's own work folder, could slip past it (as for the shard result files).
            stamp = file_stamp(target)
            shards.append(
                ShardSpec(
                    id=shard_id,
                    first=planned.first,
                    records=planned.records,
                    bases=planned.bases,
                    chunks=planned.chunks,
                    frames=planned.frames,
                    file=name,
                    size_bytes=stamp[0],
                    sha256=sha256 if sha256 is not None else sha256_file(target),
                    stamp=stamp,
                )
            )
        return shards


def append_files(paths: Iterable[Path], out: Any, remove: bool = False) -> str:
    """Copy each file's bytes to the binary handle ``out``, in order (``remove``: delete each once copied);
    returns the SHA-256 of the bytes copied, so that a plain file written this way is not read back to
    hash it."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as src:
            while block := src.read(_WRITE_BUFFER):
                digest.update(block)
                out.write(block)
        if remove:
            path.unlink()
    return digest.hexdigest()


def write_shard_index(folder: Path, index: ShardIndex) -> None:
    """``index.json`` beside the shard files (each shard's size, SHA-256 and stamp included)."""
    data = {
        "schema": INDEX_SCHEMA,
        "shards": [s.to_json() for s in index.shards],
        "input": index.input.to_json(),
        "records_per_shard": index.records_per_shard,
    }
    write_text_atomic(folder / "index.json", json.dumps(data, indent=1) + "\n")


def read_shard_index(folder: Path) -> ShardIndex | None:
    """The index written by :func:`write_shard_index`, or None if it is missing, unreadable, of another
    schema, holds any field not as written (a field missing or of another type is a stale index, never
    a ``KeyError`` later), or any shard file is missing or no longer has the size and SHA-256 recorded
    when it was written (then the caller shards the input again and redoes every shard, as for any
    stale state: a shard edited in ``.work`` would otherwise be run as if it were the user's records).

    A shard that still carries its recorded stamp is the file written (no re-read); any other is hashed:
    a size check alone let a same-size edit through.
    """
    try:
        # a regular file only (a FIFO there would block the run forever), of a bounded size
        data = obj(parse_json(read_bounded(folder / "index.json", MAX_INDEX_BYTES)), "the index")
        if data.get("schema") != INDEX_SCHEMA:
            return None
        shards = data.get("shards")
        if not isinstance(shards, list):
            return None
        index = ShardIndex(
            shards=[ShardSpec.from_json(item) for item in shards],
            input=InputCounts.from_json(data.get("input")),
            records_per_shard=count(data, "records_per_shard", 1),
        )
    except (OSError, ValueError):  # FieldError is a ValueError
        return None
    for shard in index.shards:
        path = folder / shard.file
        if not path.is_file() or path.stat().st_size != shard.size_bytes:
            return None
        if not digest_holds(path, shard.sha256, shard.stamp):
            log.warning(
                "%s changed since it was written (its SHA-256 differs): the input is sharded again and every "
                "shard redone",
                path,
            )
            return None
    return index
