"""Vectorised six-frame translation and frame selection against the literal spec (section 2)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from virnucpro_trt.sequences.translation import (
    CODON_TABLE,
    FrameSelection,
    reverse_complement,
    select_frames,
)

from .reference import CODONS, ref_frames, ref_revcomp

_SENSE = [codon for codon, aa in CODONS.items() if aa != "*"]


def _random_chunk(rng: random.Random) -> str:
    """Random chunk mixing what real inputs contain: lower case, N, IUPAC codes, U, ORFs."""
    length = rng.choice([rng.randint(0, 12), rng.randint(0, 600), rng.randint(290, 310), 500])
    kind = rng.random()
    if kind < 0.4:  # stop-free run in a random frame and strand: exercises kept frames at any length
        orf = "".join(rng.choice(_SENSE) for _ in range(length // 3 + 1))
        seq = (rng.choice("ACGT") * rng.randint(0, 2) + orf)[:length]
        seq = ref_revcomp(seq) if rng.random() < 0.5 else seq
    else:
        seq = "".join(rng.choice("ACGT") for _ in range(length))
    letters = list(seq)
    if rng.random() < 0.5:  # sprinkle other letters
        for _ in range(rng.randint(1, 4)):
            if letters:
                letters[rng.randrange(len(letters))] = rng.choice("NNNnRYKMSWBDHVUu")
    if rng.random() < 0.3:
        letters = [ch.lower() if rng.random() < 0.5 else ch for ch in letters]
    return "".join(letters)


def _as_rows(sel: FrameSelection) -> list[tuple[int, int, str, str]]:
    return list(zip(sel.chunk.tolist(), sel.frame.tolist(), sel.protein, sel.dna, strict=True))


def test_codon_table_is_the_standard_code() -> None:
    assert CODON_TABLE == CODONS
    assert (CODON_TABLE["ATG"], CODON_TABLE["TGG"], CODON_TABLE["TAA"], CODON_TABLE["TGA"]) == tuple("MW**")


@pytest.mark.parametrize("seed", range(6))
def test_matches_reference_on_random_batches(seed: int) -> None:
    rng = random.Random(seed)
    checked_frames = 0
    for _ in range(25):
        chunks = [_random_chunk(rng) for _ in range(rng.randint(1, 60))]
        sel = select_frames(chunks)
        expected = [(i, m, prot, dna) for i, c in enumerate(chunks) for m, prot, dna in ref_frames(c)]
        assert _as_rows(sel) == expected
        checked_frames += len(expected)
        for i, m, start, end, dna in zip(sel.chunk, sel.frame, sel.start, sel.end, sel.dna, strict=True):
            piece = chunks[i].upper()[start:end]
            assert (piece if m <= 3 else ref_revcomp(piece)) == dna
    assert checked_frames > 200  # the batches really exercise kept frames


def test_uniform_length_fast_path_matches_reference() -> None:
    rng = random.Random(99)
    chunks = []
    for _ in range(300):  # all 500 bp, ACGT only: the no-padding, no-invalid path
        seq = "".join(rng.choice(_SENSE) for _ in range(170))[rng.randint(0, 2) :][:500]
        chunks.append(ref_revcomp(seq) if rng.random() < 0.5 else seq)
    sel = select_frames(chunks)
    expected = [(i, m, prot, dna) for i, c in enumerate(chunks) for m, prot, dna in ref_frames(c)]
    assert _as_rows(sel) == expected and len(expected) >= 300


def test_invalid_codons_are_dropped_and_register_is_lost() -> None:
    # ATG NNN TGG: the NNN codon yields nothing, protein "MW", DNA = first 3*2+1 bases.
    sel = select_frames(["ATGNNNTGGC"])
    assert sel.frame[0] == 1 and sel.protein[0] == "MW" and sel.dna[0] == "ATGNNNT"
    assert (sel.start[0], sel.end[0]) == (0, 7)


def test_edge_cases() -> None:
    assert len(select_frames([])) == 0
    assert len(select_frames([""])) == 0
    assert len(select_frames(["AC", "NNNNNN", "nnn"])) == 0  # too short / no valid codon
    sel = select_frames(["", "atg"])
    # 'atg' -> F1 "M" (DNA "ATG": 3p+1 clipped) and R1 = CAT -> "H"
    assert _as_rows(sel) == [(1, 1, "M", "ATG"), (1, 4, "H", "CAT")]
    assert sel.start.tolist() == [0, 0] and sel.end.tolist() == [3, 3]


def test_reverse_complement_keeps_non_acgt() -> None:
    assert reverse_complement("acgTNRu") == "URNACGT"  # upper-cased, R and U not complemented


def test_output_types() -> None:
    sel = select_frames(["ATGAAACCCGGG" * 10])
    assert sel.chunk.dtype == np.int64 and sel.frame.dtype == np.int8
    assert all(isinstance(p, str) for p in sel.protein) and all(isinstance(d, str) for d in sel.dna)
