"""``virnucpro-trt prepare``: upstream's identified_nucleotide.fa / identified_protein.faa, nothing else."""

from __future__ import annotations

import contextlib
from pathlib import Path

from virnucpro_trt.pipeline.inputs import materialise, validate_input
from virnucpro_trt.sequences.prepare import write_identified_files
from virnucpro_trt.sequences.reader import read_records


def run_prepare(input_spec: str, outdir: Path, chunk_length: int) -> dict[str, int]:
    """Validate the whole input, then write both files (each appears only when complete)."""
    path, display = materialise(input_spec, outdir)
    try:
        validate_input(path, display)
        return write_identified_files(read_records(path, "dna"), outdir, chunk_length)
    finally:
        if input_spec == "-":
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
