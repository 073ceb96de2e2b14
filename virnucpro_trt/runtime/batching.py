"""Token-budget batching: length-sorted batches whose padded size stays under a token budget.

Padding is paid for in FLOPs, so items are sorted by length and a batch is closed as soon as
``longest * count`` would pass ``max_batch_tokens`` (the way fair-esm's ``esm-extract`` and
text-embeddings-inference batch). Shapes stay dynamic: a batch is exactly as long as its longest item.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PaddingCap:
    """Close a batch early, before an item that would make padding more than ``max_share`` of the
    batch's computed tokens, once the batch computes at least ``floor_tokens``.

    Why: a small group of items of many lengths (``predict``'s shard of a few hundred variable-length
    reads) fills one budget with every length, so most of a batch can be padding. Cutting where the
    length falls trades that for more, smaller batches; the floor keeps batches large enough for the
    device to stay efficient. Not the runtime's rule yet: ``benchmarks/engines_throughput.py
    --padding-caps`` measures it against the plain budget first (DEVELOPERS, "Short and mixed reads").
    """

    max_share: float
    floor_tokens: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.max_share < 1:
            raise ValueError(f"a padding cap's share must be in [0, 1), got {self.max_share}")
        if self.floor_tokens < 0:
            raise ValueError(f"a padding cap's floor must be >= 0 tokens, got {self.floor_tokens}")

    @classmethod
    def parse(cls, text: str) -> PaddingCap:
        """``SHARE:FLOOR`` (e.g. ``0.05:8192``) or ``SHARE``."""
        share, _, floor = text.partition(":")
        try:
            return cls(float(share), int(floor) if floor else 0)
        except ValueError as exc:
            raise ValueError(
                f"padding cap {text!r}: {exc} (expected SHARE[:FLOOR_TOKENS], e.g. 0.05:8192)"
            ) from exc

    def kept(self, lengths: np.ndarray) -> int:
        """How many of ``lengths`` (descending, the first the longest) one batch keeps: the longest
        prefix in which every item is under the cap or within the floor. Padding only grows as shorter
        items join, so that prefix is where the rule first fails."""
        longest = int(lengths[0])
        count = np.arange(1, len(lengths) + 1)
        computed = count * longest
        padded = computed - np.cumsum(lengths)
        ok = (padded <= self.max_share * computed) | (computed <= self.floor_tokens)
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
            count = cap.kept(lengths[order[start : start + count]])
        batches.append(order[start : start + count])
        start += count
    return batches
