"""``virnucpro-trt prepare``: upstream's identified_nucleotide.fa / identified_protein.faa, nothing else.

The two files replace only what an earlier ``prepare`` wrote there, unchanged since; anything else at
their paths is refused unless ``force`` (``files/ownership.py``: the rule every command follows).
"""

from __future__ import annotations

import functools
from pathlib import Path

from virnucpro_trt.files.folders import made_folder
from virnucpro_trt.files.names import check_parent_folders
from virnucpro_trt.files.ownership import RECORD, check_replaceable, record_path, record_written
from virnucpro_trt.files.run_lock import FOLDER_STDIN, LOCK_FILE, KeptFiles, outdir_lock
from virnucpro_trt.pipeline.inputs import readable_input, validate_input
from virnucpro_trt.pipeline.run_paths import check_input_file, check_run_paths
from virnucpro_trt.sequences.prepare import NUCLEOTIDE_FILE, PROTEIN_FILE, write_identified_files
from virnucpro_trt.sequences.reader import read_records

KEPT_FILES = KeptFiles((NUCLEOTIDE_FILE, PROTEIN_FILE, RECORD), stdin=FOLDER_STDIN)  # what a run keeps there


def run_prepare(input_spec: str, outdir: Path, chunk_length: int, force: bool = False) -> dict[str, int]:
    """Validate the whole input, then write both files (each appears only when complete), holding the
    folder's lock (one run at a time; it notes the stdin copy and the temporary files, so the rerun after
    a SIGKILL removes them)."""
    targets = [outdir / NUCLEOTIDE_FILE, outdir / PROTEIN_FILE]
    check_parent_folders(outdir)
    check_input_file(input_spec)
    check_run_paths([input_spec], [*targets, record_path(outdir), outdir / LOCK_FILE])
    check_replaceable(targets, force)
    with made_folder(outdir), outdir_lock(outdir, KEPT_FILES) as lock:
        noted = functools.partial(lock.note, growing=True) if lock is not None else None
        with readable_input(input_spec, outdir, noted) as (path, display):
            validate_input(path, display)
            counts = write_identified_files(read_records(path, "dna"), outdir, chunk_length, on_create=noted)
            record_written(targets, noted)
            return counts
