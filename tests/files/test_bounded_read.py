"""A bounded read returns the whole file up to its bound, refuses one byte more, and reads no further."""

from __future__ import annotations

from pathlib import Path

import pytest

from virnucpro_trt.files.bounded_read import FileTooLarge, read_bounded


def test_a_file_at_the_bound_is_read_whole_and_one_byte_more_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    path.write_bytes(b"x" * 16)
    assert read_bounded(path, 16) == b"x" * 16
    with pytest.raises(FileTooLarge, match="larger than 15 bytes") as caught:
        read_bounded(path, 15)
    assert caught.value.max_bytes == 15 and isinstance(caught.value, ValueError)
    with pytest.raises(OSError):
        read_bounded(tmp_path / "missing.json", 16)


def test_the_bound_limits_what_is_read_not_what_stat_says(tmp_path: Path) -> None:
    """A FIFO has no size to stat; the read still stops at the bound + 1 byte."""
    import os
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(b"y" * 4096))
    writer.start()
    with pytest.raises(FileTooLarge):
        read_bounded(fifo, 100)
    writer.join(timeout=5)
