"""``virnucpro-trt prepare``: upstream's identified_nucleotide.fa / identified_protein.faa, nothing else.

The two files replace only what an earlier ``prepare`` wrote there, unchanged since; anything else at
their paths is refused unless ``force`` (``files/ownership.py``: the rule every command follows). A rerun
onto its own two unchanged files made from the same input bytes, chunk length and version writes nothing
(:func:`_found_made`): a workflow manager then sees them as they were.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from virnucpro_trt import __version__
from virnucpro_trt.files.bounded_read import open_regular
from virnucpro_trt.files.folders import made_folder
from virnucpro_trt.files.names import check_parent_folders
from virnucpro_trt.files.ownership import RECORD, check_replaceable, made_from, record_path, record_written
from virnucpro_trt.files.run_lock import FOLDER_STDIN, LOCK_FILE, KeptFiles, outdir_lock
from virnucpro_trt.pipeline.inputs import InputWatch, readable_input, validate_input
from virnucpro_trt.pipeline.run_paths import check_input_file, check_run_paths
from virnucpro_trt.sequences.chunking import chunk_count
from virnucpro_trt.sequences.prepare import NUCLEOTIDE_FILE, PROTEIN_FILE, write_identified_files
from virnucpro_trt.sequences.reader import read_records
from virnucpro_trt.sequences.translation import FRAME_SUFFIXES

log = logging.getLogger(__name__)

KEPT_FILES = KeptFiles((NUCLEOTIDE_FILE, PROTEIN_FILE, RECORD), stdin=FOLDER_STDIN)  # what a run keeps there
_COUNT_BLOCK = 1 << 20


@dataclass(frozen=True)
class PrepareSummary:
    """What ``prepare`` wrote, or found written: the input's records, their chunks and the kept frames
    (one row of each file each), and whether it computed them (False: found made, :func:`_found_made`)."""

    records: int
    chunks: int
    frames: int
    computed: bool


def run_prepare(input_spec: str, outdir: Path, chunk_length: int, force: bool = False) -> PrepareSummary:
    """Validate the whole input, then write both files (each appears only when complete), holding the
    folder's lock (one run at a time; it notes the stdin copy and the temporary files, so the rerun after
    a SIGKILL removes them); or find them made and write nothing, unless ``force``."""
    targets = [outdir / NUCLEOTIDE_FILE, outdir / PROTEIN_FILE]
    check_parent_folders(outdir)
    check_input_file(input_spec)
    check_run_paths([input_spec], [*targets, record_path(outdir), outdir / LOCK_FILE])
    check_replaceable(targets, force)
    with made_folder(outdir), outdir_lock(outdir, KEPT_FILES) as lock:
        noted = functools.partial(lock.note, growing=True) if lock is not None else None
        with readable_input(input_spec, outdir, noted) as (path, display):
            watch = InputWatch.start(path, display)  # the bytes hashed are the bytes read while it holds
            summary = validate_input(path, display)
            made = _made(summary.sha256, chunk_length)
            if made_from(targets, made["key"]):
                found = None if force else _found_made(path, display, targets, chunk_length, summary.records)
                if found is not None and watch.holds():
                    return found
                if force:
                    log.warning("--force: writing %s and %s again (they were unchanged)", *targets)
            counts = write_identified_files(read_records(path, "dna"), outdir, chunk_length, on_create=noted)
            watch.check("prepare", targets)
            record_written(targets, noted, made)
            return PrepareSummary(counts["records"], counts["chunks"], counts["frames"], computed=True)


def _made(input_sha256: str, chunk_length: int) -> dict[str, Any]:
    """What both files are made from, as their record entries keep it (``files/ownership.py``: ``made``).

    ``key``: the tool's version, the SHA-256 of the input's bytes as read (a file's own bytes, compressed
    or not; stdin's as copied: compression and format are found from the content, never the name, so the
    same bytes make the same files whichever way they come) and the chunk length, the one setting that
    changes the files' bytes.
    """
    key = {"command": "prepare", "version": __version__, "input_sha256": input_sha256}
    return {"key": {**key, "chunk_length": chunk_length}}


def _found_made(
    path: Path, display: str, targets: list[Path], chunk_length: int, records: int
) -> PrepareSummary | None:
    """The summary of the files this run would write, found already made (:func:`_made`), or None when
    they do not add up (compute them again).

    Nothing is taken from the record, which anyone in the folder may edit: ``records`` is the count of
    the input just validated, its chunks are counted from its record lengths (one more pass over the
    input, without translation), and the kept frames are the rows of the two files, which must agree
    and be at most six a chunk.
    """
    rows = {_fasta_rows(target) for target in targets}
    frames = rows.pop() if len(rows) == 1 else None
    if frames is None:
        return None
    chunks = sum(chunk_count(len(r.sequence), chunk_length) for r in read_records(path, "dna", display))
    if frames > len(FRAME_SUFFIXES) * chunks:
        return None
    return PrepareSummary(records, chunks, frames, computed=False)


def _fasta_rows(path: Path) -> int | None:
    """The records of a file ``prepare`` wrote: two lines each (upstream's FASTA is not wrapped), so half
    its newlines; None when their number is odd or the file cannot be read (read in blocks: any size)."""
    lines = 0
    try:
        with os.fdopen(open_regular(path), "rb") as handle:
            while block := handle.read(_COUNT_BLOCK):
                lines += block.count(b"\n")
    except OSError:
        return None
    return None if lines % 2 else lines // 2
