"""Straightforward reference implementations written from the spec (sections 1 and 2), for tests only.

Deliberately slow and literal (dict codon table, per-codon loops, the shift list built as a list) so
that the vectorised code is checked against the spec's words, not against itself.
"""

from __future__ import annotations

import math

_ORDER = "TCAG"
_CODE = "FFLLSSSSYY**CC*WLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG"
CODONS = {
    a + b + c: _CODE[16 * i + 4 * j + k]
    for i, a in enumerate(_ORDER)
    for j, b in enumerate(_ORDER)
    for k, c in enumerate(_ORDER)
}
_COMPLEMENT = {"A": "T", "C": "G", "G": "C", "T": "A"}
SUFFIXES = ["F1", "F2", "F3", "R1", "R2", "R3"]


def ref_chunk_bounds(n: int, chunk_length: int) -> list[tuple[int, int]]:
    if n == 0:
        return []
    if n <= chunk_length:
        return [(0, n)]
    k = math.ceil(n / chunk_length)
    spare = k * chunk_length - n
    q = math.floor(spare / k)
    extra = spare - q * (k - 1)
    shifts = [q + 1] * extra + [q] * max(0, k - 1 - extra) + [0]
    bounds = []
    for i in range(min(k, len(shifts))):
        start = i * chunk_length - sum(shifts[:i])
        bounds.append((start, min(start + chunk_length, n)))
    return bounds


def ref_revcomp(seq: str) -> str:
    return "".join(_COMPLEMENT.get(ch, ch) for ch in reversed(seq))


def ref_translate(seq: str, offset: int) -> str:
    protein = ""
    i = offset
    while i < len(seq) - 2:
        codon = seq[i : i + 3]
        if codon in CODONS:  # any letter outside ACGT: the codon yields nothing
            protein += CODONS[codon]
        i += 3
    return protein


def ref_frames(chunk: str) -> list[tuple[int, str, str]]:
    """Kept frames of one chunk: (frame 1..6, protein, DNA)."""
    upper = chunk.upper()
    rc = ref_revcomp(upper)
    kept = []
    for m in range(1, 7):
        strand = upper if m <= 3 else rc
        offset = (m - 1) % 3
        protein = ref_translate(strand, offset)
        if protein and "*" not in protein:
            p = len(protein)
            dna = upper[m - 1 : m + 3 * p] if m <= 3 else rc[m - 4 : m - 3 + 3 * p]
            kept.append((m, protein, dna))
    return kept


def ref_identified(records: list[tuple[str, str]], chunk_length: int) -> tuple[str, str]:
    """Upstream's identified_nucleotide.fa and identified_protein.faa contents."""
    nuc, prot = [], []
    for rid, seq in records:
        for i, (start, end) in enumerate(ref_chunk_bounds(len(seq), chunk_length)):
            chunk_id = f"{rid}_chunk_{i + 1}"
            for m, protein, dna in ref_frames(seq[start:end]):
                nuc.append(f">{chunk_id}{SUFFIXES[m - 1]}\n{dna}\n")
                prot.append(f">{chunk_id}{SUFFIXES[m - 1]}\n{protein}\n")
    return "".join(nuc), "".join(prot)
