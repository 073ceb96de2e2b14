"""Run locks: one run at a time on an output, and the note of what that run keeps there while it runs.

Every command that writes results into a place of its own holds one while it writes: ``predict``,
``merge``, ``split``, ``prepare``, ``workflow`` and ``build`` on their output folder
(``OUTDIR/.work.lock``: :func:`outdir_lock`), ``embed`` on its output file (``.NAME.run.lock`` beside
it: :func:`output_lock`, so embeddings written into one folder side by side still run side by side). A
second run on the same output fails at once (exit 2): the lock is an advisory ``flock``, which the
kernel releases even after SIGKILL. The lock file is never followed through a symbolic link, and a file
at its name that the tool did not make (or that another user owns) is refused, never written to or
removed.

The lock file is also the run's note of the files it makes there only while it runs (the stdin copy,
temporary result files, ``build``'s private staging folder): a run killed by SIGKILL cannot remove
them, so the next run on the same output removes them for it (:class:`RunLock`), and nothing else. A
lock file is read as hostile input: only names the tool gives such files (:data:`STDIN_COPY`,
:func:`private_stdin_copy_name`, ``files.atomic`` temporaries, :data:`STAGING_PREFIX` folders) are ever
removed, each only while it is still the very file the killed run made.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from virnucpro_trt.errors import UserError
from virnucpro_trt.files.atomic import TEMPORARY_NAME
from virnucpro_trt.files.json_fields import parse_json
from virnucpro_trt.files.names import check_member_name
from virnucpro_trt.files.ownership import is_output_entry
from virnucpro_trt.files.stamps import file_stamp

log = logging.getLogger(__name__)

LOCK_FILE = ".work.lock"
LOCK_TEXT = "virnucpro-trt run lock: removed when the run ends\n"
_MAX_LOCK_BYTES = 1 << 16
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_LOCK_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | _CLOEXEC
_FOLDER_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) | _CLOEXEC

# The names of what a run keeps in its output's folder only while it runs, the only names a lock file's
# notes may have its rerun remove.
STDIN_COPY = ".stdin.input"  # predict's copy of stdin: one per folder (the folder's lock)
STAGING_PREFIX = ".build-"  # build's private folder in the engine folder (``mkdtemp``: 8 more letters)
_NOTED_FILE = re.compile(rf"{TEMPORARY_NAME.pattern}|\.stdin(-[0-9a-f]{{16}})?\.input")
_NOTED_FOLDER = re.compile(re.escape(STAGING_PREFIX) + r"[a-z0-9_]{8}")


def private_stdin_copy_name() -> str:
    """A fresh name for a copy of stdin in a folder several runs may share (``prepare``, ``embed``)."""
    return f".stdin-{secrets.token_hex(8)}.input"


def output_lock_name(output: Path) -> str:
    """The name of ``output``'s lock file, beside it (:func:`output_lock`); never the folder lock's."""
    return f".{output.name}.run.lock"


class RunLock:
    """The held lock of one output (its folder's ``.work.lock``, or a file's ``.NAME.run.lock``), which
    is also the run's note of the files it keeps in that folder only while it runs (the stdin copy, the
    temporary result files) and, for ``merge``, of its results until its run.json accounts for them
    (:meth:`note_results`).

    The lock file holds :data:`LOCK_TEXT`, then one JSON line per such file (its path below the folder)
    with its stamp. A run killed by SIGKILL leaves both behind; the next run on the output takes the lock
    over (its text says the tool wrote it) and removes each noted file that still carries its stamp —
    what the killed run made, unchanged since — and nothing else. A file noted while still being written
    (``growing``: noted as soon as it is created) is removed when it is still that very file (same inode
    and device), since its size and times were still changing when the run was killed; so is a staging
    folder the run made for itself (:meth:`note_folder`), with all it holds. Only the names the tool
    gives such files are removed (:data:`_NOTED_FILE`, :data:`_NOTED_FOLDER`), each reached through real
    folders only (descriptors opened without following links, so no folder on the way can be swapped for
    a link between the check and the removal).
    """

    def __init__(self, folder: Path, path: Path, fd: int) -> None:
        self.folder = folder
        self.path = path
        self._fd = fd
        self._noted: list[dict[str, Any]] = []
        self.results: dict[str, dict[str, Any]] = {}

    def note_results(self, entries: dict[str, dict[str, Any]]) -> None:
        """Note the result files (name -> size and SHA-256) a run is about to rename into OUTDIR, for a
        command without a work folder (``merge``; ``predict`` notes them in ``.work``). Passive: nothing
        is removed for it; until the run's run.json accounts for the files, a rerun may replace those
        still as noted (:attr:`results`, carried over from a killed run's lock file). A run that fails
        while they are noted keeps the lock file, so its rerun finds them."""
        self.results = dict(entries)
        self.rewrite()

    def forget_results(self) -> None:
        """The noted results are accounted for (run.json written): the lock file may go at the end."""
        self.results = {}
        self.rewrite()

    def note(self, path: Path, growing: bool = False) -> None:
        """Note ``path`` (a file this run made in the lock's folder or below it, under one of the names
        :data:`_NOTED_FILE` allows, removed by the run when done) in the lock file, in place of an earlier
        note of it; ``growing``: still being written."""
        name = path.relative_to(self.folder).as_posix()
        if not _NOTED_FILE.fullmatch(path.name):
            raise ValueError(f"{path.name}: not a name a run keeps only while it runs")
        entry = {"file": name, "stamp": file_stamp(path), **({"growing": True} if growing else {})}
        self._noted = [e for e in self._noted if e.get("file") != name] + [entry]
        self.rewrite()

    def note_folder(self, path: Path) -> None:
        """Note ``path``, a private staging folder this run made in the lock's folder (``mkdtemp`` with
        :data:`STAGING_PREFIX`: mode 0700) and removes with all it holds when done (``build``)."""
        if path.parent != self.folder or not _NOTED_FOLDER.fullmatch(path.name):
            raise ValueError(f"{path}: not a staging folder of {self.folder}")
        self._noted = [e for e in self._noted if e.get("folder") != path.name]
        self._noted.append({"folder": path.name, "stamp": file_stamp(path)})
        self.rewrite()

    def rewrite(self) -> None:
        """Write the lock file anew: :data:`LOCK_TEXT` and this run's notes (a killed run's are gone)."""
        notes = [*self._noted, *([{"results": self.results}] if self.results else [])]
        data = (LOCK_TEXT + "".join(json.dumps(entry) + "\n" for entry in notes)).encode("utf-8")
        os.pwrite(self._fd, data, 0)  # then cut what is left of a longer body: a SIGKILL in between
        os.ftruncate(self._fd, len(data))  # leaves the new notes, never an empty file

    def remove_left_behind(self, content: bytes) -> None:
        """Remove the files a killed run noted in ``content`` (its lock file, read as hostile) that still
        carry their stamps: they are that run's, unchanged since. Its noted results are only carried
        over (:meth:`note_results`). A note that is malformed, or names anything else, is passed over."""
        for line in content.decode("utf-8", "replace").splitlines()[1:]:
            try:
                entry = parse_json(line)
                if isinstance(entry, dict) and isinstance(entry.get("results"), dict):
                    self.results = {n: e for n, e in entry["results"].items() if _result_entry(n, e)}
                    continue
                if isinstance(entry, dict) and "folder" in entry:
                    self._remove_noted_folder(entry["folder"], entry["stamp"])
                else:
                    self._remove_noted_file(entry["file"], entry["stamp"], entry.get("growing") is True)
            except (ValueError, KeyError, TypeError, UserError, OSError):
                continue

    def _remove_noted_file(self, name: object, stamp: object, growing: bool) -> None:
        """Remove the file ``name`` (a path below the folder, read from a note) when it is the noted one."""
        if not isinstance(name, str) or not _is_stamp(stamp):
            return
        *folders, last = name.split("/")
        if not _NOTED_FILE.fullmatch(check_member_name(last, "lock file entry")):
            return
        fd = os.open(self.folder, _FOLDER_FLAGS)
        try:
            for part in folders:  # each step a real folder: O_NOFOLLOW fails on a link
                step = os.open(check_member_name(part, "lock file entry"), _FOLDER_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = step
            st = os.stat(last, dir_fd=fd, follow_symlinks=False)
            found = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]
            if stat.S_ISREG(st.st_mode) and (found == stamp or (growing and found[3:] == stamp[3:])):
                log.info("removing %s, left by an interrupted run", self.folder / name)
                os.unlink(last, dir_fd=fd)
        finally:
            os.close(fd)

    def _remove_noted_folder(self, name: object, stamp: object) -> None:
        """Remove the staging folder ``name`` (read from a note) when it is the very folder noted."""
        if not isinstance(name, str) or not _NOTED_FOLDER.fullmatch(name) or not _is_stamp(stamp):
            return
        path = self.folder / name
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode) and [st.st_ino, st.st_dev] == stamp[3:]:
            log.info("removing %s, left by an interrupted build", path)
            shutil.rmtree(path)  # refuses a symbolic link; never follows one inside

    def still_ours(self) -> bool:
        """True while the lock file at its name is the very file this lock holds (not replaced since)."""
        try:
            here, held = os.lstat(self.path), os.fstat(self._fd)
        except OSError:
            return False
        return (here.st_dev, here.st_ino) == (held.st_dev, held.st_ino)


def _is_stamp(value: object) -> bool:
    return isinstance(value, list) and len(value) == 5 and all(type(v) is int for v in value)


def _result_entry(name: object, entry: object) -> bool:
    """Whether a lock file's result note is well formed: a plain name, its size and SHA-256."""
    try:
        check_member_name(name, "lock file result")
    except UserError:
        return False
    return is_output_entry(entry)


