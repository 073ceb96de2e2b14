"""The CPU half of a prediction: records -> chunks -> kept frames, streamed in blocks.

Everything the GPU stages need (the frame's DNA for DNABERT-S, its protein for ESM-2, and the ids the
output files are keyed by) comes out of here, block by block, so reading and translation overlap with
inference and memory stays flat on any input size. Blocks are columnar (lists and numpy arrays, not one
object per frame) because at tens of thousands of reads per second the per-object cost would dominate;
:meth:`PreparedBlock.records` gives the per-record view where convenience matters more than speed.

:func:`write_identified_files` reproduces upstream's ``identified_nucleotide.fa`` and
``identified_protein.faa`` byte for byte.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np

from virnucpro_trt.files.atomic import exclusive_mode, temporary_name
from virnucpro_trt.sequences.chunking import chunk_bounds
from virnucpro_trt.sequences.reader import SeqRecord
from virnucpro_trt.sequences.translation import FRAME_SUFFIXES, FrameSelection, select_frames

__all__ = [
    "NUCLEOTIDE_FILE",
    "PROTEIN_FILE",
    "ChunkSpan",
    "FrameTable",
    "IdentifiedFilesWriter",
    "KeptFrame",
    "PreparedBlock",
    "RecordPlan",
    "prepare_blocks",
    "write_identified_files",
]

NUCLEOTIDE_FILE = "identified_nucleotide.fa"
PROTEIN_FILE = "identified_protein.faa"

#: Records per block: large enough to amortise numpy call overhead, small enough that the batch's
#: arrays stay in cache (measured: 1-2k reads of 500 bp per translation batch is the sweet spot).
DEFAULT_BLOCK_RECORDS = 2048
#: Chunks per :func:`select_frames` call, so one chromosome-sized record cannot blow up a batch.
_MAX_BATCH_CHUNKS = 2048
_SUFFIX = ("", *FRAME_SUFFIXES)  # indexed by frame number 1..6


@dataclass(frozen=True)
class FrameTable:
    """Kept frames of a block, columnar, in upstream order (record, chunk, frame 1..6)."""

    frame_id: list[str]  # chunk id + F1..F3 / R1..R3
    record_index: np.ndarray  # int64, 0-based index of the parent record in the whole input
    chunk_index: np.ndarray  # int64, row of the parent chunk in the block's chunk columns
    chunk_number: np.ndarray  # int64, 1-based chunk number within the record (as in the chunk id)
    strand: np.ndarray  # '<U1': '+' for F1..F3, '-' for R1..R3
    frame: np.ndarray  # int8, 1..3 within the strand
    dna_start: np.ndarray  # int64, record coordinates (0-based, end exclusive) of the frame's DNA,
    dna_end: np.ndarray  #   always on the forward strand even for '-' frames
    protein: list[str]
    dna: list[str]  # upper case; the reverse complement for '-' frames (what upstream embeds)

    def __len__(self) -> int:
        return len(self.frame_id)


@dataclass(frozen=True, slots=True)
class ChunkSpan:
    """A chunk as the output tables need it (its sequence is not kept: frames carry their DNA)."""

    id: str
    number: int
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class KeptFrame:
    """One kept frame, row view of :class:`FrameTable`."""

    id: str
    record_index: int
    chunk_number: int
    strand: str
    frame: int
    dna_start: int
    dna_end: int
    protein: str
    dna: str

    @property
    def chunk_id(self) -> str:
        return self.id[:-2]  # upstream's "Modified_ID": the frame id minus its 2-character suffix


@dataclass(frozen=True, slots=True)
class RecordPlan:
    """One input record with its chunks and kept frames (an empty record has neither)."""

    index: int
    id: str
    length: int
    chunks: tuple[ChunkSpan, ...]
    frames: tuple[KeptFrame, ...]


@dataclass(frozen=True)
class PreparedBlock:
    """Consecutive input records, chunked and translated.

    Records, chunks and frames are parallel columns; ``chunk_offsets`` / ``frame_offsets`` (length
    ``n_records + 1``) give each record's rows, so record ``i`` of the block owns chunks
    ``chunk_offsets[i]:chunk_offsets[i+1]`` and frames ``frame_offsets[i]:frame_offsets[i+1]``.
    """

    record_index: np.ndarray  # int64, 0-based index of each record in the whole input
    record_ids: list[str]
    record_lengths: np.ndarray  # int64
    chunk_ids: list[str]
    chunk_record: np.ndarray  # int64, input index of each chunk's record
    chunk_number: np.ndarray  # int64, 1-based
    chunk_start: np.ndarray  # int64, record coordinates
    chunk_end: np.ndarray
    chunk_offsets: np.ndarray
    frames: FrameTable
    frame_offsets: np.ndarray

    @property
    def n_records(self) -> int:
        return len(self.record_ids)

    def iter_frames(self) -> Iterator[KeptFrame]:
        f = self.frames
        columns = (
            f.frame_id,
            f.record_index.tolist(),
            f.chunk_number.tolist(),
            f.strand.tolist(),
            f.frame.tolist(),
            f.dna_start.tolist(),
            f.dna_end.tolist(),
            f.protein,
            f.dna,
        )
        for row in zip(*columns, strict=True):
            yield KeptFrame(*row)

    def records(self) -> Iterator[RecordPlan]:
        """Per-record view (slower than the columns; meant for tables and tests, not hot loops)."""
        frames = list(self.iter_frames())
        starts, ends, numbers = self.chunk_start.tolist(), self.chunk_end.tolist(), self.chunk_number.tolist()
        for i, rid in enumerate(self.record_ids):
            c0, c1 = int(self.chunk_offsets[i]), int(self.chunk_offsets[i + 1])
            f0, f1 = int(self.frame_offsets[i]), int(self.frame_offsets[i + 1])
            chunks = tuple(
                ChunkSpan(self.chunk_ids[c], numbers[c], starts[c], ends[c]) for c in range(c0, c1)
            )
            length = int(self.record_lengths[i])
            index = int(self.record_index[i])
            yield RecordPlan(index, rid, length, chunks, tuple(frames[f0:f1]))


def _select_in_batches(chunk_seqs: list[str]) -> FrameSelection:
    if len(chunk_seqs) <= _MAX_BATCH_CHUNKS:
        return select_frames(chunk_seqs)
    parts = []
    for lo in range(0, len(chunk_seqs), _MAX_BATCH_CHUNKS):
        part = select_frames(chunk_seqs[lo : lo + _MAX_BATCH_CHUNKS])
        parts.append((lo, part))
    return FrameSelection(
        chunk=np.concatenate([p.chunk + lo for lo, p in parts]),
        frame=np.concatenate([p.frame for _, p in parts]),
        start=np.concatenate([p.start for _, p in parts]),
        end=np.concatenate([p.end for _, p in parts]),
        protein=[s for _, p in parts for s in p.protein],
        dna=[s for _, p in parts for s in p.dna],
    )


def _chunk_columns(
    ids: list[str], seqs: list[str], lengths: np.ndarray, chunk_length: int, min_length: int = 0
) -> tuple[list[str], list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Chunk ids, chunk sequences, starts, ends, 1-based numbers and chunks-per-record of a block.

    A record shorter than ``min_length`` gets no chunk, like an empty one.
    """
    n = len(ids)
    if n and lengths.min() >= max(1, min_length) and lengths.max() <= chunk_length:  # one chunk each
        ones = np.ones(n, dtype=np.int64)
        return [i + "_chunk_1" for i in ids], seqs, np.zeros(n, dtype=np.int64), lengths, ones, ones
    chunk_ids: list[str] = []
    chunk_seqs: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    numbers: list[int] = []
    per_record = np.zeros(n, dtype=np.int64)
    for i, (rid, seq) in enumerate(zip(ids, seqs, strict=True)):
        if len(seq) < min_length:
            continue
        bounds = chunk_bounds(len(seq), chunk_length)
        per_record[i] = len(bounds)
        for number, (start, end) in enumerate(bounds, start=1):
            chunk_ids.append(f"{rid}_chunk_{number}")
            chunk_seqs.append(seq[start:end])
            starts.append(start)
            ends.append(end)
            numbers.append(number)
    columns = (np.array(values, dtype=np.int64) for values in (starts, ends, numbers))
    return chunk_ids, chunk_seqs, *columns, per_record


