"""Split a record into the fixed-length chunks upstream VirNucPro classifies.

The classifier checkpoints were trained on chunks of exactly ``chunk_length`` (300 or 500) bases, cut by
upstream's own overlap rule. That rule has a quirk (the shift list can be longer than needed, so the
last chunk is often shorter than ``chunk_length``); we reproduce it bit for bit, because every chunk
boundary changes which frames survive and therefore which rows the prediction files contain.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["Chunk", "chunk_bounds", "chunk_count", "iter_chunks"]


def chunk_bounds(n: int, chunk_length: int) -> list[tuple[int, int]]:
    """Return upstream's ``[start, end)`` chunk bounds for a sequence of length ``n``.

    ``n <= chunk_length`` gives the whole sequence as one chunk (an empty sequence gives no chunk:
    upstream would crash on it, we report it instead). Longer sequences get ``k = ceil(n / C)`` chunks
    whose starts are pulled back by upstream's shift list::

        spare = k*C - n;  q = spare // k;  extra = spare - q*(k - 1)
        shifts = [q + 1] * extra + [q] * max(0, k - 1 - extra) + [0]
        start_i = i*C - sum(shifts[:i]),   end_i = min(start_i + C, n)

    Only the first ``k - 1`` shifts are ever summed, and they are ``q + 1`` for the first ``extra`` and
    ``q`` afterwards, so ``sum(shifts[:i]) == i*q + min(i, extra)``: no list is built.
    """
    if chunk_length <= 0:
        raise ValueError(f"chunk_length must be positive, got {chunk_length}")
    if n < 0:
        raise ValueError(f"sequence length must be >= 0, got {n}")
    if n == 0:
        return []
    if n <= chunk_length:
        return [(0, n)]
    k = -(-n // chunk_length)
    spare = k * chunk_length - n
    q = spare // k
    extra = spare - q * (k - 1)
    bounds = []
    for i in range(k):
        start = i * chunk_length - (i * q + min(i, extra))
        bounds.append((start, min(start + chunk_length, n)))
    return bounds


def chunk_count(n: int, chunk_length: int) -> int:
    """Number of chunks :func:`chunk_bounds` makes for length ``n`` (0 for an empty sequence)."""
    return 0 if n <= 0 else -(-n // chunk_length)


@dataclass(frozen=True, slots=True)
class Chunk:
    """One chunk of a record: upstream's id ``<record id>_chunk_<i+1>`` and its span in the record."""

    id: str
    number: int  # 1-based, as in the id
    start: int
    end: int
    sequence: str  # case kept as read; translation upper-cases it, as upstream does


def iter_chunks(record_id: str, sequence: str, chunk_length: int) -> Iterator[Chunk]:
    """Yield the chunks of one record in upstream order (an empty sequence yields nothing)."""
    for i, (start, end) in enumerate(chunk_bounds(len(sequence), chunk_length)):
        yield Chunk(f"{record_id}_chunk_{i + 1}", i + 1, start, end, sequence[start:end])
