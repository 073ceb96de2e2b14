"""``sequences.tsv``'s per-read rule on hand-made scores: the call follows upstream's chunk calls."""

from __future__ import annotations

import io

import numpy as np

from virnucpro_trt.outputs.tables import SEQUENCE_COLUMNS, write_sequence_rows
from virnucpro_trt.outputs.upstream import ChunkMaxima
from virnucpro_trt.sequences.prepare import prepare_blocks
from virnucpro_trt.sequences.reader import SeqRecord

# (GCT)n keeps all six frames of every chunk (GCT/CTG/TGC forward, AGC/GCA/CAG reverse: no stop).
TWO_CHUNKS = "GCT" * 333 + "G"  # 1000 bp: chunks [0:500] and [500:1000]
ONE_CHUNK = "GCT" * 100


def _others(p_virus: float) -> str:
    return str(np.float32(1) - np.float32(p_virus))


def _rows(records: list[SeqRecord], p_virus: list[float], min_length: int = 0):
    block = next(prepare_blocks(records, 500, min_length=min_length))
    assert len(block.frames) == len(p_virus)
    pv = np.array(p_virus, dtype=np.float32)
    probs = np.stack([np.float32(1) - pv, pv], axis=1)
    out = io.StringIO()
    counts, virus = write_sequence_rows(out, block, probs)
    lines = out.getvalue().splitlines()
    rows = [dict(zip(SEQUENCE_COLUMNS, line.split("\t"), strict=True)) for line in lines]
    maxima = ChunkMaxima()
    maxima.update(block.frames.frame_id, probs)
    return {r["sequence_id"]: r for r in rows}, counts, virus, maxima


def test_one_viral_chunk_makes_a_viral_read_scored_by_its_best_frame():
    records = [SeqRecord(0, "mixed", "mixed", TWO_CHUNKS), SeqRecord(1, "weak", "weak", ONE_CHUNK)]
    # mixed, chunk 1: best P(virus) 0.9 but best P(others) 0.95 -> others; chunk 2: 0.7 vs 0.4 -> virus.
    # weak: best P(virus) 0.6 against best P(others) 0.8 -> others, although one frame leans virus.
    mixed_chunk_1 = [0.9, 0.05, 0.1, 0.1, 0.1, 0.1]
    mixed_chunk_2 = [0.7, 0.6, 0.6, 0.6, 0.6, 0.6]
    weak = [0.6, 0.2, 0.3, 0.3, 0.3, 0.3]
    scores = [*mixed_chunk_1, *mixed_chunk_2, *weak]
    rows, counts, virus, maxima = _rows(records, scores)
    assert maxima.is_virus("mixed_chunk_1") is False and maxima.is_virus("mixed_chunk_2") is True
    mixed = rows["mixed"]
    assert (mixed["chunks"], mixed["kept_frames"], mixed["virus_chunks"]) == ("2", "12", "1")
    assert mixed["label"] == "virus"  # the rule before this one called it others (0.9 < 0.95)
    assert (mixed["best_p_virus"], mixed["best_p_others"]) == ("0.9", _others(0.9))  # one frame: chunk 1 F1
    weak = rows["weak"]
    assert (weak["label"], weak["virus_chunks"]) == ("others", "0")
    assert (weak["best_p_virus"], weak["best_p_others"]) == ("0.6", _others(0.6))
    assert virus == 1 and counts == {"scored": 2}


def test_a_tie_counts_as_virus_like_upstreams_chunk_rule():
    records = [SeqRecord(0, "tie", "tie", ONE_CHUNK)]
    scores = [0.5] * 6  # every frame a tie: max P(virus) 0.5 >= max P(others) 0.5
    rows, _, virus, maxima = _rows(records, scores)
    assert maxima.is_virus("tie_chunk_1") is True  # upstream: max(score2) >= max(score1)
    assert rows["tie"]["label"] == "virus" and virus == 1
    assert (rows["tie"]["best_p_virus"], rows["tie"]["best_p_others"]) == ("0.5", "0.5")


def test_statuses_of_reads_that_are_not_scored():
    records = [
        SeqRecord(0, "empty", "empty", ""),
        SeqRecord(1, "short", "short", "GCTGCTGCT"),
        SeqRecord(2, "all_n", "all_n", "N" * 90),
        SeqRecord(3, "kept", "kept", ONE_CHUNK),
    ]
    rows, counts, _, _ = _rows(records, [0.1] * 6, min_length=50)
    assert counts == {"empty": 1, "too_short": 1, "no_stop_free_frame": 1, "scored": 1}
    assert [rows[r]["status"] for r in ("empty", "short", "all_n", "kept")] == [
        "empty", "too_short", "no_stop_free_frame", "scored",
    ]  # fmt: skip
    assert (rows["short"]["length"], rows["short"]["chunks"], rows["short"]["kept_frames"]) == ("9", "0", "0")
    for rid in ("empty", "short", "all_n"):
        assert (rows[rid]["best_p_virus"], rows[rid]["best_p_others"], rows[rid]["label"]) == ("NA",) * 3
