"""The workload: generated reads are deterministic and keep frames; a FASTA is read as predict reads it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.cli.helpers import run_cli
from virnucpro_trt.bench.workload import fasta_workload, frame_sequences, generated_workload
from virnucpro_trt.errors import UserError
from virnucpro_trt.sequences.synthetic import generate_reads, mix_lengths, write_fasta


def test_generated_workload_is_deterministic() -> None:
    a, b = generated_workload(300, 500, seed=3), generated_workload(300, 500, seed=3)
    assert [r.sequence for r in a.records] == [r.sequence for r in b.records]
    assert np.array_equal(a.frames_per_record, b.frames_per_record)
    assert a.describe() == b.describe()
    other = generated_workload(300, 500, seed=4)
    assert [r.sequence for r in other.records] != [r.sequence for r in a.records]


def test_generated_reads_keep_frames_as_the_coding_share_says() -> None:
    workload = generated_workload(400, 500, seed=1, coding_fraction=0.7)
    facts = workload.describe()
    assert facts["reads"] == 400 and facts["read_length"] == 500 and facts["coding_fraction"] == 0.7
    kept = int(np.count_nonzero(workload.frames_per_record))
    assert 0.6 * 400 < kept < 0.8 * 400  # coding reads keep a frame; random ones almost never do
    assert facts["frames"] == workload.frames >= kept
    assert facts["reads_without_frames"] == 400 - kept


def test_a_subset_is_cut_at_a_read_boundary() -> None:
    workload = generated_workload(200, 500, seed=2)
    cumulative = np.cumsum(workload.frames_per_record)
    prefix = workload.prefix_for_frames(25)
    assert cumulative[len(prefix) - 1] >= 25 and (len(prefix) == 1 or cumulative[len(prefix) - 2] < 25)
    assert prefix == workload.records[: len(prefix)]
    assert workload.prefix_for_frames(10**6) is workload.records


def test_an_input_without_a_kept_frame_is_a_usage_error() -> None:
    with pytest.raises(UserError, match="keeps no frame"):
        generated_workload(20, 500, seed=1, coding_fraction=0.0)


def test_frame_sequences_for_the_encoder_script() -> None:
    dna, proteins = frame_sequences(50, seed=7)
    assert len(dna) == len(proteins) == 50
    assert all(len(d) >= 3 * len(p) for d, p in zip(dna, proteins, strict=True))
    assert frame_sequences(50, seed=7) == (dna, proteins)
    short_dna, short = frame_sequences(50, seed=7, length_mix="illumina")
    assert len(short) == 50 and max(map(len, short)) <= 50 < min(map(len, proteins))  # 150 bp reads
    assert all(len(d) >= 3 * len(p) for d, p in zip(short_dna, short, strict=True))


def test_fasta_workload_and_a_bench_run_on_it(bench_run, tmp_path) -> None:
    reads = generate_reads(60, 300, seed=9, coding_fraction=0.9, prefix="f")
    fasta = tmp_path / "reads.fa"
    write_fasta(reads, fasta)
    workload = fasta_workload(fasta, chunk_length=300)
    assert workload.reads == 60 and workload.describe()["read_length"] == 300
    out = tmp_path / "fasta.json"
    result = run_cli(
        "bench", str(fasta), "--random-weights", "tiny", "--device", "cpu", "--repeats", "1",
        "--workdir", str(bench_run.workdir), "--chunk-length", "300", "--backends", "torch",
        "--reference-frames", "0", "--json", str(out),
    )  # fmt: skip
    assert result.code == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["workload"]["source"] == str(fasta) and report["workload"]["reads"] == 60
    assert report["workload"]["chunk_length"] == 300 and report["workload"]["frames"] == workload.frames
    reference = report["results"][0]
    assert reference["extrapolated"] is False and reference["frames"] == workload.frames  # 0: all frames


def test_bad_fasta_is_one_line_exit_2(bench_run, tmp_path) -> None:
    fasta = tmp_path / "protein.fa"
    fasta.write_text(">p1\nMKVLAAGIVGLLLAEEPQRS\n")
    result = run_cli("bench", str(fasta), "--random-weights", "tiny", "--workdir", str(bench_run.workdir))
    assert result.code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "record 1" in errors[0] and "Traceback" not in result.stderr


def test_the_fixed_mix_is_the_workload_it_always_was() -> None:
    default = generated_workload(120, 500, seed=3)
    fixed = generated_workload(120, 500, seed=3, length_mix="fixed")
    assert [r.sequence for r in default.records] == [r.sequence for r in fixed.records]
    reads = generate_reads(120, 500, seed=3, coding_fraction=0.7)
    assert [r.sequence for r in default.records] == [seq for _, seq in reads]
    assert fixed.describe()["length_mix"] == "fixed"
    assert fixed.describe()["length_mix_rule"] == "every read 500 bp"


def test_length_mixes_are_seeded_and_stay_in_their_ranges() -> None:
    mixed = mix_lengths("mixed", 5000, seed=1)
    assert np.array_equal(mixed, mix_lengths("mixed", 5000, seed=1))
    assert mixed.min() >= 100 and mixed.max() <= 1000
    assert np.median(mixed) < mixed.mean() < 550  # log-uniform: short fragments are the common case
    illumina = mix_lengths("illumina", 5000, seed=1)
    trimmed = illumina < 150
    assert illumina.max() == 150 and illumina.min() >= 100 and 0.17 < trimmed.mean() < 0.23
    with pytest.raises(ValueError, match="unknown length mix"):
        mix_lengths("nanopore", 10, seed=1)


def test_generated_workloads_follow_their_mix() -> None:
    workload = generated_workload(300, seed=5, length_mix="mixed")
    lengths = np.array([len(r.sequence) for r in workload.records])
    assert np.array_equal(lengths, mix_lengths("mixed", 300, seed=5))
    facts = workload.describe()
    assert facts["length_mix"] == "mixed" and facts["read_length_min"] >= 100 and facts["frames"] > 0
    illumina = generated_workload(2000, seed=5, length_mix="illumina")
    assert {len(r.sequence) for r in illumina.records} <= set(range(100, 151))
    assert any("N" in r.sequence for r in illumina.records)  # base calls that failed
    with pytest.raises(UserError, match="--length-mix"):
        generated_workload(10, length_mix="nanopore")
