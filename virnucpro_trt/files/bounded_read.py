"""Reading a file whole, but never more than a bound: checkpoints' text files, manifests, records, run.json.

The bound applies to what is read, not to what ``stat`` said beforehand, so a file that grows (or is
replaced) between the two cannot make the read unbounded. Every such read goes through
:func:`read_bounded`; each caller turns :class:`FileTooLarge` into its own one-line error.

Only a regular file is read: a FIFO, socket or device at the name (``mkfifo .work/state.json``) would
block the run forever or never end, so it is refused as :class:`NotARegularFile` (an ``OSError``: every
caller already treats an unreadable file as missing or refused). The file is opened without blocking and
its type checked on the open handle, so nothing can swap it in between.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class FileTooLarge(ValueError):
    """The file holds more than the caller's bound (the message says how many bytes that is)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"larger than {max_bytes} bytes")
        self.max_bytes = max_bytes


class NotARegularFile(OSError):
    """A FIFO, socket, device or folder where a file the tool reads whole belongs."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"{path} is not a regular file")


def open_regular(path: Path) -> int:
    """A read-only descriptor of ``path`` (symbolic links followed), refused unless it is a regular file.

    Opened with ``O_NONBLOCK``, so a FIFO without a writer does not hang the open; the type is checked
    on the descriptor (``fstat``), not on the name.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotARegularFile(Path(path))
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_bounded(path: Path, max_bytes: int) -> bytes:
    """The bytes of ``path``; :class:`FileTooLarge` past ``max_bytes``, :class:`NotARegularFile` for a
    FIFO/device/folder (``OSError`` if unreadable)."""
    with os.fdopen(open_regular(path), "rb") as handle:
        raw = handle.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise FileTooLarge(max_bytes)
    return raw
