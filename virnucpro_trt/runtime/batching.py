"""Token-budget batching: length-sorted batches whose padded size stays under a token budget.

Padding is paid for in FLOPs, so items are sorted by length and a batch is closed as soon as
``longest * count`` would pass ``max_batch_tokens`` (the way fair-esm's ``esm-extract`` and
text-embeddings-inference batch). Shapes stay dynamic: a batch is exactly as long as its longest item.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def token_budget_batches(
    lengths: Sequence[int] | np.ndarray, max_batch_tokens: int, max_batch_size: int | None = None
) -> list[np.ndarray]:
    """Indices of each batch, longest items first; an item longer than the budget gets its own batch."""
    if max_batch_tokens < 1:
        raise ValueError("max_batch_tokens must be positive")
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    n = len(order)
    while start < n:
        longest = int(lengths[order[start]])
        count = max(1, max_batch_tokens // max(longest, 1))
        if max_batch_size is not None:
            count = min(count, max_batch_size)
        batches.append(order[start : start + count])
        start += count
    return batches
