"""Token-budget batching."""

from __future__ import annotations

import numpy as np

from virnucpro_trt.runtime.batching import token_budget_batches


def test_batches_respect_budget_and_cover_everything():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 300, size=1000)
    batches = token_budget_batches(lengths, max_batch_tokens=2048)
    seen = np.concatenate(batches)
    assert sorted(seen.tolist()) == list(range(1000))
    for batch in batches:
        assert lengths[batch].max() * len(batch) <= 2048
        # longest first: each batch is no longer than the previous one
    longest = [lengths[b].max() for b in batches]
    assert longest == sorted(longest, reverse=True)


def test_oversized_item_gets_its_own_batch_and_max_size_caps():
    batches = token_budget_batches([5000, 10, 10, 10], max_batch_tokens=100, max_batch_size=2)
    assert [b.tolist() for b in batches] == [[0], [1, 2], [3]]
