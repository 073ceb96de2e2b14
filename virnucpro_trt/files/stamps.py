"""File-system stamps: when a file still carries the stamp recorded beside its digest, the digest holds.

Hashing a full-size model set reads ~12 GB and an engine set ~6 GB; doing it on every run is what users
pay for nothing, since the files are almost always the very ones hashed before.
So wherever a digest is recorded (engine manifests, the resume state), the file's stamp is recorded
with it, and a later check whose file carries exactly that stamp reuses the digest.

A stamp is ``[size, mtime_ns, ctime_ns, inode, device]`` of the resolved path. Replacing a file (copy,
download, rename) gives it a new inode and ctime; rewriting it in place changes its ctime, which, unlike
the mtime, no user can set back (``touch -d`` itself moves the ctime). Two ways past a stamp remain:
resetting the system clock, and rewriting a file in place, at the same size, within one tick of the file
system's timestamps (milliseconds) of its previous change when that change is what was stamped: a race
with a concurrent writer at the moment of stamping, not a change made afterwards. Files at other paths
are always hashed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from virnucpro_trt.files.digests import sha256_file

Stamp = list[int]


def file_stamp(path: str | os.PathLike[str]) -> Stamp:
    return stat_stamp(os.stat(path))


def stat_stamp(st: os.stat_result) -> Stamp:
    """The stamp of a file already ``stat``-ed (through a descriptor, say)."""
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def stamp_at(path: str | os.PathLike[str], follow_symlinks: bool = True) -> Stamp | None:
    """The stamp of what is at ``path`` now, None when nothing is there: to tell later whether it was
    replaced, rewritten or moved away (``stamp[3:]``, inode and device, for a folder, whose times change
    with its files)."""
    try:
        return stat_stamp(os.stat(path, follow_symlinks=follow_symlinks))
    except OSError:
        return None


def digest_holds(path: str | os.PathLike[str], sha256: object, stamp: Sequence[int] | None) -> bool:
    """Whether ``path`` still is the file recorded with ``sha256`` and ``stamp``: it carries the stamp
    (nothing read), or its SHA-256 is the recorded one (read once). ``stamp`` empty or None: hash."""
    if stamp and list(stamp) == file_stamp(path):
        return True
    return sha256_file(path) == sha256


def stamp_files(paths: Iterable[str | os.PathLike[str]]) -> dict[str, Stamp]:
    """``{absolute resolved path: stamp}`` of each file."""
    return {str(Path(p).resolve()): file_stamp(Path(p).resolve()) for p in paths}


def unchanged(recorded: Mapping[str, Stamp] | None, paths: Iterable[str | os.PathLike[str]]) -> bool:
    """True when ``paths`` are exactly the recorded files and none of them changed since."""
    if not recorded:
        return False
    try:
        current = stamp_files(paths)
    except OSError:
        return False
    return current == {path: list(stamp) for path, stamp in recorded.items()}
