"""The result files of a split's parts joined into those of one run, streaming.

Every file but one is in input order, and parts are consecutive runs of the input's records, so those
are the parts' rows one after another (each part's header dropped). The highest-score file is sorted by
chunk id over the whole input; each part's file is already sorted, and a chunk belongs to exactly one
read, so a k-way merge of the parts' rows (Python string order, as ``sorted`` in
:meth:`~virnucpro_trt.outputs.upstream.ChunkMaxima.write`) is the single run's file. Memory holds one
row per part, whatever the input size.

``embeddings.h5`` is appended block by block, one block per shard of the whole input (frames per shard
from ``sequences.tsv``'s ``kept_frames``), exactly as the single run appended it: HDF5 lays out the
file by the sequence of appends, so the same blocks give the same bytes.

Part files are read as hostile: a header, a row shape or a sort order that is not what ``predict``
writes stops the merge with :class:`PartFileError` (exit 2) naming the file, before anything is renamed
into place. An ``embeddings.h5`` dataset whose bytes are not stored in the file itself (HDF5 external
storage, a virtual dataset, a soft or external link) is refused before any of it is read
(:func:`~virnucpro_trt.outputs.embeddings_h5.plain_dataset`), and embedding widths are bounded.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import h5py
import numpy as np

from virnucpro_trt.errors import UserError
from virnucpro_trt.outputs.embeddings_h5 import FrameEmbeddingsWriter, plain_dataset
from virnucpro_trt.outputs.tables import SEQUENCE_COLUMNS

_COPY_BUFFER = 1 << 20
_KEPT_FRAMES = SEQUENCE_COLUMNS.index("kept_frames")
_LENGTH, _CHUNKS = SEQUENCE_COLUMNS.index("length"), SEQUENCE_COLUMNS.index("chunks")
_LABEL, _STATUS = SEQUENCE_COLUMNS.index("label"), SEQUENCE_COLUMNS.index("status")
_FRAME_DATASETS = ("ids", "dnabert", "esm")
# Widest embedding accepted from a part (ESM-2 15B is 5120 wide): a block of rows is read at once.
MAX_EMBEDDING_WIDTH = 1 << 14


class PartFileError(UserError):
    """A part's result file is not what ``predict`` writes."""


def _open_text(path: Path) -> IO[str]:
    try:
        return open(path, encoding="utf-8", newline="")
    except OSError as exc:
        raise PartFileError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _check_header(handle: IO[str], path: Path, header: str) -> None:
    try:
        first = handle.readline()
    except UnicodeDecodeError:
        raise PartFileError(f"{path}: not UTF-8 text") from None
    if first != header:
        raise PartFileError(f"{path}: its header is not {header.rstrip()!r}")


def append_table(
    out: IO[str], path: Path, header: str, tally: Callable[[Path, str], None] | None = None
) -> int:
    """Copy a part's table into ``out`` without its header (which must be ``header``); returns its rows
    (lines), for the merge to hold against the part's record and frame counts. ``tally`` is given the
    copied text in blocks of whole rows."""
    rows = 0
    with _open_text(path) as handle:
        _check_header(handle, path, header)
        try:
            while block := handle.read(_COPY_BUFFER):
                if not block.endswith("\n"):
                    block += handle.readline()  # whole rows only, for the tally
                out.write(block)
                rows += block.count("\n")
                if tally is not None:
                    tally(path, block)
        except UnicodeDecodeError:
            raise PartFileError(f"{path}: not UTF-8 text") from None
    return rows


class TableCounts:
    """The counts a part's own tables hold, tallied while ``append_table`` copies them.

    Why: the merged ``run.json`` sums the parts' counts, and a part's ``run.json`` is hostile input; a
    count edited there (``virus_sequences``, a status, ``bases``) went into the merged record and the
    PASSED line, which then disagreed with the merged tables. Held to these, it is refused.
    """

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def sequences(self, path: Path, block: str) -> None:
        """``sequences.tsv`` rows: bases, empty records, chunks, sequences labelled virus, statuses."""
        counts = self.counts
        for row in block.splitlines():
            fields = row.split("\t")
            try:
                if len(fields) != len(SEQUENCE_COLUMNS):
                    raise ValueError
                length, chunks = int(fields[_LENGTH]), int(fields[_CHUNKS])
            except ValueError:
                raise PartFileError(f"{path}: a row is not what predict writes") from None
            counts["bases"] += length
            counts["empty_records"] += int(length == 0)
            counts["chunks"] += chunks
            counts["virus_sequences"] += int(fields[_LABEL] == "virus")
            counts[f"status_{fields[_STATUS]}"] += 1

    def predictions(self, path: Path, block: str) -> None:
        """``prediction_results.txt`` rows labelled virus (ids hold no tab: the Prediction column)."""
        self.counts["virus_frames"] += block.count("\tvirus\t")


def _sorted_rows(path: Path, header: str) -> Iterator[tuple[str, str]]:
    """``(key, row)`` of a part's highest-score file, checking each row and the strict order."""
    with _open_text(path) as handle:
        _check_header(handle, path, header)
        previous: str | None = None
        try:
            for number, row in enumerate(handle, start=2):
                key, _, value = row.partition("\t")
                if value not in ("True\n", "False\n") or not key:
                    raise PartFileError(f"{path}: line {number} is not 'chunk id<TAB>True|False'")
                if previous is not None and key <= previous:
                    raise PartFileError(f"{path}: line {number} is out of order (not sorted by chunk id)")
                previous = key
                yield key, row
        except UnicodeDecodeError:
            raise PartFileError(f"{path}: not UTF-8 text") from None


