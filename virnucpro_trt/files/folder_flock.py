"""An exclusive advisory lock on a folder itself, for work two processes must not do in it at once.

The lock is a ``flock`` on the folder's own descriptor, so nothing is added to the folder (no lock file
to leave behind, to find planted as a symbolic link, or to remove). The kernel lets it go however the
holder ends. Where the file system has no such locks (not POSIX, some network mounts) the work runs
unlocked, as it would without this module.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)


@contextlib.contextmanager
def folder_locked(folder: Path, waiting: str | None = None) -> Iterator[None]:
    """Hold the lock on ``folder`` for the block, waiting for its holder; ``waiting`` is logged (INFO)
    when it is held by another (a wait that may last minutes should say so)."""
    try:
        import fcntl

        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    except (ImportError, OSError):
        yield
        return
    try:
        with contextlib.suppress(OSError):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if waiting:
                    log.info("%s", waiting)
                fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
