"""Chunking must reproduce upstream's overlap rule exactly (spec section 1)."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from virnucpro_trt.sequences.chunking import chunk_bounds, chunk_count, iter_chunks

from .reference import ref_chunk_bounds

EXACT = [
    (500, 1, [(0, 1)]),
    (500, 499, [(0, 499)]),
    (500, 500, [(0, 500)]),
    (500, 501, [(0, 500), (250, 501)]),
    (500, 600, [(0, 500), (299, 600)]),
    (500, 999, [(0, 500), (499, 999)]),
    (500, 1000, [(0, 500), (500, 1000)]),
    (500, 1001, [(0, 500), (333, 833), (666, 1001)]),
    (300, 301, [(0, 300), (150, 301)]),
    (300, 601, [(0, 300), (200, 500), (400, 601)]),
]


@pytest.mark.parametrize(("c", "n", "expected"), EXACT)
def test_spec_examples(c: int, n: int, expected: list[tuple[int, int]]) -> None:
    assert chunk_bounds(n, c) == expected


def test_spec_examples_partial() -> None:
    bounds = chunk_bounds(1501, 500)
    assert len(bounds) == 4 and bounds[0] == (0, 500) and bounds[-1] == (1125, 1501)
    bounds = chunk_bounds(10001, 500)
    assert len(bounds) == 21 and bounds[-1] == (9520, 10001)


def test_empty_sequence_has_no_chunk() -> None:
    assert chunk_bounds(0, 500) == []
    assert chunk_count(0, 500) == 0
    assert list(iter_chunks("x", "", 500)) == []


@pytest.mark.parametrize("c", [300, 500, 7])
def test_properties_over_random_lengths(c: int) -> None:
    rng = random.Random(c)
    lengths = list(range(1, 3 * c + 5)) + [rng.randint(1, 40 * c) for _ in range(2000)]
    for n in lengths:
        bounds = chunk_bounds(n, c)
        assert bounds == ref_chunk_bounds(n, c), n
        assert len(bounds) == math.ceil(n / c) == chunk_count(n, c)
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        for (s0, e0), (s1, _) in itertools.pairwise(bounds):
            assert s0 <= s1 <= e0  # starts advance and consecutive chunks touch or overlap
        assert all(0 < e - s <= c for s, e in bounds)  # clipped at the end, never longer than C
        assert all(e - s == c for s, e in bounds[:-1])  # only the last chunk can be short


def test_iter_chunks_ids_and_sequences() -> None:
    seq = "".join(random.Random(1).choice("ACGTacgtN") for _ in range(1001))
    chunks = list(iter_chunks("read7", seq, 500))
    assert [c.id for c in chunks] == ["read7_chunk_1", "read7_chunk_2", "read7_chunk_3"]
    assert [c.number for c in chunks] == [1, 2, 3]
    assert [(c.start, c.end) for c in chunks] == [(0, 500), (333, 833), (666, 1001)]
    assert all(c.sequence == seq[c.start : c.end] for c in chunks)  # case kept


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        chunk_bounds(10, 0)
    with pytest.raises(ValueError):
        chunk_bounds(-1, 500)
