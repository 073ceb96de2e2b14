"""The one workload every configuration runs: reads, and the frames they keep.

docs/performance.md defines benchmarks by short reads (300 or 500 bp) and counts throughput in kept frames.
Random DNA almost never keeps a 500 bp frame, so generated reads carry coding regions
(:func:`~virnucpro_trt.sequences.synthetic.generate_reads`); their lengths follow a named mix (one
length, 100-1000 bp, or 150 bp Illumina-like: ``LENGTH_MIXES``), so padding can be measured on realistic
spreads too. A FASTA is read and validated like ``predict`` reads it. The reads are held in memory: a
benchmark input is small, and every configuration must start from exactly the same records.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from virnucpro_trt.errors import UserError
from virnucpro_trt.sequences.prepare import prepare_blocks
from virnucpro_trt.sequences.reader import SeqRecord, judge_dna_letters, read_records
from virnucpro_trt.sequences.synthetic import LENGTH_MIXES, generate_reads, mix_lengths
from virnucpro_trt.settings import DEFAULT_CHUNK_LENGTH

DEFAULT_READS = 1000
DEFAULT_READ_LENGTH = 500
DEFAULT_SEED = 42
# Seven in ten reads coding: the mix the committed full-size figures were measured on.
DEFAULT_CODING_FRACTION = 0.7
# Generated reads are held in memory (see above): at most this many bases, ~1 GB of text. Unbounded,
# ``--reads 10^11`` failed on a 745 GiB allocation and ``--read-length 2^63`` overflowed inside numpy.
MAX_GENERATED_BASES = 10**9


@dataclass(frozen=True)
class Workload:
    """Records plus how many frames each keeps (so a subset can be cut at a read boundary)."""

    records: list[SeqRecord]
    frames_per_record: np.ndarray  # int64, kept frames of each record, input order
    chunk_length: int
    source: str  # "generated" or the FASTA path
    facts: dict[str, Any]  # seed, coding fraction... (what the JSON records about where reads came from)

    @property
    def reads(self) -> int:
        return len(self.records)

    @property
    def frames(self) -> int:
        return int(self.frames_per_record.sum())

    def prefix_for_frames(self, frames: int) -> list[SeqRecord]:
        """The shortest prefix of the reads that keeps at least ``frames`` frames (all reads if fewer).

        The reference may run on a subset; cutting at a read boundary keeps its path identical to the
        others' (whole reads in, every frame of them out) and its frames a prefix of theirs.
        """
        if frames >= self.frames:
            return self.records
        cumulative = np.cumsum(self.frames_per_record)
        count = int(np.searchsorted(cumulative, frames, side="left")) + 1
        return self.records[:count]

    def frame_texts(self) -> tuple[list[str], list[str]]:
        """``(frame DNA, protein)`` of every kept frame, in input order, as ``predict`` cuts them."""
        dna: list[str] = []
        proteins: list[str] = []
        for block in prepare_blocks(self.records, self.chunk_length):
            dna += block.frames.dna
            proteins += block.frames.protein
        return dna, proteins

    def describe(self) -> dict[str, Any]:
        lengths = np.fromiter((len(r.sequence) for r in self.records), dtype=np.int64, count=self.reads)
        return {
            "source": self.source,
            "reads": self.reads,
            "read_length": round(float(lengths.mean())) if self.reads else 0,
            "read_length_min": int(lengths.min()) if self.reads else 0,
            "read_length_median": round(float(np.median(lengths))) if self.reads else 0,
            "read_length_max": int(lengths.max()) if self.reads else 0,
            "chunk_length": self.chunk_length,
            "frames": self.frames,
            "reads_without_frames": int(np.count_nonzero(self.frames_per_record == 0)),
            **self.facts,
        }


def _count_frames(records: list[SeqRecord], chunk_length: int) -> np.ndarray:
    counts = [np.diff(block.frame_offsets) for block in prepare_blocks(records, chunk_length)]
    return np.concatenate(counts).astype(np.int64) if counts else np.zeros(0, dtype=np.int64)


def _checked(workload: Workload) -> Workload:
    if workload.frames == 0:
        raise UserError(
            f"the workload ({workload.source}, {workload.reads} reads) keeps no frame: every frame of every "
            "chunk has a stop codon, so there is nothing to embed"
        )
    return workload


def generated_workload(
    reads: int = DEFAULT_READS,
    read_length: int = DEFAULT_READ_LENGTH,
    seed: int = DEFAULT_SEED,
    coding_fraction: float = DEFAULT_CODING_FRACTION,
    chunk_length: int = DEFAULT_CHUNK_LENGTH,
    length_mix: str = "fixed",
) -> Workload:
    """Seeded synthetic reads with coding regions: the same arguments give the same reads everywhere.

    ``length_mix`` names the read lengths (``read_length`` is the ``fixed`` mix's length); the fixed mix
    makes exactly the reads it always made.
    """
    if length_mix not in LENGTH_MIXES:
        raise UserError(f"--length-mix {length_mix}: expected one of {', '.join(LENGTH_MIXES)}")
    mix = LENGTH_MIXES[length_mix]
    if reads * (mix.longest or read_length) > MAX_GENERATED_BASES:
        raise UserError(
            f"--reads {reads} of up to {mix.longest or read_length} bp: generated reads hold at most "
            f"{MAX_GENERATED_BASES:,} bases (they are kept in memory); give fewer or shorter reads"
        )
    lengths = None if length_mix == "fixed" else mix_lengths(length_mix, reads, seed, read_length)
    pairs = generate_reads(
        reads, read_length, seed=seed, coding_fraction=coding_fraction, n_rate=mix.n_rate, lengths=lengths
    )
    records = [SeqRecord(i, rid, rid, seq) for i, (rid, seq) in enumerate(pairs)]
    facts = {
        "seed": seed,
        "coding_fraction": coding_fraction,
        "length_mix": length_mix,
        "length_mix_rule": mix.description if length_mix != "fixed" else f"every read {read_length} bp",
    }
    return _checked(Workload(records, _count_frames(records, chunk_length), chunk_length, "generated", facts))


def fasta_workload(path: Path, chunk_length: int = DEFAULT_CHUNK_LENGTH) -> Workload:
    """The reads of a FASTA/FASTQ file, validated (a bad record is a one-line usage error)."""
    records = list(judge_dna_letters(read_records(path, "dna"), str(path)))
    if not records:
        raise UserError(f"{path} holds no reads")
    return _checked(Workload(records, _count_frames(records, chunk_length), chunk_length, str(path), {}))


def frame_sequences(items: int, seed: int = 7, length_mix: str = "fixed") -> tuple[list[str], list[str]]:
    """Kept frames of 500 bp reads (or of ``length_mix``'s; 70% coding): ``(frame DNA, protein)`` lists
    of ``items`` (fewer only if the reads keep fewer frames).

    For encoder-only measurements (``benchmarks/engines_throughput.py``), which need frames, not reads.
    """
    reads = int(items * 1.6) + 64  # every mix keeps > 0.7 frames per read
    dna, proteins = generated_workload(reads, 500, seed, 0.7, 500, length_mix).frame_texts()
    return dna[:items], proteins[:items]
