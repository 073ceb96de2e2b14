"""Stage 1 of a read's life: read and validate input, chunk it, translate it, select frames.

Everything here is CPU-only and reproduces upstream VirNucPro's preprocessing exactly (see
``docs/upstream.md`` sections 1, 2 and 6), vectorised so it never limits the GPUs.
"""

from virnucpro_trt.sequences.chunking import Chunk, chunk_bounds, chunk_count, iter_chunks
from virnucpro_trt.sequences.prepare import (
    NUCLEOTIDE_FILE,
    PROTEIN_FILE,
    FrameTable,
    IdentifiedFilesWriter,
    KeptFrame,
    PreparedBlock,
    RecordPlan,
    prepare_blocks,
    write_identified_files,
)
from virnucpro_trt.sequences.reader import SeqRecord, read_records
from virnucpro_trt.sequences.translation import FrameSelection, reverse_complement, select_frames

__all__ = [
    "NUCLEOTIDE_FILE",
    "PROTEIN_FILE",
    "Chunk",
    "FrameSelection",
    "FrameTable",
    "IdentifiedFilesWriter",
    "KeptFrame",
    "PreparedBlock",
    "RecordPlan",
    "SeqRecord",
    "chunk_bounds",
    "chunk_count",
    "iter_chunks",
    "prepare_blocks",
    "read_records",
    "reverse_complement",
    "select_frames",
    "write_identified_files",
]
