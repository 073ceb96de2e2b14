"""Padding statistics of the batches that ran: what the batcher padded, what a backend padded further,
and a batch split after running out of memory counted as its halves."""

from __future__ import annotations

import numpy as np

from tests.runtime.test_oom_split import FakeBackend
from virnucpro_trt.runtime.batching import token_budget_batches
from virnucpro_trt.runtime.embedding import BatchStats, embed_sequences


def _tokens(lengths: list[int]) -> list[np.ndarray]:
    return [np.arange(1, n + 1) for n in lengths]


def test_padding_is_counted_from_the_batches_the_batcher_made() -> None:
    lengths = [10, 9, 9, 4, 3, 3, 2]
    stats = BatchStats()
    embed_sequences(FakeBackend(limit=100), _tokens(lengths), 30, stats=stats)
    batches = token_budget_batches(lengths, 30)
    computed = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert (stats.batches, stats.items, stats.tokens) == (len(batches), 7, sum(lengths))
    assert stats.computed_tokens == computed and stats.padded_tokens == computed - sum(lengths)
    assert stats.padded_fraction == (computed - sum(lengths)) / computed > 0
    assert stats.to_json()["padded_fraction"] == round(stats.padded_fraction, 6)
    assert BatchStats().padded_fraction == 0.0


class RoundingBackend(FakeBackend):
    """Runs every batch with the length rounded up to a multiple of 8, as an AOTInductor engine built with
    ``sequence_multiple=8`` does."""

    def computed_shape(self, batch: int, length: int) -> tuple[int, int]:
        return batch, -(-length // 8) * 8


def test_a_backend_that_pads_further_reports_its_own_shape() -> None:
    stats = BatchStats()
    embed_sequences(RoundingBackend(limit=100), _tokens([5, 5, 5]), 100, stats=stats)
    assert stats.tokens == 15 and stats.computed_tokens == 3 * 8


def test_a_batch_split_after_running_out_of_memory_counts_as_its_halves() -> None:
    stats = BatchStats()
    embed_sequences(FakeBackend(limit=2), _tokens([6, 6, 6, 6]), 100, stats=stats)
    assert stats.batches == 2 and stats.items == 4 and stats.computed_tokens == 24 == stats.tokens
