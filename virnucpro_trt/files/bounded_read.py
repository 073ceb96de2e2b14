"""Reading a file whole, but never more than a bound: checkpoints' text files, manifests, records, run.json.

The bound applies to what is read, not to what ``stat`` said beforehand, so a file that grows (or is
replaced) between the two cannot make the read unbounded. Every such read goes through
:func:`read_bounded`; each caller turns :class:`FileTooLarge` into its own one-line error.
"""

from __future__ import annotations

from pathlib import Path


class FileTooLarge(ValueError):
    """The file holds more than the caller's bound (the message says how many bytes that is)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"larger than {max_bytes} bytes")
        self.max_bytes = max_bytes


def read_bounded(path: Path, max_bytes: int) -> bytes:
    """The bytes of ``path``; :class:`FileTooLarge` past ``max_bytes`` (``OSError`` if unreadable)."""
    with open(path, "rb") as handle:
        raw = handle.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise FileTooLarge(max_bytes)
    return raw
