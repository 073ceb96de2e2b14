"""Sequence input as the pipelines see it: spooled (stdin), hashed and validated before any model work.

Validating the whole input first costs one fast pass on the CPU, little next to the models' time, and
buys the property users want most from a long GPU job: a typo on line 9 million fails in seconds, with
one line naming the record, before any model is loaded and before any result file exists.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from virnucpro_trt.errors import UserError
from virnucpro_trt.files.atomic import remove_quietly
from virnucpro_trt.files.digests import sha256_file
from virnucpro_trt.files.exclusive import create_new
from virnucpro_trt.files.run_lock import private_stdin_copy_name
from virnucpro_trt.files.stamps import Stamp, file_stamp
from virnucpro_trt.pipeline.run_paths import STDIN, check_input_file, is_stream
from virnucpro_trt.runtime.shards import InputCounts, ShardSplitter
from virnucpro_trt.sequences.prepare import prepare_blocks
from virnucpro_trt.sequences.reader import judge_dna_letters, read_records, refuse_nucleotide_like

log = logging.getLogger(__name__)

_COPY_BLOCK = 1 << 20


@dataclass(frozen=True)
class InputSummary:
    """The validated input: where to read it, its identity and its size."""

    path: Path
    display_name: str
    sha256: str
    size_bytes: int
    records: int
    empty_records: int
    bases: int
    chunks: int = 0
    frames: int = 0

    @property
    def counts(self) -> InputCounts:
        """What the shard index keeps of it (all but where it is read from)."""
        fields = InputCounts.__dataclass_fields__
        return InputCounts(**{name: getattr(self, name) for name in fields})

    @classmethod
    def from_counts(cls, path: Path, display_name: str, counts: InputCounts) -> InputSummary:
        """The summary of a resumed run, from its shard index."""
        return cls(path, display_name, **asdict(counts))


def materialise(
    input_spec: str, spool: Path, on_create: Callable[[Path], None] | None = None
) -> tuple[Path, str]:
    """Return a re-readable path for ``input_spec``: stdin or a pipe is copied to ``spool``.

    The copy is a new file (:func:`~virnucpro_trt.files.exclusive.create_new`): a file or a symbolic
    link already at ``spool`` is refused in one line, never written through, overwritten or removed.
    A failed copy removes the file it created; when it is returned, the caller removes it when done.
    ``on_create`` is told of the file before it is made and as soon as it exists, before the copy (a run
    killed while copying, or just after the file appeared, is then cleaned up after by the next one:
    ``RunLock.note``).
    """
    check_input_file(input_spec)
    if not is_stream(input_spec):
        return Path(input_spec), input_spec
    spool.parent.mkdir(parents=True, exist_ok=True)
    if on_create is not None and not os.path.lexists(spool):  # noted before it is made, then once made
        on_create(spool)
    out = create_new(spool)  # from here on, the file at ``spool`` is this run's
    try:
        if on_create is not None:
            on_create(spool)
        with out:
            if input_spec == STDIN:
                shutil.copyfileobj(sys.stdin.buffer, out, _COPY_BLOCK)
            else:
                with open(input_spec, "rb") as pipe:
                    shutil.copyfileobj(pipe, out, _COPY_BLOCK)
    except BaseException:
        remove_quietly(spool)
        raise
    return spool, "<stdin>" if input_spec == STDIN else input_spec


@dataclass(frozen=True)
class InputWatch:
    """The input file's stamp before it is validated (and hashed), for commands that read it again.

    ``prepare`` and ``embed`` hash the input while validating it, then read it again to compute: a file
    rewritten or replaced in between (an editor saving in place, a download still running) would give
    outputs of other bytes, recorded as made from the hashed ones, and every rerun would find them
    made. The stamp (size, times, inode) taken before the hash must still hold after the last read.
    """

    path: Path
    display: str
    stamp: Stamp

    @classmethod
    def start(cls, path: Path, display: str) -> InputWatch:
        return cls(path, display, file_stamp(path))

    def holds(self) -> bool:
        """Whether the file is still the one stamped (a file gone is not)."""
        try:
            return file_stamp(self.path) == self.stamp
        except OSError:
            return False

    def check(self, command: str, outputs: list[Path]) -> None:
        """Refuse (one line) a run whose input changed while it was read, removing ``outputs`` (this
        run's, written from bytes other than those hashed) first."""
        if not self.holds():
            for output in outputs:
                remove_quietly(output)
            raise UserError(f"{self.display} changed while {command} read it; run {command} again")


@contextlib.contextmanager
def readable_input(
    input_spec: str, folder: Path, on_create: Callable[[Path], None] | None = None, output: Path | None = None
) -> Iterator[tuple[Path, str]]:
    """``input_spec`` as a path that can be read more than once, with the name messages give it, for the
    commands whose folder may hold other runs' copies too (``prepare``, ``embed``): stdin or a pipe is
    copied to a private name in ``folder`` (:func:`private_spool`), and the copy is removed on the way
    out, whatever happens; ``on_create`` as in :func:`materialise`; ``output``: the output file the run
    locks (its copy's name carries it), None for a command holding the folder's lock."""
    stream = is_stream(input_spec)
    spec = private_spool(folder, output) if stream else Path(input_spec)
    path, display = materialise(input_spec, spec, on_create)
    try:
        yield path, display
    finally:
        if stream:
            remove_quietly(path)


def private_spool(folder: Path, output: Path | None = None) -> Path:
    """A fresh name in ``folder`` for :func:`materialise` (commands whose folder other runs may share), not
    yet created: ``materialise`` creates it exclusively, so a clash is refused rather than written over."""
    folder.mkdir(parents=True, exist_ok=True)
    return folder / private_stdin_copy_name(output)


def validate_input(
    path: Path,
    display_name: str,
    alphabet: Literal["dna", "protein"] = "dna",
    chunk_length: int | None = None,
    splitter: ShardSplitter | None = None,
    sha256: str | None = None,
    min_length: int = 0,
    refuse_nucleotides: bool = False,
    refuse_protein: bool = True,
) -> InputSummary:
    """Read every record once (raising :class:`InputFormatError` on the first bad one) and count.

    With ``chunk_length`` the same pass also chunks and translates (on the CPU, still far faster than
    the encoders: measurement log, 2026-11-29), so the predictor knows the number of frames up front and
    its progress bar can show a real ETA; with a ``splitter`` (``predict``) it also writes the records
    into shard files and counts frames per shard.
    ``sha256``, when the caller already hashed the file, saves hashing it again. ``min_length`` leaves
    shorter reads unchunked (``predict --min-length``), so the frame counts are the run's.
    ``refuse_nucleotides`` (protein input for ESM-2) refuses DNA/RNA given as protein
    (:func:`~virnucpro_trt.sequences.reader.refuse_nucleotide_like`); DNA input that is protein is
    refused unless not ``refuse_protein`` (a part of a split input: ``split`` judged the whole input)
    (:func:`~virnucpro_trt.sequences.reader.judge_dna_letters`).
    """
    records = empty = bases = chunks = frames = too_short = 0
    if splitter is not None and chunk_length is None:
        raise ValueError("sharding needs chunk_length (frames are counted per shard)")
    stream = read_records(path, alphabet, display_name)
    if alphabet == "dna":
        stream = judge_dna_letters(stream, display_name, refuse_protein)
    if chunk_length is None:
        if refuse_nucleotides:
            stream = refuse_nucleotide_like(stream, display_name)
        for record in stream:
            records += 1
            n = len(record.sequence)
            bases += n
            empty += n == 0
    else:
        source = splitter.wrap(stream) if splitter else stream
        blocks = prepare_blocks(source, chunk_length, min_length=min_length)
        for block in blocks:
            records += block.n_records
            bases += int(block.record_lengths.sum())
            empty += int((block.record_lengths == 0).sum())
            too_short += int(((block.record_lengths > 0) & (block.record_lengths < min_length)).sum())
            chunks += len(block.chunk_ids)
            frames += len(block.frames)
            if splitter is not None:
                splitter.count(block)
    summary = InputSummary(
        path, display_name, sha256 or sha256_file(path), path.stat().st_size, records, empty, bases, chunks,
        frames,
    )  # fmt: skip
    if records == 0:
        log.warning("input %s holds no records: the result files will hold no sequences", display_name)
    elif empty:
        log.warning(
            "input %s: %d empty record(s) (no sequence); they are reported with status 'empty'",
            display_name,
            empty,
        )
    if too_short:
        log.warning(
            "input %s: %d record(s) shorter than --min-length %d bp are not scored (status 'too_short')",
            display_name,
            too_short,
            min_length,
        )
    return summary
