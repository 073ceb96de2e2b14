"""Files a run creates for itself: never through a symbolic link, never over a file already there.

A run may remove only what it made. A file it writes at a fixed name beside the user's files (the stdin
copy, the workflow's files) is therefore created with ``O_CREAT | O_EXCL | O_NOFOLLOW``: if anything
is at that name — a user's file, a planted symbolic link, dangling or not — the kernel refuses, and the
run stops with one line (exit 2) instead of writing through the link or over the file. Whatever the
run then removes is the file this call created.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from virnucpro_trt.errors import UserError
from virnucpro_trt.files.atomic import remove_quietly, temporary_name

_NO_LINKS = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_CREATE_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NO_LINKS


def what_is_at(path: Path) -> str:
    """A few words on what occupies ``path`` (for a refusal): a link, a folder or a file."""
    if path.is_symlink():
        return "is a symbolic link"
    if path.is_dir():
        return "is a folder"
    return "already exists"


def _taken(path: Path) -> UserError:
    return UserError(
        f"{path} {what_is_at(path)}; this run did not make it and will not write over it: move it away or "
        "choose another output location"
    )


def create_new(path: Path, mode: int = 0o666) -> BinaryIO:
    """Open a new file at ``path`` for writing; :class:`UserError` when anything is already there."""
    try:
        fd = os.open(path, _CREATE_NEW, mode)
    except FileExistsError:
        raise _taken(path) from None
    return os.fdopen(fd, "wb")


def write_new_text(path: Path, text: str, on_create: Callable[[Path], None] | None = None) -> None:
    """Write ``text`` (UTF-8) into a new file at ``path``, whole or not at all: written under a private
    temporary name, then hard-linked to ``path`` (``link`` fails on anything already there, as
    :func:`create_new` does) and the temporary name removed. Interrupted, it leaves no file cut short at
    ``path`` for a rerun to stumble on; a SIGKILL at worst leaves a hidden ``.partial`` beside it, which
    ``on_create`` is told of as soon as it exists (a run's lock notes it for the rerun to remove). On a
    file system without hard links it is written in place (exclusively, as before)."""
    tmp = temporary_name(path, on_create)
    try:
        with open(tmp, "xb") as handle:
            if on_create is not None:
                on_create(tmp)
            handle.write(text.encode("utf-8"))
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise _taken(path) from None
        except OSError:  # a file system without hard links: written in place, still exclusively
            with create_new(path) as handle:
                handle.write(text.encode("utf-8"))
    finally:
        remove_quietly(tmp)