def _prepare_block(records: list[SeqRecord], chunk_length: int, min_length: int = 0) -> PreparedBlock:
    record_ids = [r.id for r in records]
    seqs = [r.sequence for r in records]
    lengths = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
    chunk_ids, chunk_seqs, chunk_start, chunk_end, chunk_number, chunks_per_record = _chunk_columns(
        record_ids, seqs, lengths, chunk_length, min_length
    )
    chunk_offsets = np.concatenate([[0], np.cumsum(chunks_per_record)])
    chunk_local = np.repeat(np.arange(len(records)), chunks_per_record)  # record's row in the block
    record_index = np.fromiter((r.index for r in records), dtype=np.int64, count=len(records))
    chunk_record = record_index[chunk_local]

    sel = _select_in_batches(chunk_seqs)
    is_reverse = sel.frame > 3
    kept = zip(sel.chunk.tolist(), sel.frame.tolist(), strict=True)
    frames = FrameTable(
        frame_id=[chunk_ids[c] + _SUFFIX[f] for c, f in kept],
        record_index=chunk_record[sel.chunk],
        chunk_index=sel.chunk,
        chunk_number=chunk_number[sel.chunk],
        strand=np.where(is_reverse, "-", "+").astype("<U1"),
        frame=np.where(is_reverse, sel.frame - 3, sel.frame).astype(np.int8),
        dna_start=chunk_start[sel.chunk] + sel.start,
        dna_end=chunk_start[sel.chunk] + sel.end,
        protein=sel.protein,
        dna=sel.dna,
    )
    frame_offsets = np.searchsorted(chunk_local[sel.chunk], np.arange(len(records) + 1))
    return PreparedBlock(
        record_index=record_index,
        record_ids=record_ids,
        record_lengths=lengths,
        chunk_ids=chunk_ids,
        chunk_record=chunk_record,
        chunk_number=chunk_number,
        chunk_start=chunk_start,
        chunk_end=chunk_end,
        chunk_offsets=chunk_offsets,
        frames=frames,
        frame_offsets=frame_offsets.astype(np.int64),
    )


