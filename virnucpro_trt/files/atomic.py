"""Files that appear whole or not at all, and never leave a partial copy behind.

A result is written under a temporary name unique to this process and thread (two writers of one file,
e.g. a respawned worker racing an orphan, each rename their own complete copy) and renamed into place.
The name also carries a random token and is created exclusively (``x`` mode: ``O_CREAT | O_EXCL``,
which no symbolic link passes), so nothing planted at a guessable name is ever written through.
Whatever fails on the way — a full disk in ``write``, ``flush`` or ``close`` included — the temporary
file is removed before the error goes on: clean-up never depends on the failing handle closing cleanly.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

PARTIAL_SUFFIX = ".partial"
# What temporary_name makes; ``target``: the name of the file it becomes.
TEMPORARY_NAME = re.compile(r"\.(?P<target>[^/]+)\.[0-9]+-[0-9]+-[0-9a-f]{8}\.partial")


def umask_file_mode() -> int:
    """The mode a file created now gets under the process umask (``0o666 & ~umask``), for a file a
    library creates mode 0600 (safetensors' ``save_file``), which locks other users out of a shared
    engine, model or cache folder. Read from ``/proc/self/status`` where Linux gives it: ``os.umask``
    can only be read by setting it, which changes it for every thread of the process for a moment."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def temporary_name(path: Path, on_create: Callable[[Path], None] | None = None) -> Path:
    """``.NAME.<pid>-<thread>-<random>.partial`` beside ``path``; open it with :func:`exclusive_mode`.

    ``on_create`` (a run's lock: ``RunLock.note``) is told of the name now, before anything creates it,
    and the caller tells it again once the file exists: a SIGKILL between the creation and that second
    note would otherwise leave a file no note names, which no rerun would remove.
    """
    token = secrets.token_hex(4)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}-{token}{PARTIAL_SUFFIX}")
    if on_create is not None:
        on_create(tmp)
    return tmp


def exclusive_mode(mode: str) -> str:
    """``open`` mode that creates the file and fails if anything (a planted link too) is at the name."""
    return mode.replace("w", "x")


def close_quietly(handle: IO[Any]) -> None:
    """Close ``handle`` on an error path: a second error (ENOSPC while flushing) must not hide the first."""
    with contextlib.suppress(OSError, ValueError):
        handle.close()


def remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


@contextlib.contextmanager
def atomic_output(
    path: Path, mode: str = "wb", on_create: Callable[[Path], None] | None = None, **open_kwargs: Any
) -> Iterator[IO[Any]]:
    """Open a temporary file for writing; on success it replaces ``path``, on any failure it is removed.
    ``on_create`` is told of the temporary file before it is created and as soon as it exists (a run's
    lock notes it: :func:`temporary_name`).

    The open is inside the clean-up: an interrupt (SIGINT, SIGTERM) that lands between the file's
    creation and the first line after it still removes the file. Only the open's own failure (the
    random name taken, which only a planted file does) leaves what is at the name alone.
    """
    tmp = temporary_name(path, on_create)
    handle: IO[Any] | None = None
    try:
        handle = open(tmp, exclusive_mode(mode), **open_kwargs)  # noqa: SIM115 - closed on both paths
        if on_create is not None:
            on_create(tmp)
        yield handle
        handle.close()
        os.replace(tmp, path)
    except BaseException as exc:
        if handle is not None:
            close_quietly(handle)
        if not isinstance(exc, FileExistsError) or handle is not None:  # not a name someone else holds
            remove_quietly(tmp)
        raise


def write_bytes_atomic(path: Path, data: bytes, on_create: Callable[[Path], None] | None = None) -> None:
    with atomic_output(path, "wb", on_create) as handle:
        handle.write(data)


def write_text_atomic(path: Path, text: str, on_create: Callable[[Path], None] | None = None) -> None:
    with atomic_output(path, "w", on_create, encoding="utf-8", newline="\n") as handle:
        handle.write(text)
