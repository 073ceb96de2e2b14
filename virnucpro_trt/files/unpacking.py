"""Where compiled engine packages are unpacked, and who removes what is unpacked.

AOTInductor's loader unpacks a whole ``.pt2`` (for a full-size ESM-2 3B engine a 3-6 GB ``wrapper.so``
with the weights in it) into a fresh ``aotinductor_XXXXXX`` folder in ``$TMPDIR`` and removes it only in
its destructor. A process that ends without running it -- a worker ended by ``os._exit``, by the
coordinator's SIGTERM on an interrupt or a failure, or by SIGKILL -- left the whole package behind, once
per worker and per run: every interrupted GPU run filled the temporary folder by gigabytes. So the
loader unpacks into a folder this package makes and removes itself:

* a worker process unpacks into the folder its coordinator made for that one spawn
  (:func:`use_folder`); the coordinator removes it when the worker has ended, however it ended
  (:class:`RunFolder`), and the worker removes it itself before ``os._exit``, and the coordinator's
  folder with the last of them when the coordinator is gone (:func:`remove_folder`);
* any other process (the inline worker, ``embed``, ``bench``, the build's parity gate) unpacks into a
  folder of its own, made on first use and removed when the process exits (``atexit``).

A process killed by SIGKILL after loading a package in process (``embed``, ``bench``, a one-worker run)
removes nothing, and its folder is in the temporary folder, not beside any output a rerun would look at:
so the folders are :mod:`~virnucpro_trt.files.swept_folders`, locked by their maker while it lives and
removed by the next process that makes one once that lock is free.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from virnucpro_trt.files.swept_folders import ALIVE, make_swept_folder

PREFIX = "virnucpro-trt-unpacked-"
_TMPDIR = "TMPDIR"  # what the C++ loader reads for its temporary folder

_lock = threading.Lock()
_folder: Path | None = None
_owned = False  # made here (removed at exit), not given by a coordinator


def use_folder(folder: Path) -> None:
    """Unpack into ``folder`` from now on (a worker process: the folder its coordinator made for it)."""
    global _folder, _owned
    with _lock:
        _folder, _owned = Path(folder), False


def current_folder() -> Path:
    """The folder packages are unpacked into: the one given by :func:`use_folder`, else one of this
    process's own, made now (a swept folder) and removed when the process exits."""
    global _folder, _owned
    with _lock:
        if _folder is None:
            _folder, _ = make_swept_folder(PREFIX)  # its lock is held until the process exits
            _owned = True
            atexit.register(remove_folder)
        return _folder


def remove_folder(orphaned: bool = False) -> None:
    """Remove the folder and what is unpacked in it (a loaded library stays mapped: removing its file
    does not unload it). Before ``os._exit``, which runs no destructor. ``orphaned``: the coordinator is
    gone, so the last of its workers also removes the coordinator's folder, then empty."""
    with _lock:
        folder, owned = _folder, _owned
    if folder is None:
        return
    shutil.rmtree(folder, ignore_errors=True)
    if orphaned and not owned and folder.parent.name.startswith(PREFIX):
        with contextlib.suppress(OSError):  # another worker is still on its way out: it removes it
            if [entry.name for entry in os.scandir(folder.parent)] == [ALIVE]:  # the dead maker's lock
                (folder.parent / ALIVE).unlink()
            folder.parent.rmdir()


@contextlib.contextmanager
def unpacking() -> Iterator[Path]:
    """Run a package loader inside this: ``$TMPDIR`` names :func:`current_folder` while it runs.

    Python's own temporary folder is looked up first (``tempfile`` keeps the first answer), so nothing
    else in the process ever takes the unpacking folder for its temporary folder.
    """
    tempfile.gettempdir()
    folder = current_folder()
    with _lock:
        before = os.environ.get(_TMPDIR)
        os.environ[_TMPDIR] = str(folder)
        try:
            yield folder
        finally:
            if before is None:
                os.environ.pop(_TMPDIR, None)
            else:
                os.environ[_TMPDIR] = before


class RunFolder:
    """A coordinator's folder for its workers' unpacking: one subfolder per spawned worker, removed
    when that worker has ended (:meth:`release`), and the whole folder at the end of the run
    (:meth:`close`), whatever the workers did."""

    def __init__(self) -> None:
        self.path, self._alive = make_swept_folder(PREFIX)

    def for_worker(self, label: str) -> Path:
        """A new folder for one spawned worker (each respawn gets its own)."""
        return Path(tempfile.mkdtemp(prefix=f"{label}-", dir=self.path))

    @staticmethod
    def release(folder: Path) -> None:
        shutil.rmtree(folder, ignore_errors=True)

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        if self._alive is not None:  # one lock per run, not one per run for the life of the process
            os.close(self._alive)
            self._alive = None
