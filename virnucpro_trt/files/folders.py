"""Output folders a run makes: created level by level, checked writable, removed again when left empty.

A run may remove only what it made. ``-o new/deeper/out`` makes three folders; a run that fails before
writing anything there (a bad record, a refused model) must not leave them behind, nor remove a folder
that was there before it started. So :func:`made_folder` creates the path one level at a time as
written, noting the levels its own ``mkdir`` created: a level that already existed is never noted, even
when it is reached through ``..`` below a new one (``-o new/../existing``, where a check of the path
as written sees ``existing`` missing until ``new`` exists). On the way out it removes the levels it
made that are still empty, deepest first (a folder holding results or resumable work stays, and so does
every level above it).

As the folder is entered, a file is made there (without a name: nothing can be left behind): a place
where nothing can be written (``/proc``, a read-only mount) is refused in one line when the command
starts its writing, which every command does before it reads the input through or loads an encoder,
not after minutes of work.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from virnucpro_trt.errors import NO_SPACE, UserError
from virnucpro_trt.files.names import not_a_folder


@contextlib.contextmanager
def made_folder(folder: Path) -> Iterator[Path]:
    """Create ``folder`` level by level and check a file can be made in it; on exit remove the levels
    this call made, if empty."""
    made: list[Path] = []
    try:
        for level in (*reversed(folder.parents), folder):
            try:
                level.mkdir()
            except OSError as exc:
                if level.is_dir():  # there before (mkdir may say EEXIST, or EROFS on a read-only mount)
                    continue
                if os.path.lexists(level):
                    what = not_a_folder(level)
                    raise UserError(f"{level} is {what}; choose another output location") from None
                raise exc from None
            made.append(level)
        _check_writable(folder)
        yield folder
    finally:
        for level in reversed(made):  # deepest first; stops at the first that holds something
            try:
                level.rmdir()
            except FileNotFoundError:  # removed meanwhile (by the run itself): the ones above may be empty
                continue
            except OSError:
                break


def _check_writable(folder: Path) -> None:
    """Make one empty file in ``folder`` and close it; refuse the folder in one line (exit 2) when that
    fails. The file has no name where the system allows (Linux's ``O_TMPFILE``), elsewhere it is
    unlinked as soon as it is made: an interrupted run leaves no probe that the next run would have to
    take for a stranger's file."""
    try:
        with tempfile.TemporaryFile(prefix=".virnucpro-trt-probe-", dir=folder):
            pass
    except OSError as exc:
        if exc.errno in NO_SPACE:  # a full disk: the failed-run message, exit 1 (cli/main.py)
            raise
        reason = exc.strerror or str(exc)
        raise UserError(f"cannot write in {folder}: {reason}; choose another output location") from None


def nothing_there(path: Path) -> bool:
    """Whether ``path`` is free for a folder a run renames into place whole: nothing at the name, or an
    empty real folder (``rename`` replaces it). Anything else there is someone's, to be refused."""
    if not os.path.lexists(path):
        return True
    return path.is_dir() and not path.is_symlink() and not any(path.iterdir())
