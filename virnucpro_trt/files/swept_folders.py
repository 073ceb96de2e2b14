"""Temporary folders that a killed process does not leave behind for good.

A folder a process makes in the temporary folder for its own use (an engine package unpacked, a
benchmark's random checkpoints: gigabytes at full size) is removed when the process ends cleanly. One
killed by SIGKILL removes nothing, and its folder is beside no output a rerun would look at. So each
such folder holds a lock file (:data:`ALIVE`) that the process making it keeps locked (``flock``) for as
long as it lives, and every process that makes one first removes the folders of the same kind and of
this user whose lock is free (:func:`remove_abandoned`): the kernel releases the lock when its holder
dies, however it dies. A folder without the lock file (another tool's, or one still being made), one
reached through a link, or one of another user is never touched. Where the file system takes no
``flock`` (some network file systems) the folder gets no lock file: no sweep ever removes it, and the
work goes on.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

ALIVE = ".alive"  # locked by the process that made the folder while it lives
_OPEN_FLAGS = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def _made_names(prefix: str) -> re.Pattern[str]:
    """The names ``mkdtemp(prefix=prefix)`` makes: ``prefix`` and 8 letters of its alphabet."""
    return re.compile(re.escape(prefix) + r"[a-z0-9_]{8}")


def _free_lock(folder: Path) -> bool:
    """Whether ``folder``'s lock file exists and no live process holds it (its maker is gone)."""
    try:
        fd = os.open(folder / ALIVE, _OPEN_FLAGS | os.O_NONBLOCK)
    except OSError:  # no lock file: another tool's folder, or one being made now
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:  # held: its maker lives
        return False
    finally:
        os.close(fd)


def remove_abandoned(parent: Path, prefix: str) -> list[Path]:
    """Remove this user's folders named ``prefix`` + 8 letters in ``parent`` whose maker has died (its
    lock is free): what a process killed by SIGKILL left. The folders removed are returned."""
    names = _made_names(prefix)
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(parent):
            if not names.fullmatch(entry.name):
                continue
            with contextlib.suppress(OSError):
                info = entry.stat(follow_symlinks=False)
                if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
                    continue
                folder = Path(entry.path)
                if _free_lock(folder):
                    shutil.rmtree(folder, ignore_errors=True)
                    removed.append(folder)
    return removed


def make_swept_folder(prefix: str) -> tuple[Path, int | None]:
    """A new folder ``prefix`` + 8 letters in the temporary folder (``mkdtemp``: private to this user)
    and the descriptor of its lock, which this process holds until it closes it or exits, after removing
    the folders of that prefix whose makers died. The lock file is locked before it takes its name, so
    no sweep ever sees it unlocked while this process lives (None: no ``flock`` here, no lock file)."""
    parent = Path(tempfile.gettempdir())
    remove_abandoned(parent, prefix)
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    fd, name = tempfile.mkstemp(prefix=".alive-", dir=folder)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
        os.close(fd)
        os.unlink(name)
        return folder, None
    os.rename(name, folder / ALIVE)
    return folder, fd


@contextlib.contextmanager
def swept_folder(prefix: str) -> Iterator[Path]:
    """:func:`make_swept_folder`, removed (and its lock let go) when the block ends."""
    folder, alive = make_swept_folder(prefix)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if alive is not None:
            os.close(alive)


@contextlib.contextmanager
def work_folder(given: Path | None, prefix: str) -> Iterator[Path]:
    """``given`` (a user's ``--workdir``: made if missing, kept), else a :func:`swept_folder` of
    ``prefix``, removed when the block ends: what a benchmark script works in (random checkpoints and
    engines: tens of GB at full size) when it is told no folder."""
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given
        return
    with swept_folder(prefix) as folder:
        yield folder
