"""The streaming prepare path: block structure and upstream's identified_* files, byte for byte."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from virnucpro_trt.errors import InputFormatError
from virnucpro_trt.sequences import prepare
from virnucpro_trt.sequences.chunking import chunk_bounds
from virnucpro_trt.sequences.prepare import (
    NUCLEOTIDE_FILE,
    PROTEIN_FILE,
    IdentifiedFilesWriter,
    prepare_blocks,
    write_identified_files,
)
from virnucpro_trt.sequences.reader import SeqRecord, read_records
from virnucpro_trt.sequences.synthetic import generate_reads, write_fasta

from .reference import SUFFIXES, ref_identified, ref_revcomp


def _reads() -> list[tuple[str, str]]:
    reads = generate_reads(240, 500, seed=11, long_reads=25, lowercase_fraction=0.3, n_rate=0.003)
    reads += generate_reads(60, 300, seed=12, prefix="short")
    reads += [("empty_one", ""), ("tiny", "ATG"), ("iupac", "ATGRYKMSWBDHVNUAAACCC" * 20)]
    return reads


@pytest.fixture(scope="module")
def fasta(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("in") / "reads.fa"
    write_fasta(_reads(), str(path))
    return path


@pytest.mark.parametrize("chunk_length", [300, 500])
@pytest.mark.parametrize("block_records", [1, 7, 2048])
def test_identified_files_are_byte_exact(
    fasta: Path, tmp_path: Path, chunk_length: int, block_records: int
) -> None:
    counts = write_identified_files(read_records(fasta), tmp_path, chunk_length, block_records=block_records)
    nuc, prot = ref_identified(_reads(), chunk_length)
    assert (tmp_path / NUCLEOTIDE_FILE).read_bytes() == nuc.encode()
    assert (tmp_path / PROTEIN_FILE).read_bytes() == prot.encode()
    assert counts["frames"] == nuc.count(">") > 100
    assert counts["records"] == len(_reads()) and counts["empty_records"] == 1
    assert counts["chunks"] == sum(len(chunk_bounds(len(s), chunk_length)) for _, s in _reads())
    assert sorted(p.name for p in tmp_path.iterdir()) == [NUCLEOTIDE_FILE, PROTEIN_FILE]  # no leftovers


def test_small_translation_batches_give_the_same_files(
    fasta: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_identified_files(read_records(fasta), tmp_path / "a", 300)
    monkeypatch.setattr(prepare, "_MAX_BATCH_CHUNKS", 3)
    write_identified_files(read_records(fasta), tmp_path / "b", 300)
    for name in (NUCLEOTIDE_FILE, PROTEIN_FILE):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_writer_fed_with_blocks_matches(fasta: Path, tmp_path: Path) -> None:
    counts = write_identified_files(read_records(fasta), tmp_path / "a", 500)
    with IdentifiedFilesWriter(tmp_path / "b") as writer:
        for block in prepare_blocks(read_records(fasta), 500, block_records=33):
            writer.write(block)
    assert writer.counts == counts
    for name in (NUCLEOTIDE_FILE, PROTEIN_FILE):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_nothing_planted_at_a_temporary_name_is_written_through(fasta: Path, tmp_path: Path) -> None:
    """The files are written under unguessable names, created new: a link planted where an older
    version put them (``.NAME.<pid>.partial``) is neither followed nor removed."""
    outdir, victim = tmp_path / "out", tmp_path / "victim.txt"
    outdir.mkdir()
    victim.write_text("not ours\n")
    planted = [outdir / f".{name}.{os.getpid()}.partial" for name in (NUCLEOTIDE_FILE, PROTEIN_FILE)]
    for link in planted:
        link.symlink_to(victim)
    write_identified_files(read_records(fasta), outdir, 500)
    assert victim.read_text() == "not ours\n"
    assert all(link.is_symlink() for link in planted)
    assert (outdir / PROTEIN_FILE).read_text().startswith(">")
    assert sorted(p.name for p in outdir.iterdir() if not p.is_symlink()) == sorted(
        [NUCLEOTIDE_FILE, PROTEIN_FILE]
    )


def test_block_structure(fasta: Path) -> None:
    sequences = dict(_reads())
    blocks = list(prepare_blocks(read_records(fasta), 500, block_records=50))
    assert [b.n_records for b in blocks][:-1] == [50] * (len(blocks) - 1)
    seen_records = 0
    for block in blocks:
        for plan in block.records():
            assert plan.index == seen_records
            seen_records += 1
            seq = sequences[plan.id]
            assert plan.length == len(seq)
            assert [(c.start, c.end) for c in plan.chunks] == chunk_bounds(len(seq), 500)
            assert [c.id for c in plan.chunks] == [f"{plan.id}_chunk_{c.number}" for c in plan.chunks]
            assert [c.number for c in plan.chunks] == list(range(1, len(plan.chunks) + 1))
            if not seq:
                assert plan.chunks == () and plan.frames == ()
            for frame in plan.frames:
                assert frame.record_index == plan.index
                suffix = ("F" if frame.strand == "+" else "R") + str(frame.frame)
                assert frame.id == f"{plan.id}_chunk_{frame.chunk_number}{suffix}" and suffix in SUFFIXES
                assert frame.chunk_id == plan.chunks[frame.chunk_number - 1].id
                piece = seq[frame.dna_start : frame.dna_end].upper()
                assert frame.dna == (piece if frame.strand == "+" else ref_revcomp(piece))
                chunk = plan.chunks[frame.chunk_number - 1]
                assert chunk.start <= frame.dna_start < frame.dna_end <= chunk.end
        f = block.frames
        assert np.all(np.diff(f.record_index) >= 0)
        assert np.array_equal(block.chunk_record[f.chunk_index], f.record_index)
        assert block.frame_offsets[-1] == len(f) and block.chunk_offsets[-1] == len(block.chunk_ids)
    assert seen_records == len(sequences)


def test_non_consecutive_indices_are_kept() -> None:
    records = [
        SeqRecord(10, "a", "a", "ATG" * 10),
        SeqRecord(42, "b", "b", ""),
        SeqRecord(43, "c", "c", "CAT" * 9),
    ]
    (block,) = list(prepare_blocks(records, 500))
    assert block.record_index.tolist() == [10, 42, 43]
    assert [p.index for p in block.records()] == [10, 42, 43]
    assert set(block.frames.record_index.tolist()) == {10, 43}


def _failing(records: list[SeqRecord], after: int) -> Iterator[SeqRecord]:
    yield from records[:after]
    raise InputFormatError("record 3 (id 'x'): bad")


def test_failure_leaves_no_complete_looking_file(tmp_path: Path) -> None:
    (tmp_path / NUCLEOTIDE_FILE).write_text("stale from an earlier run\n")
    records = [SeqRecord(i, f"r{i}", f"r{i}", "ATGAAA" * 30) for i in range(5)]
    with pytest.raises(InputFormatError):
        write_identified_files(_failing(records, 2), tmp_path, 500, block_records=1)
    assert list(tmp_path.iterdir()) == []


def test_empty_input_writes_empty_files(tmp_path: Path) -> None:
    counts = write_identified_files(iter(()), tmp_path / "out", 500)
    assert counts == dict.fromkeys(counts, 0)
    assert (tmp_path / "out" / NUCLEOTIDE_FILE).read_bytes() == b""
    assert (tmp_path / "out" / PROTEIN_FILE).read_bytes() == b""


def test_bad_chunk_length() -> None:
    with pytest.raises(ValueError):
        list(prepare_blocks([], 0))
