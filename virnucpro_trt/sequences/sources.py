"""Open sequence input by content: compression from magic bytes, format from the first character.

Why by content: users pass ``reads.fq.gz``, ``reads.txt``, ``-`` or a named pipe, and the suffix lies
often enough that trusting it gives either a crash deep inside a parser or, worse, garbage features.
Everything here works on non-seekable streams (stdin), so sniffed bytes are put back in front.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import io
import lzma
import os
import sys
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any, BinaryIO

from virnucpro_trt.errors import InputFormatError

__all__ = ["BLOCK_BYTES", "CorruptInput", "decoded_blocks", "display_name", "open_input", "sniff_format"]

BLOCK_BYTES = 1 << 20  # decoded text per parsing step: big enough to amortise, small enough for cache
_SNIFF_BYTES = 1 << 16

_READABLE = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz"}
_UNREADABLE = {
    b"\x28\xb5\x2f\xfd": "zstd-compressed",
    b"PK\x03\x04": "a zip archive",
    b"PK\x05\x06": "an (empty) zip archive",
    b"7z\xbc\xaf\x27\x1c": "a 7-Zip archive",
    b"\x04\x22\x4d\x18": "lz4-compressed",
    b"Rar!\x1a\x07": "a RAR archive",
    b"LZIP": "lzip-compressed",
    b"BAM\x01": "BAM (binary alignments)",
    b"\x89HDF\r\n\x1a\n": "HDF5",
}
_DECOMPRESS_ERRORS = (OSError, EOFError, lzma.LZMAError, zlib.error)


class CorruptInput(Exception):
    """Decompression failed mid-stream; the reader adds which record it got to."""


def display_name(path: str | os.PathLike[str]) -> str:
    """How messages name the input: its path, or ``<stdin>`` for ``-``."""
    return "<stdin>" if str(path) == "-" else str(path)


class _Prefixed(io.RawIOBase):
    """``head`` followed by the rest of ``stream``: lets us sniff a pipe and still read it whole."""

    def __init__(self, head: bytes, stream: BinaryIO) -> None:
        super().__init__()
        self._head = memoryview(head)
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        return self._stream.readinto(buffer)  # type: ignore[attr-defined]


def _read_at_least(stream: BinaryIO, n: int) -> bytes:
    """Read ``n`` bytes unless the stream ends first (a pipe may hand out less per read)."""
    parts, got = [], 0
    while got < n:
        data = stream.read(n - got)
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts)


class _Failing(io.RawIOBase):
    """A stream whose next read raises the decompression error met while sniffing."""

    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self._error = error

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        raise self._error


class _Streams(io.RawIOBase):
    """Every bzip2 or xz stream of ``raw``, one after the other, strictly.

    ``bz2.BZ2File`` and ``lzma.LZMAFile`` take whatever follows a stream and is not a valid one for
    trailing garbage and stop there: a later stream of a multi-stream file (pbzip2 writes them) whose
    header was damaged was dropped in silence, with every read in it, and the results looked complete.
    Here the data after a stream must be another whole stream; anything else is a decompression error.
    Zero bytes between or after streams are skipped, as ``xz -d`` (its stream padding) and ``bzip2 -d``
    skip them: they hold no reads, so nothing is lost.
    """

    def __init__(self, raw: BinaryIO, decompressor: Callable[[], Any]) -> None:
        super().__init__()
        self._raw = raw
        self._new = decompressor
        self._decompressor = decompressor()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        size = len(buffer)
        while True:
            if self._decompressor.eof:
                data = self._decompressor.unused_data.lstrip(b"\0")
                while not data:
                    block = self._raw.read(BLOCK_BYTES)
                    if not block:
                        return 0
                    data = block.lstrip(b"\0")
                self._decompressor = self._new()
            elif self._decompressor.needs_input:
                data = self._raw.read(BLOCK_BYTES)
                if not data:
                    raise EOFError("Compressed file ended before the end-of-stream marker was reached")
            else:
                data = b""
            out = self._decompressor.decompress(data, size)
            if out:
                buffer[: len(out)] = out
                return len(out)


def _magic(head: bytes, table: dict[bytes, str]) -> str | None:
    return next((kind for magic, kind in table.items() if head.startswith(magic)), None)


def open_input(
    path: str | os.PathLike[str], stack: ExitStack, name: str | None = None
) -> tuple[BinaryIO, str]:
    """Open ``path`` (``-`` = stdin) and return ``(decompressed byte stream, compression name)``.

    The stream is registered on ``stack`` for closing. Raises :class:`InputFormatError` for missing
    files, unsupported compressions and binary data, naming the input ``name`` (default: its path).
    """
    name = name or display_name(path)
    try:
        # The ExitStack owns the handle: it must outlive this function (SIM115 does not see that).
        raw: BinaryIO = sys.stdin.buffer if str(path) == "-" else stack.enter_context(open(path, "rb"))  # noqa: SIM115
    except FileNotFoundError:
        raise InputFormatError(f"{name}: input file not found") from None
    except IsADirectoryError:
        raise InputFormatError(f"{name}: is a directory, not a FASTA/FASTQ file") from None
    except OSError as exc:
        raise InputFormatError(f"{name}: cannot open input: {exc.strerror or exc}") from None
    head = _read_at_least(raw, 8)
    stream: BinaryIO = io.BufferedReader(_Prefixed(head, raw), buffer_size=BLOCK_BYTES)
    compression = _magic(head, _READABLE) or "plain"
    if compression == "gzip":
        stream = gzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[assignment]
    elif compression in ("bzip2", "xz"):
        decompressor = bz2.BZ2Decompressor if compression == "bzip2" else lzma.LZMADecompressor
        stream = io.BufferedReader(_Streams(stream, decompressor), buffer_size=BLOCK_BYTES)
    elif kind := _magic(head, _UNREADABLE):
        raise InputFormatError(
            f"{name}: input is {kind}, which is not supported; give plain, gzip, bzip2 or xz FASTA/FASTQ"
        )
    stack.callback(stream.close)
    return stream, compression


def sniff_format(stream: BinaryIO, name: str, compression: str) -> tuple[str, BinaryIO]:
    """Decide FASTA or FASTQ from the first non-blank byte; reject binary data.

    Returns the format and a stream that still starts at the beginning of the (decompressed) data.
    """
    parts: list[bytes] = []
    size, blank, error = 0, True, None
    try:  # at least _SNIFF_BYTES, and on through any long run of blank lines
        while size < _SNIFF_BYTES or blank:
            data = stream.read(_SNIFF_BYTES)
            if not data:
                break
            parts.append(data)
            size += len(data)
            blank = blank and not data.strip()
    except _DECOMPRESS_ERRORS as exc:
        error = exc  # raised again when parsing gets there, so the message can name the last record
    head = b"".join(parts)
    if error is not None and not head.strip():
        raise InputFormatError(f"{name}: {compression} data is corrupt or truncated ({error})")
    rest: BinaryIO = io.BufferedReader(
        _Prefixed(head, stream if error is None else _Failing(error)), buffer_size=BLOCK_BYTES
    )
    inner = compression != "plain" and (_magic(head, _READABLE) or _magic(head, _UNREADABLE))
    if inner:
        raise InputFormatError(f"{name}: {compression} data contains {inner} data; decompress it first")
    if b"\0" in head:
        raise InputFormatError(f"{name}: input contains NUL bytes: binary data, not FASTA/FASTQ")
    body = head.removeprefix(codecs.BOM_UTF8)
    text = body.lstrip()
    if not text:
        return "empty", rest
    first, at = text[:1], len(body) - len(text)
    if first in (b">", b"@") and (at == 0 or body[at - 1 : at] in (b"\n", b"\r")):
        return ("fasta" if first == b">" else "fastq"), rest
    line = text.splitlines()[0][:40].decode("utf-8", "replace").rstrip()
    if first == b">":  # indented: Biopython would take the line for junk before the first record
        raise InputFormatError(
            f"{name}: not FASTA/FASTQ: the first header {line!r} is indented; a header's '>' must be "
            "the line's first character"
        )
    if b"\n>" in text:  # upstream would silently skip such lines as junk
        raise InputFormatError(f"{name}: not FASTA/FASTQ: text before the first '>' header: {line!r}")
    raise InputFormatError(
        f"{name}: not FASTA/FASTQ: the first non-blank line must start with '>' or '@', got {line!r}"
    )


def decoded_blocks(stream: BinaryIO, compression: str) -> Iterator[str]:
    """UTF-8 text blocks of about ``BLOCK_BYTES`` with universal newlines.

    Undecodable bytes become lone surrogates (``surrogateescape``) so the record-level checks can say
    exactly where they are. Reads go through ``read1`` so that when decompression fails, the text
    decoded before the failure is still handed out (and its records yielded) before the error.
    """
    decoder = io.IncrementalNewlineDecoder(codecs.getincrementaldecoder("utf-8")("surrogateescape"), True)
    first = True
    while True:
        parts: list[bytes] = []
        size, eof, error = 0, False, None
        try:
            while size < BLOCK_BYTES:
                data = stream.read1(BLOCK_BYTES - size)
                if not data:
                    eof = True
                    break
                parts.append(data)
                size += len(data)
        except _DECOMPRESS_ERRORS as exc:
            error = exc
        text = decoder.decode(b"".join(parts), final=eof)
        if first and text:
            text, first = text.removeprefix("\ufeff"), False
        if text:
            yield text
        if error is not None:
            raise CorruptInput(f"{compression} data is corrupt or truncated ({error})")
        if eof:
            return