def _open_lock_file(path: Path, elsewhere: str) -> int:
    """A read-write descriptor of the lock file, created when missing; a symbolic link, a folder or any
    other non-regular file (or a hard link to another file) at its name is refused in one line."""
    refused = f"{path} is not a lock file virnucpro-trt made"
    advice = f"move it away or choose another {elsewhere}"
    if path.is_symlink():
        raise UserError(f"{path} is a symbolic link, not a lock file virnucpro-trt made; {advice}")
    if os.path.lexists(path) and not path.is_file():
        raise UserError(f"{refused} (not a regular file); {advice}")
    try:
        fd = os.open(path, _LOCK_FLAGS, 0o666)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            raise UserError(f"{refused} (not a regular file); {advice}") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        raise UserError(f"{refused} (not a regular file of its own); {advice}")
    return fd


def outdir_lock(outdir: Path) -> contextlib.AbstractContextManager[RunLock | None]:
    """Hold ``OUTDIR/.work.lock`` for the run (the folder is made when missing); another run on the same
    folder fails at once (exit 2). See :func:`_held_lock`."""
    return _held_lock(outdir, outdir / LOCK_FILE, outdir, "OUTDIR")


def output_lock(output: Path) -> contextlib.AbstractContextManager[RunLock | None]:
    """Hold ``.NAME.run.lock`` beside the output file ``output`` for the run; another run writing the
    same file fails at once (exit 2). See :func:`_held_lock`."""
    return _held_lock(output.parent, output.parent / output_lock_name(output), output, "output path")


