"""Deterministic synthetic reads for benchmarks, demos and tests.

Random DNA almost never has a stop-free 500 bp frame (a random codon is a stop 3 times in 64), so a
benchmark made of random reads would measure a pipeline that keeps nothing. "Coding" reads are therefore
built from random *sense* codons in a random frame and strand, which guarantees at least one kept
frame, and are mixed with random "non-coding" reads. Everything comes from one seeded numpy generator so
the same arguments always give the same reads on every machine.

Read lengths come from a named mix (:data:`LENGTH_MIXES`): one fixed length (the 300/500 bp workloads
the performance goals are stated for), or realistic spreads that exercise padding and batching.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from virnucpro_trt.sequences.translation import CODON_TABLE

__all__ = ["LENGTH_MIXES", "LengthMix", "generate_reads", "mix_lengths", "write_fasta"]


@dataclass(frozen=True)
class LengthMix:
    """A named distribution of read lengths (and the N rate that goes with it)."""

    name: str
    description: str
    n_rate: float = 0.0
    longest: int | None = None  # its longest read (None: the fixed mix's one length)


MIXED_RANGE = (100, 1000)
ILLUMINA_LENGTH = 150
LENGTH_MIXES: dict[str, LengthMix] = {
    mix.name: mix
    for mix in (
        LengthMix("fixed", "every read the same length"),
        LengthMix(
            "mixed",
            "100-1000 bp, log-uniform: short fragments are common, reads past the chunk length are chunked",
            longest=MIXED_RANGE[1],
        ),
        LengthMix(
            "illumina",
            "150 bp Illumina-like: 1 read in 5 quality-trimmed to 100-149 bp, 1 base in 2000 an N",
            n_rate=0.0005,
            longest=ILLUMINA_LENGTH,
        ),
    )
}
ILLUMINA_TRIMMED = (0.2, 100)  # share of reads trimmed, shortest trimmed length


def mix_lengths(mix: str, n: int, seed: int, length: int = 500) -> np.ndarray:
    """Per-read lengths (int64 [n]) of ``mix``; ``length`` is the ``fixed`` mix's. Deterministic per seed,
    and drawn from their own stream so the reads' bases do not depend on the mix's draws."""
    if mix not in LENGTH_MIXES:
        raise ValueError(f"unknown length mix {mix!r}; known: {', '.join(LENGTH_MIXES)}")
    rng = np.random.default_rng((seed, 0x1E))
    if mix == "fixed":
        return np.full(n, length, dtype=np.int64)
    if mix == "mixed":
        low, high = np.log(MIXED_RANGE[0]), np.log(MIXED_RANGE[1] + 1)
        return np.minimum(np.exp(rng.uniform(low, high, size=n)).astype(np.int64), MIXED_RANGE[1])
    share, shortest = ILLUMINA_TRIMMED
    lengths = np.full(n, ILLUMINA_LENGTH, dtype=np.int64)
    trimmed = rng.random(n) < share
    lengths[trimmed] = rng.integers(shortest, ILLUMINA_LENGTH, size=int(trimmed.sum()))
    return lengths

_BASES = np.frombuffer(b"ACGT", dtype=np.uint8)
_SENSE = np.array([list(c.encode()) for c, aa in sorted(CODON_TABLE.items()) if aa != "*"], dtype=np.uint8)
_COMPLEMENT = np.zeros(256, dtype=np.uint8)
for _a, _b in zip(b"ACGTN", b"TGCAN", strict=True):
    _COMPLEMENT[_a] = _b


def _coding_rows(rng: np.random.Generator, count: int, length: int) -> np.ndarray:
    """``count`` reads whose frame (offset 0..2, random strand) is made of sense codons only."""
    codons = rng.integers(0, len(_SENSE), size=(count, length // 3 + 2))
    dna = _SENSE[codons].reshape(count, 3 * codons.shape[1])  # >= length + 3 bases per row
    # Starting the read ``skip`` bases into the codon run puts the coding frame at offset
    # ``(3 - skip) % 3`` of the read: a random frame.
    skip = rng.integers(0, 3, size=count)
    cols = np.arange(length) + skip[:, None]
    rows = np.take_along_axis(dna, cols, axis=1)
    minus = rng.random(count) < 0.5
    rows[minus] = _COMPLEMENT[rows[minus][:, ::-1]]
    return rows


def generate_reads(
    n: int,
    length: int,
    seed: int,
    coding_fraction: float = 0.5,
    *,
    long_reads: int = 0,
    long_length: int | None = None,
    lowercase_fraction: float = 0.0,
    n_rate: float = 0.0,
    prefix: str = "read",
    lengths: np.ndarray | None = None,
) -> list[tuple[str, str]]:
    """Return ``n`` reads ``(id, sequence)`` of ``length`` bp, deterministic for a given ``seed``.

    ``coding_fraction`` of them are coding (see module docstring), the rest uniform random DNA. For
    tests, ``long_reads`` of them (chosen at random) are ``long_length`` bp instead (default 2.5 x
    ``length``, so they are chunked), ``lowercase_fraction`` of the reads are written in lower case, and
    each base is replaced by ``N`` with probability ``n_rate``. ``lengths`` (int [n], e.g. from
    :func:`mix_lengths`) gives every read its own length instead. Ids are ``<prefix>_<i>`` zero-padded.
    """
    if n < 0 or length < 1:
        raise ValueError("n must be >= 0 and length >= 1")
    if lengths is not None and (len(lengths) != n or (n and int(np.min(lengths)) < 1)):
        raise ValueError("lengths must hold n positive lengths")
    rng = np.random.default_rng(seed)
    width = len(str(max(n - 1, 0)))
    is_coding = rng.random(n) < coding_fraction
    lengths = np.full(n, length, dtype=np.int64) if lengths is None else np.array(lengths, dtype=np.int64)
    if long_reads:
        chosen = rng.choice(n, size=min(long_reads, n), replace=False)
        lengths[chosen] = long_length or (5 * length) // 2
    lower = rng.random(n) < lowercase_fraction

    reads: list[tuple[str, str] | None] = [None] * n
    for read_length in np.unique(lengths).tolist():
        same = np.flatnonzero(lengths == read_length)
        coding = same[is_coding[same]]
        noncoding = same[~is_coding[same]]
        block = np.empty((len(same), read_length), dtype=np.uint8)
        order = np.concatenate([coding, noncoding])
        block[: len(coding)] = _coding_rows(rng, len(coding), read_length)
        block[len(coding) :] = _BASES[rng.integers(0, 4, size=(len(noncoding), read_length))]
        if n_rate > 0:
            block[rng.random(block.shape) < n_rate] = ord("N")
        text = block.tobytes().decode("ascii")
        for k, i in enumerate(order.tolist()):
            seq = text[k * read_length : (k + 1) * read_length]
            reads[i] = (f"{prefix}_{i:0{width}d}", seq.lower() if lower[i] else seq)
    return reads  # type: ignore[return-value]


def write_fasta(reads: list[tuple[str, str]], path: str | os.PathLike[str]) -> None:
    """Write reads as 2-line FASTA (the layout upstream's test data uses)."""
    with open(path, "w", encoding="ascii", newline="\n") as handle:
        handle.writelines(f">{rid}\n{seq}\n" for rid, seq in reads)