def prepare_blocks(
    records: Iterable[SeqRecord],
    chunk_length: int,
    *,
    min_length: int = 0,
    block_records: int = DEFAULT_BLOCK_RECORDS,
    block_bases: int = 4_000_000,
) -> Iterator[PreparedBlock]:
    """Group records into blocks (``block_records`` records or ``block_bases`` bases, whichever comes
    first) and yield each one chunked and translated. Records keep their input order and indices.

    Records shorter than ``min_length`` bases (``predict --min-length``; 0 = upstream, which scores
    every read) stay in the block without chunks or frames, so the tables still list them.
    """
    if chunk_length <= 0:
        raise ValueError(f"chunk_length must be positive, got {chunk_length}")
    if min_length < 0:
        raise ValueError(f"min_length must not be negative, got {min_length}")
    it = iter(records)
    group = 256  # records are counted in groups: per-record bookkeeping costs more than it saves
    while True:
        block: list[SeqRecord] = []
        bases = 0
        while len(block) < block_records and bases < block_bases:
            more = list(islice(it, min(group, block_records - len(block))))
            if not more:
                break
            block += more
            bases += sum(len(r.sequence) for r in more)
        if not block:
            return
        yield _prepare_block(block, chunk_length, min_length)


def _fasta_text(ids: list[str], seqs: list[str]) -> str:
    """Upstream's 2-line FASTA: ``>id\\nSEQ\\n`` per record, no wrapping."""
    return "".join([f">{i}\n{s}\n" for i, s in zip(ids, seqs, strict=True)])