@contextlib.contextmanager
def _held_lock(folder: Path, path: Path, output: Path, elsewhere: str) -> Iterator[RunLock | None]:
    """Hold the lock file ``path`` (in ``folder``) while writing ``output``.

    The lock file is opened without following a symbolic link, and only a file that is empty or holds
    :data:`LOCK_TEXT` (one the tool made, left by a killed run) is taken over; a user's file at that name
    is refused, never written to or removed. At the end the file is removed if it is still the one held
    and notes no results that no run.json accounts for yet (:meth:`RunLock.note_results`).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no protection, as before
        yield None
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = _open_lock_file(path, elsewhere)
    busy = f"{output} is being written by another virnucpro-trt run; wait for it"
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(busy) from None
        content = os.pread(fd, _MAX_LOCK_BYTES + 1, 0)
        if content and not content.startswith(LOCK_TEXT.encode()):
            raise UserError(
                f"{path} is not a lock file virnucpro-trt made (it holds something else); move it away or "
                f"choose another {elsewhere}"
            )
        lock = RunLock(folder, path, fd)
        if not lock.still_ours():  # removed by a run that ended while this one opened it: another run's now
            raise UserError(busy)
        lock.remove_left_behind(content)
        lock.rewrite()
        try:
            yield lock
        finally:
            # Before unlocking, so a waiting run finds no stale file; kept while it notes results that no
            # run.json accounts for yet (a failed merge's rerun needs them).
            if lock.still_ours() and not lock.results:
                path.unlink(missing_ok=True)
    finally:
        os.close(fd)
