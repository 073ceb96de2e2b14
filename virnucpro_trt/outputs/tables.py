"""The richer tables upstream lacks: one row per INPUT record, one row per kept frame.

``sequences.tsv`` answers "what happened to each of my reads" — every input record appears, including
the ones upstream silently drops (empty records, reads with no stop-free frame). ``frames.tsv`` gives
each scored frame with its coordinates in the read, so a hit can be traced back to bases.
Coordinates are 0-based, end-exclusive (BED convention), always on the read's forward strand.

The per-read call follows upstream's per-chunk calls, so the two tables never disagree:

* a chunk is virus iff max P(virus) >= max P(others) over its kept frames (upstream's ``Is_Virus`` in
  ``prediction_results_highestscore.csv``); ``virus_chunks`` counts them;
* a read is ``virus`` iff at least one of its chunks is (``virus_chunks >= 1``), else ``others``: one
  viral chunk is what a user screening reads for viruses wants to see, as upstream's chunk file shows it;
* its score is its best frame, the kept frame with the highest P(virus) (the first in file order on a
  tie): ``best_p_virus`` and ``best_p_others`` are that one frame's two probabilities, a row of
  ``frames.tsv``. They are not a second call: upstream's chunk rule weighs the best virus frame against
  the best others frame, so an ``others`` read may still show a frame with P(virus) > 0.5 (another frame
  of the same chunk scored others higher), while a ``virus`` read's ``best_p_virus`` is never below
  the best P(others) of the chunk that called it.

Status: ``scored``; ``no_stop_free_frame`` (chunks, but no frame kept: each has a stop or no complete
A/C/G/T codon; upstream writes no row);
``too_short`` (shorter than ``predict --min-length``: not chunked); ``empty`` (no sequence).
"""

from __future__ import annotations

from typing import IO

import numpy as np

from virnucpro_trt.models.classifier import LABELS
from virnucpro_trt.outputs.formatting import f32_column
from virnucpro_trt.sequences.prepare import PreparedBlock

SEQUENCE_COLUMNS = (
    "sequence_id",
    "length",
    "chunks",
    "kept_frames",
    "best_p_virus",
    "best_p_others",
    "virus_chunks",
    "label",
    "status",
)
FRAME_COLUMNS = (
    "frame_id",
    "sequence_id",
    "chunk",
    "chunk_start",
    "chunk_end",
    "strand",
    "frame",
    "dna_start",
    "dna_end",
    "protein_length",
    "p_others",
    "p_virus",
    "label",
)

STATUS_SCORED = "scored"
STATUS_NO_FRAME = "no_stop_free_frame"
STATUS_EMPTY = "empty"
STATUS_TOO_SHORT = "too_short"
MISSING = "NA"


def write_frame_rows(
    out: IO[str],
    block: PreparedBlock | None,
    probs: np.ndarray | None = None,
    labels: np.ndarray | None = None,
) -> None:
    """Append one row per kept frame of ``block`` (``block=None`` writes the header)."""
    if block is None:
        out.write("\t".join(FRAME_COLUMNS) + "\n")
        return
    f = block.frames
    if not len(f):
        return
    assert probs is not None and labels is not None
    local = (f.record_index - block.record_index[0]).tolist()
    ids = block.record_ids
    chunk_start = block.chunk_start[f.chunk_index].tolist()
    chunk_end = block.chunk_end[f.chunk_index].tolist()
    p0 = f32_column(probs[:, 0])
    p1 = f32_column(probs[:, 1])
    rows = zip(
        f.frame_id,
        local,
        f.chunk_number.tolist(),
        chunk_start,
        chunk_end,
        f.strand.tolist(),
        f.frame.tolist(),
        f.dna_start.tolist(),
        f.dna_end.tolist(),
        (len(p) for p in f.protein),
        p0,
        p1,
        labels.tolist(),
        strict=True,
    )
    out.write(
        "".join(
            f"{fid}\t{ids[r]}\t{c}\t{cs}\t{ce}\t{st}\t{fr}\t{ds}\t{de}\t{pl}\t{a}\t{b}\t{LABELS[lab]}\n"
            for fid, r, c, cs, ce, st, fr, ds, de, pl, a, b, lab in rows
        )
    )


def write_sequence_rows(
    out: IO[str], block: PreparedBlock | None, probs: np.ndarray | None = None
) -> tuple[dict[str, int], int]:
    """Append one row per input record of ``block``; returns (records per status, records labelled virus).

    The rule is the module docstring's: ``virus`` iff one of the read's chunks is virus by upstream's
    chunk rule; both probabilities are those of the read's best frame (highest P(virus)).
    """
    if block is None:
        out.write("\t".join(SEQUENCE_COLUMNS) + "\n")
        return {}, 0
    assert probs is not None
    f = block.frames
    n_chunks = len(block.chunk_ids)
    # Per chunk: max P(others), max P(virus) over its frames (float32, compared exactly as upstream's
    # highest-score file compares them); a chunk without frames stays at -1 and is not virus.
    chunk_max = np.full((n_chunks, 2), -1.0, dtype=np.float32)
    if len(f):
        np.maximum.at(chunk_max, f.chunk_index, probs)
    chunk_virus = (chunk_max[:, 0] >= 0) & (chunk_max[:, 1] >= chunk_max[:, 0])
    virus_cum = np.concatenate([[0], np.cumsum(chunk_virus)])
    virus_chunks = (virus_cum[block.chunk_offsets[1:]] - virus_cum[block.chunk_offsets[:-1]]).tolist()
    chunks_per_record = np.diff(block.chunk_offsets).tolist()
    offsets = block.frame_offsets.tolist()

    counts: dict[str, int] = {}
    virus_records = 0
    lines = []
    for i, rid in enumerate(block.record_ids):
        length = int(block.record_lengths[i])
        chunks = chunks_per_record[i]
        kept = offsets[i + 1] - offsets[i]
        if length == 0:
            status = STATUS_EMPTY
        elif chunks == 0:  # a read with bases always has a chunk unless --min-length left it out
            status = STATUS_TOO_SHORT
        elif kept == 0:
            status = STATUS_NO_FRAME
        else:
            status = STATUS_SCORED
        counts[status] = counts.get(status, 0) + 1
        if kept:
            best = offsets[i] + int(np.argmax(probs[offsets[i] : offsets[i + 1], 1]))  # first on a tie
            p_others, p_virus = f32_column(probs[best])
            is_virus = virus_chunks[i] > 0
            label = LABELS[int(is_virus)]
            virus_records += int(is_virus)
        else:
            p_virus = p_others = label = MISSING
        lines.append(
            f"{rid}\t{length}\t{chunks}\t{kept}\t{p_virus}\t{p_others}\t{virus_chunks[i]}\t{label}\t{status}\n"
        )
    out.write("".join(lines))
    return counts, virus_records
