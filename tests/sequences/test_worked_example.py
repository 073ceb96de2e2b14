"""Spec section 6, the worked example from upstream's test data.

The upstream file itself is not available here, so ``tests/data/worked_example.fa`` was RECONSTRUCTED
from the spec's facts: a seeded search over synonymous codons of the given reverse-frame-1 protein,
with the given first 20 and last 12 bases, that keeps exactly R1 and R2 and drops F1 (an ORF ending in
TAA). Every fact the spec states is asserted below, so the file is a faithful stand-in.
"""

from __future__ import annotations

from pathlib import Path

from virnucpro_trt.sequences.prepare import prepare_blocks, write_identified_files
from virnucpro_trt.sequences.reader import read_records
from virnucpro_trt.sequences.translation import reverse_complement, select_frames

from .reference import ref_translate

DATA = Path(__file__).resolve().parents[1] / "data" / "worked_example.fa"
R1_PROTEIN = "LFRRFFRRFQFRNRFFRRFNRFTFRRHRFRRFFNRFCQFCTFFNRFFQFCNTFTFASH"


def _record():
    (record,) = list(read_records(DATA))
    return record


def test_input_facts() -> None:
    record = _record()
    seq = record.sequence
    assert record.id == "synthetic_seq_1"
    assert len(seq) == 174
    assert seq.startswith("ATGGCTAGCAAAGGTAAACG") and seq.endswith("GCGGCGAAATAA")
    forward = ref_translate(seq, 0)
    assert forward.startswith("M") and forward.endswith("*") and forward.count("*") == 1  # an ORF


def test_kept_frames() -> None:
    seq = _record().sequence
    rc = reverse_complement(seq)
    sel = select_frames([seq])
    assert sel.frame.tolist() == [4, 5]  # R1 and R2 only; F1 dropped for its TAA
    assert sel.protein[0] == R1_PROTEIN and len(sel.protein[0]) == 58
    assert len(sel.protein[1]) == 57
    assert sel.dna[0] == rc  # the whole 174 bp reverse complement
    assert sel.dna[1] == rc[1:173]


def test_block_and_files(tmp_path: Path) -> None:
    (block,) = list(prepare_blocks(read_records(DATA), 500))
    assert block.chunk_ids == ["synthetic_seq_1_chunk_1"]
    assert block.frames.frame_id == ["synthetic_seq_1_chunk_1R1", "synthetic_seq_1_chunk_1R2"]
    assert block.frames.strand.tolist() == ["-", "-"] and block.frames.frame.tolist() == [1, 2]
    assert block.frames.dna_start.tolist() == [0, 1] and block.frames.dna_end.tolist() == [174, 173]

    counts = write_identified_files(read_records(DATA), tmp_path, 500)
    assert counts["frames"] == 2 and counts["chunks"] == 1 and counts["records"] == 1
    rc = reverse_complement(_record().sequence)
    nuc = (tmp_path / "identified_nucleotide.fa").read_text()
    prot = (tmp_path / "identified_protein.faa").read_text()
    assert nuc == f">synthetic_seq_1_chunk_1R1\n{rc}\n>synthetic_seq_1_chunk_1R2\n{rc[1:173]}\n"
    assert prot.startswith(f">synthetic_seq_1_chunk_1R1\n{R1_PROTEIN}\n>synthetic_seq_1_chunk_1R2\n")
