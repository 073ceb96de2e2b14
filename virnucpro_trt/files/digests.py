"""SHA-256 of bytes, of a file, and of a set of weight files: the identities resume and manifests keep."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from virnucpro_trt.errors import UserError
from virnucpro_trt.files.bounded_read import open_regular

_BLOCK = 1 << 24


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class MoreBytesThanItsSize(UserError):
    """A file gave more bytes than its size says: a pseudo-file (``/proc``, a device) or one being written."""


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of the file's raw bytes. A failed read (EIO) is an ``OSError`` that names the file,
    as a failed open does, so a caller can say which file it was.

    Only a regular file is read (:func:`~virnucpro_trt.files.bounded_read.open_regular`: a FIFO or
    device is ``NotARegularFile``, an ``OSError``), and at most the size the open file reports: a
    ``/proc`` pseudo-file reports 0 and then yields without end (``/proc/self/pagemap``: hundreds of
    GB), so one byte more than that size is refused (:class:`MoreBytesThanItsSize`) instead of hashed
    for as long as it goes on.
    """
    digest = hashlib.sha256()
    with os.fdopen(open_regular(Path(path)), "rb") as handle:  # a FIFO swapped in is refused, not waited on
        try:
            left = os.fstat(handle.fileno()).st_size
            while left > 0 and (data := handle.read(min(_BLOCK, left))):
                digest.update(data)
                left -= len(data)
            more = handle.read(1)
        except OSError as exc:
            if exc.filename is not None:
                raise
            raise OSError(exc.errno, exc.strerror, os.fspath(path)) from exc
    if more:
        raise MoreBytesThanItsSize(
            f"{os.fspath(path)}: holds more bytes than its size says (a /proc or device file, or one being "
            "written); refused"
        )
    return digest.hexdigest()


def sha256_of_files(paths: Iterable[str | os.PathLike[str]]) -> str:
    """SHA-256 identifying a set of files (a checkpoint's shards), independent of the folder they sit in.

    Per-file digests are combined in file-name order, so the same shards give the same identity
    wherever they are (a Hugging Face snapshot folder and a copy of it).
    """
    combined = hashlib.sha256()
    for path in sorted((Path(p) for p in paths), key=lambda p: p.name):
        combined.update(bytes.fromhex(sha256_file(path)))
    return combined.hexdigest()
