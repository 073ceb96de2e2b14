"""Synthetic reads must be deterministic and must exercise frame selection the way real data does."""

from __future__ import annotations

from virnucpro_trt.sequences.synthetic import generate_reads
from virnucpro_trt.sequences.translation import select_frames


def test_deterministic_and_shaped() -> None:
    a = generate_reads(500, 500, seed=3)
    assert a == generate_reads(500, 500, seed=3)
    assert a != generate_reads(500, 500, seed=4)
    assert len(a) == 500 and len({rid for rid, _ in a}) == 500
    assert all(len(seq) == 500 and set(seq) <= set("ACGT") for _, seq in a)


def test_coding_reads_keep_frames_and_random_reads_do_not() -> None:
    coding = [seq for _, seq in generate_reads(400, 500, seed=5, coding_fraction=1.0)]
    noncoding = [seq for _, seq in generate_reads(400, 500, seed=5, coding_fraction=0.0)]
    kept = select_frames(coding)
    assert set(kept.chunk.tolist()) == set(range(400))  # every coding read keeps a frame
    assert set(kept.frame.tolist()) == {1, 2, 3, 4, 5, 6}  # random frame and strand
    assert len(select_frames(noncoding)) <= 4  # random 500 bp DNA almost never does


def test_test_options() -> None:
    reads = generate_reads(200, 300, seed=1, long_reads=5, lowercase_fraction=0.5, n_rate=0.01)
    lengths = [len(seq) for _, seq in reads]
    assert lengths.count(750) == 5 and lengths.count(300) == 195
    assert any(seq.islower() for _, seq in reads) and any(seq.isupper() for _, seq in reads)
    assert any("n" in seq.lower() for _, seq in reads)
    assert generate_reads(0, 500, seed=1) == []