def merge_sorted_table(out: IO[str], paths: list[Path], header: str) -> list[int]:
    """k-way merge of the parts' sorted rows into ``out`` (header first); returns each part's row count
    (for the merge to hold against the part's own count).

    A chunk id in two parts cannot come from one split (read ids are unique across the input): it
    stops the merge rather than writing a file one run would never write.
    """
    out.write(header)
    rows = [0] * len(paths)

    def counted(index: int, path: Path) -> Iterator[tuple[str, str]]:
        for item in _sorted_rows(path, header):
            rows[index] += 1
            yield item

    previous: str | None = None
    streams = [counted(index, path) for index, path in enumerate(paths)]
    for key, row in heapq.merge(*streams, key=lambda item: item[0]):
        if key == previous:
            raise PartFileError(f"chunk id {key!r} appears in two parts: they are not parts of one input")
        previous = key
        out.write(row)
    return rows


def shard_frame_counts(sequences_tsv: Path, shard_sizes: Iterable[int]) -> Iterator[int]:
    """Kept frames of each shard: the ``kept_frames`` of its records in a part's ``sequences.tsv``."""
    header = "\t".join(SEQUENCE_COLUMNS) + "\n"
    with _open_text(sequences_tsv) as handle:
        _check_header(handle, sequences_tsv, header)
        for size in shard_sizes:
            frames = 0
            for _ in range(size):
                row = handle.readline()
                fields = row.split("\t")
                if len(fields) != len(SEQUENCE_COLUMNS) or not fields[_KEPT_FRAMES].isdigit():
                    raise PartFileError(
                        f"{sequences_tsv}: fewer rows, or other rows, than the part's records"
                    )
                frames += int(fields[_KEPT_FRAMES])
            yield frames
        if handle.readline():
            raise PartFileError(f"{sequences_tsv}: more rows than the part's records")


def embedding_attrs(path: Path) -> dict[str, str]:
    """The file's attributes in the order they were written (the order shapes the file's bytes)."""
    names: list[bytes] = []
    try:
        with h5py.File(path, "r") as handle:
            h5py.h5a.iterate(
                handle.id,
                lambda name, *_: names.append(name),
                index_type=h5py.h5.INDEX_NAME,
                order=h5py.h5.ITER_NATIVE,
            )
            attrs = {name.decode(): handle.attrs[name.decode()] for name in names}
    except (OSError, KeyError, UnicodeDecodeError) as exc:
        raise PartFileError(f"{path}: not a readable embeddings file ({exc})") from None
    if not all(isinstance(value, str) for value in attrs.values()):
        raise PartFileError(f"{path}: unexpected attributes")
    return attrs


def _frame_datasets(handle: h5py.File, path: Path) -> tuple[Any, Any, Any]:
    """``ids``, ``dnabert``, ``esm`` of an open part file, each stored inside the file (else refused)."""
    ids, dnabert, esm = (plain_dataset(handle, name, path) for name in _FRAME_DATASETS)
    return ids, dnabert, esm


def embedding_dims(path: Path) -> tuple[int, int, int]:
    """``(frames, dnabert width, esm width)``, checking the datasets are what ``predict`` writes."""
    try:
        with h5py.File(path, "r") as handle:
            ids, dnabert, esm = _frame_datasets(handle, path)
            shapes = (ids.shape, dnabert.shape, esm.shape)
            dtypes_ok = dnabert.dtype == np.float32 and esm.dtype == np.float32
            ids_ok = h5py.check_string_dtype(ids.dtype) is not None
    except (OSError, KeyError, TypeError) as exc:
        raise PartFileError(f"{path}: not a readable embeddings file ({exc})") from None
    if (
        not (dtypes_ok and ids_ok)
        or len(shapes[0]) != 1
        or len(shapes[1]) != 2
        or len(shapes[2]) != 2
        or not shapes[0][0] == shapes[1][0] == shapes[2][0]
    ):
        raise PartFileError(f"{path}: datasets ids/dnabert/esm are not one row per frame")
    if not (0 < shapes[1][1] <= MAX_EMBEDDING_WIDTH and 0 < shapes[2][1] <= MAX_EMBEDDING_WIDTH):
        raise PartFileError(f"{path}: embedding widths outside 1..{MAX_EMBEDDING_WIDTH}")
    return shapes[0][0], shapes[1][1], shapes[2][1]


def append_embeddings(writer: FrameEmbeddingsWriter, path: Path, blocks: Iterable[int]) -> None:
    """Append a part's embeddings to ``writer`` in ``blocks`` of rows (one per shard), all of them."""
    with h5py.File(path, "r") as handle:
        raw_ids, dnabert, esm = _frame_datasets(handle, path)
        ids, total = raw_ids.asstr(), raw_ids.shape[0]
        start = 0
        for size in blocks:
            if start + size > total:
                raise PartFileError(f"{path}: fewer frames than the part's sequences.tsv counts")
            if size:
                writer.append(
                    list(ids[start : start + size]), _rows(dnabert, start, size), _rows(esm, start, size)
                )
            start += size
        if start != total:
            raise PartFileError(f"{path}: more frames than the part's sequences.tsv counts")


def _rows(dataset: Any, start: int, size: int) -> np.ndarray:
    return np.asarray(dataset[start : start + size], dtype=np.float32)


__all__ = [
    "PartFileError",
    "append_embeddings",
    "append_table",
    "embedding_attrs",
    "embedding_dims",
    "merge_sorted_table",
    "shard_frame_counts",
]
