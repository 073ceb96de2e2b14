"""Six-frame translation and upstream's frame selection, vectorised over a batch of chunks.

Upstream translates each chunk codon by codon in Python; at GPU speeds that would be the bottleneck, so
the whole batch is done with a handful of numpy passes while keeping upstream's exact rules:

* the chunk is upper-cased; the reverse complement swaps A/C/G/T only and keeps every other letter;
* codon ``i`` of frame offset ``o`` is ``seq[i:i+3]`` for ``i = o, o+3, ...`` while ``i < len - 2``;
* a codon with any letter outside ACGT produces *nothing* (the protein gets shorter and loses register);
* a frame is kept iff its protein is non-empty and has no stop ``*``;
* the DNA paired with a kept frame of protein length ``p`` is ``strand[o : o + 3p + 1]`` (clipped).

How the vectorisation reproduces the two "nothing" rules at once: every base becomes a code 0..3
(A, C, G, T; lower case too, since upstream upper-cases first) or 4 (anything else). Chunks are laid
out as rows of a 2-D array padded with 4, so a codon that runs past the end of its chunk looks exactly
like a codon containing an N. ``25*b0 + 5*b1 + b2`` is then a codon code 0..124 that no real codon
shares with an invalid one; column ``i`` holds the codon starting at ``i``, so frame offset ``o`` is
the column slice ``o::3``.

Why no reverse-complement array is built: the reverse strand's codons are the forward triplets read
backwards and complemented, so a reverse stop (TAA, TAG, TGA) is a forward triplet TTA, CTA or TCA,
and reverse frame ``o`` of a chunk of length ``L`` is made of exactly the full forward triplets starting
at positions ``i ≡ L - 3 - o (mod 3)``. Stops of all six frames therefore come from one forward grid,
and amino acids are looked up (through a reverse-complement table, in reverse order) only for the few
frames that are kept. That halves the work on the numbers that decide throughput.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "CODON_TABLE",
    "FRAME_SUFFIXES",
    "FrameSelection",
    "reverse_complement",
    "select_frames",
]

_BASES = "TCAG"
_AMINO = "FFLLSSSSYY**CC*WLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG"
#: The standard genetic code (NCBI table 1); stops are ``*``.
CODON_TABLE: dict[str, str] = {
    a + b + c: _AMINO[16 * i + 4 * j + k]
    for i, a in enumerate(_BASES)
    for j, b in enumerate(_BASES)
    for k, c in enumerate(_BASES)
}

#: Frame id suffixes for frames 1..6, as upstream appends them to the chunk id.
FRAME_SUFFIXES = ("F1", "F2", "F3", "R1", "R2", "R3")

_INVALID = 4  # base code of every letter that is not A/C/G/T (and of the padding)
_NONE = 0  # amino-acid byte of "this codon yields nothing"

# Base codes A=0, C=1, G=2, T=3 (lower case too), everything else 4. bytes.translate does the mapping
# in C at memory speed, several times faster than a numpy fancy-index lookup.
_FWD_TABLE = bytes("ACGT".index(chr(i).upper()) if chr(i) in "ACGTacgt" else _INVALID for i in range(256))


def _code(codon: str) -> int:
    b0, b1, b2 = (_FWD_TABLE[ord(c)] for c in codon)
    return 25 * b0 + 5 * b1 + b2


def _revcomp_codon(codon: str) -> str:
    return codon.translate(str.maketrans("ACGT", "TGCA"))[::-1]


# Amino acid of a forward codon code, and of the reverse complement of the triplet with that code.
_AA_FORWARD = np.full(125, _NONE, dtype=np.uint8)
_AA_REVERSE = np.full(125, _NONE, dtype=np.uint8)
for _codon, _aa in CODON_TABLE.items():
    _AA_FORWARD[_code(_codon)] = ord(_aa)
    _AA_REVERSE[_code(_revcomp_codon(_codon))] = ord(_aa)
_FORWARD_STOPS = tuple(_code(c) for c, aa in CODON_TABLE.items() if aa == "*")  # TAA TAG TGA
_REVERSE_STOPS = tuple(_code(_revcomp_codon(c)) for c, aa in CODON_TABLE.items() if aa == "*")

# Complement of upper-case A/C/G/T only: other letters are kept, as upstream does.
_LOWER = bytes(range(ord("a"), ord("z") + 1))
_COMP_STR = str.maketrans("ACGT", "TGCA")


def reverse_complement(chunk: str) -> str:
    """Upstream's reverse complement of a chunk: upper-cased, A/C/G/T swapped, others kept, reversed."""
    return chunk.upper().translate(_COMP_STR)[::-1]


@dataclass(frozen=True)
class FrameSelection:
    """The kept frames of a batch, in upstream order (chunk, then frame 1..6).

    Columnar, because the predictor batches by length and scatters results back by row; one Python
    object per frame would cost more than the translation itself.
    """

    chunk: np.ndarray  # int64: index of the chunk in the batch
    frame: np.ndarray  # int8: 1..3 forward, 4..6 reverse (upstream numbering)
    start: np.ndarray  # int64: the DNA's span in FORWARD-strand chunk coordinates, 0-based ...
    end: np.ndarray  # ... end exclusive (for reverse frames revcomp[a:b] maps to [L-b, L-a))
    protein: list[str]
    dna: list[str]  # upper case; reverse-strand DNA is the reverse complement, as upstream writes it

    def __len__(self) -> int:
        return len(self.protein)

    @classmethod
    def empty(cls) -> FrameSelection:
        none = np.zeros(0, dtype=np.int64)
        return cls(none, none.astype(np.int8), none, none, [], [])