class IdentifiedFilesWriter:
    """Writes prepared blocks to upstream's two files; renames them into place only on a clean exit.

    Use it directly when the blocks also feed the models (one translation pass for both), or through
    :func:`write_identified_files`. On entry stale copies from an earlier run are removed; on an
    exception the partial files are deleted, so a failure (bad record half-way, disk full, Ctrl-C)
    never leaves a file that looks finished. ``on_create`` is told of each temporary file as soon as it
    exists (the run's lock notes it, so the rerun after a SIGKILL removes it: ``RunLock.note``).
    """

    def __init__(
        self, outdir: str | os.PathLike[str], on_create: Callable[[Path], None] | None = None
    ) -> None:
        self.outdir = Path(outdir)
        self._on_create = on_create
        self.targets = (self.outdir / NUCLEOTIDE_FILE, self.outdir / PROTEIN_FILE)
        # Unguessable names created exclusively (files.atomic: nothing planted at a name is written
        # through); not mkstemp, so the final files get the usual umask permissions.
        self._temps = tuple(temporary_name(t, on_create) for t in self.targets)
        self._stack = ExitStack()
        self.counts = dict.fromkeys(
            ("records", "empty_records", "bases", "chunks", "frames", "records_without_frames"), 0
        )

    def __enter__(self) -> IdentifiedFilesWriter:
        self.outdir.mkdir(parents=True, exist_ok=True)
        for target in self.targets:
            target.unlink(missing_ok=True)
        try:
            mode = exclusive_mode("w")
            handles = []
            for tmp in self._temps:
                handle = open(tmp, mode, encoding="utf-8", newline="\n", buffering=1 << 20)
                handles.append(self._stack.enter_context(handle))
                if self._on_create is not None:
                    self._on_create(tmp)
            self._nuc, self._prot = handles
        except BaseException:
            self._abort()
            raise
        return self

    def write(self, block: PreparedBlock) -> None:
        """Append one block's kept frames (upstream order) and update :attr:`counts`."""
        frames = block.frames
        self._nuc.write(_fasta_text(frames.frame_id, frames.dna))
        self._prot.write(_fasta_text(frames.frame_id, frames.protein))
        lengths = block.record_lengths
        counts = self.counts
        counts["records"] += block.n_records
        counts["empty_records"] += int(np.count_nonzero(lengths == 0))
        counts["bases"] += int(lengths.sum())
        counts["chunks"] += len(block.chunk_ids)
        counts["frames"] += len(frames)
        no_frame = (np.diff(block.frame_offsets) == 0) & (lengths > 0)
        counts["records_without_frames"] += int(np.count_nonzero(no_frame))

    def _abort(self) -> None:
        with suppress(OSError, ValueError):  # ENOSPC while flushing must not keep the files from going
            self._stack.close()
        for tmp in self._temps:
            tmp.unlink(missing_ok=True)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc_type is not None:
            self._abort()
            return
        try:
            self._stack.close()  # flushes: a full disk fails here, before anything is renamed
            for tmp, target in zip(self._temps, self.targets, strict=True):
                os.replace(tmp, target)
        except BaseException:
            self._abort()
            raise


def write_identified_files(
    records: Iterable[SeqRecord],
    outdir: str | os.PathLike[str],
    chunk_length: int,
    *,
    block_records: int = DEFAULT_BLOCK_RECORDS,
    on_create: Callable[[Path], None] | None = None,
) -> dict[str, int]:
    """Write ``identified_nucleotide.fa`` and ``identified_protein.faa`` exactly as upstream does.

    Atomic as described in :class:`IdentifiedFilesWriter`. Returns counts: ``records``,
    ``empty_records``, ``bases``, ``chunks``, ``frames`` (kept) and ``records_without_frames``
    (non-empty records with no kept frame: upstream silently has no row for them).
    """
    with IdentifiedFilesWriter(outdir, on_create) as writer:
        for block in prepare_blocks(records, chunk_length, block_records=block_records):
            writer.write(block)
    return writer.counts
