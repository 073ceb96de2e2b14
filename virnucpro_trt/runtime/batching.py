"""Token-budget batching: length-sorted batches whose padded size stays under a token budget.

Padding is paid for in FLOPs, so items are sorted by length and a batch is closed as soon as
``longest * count`` would pass ``max_batch_tokens`` (the way fair-esm's ``esm-extract`` and
text-embeddings-inference batch). Shapes stay dynamic: a batch is exactly as long as its longest item.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from virnucpro_trt.settings import PaddingCap


def capped_count(cap: PaddingCap, lengths: np.ndarray) -> int:
    """How many of ``lengths`` (descending, the first the longest) one batch keeps under ``cap``: the
    longest prefix in which every item is under the cap or within the floor. Padding only grows as
    shorter items join, so that prefix is where the rule first fails."""
    longest = int(lengths[0])
    count = np.arange(1, len(lengths) + 1)
    computed = count * longest
    padded = computed - np.cumsum(lengths)
    ok = (padded <= cap.max_share * computed) | (computed <= cap.floor_tokens)
    return len(ok) if ok.all() else max(1, int(np.argmin(ok)))


def token_budget_batches(
    lengths: Sequence[int] | np.ndarray,
    max_batch_tokens: int,
    max_batch_size: int | None = None,
    cap: PaddingCap | None = None,
) -> list[np.ndarray]:
    """Indices of each batch, longest items first; an item longer than the budget gets its own batch.
    With ``cap``, a batch may close before the budget is full (:class:`PaddingCap`)."""
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
        if cap is not None:
            count = capped_count(cap, lengths[order[start : start + count]])
        batches.append(order[start : start + count])
        start += count
    return batches