def _layout(codes: np.ndarray, lengths: np.ndarray, width: int) -> np.ndarray:
    """Place concatenated per-row codes into a ``(rows, width)`` array padded with the invalid code."""
    rows = len(lengths)
    if codes.size == rows * width:  # every row full (all chunks as long as the widest): just a view
        return codes.reshape(rows, width)
    grid = np.full((rows, width), _INVALID, dtype=np.uint8)
    grid[np.arange(width) < lengths[:, None]] = codes  # boolean fill goes row by row: order preserved
    return grid


def _any_per_class(flags: np.ndarray) -> np.ndarray:
    """``(rows, 3m)`` per-position flags -> ``(rows, 3)``: any flag at positions ``≡ 0, 1, 2 (mod 3)``.

    Reducing each strided class separately is ~10x faster than ``reshape(rows, m, 3).any(1)``, which
    numpy runs as an inner loop of length 3.
    """
    by_class = flags.reshape(len(flags), -1, 3)
    return np.stack([by_class[:, :, c].any(axis=1) for c in range(3)], axis=1)


def _is_any(codon: np.ndarray, codes: tuple[int, ...]) -> np.ndarray:
    hit = codon == codes[0]
    for code in codes[1:]:
        hit |= codon == code
    return hit


def select_frames(chunks: Sequence[str]) -> FrameSelection:
    """Translate every chunk in six frames and keep the frames upstream keeps.

    ``chunks`` are DNA strings in any case (the reader has already checked the alphabet; a non-ASCII
    character would simply count as an invalid base). Returns the kept frames of the whole batch.
    """
    n = len(chunks)
    if n == 0:
        return FrameSelection.empty()
    lengths = np.fromiter(map(len, chunks), dtype=np.int64, count=n)
    raw = "".join(chunks).encode("ascii", "replace")  # 'replace' keeps one byte per character
    codes_bytes = raw.translate(_FWD_TABLE)
    longest = int(lengths.max())
    # Width w with (w - 2) % 3 == 0, so the w - 2 codon columns fold into (codons, 3 position classes).
    width = max(5, longest + (2 - longest) % 3)
    grid = _layout(np.frombuffer(codes_bytes, dtype=np.uint8), lengths, width)

    codon = grid[:, :-2] * np.uint8(25)  # column i = the triplet starting at i
    codon += grid[:, 1:-1] * np.uint8(5)
    codon += grid[:, 2:]

    # Position class of each frame's codons: forward offset o -> o; reverse offset o -> (L - 3 - o) % 3.
    rows = np.arange(n)[:, None]
    rev_class = (lengths[:, None] - 3 - np.arange(3)) % 3
    fwd_stop = _any_per_class(_is_any(codon, _FORWARD_STOPS))
    rev_stop = _any_per_class(_is_any(codon, _REVERSE_STOPS))[rows, rev_class]
    if bytes([_INVALID]) in codes_bytes:  # some non-ACGT letter: a frame may have no valid codon
        valid = grid < _INVALID
        has_codon = _any_per_class(valid[:, :-2] & valid[:, 1:-1] & valid[:, 2:])
        fwd_codon, rev_codon = has_codon, has_codon[rows, rev_class]
    else:  # only the chunk's end limits codons: offset o has one iff L >= o + 3, on either strand
        fwd_codon = rev_codon = lengths[:, None] >= np.arange(3, 6)
    keep = np.concatenate([fwd_codon & ~fwd_stop, rev_codon & ~rev_stop], axis=1)  # (chunk, frame 1..6)
    chunk_idx, frame_idx = np.nonzero(keep)  # row-major: chunk order, then frame 1..6
    if chunk_idx.size == 0:
        return FrameSelection.empty()

    reverse = frame_idx >= 3
    offset = frame_idx % 3
    clen = lengths[chunk_idx]
    klass = np.where(reverse, (clen - 3 - offset) % 3, offset)
    triplets = codon.reshape(n, -1, 3)[chunk_idx, :, klass]  # (kept frames, codons), forward order
    amino = np.where(reverse[:, None], _AA_REVERSE[triplets[:, ::-1]], _AA_FORWARD[triplets])
    plen = np.count_nonzero(amino, axis=1)

    a = offset
    b = np.minimum(offset + 3 * plen + 1, clen)  # 3p + 1 bases, clipped at the chunk's end
    start = np.where(reverse, clen - b, a)
    end = np.where(reverse, clen - a, b)

    per_frame = amino.shape[1]
    packed = amino.tobytes()
    proteins = [
        packed[i : i + per_frame].replace(b"\0", b"").decode("ascii")
        for i in range(0, len(packed), per_frame)
    ]
    spans = zip(chunk_idx.tolist(), reverse.tolist(), start.tolist(), end.tolist(), strict=True)
    if len(codes_bytes) == len(raw.translate(None, _LOWER)):  # usual: no lower case, skip .upper()
        dna = [chunks[c][s:e].translate(_COMP_STR)[::-1] if r else chunks[c][s:e] for c, r, s, e in spans]
    else:
        dna = [
            chunks[c][s:e].upper().translate(_COMP_STR)[::-1] if r else chunks[c][s:e].upper()
            for c, r, s, e in spans
        ]
    return FrameSelection(
        chunk=chunk_idx.astype(np.int64),
        frame=(frame_idx + 1).astype(np.int8),
        start=start.astype(np.int64),
        end=end.astype(np.int64),
        protein=proteins,
        dna=dna,
    )
