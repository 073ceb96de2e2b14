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


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="needs Linux /proc")
def test_the_bound_limits_what_is_read_not_what_stat_says() -> None:
    """A /proc file is a regular file whose stat size is 0; the read still stops at the bound + 1 byte.

    (This test read a FIFO before; a FIFO is now refused before any read: test_output_safety.py.)
    """
    maps = Path("/proc/self/maps")
    assert maps.stat().st_size == 0
    with pytest.raises(FileTooLarge):
        read_bounded(maps, 100)
