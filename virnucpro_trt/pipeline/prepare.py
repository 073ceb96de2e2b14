"""``virnucpro-trt prepare``: upstream's identified_nucleotide.fa / identified_protein.faa, nothing else."""

from __future__ import annotations

import contextlib
from pathlib import Path

from virnucpro_trt.pipeline.inputs import materialise, private_spool, validate_input
from virnucpro_trt.pipeline.run_paths import check_input_file, check_run_paths, is_stream
from virnucpro_trt.sequences.prepare import NUCLEOTIDE_FILE, PROTEIN_FILE, write_identified_files
from virnucpro_trt.sequences.reader import read_records


def run_prepare(input_spec: str, outdir: Path, chunk_length: int) -> dict[str, int]:
    """Validate the whole input, then write both files (each appears only when complete)."""
    check_input_file(input_spec)
    check_run_paths([input_spec], [outdir / NUCLEOTIDE_FILE, outdir / PROTEIN_FILE])
    path, display = materialise(input_spec, private_spool(outdir) if is_stream(input_spec) else outdir)
    try:
        validate_input(path, display)
        return write_identified_files(read_records(path, "dna"), outdir, chunk_length)
    finally:
        if is_stream(input_spec):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
