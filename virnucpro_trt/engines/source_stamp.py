"""File-system stamps of the checkpoint files an engine directory was built from.

Why: ``predict --engines DIR --esm ... --dnabert ...`` checks that the engines were built from the
checkpoints named, by their SHA-256. For the full-size set that reads ~12 GB before any worker starts
(6.2 s on the H200 host, ``check_engines`` in run.json), on every run, although the files are almost
always the very ones the build read. The build therefore records, per source file, its absolute path,
size, modification time (ns), inode and device; a later check whose files carry exactly those stamps
reuses the recorded digest instead of reading them again.

What this trusts is what ``make`` and ``rsync`` trust, made stricter: replacing a file by a copy, a
download or a rename gives it a new inode (and normally a new mtime); rewriting it in place changes its
mtime. Only a deliberate rewrite that also restores size and mtime to the nanosecond goes unnoticed.
Files at other paths (a copy of the checkpoints elsewhere, another machine) are always hashed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

Stamp = list[int]


def _stamp(path: Path) -> Stamp:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev]


def stamp_files(paths: Iterable[str | Path]) -> dict[str, Stamp]:
    """``{absolute path: [size, mtime_ns, inode, device]}`` of each file."""
    return {str(Path(p).resolve()): _stamp(Path(p).resolve()) for p in paths}


def unchanged(recorded: Mapping[str, Stamp] | None, paths: Iterable[str | Path]) -> bool:
    """True when ``paths`` are exactly the recorded files and none of them changed since."""
    if not recorded:
        return False
    try:
        current = stamp_files(paths)
    except OSError:
        return False
    return current == {path: list(stamp) for path, stamp in recorded.items()}
