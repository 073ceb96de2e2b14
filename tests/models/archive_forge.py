"""Forging ``torch.save``-style archives byte by byte, for the attacks the loader must refuse.

Pickles are assembled from opcodes (protocol 2), so a test can name any global — including ones that
could not be pickled from a live object — without ever executing it here.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

PROTO = b"\x80\x02"
STOP = b"."
MARK = b"("
TUPLE = b"t"
REDUCE = b"R"
EMPTY_DICT = b"}"
SETITEMS = b"u"
NEWFALSE = b"\x89"
BUILD = b"b"
NEWOBJ = b"\x81"
EMPTY_TUPLE = b")"
BINPERSID = b"Q"


def glob(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def text(value: str) -> bytes:
    data = value.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def integer(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)


def tup(*items: bytes) -> bytes:
    return MARK + b"".join(items) + TUPLE


def call(func: bytes, *args: bytes) -> bytes:
    """``func(*args)`` as GLOBAL + args tuple + REDUCE."""
    return func + tup(*args) + REDUCE


def storage_ref(key: str, numel: int, storage: str = "FloatStorage") -> bytes:
    """The persistent id torch.save writes for a storage record."""
    return tup(text("storage"), glob("torch", storage), text(key), text("cpu"), integer(numel)) + BINPERSID


def tensor(key: str, numel: int, size: tuple[int, ...], stride: tuple[int, ...], offset: int = 0) -> bytes:
    """``_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())``."""
    return call(
        glob("torch._utils", "_rebuild_tensor_v2"),
        storage_ref(key, numel),
        integer(offset),
        tup(*(integer(n) for n in size)),
        tup(*(integer(s) for s in stride)),
        NEWFALSE,
        call(glob("collections", "OrderedDict")),
    )


def dict_of(**items: bytes) -> bytes:
    return EMPTY_DICT + MARK + b"".join(text(k) + v for k, v in items.items()) + SETITEMS


def pickle_bytes(body: bytes) -> bytes:
    return PROTO + body + STOP


def write_archive(
    path: Path,
    data_pkl: bytes,
    records: dict[str, bytes] | None = None,
    compress: bool = False,
    extra: dict[str, bytes] | None = None,
) -> Path:
    """A zip laid out like ``torch.save``'s: ``<stem>/data.pkl``, ``<stem>/data/<key>``, byteorder."""
    root = path.stem
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{root}/data.pkl", data_pkl, compress_type=zipfile.ZIP_STORED)
        zf.writestr(f"{root}/byteorder", b"little")
        for key, payload in (records or {}).items():
            zf.writestr(f"{root}/data/{key}", payload, compress_type=method)
        for name, payload in (extra or {}).items():
            zf.writestr(f"{root}/{name}", payload)
        zf.writestr(f"{root}/version", b"3\n")
    return path
