"""Run locks: one run at a time on an output, and the note of what that run keeps there while it runs.

Every command that writes results holds one while it writes: ``predict``, ``merge``, ``split``,
``prepare`` and ``workflow`` on their output folder (``OUTDIR/.work.lock``: :func:`outdir_lock`),
``embed`` on its output file (``.NAME.lock`` beside it: :func:`output_lock`, so embeddings written into
one folder side by side still run side by side). A second run on the same output fails at once (exit 2):
the lock is an advisory ``flock``, which the kernel releases even after SIGKILL. The lock file is never
followed through a symbolic link, and a file at its name that the tool did not make is refused, never
written to or removed.

The lock file is also the run's note of the files it makes there only while it runs (the stdin copy,
temporary result files, ``build``'s private staging folder): a run killed by SIGKILL cannot remove
them, so the next run on the same output removes them for it (:class:`RunLock`), and nothing else.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from virnucpro_trt.errors import UserError
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


def output_lock_name(output: Path) -> str:
    """The name of ``output``'s lock file, beside it (:func:`output_lock`)."""
    return f".{output.name}.lock"


class RunLock:
    """The held lock of one output (its folder's ``.work.lock``, or a file's ``.NAME.lock``), which is
    also the run's note of the files it keeps in that folder only while it runs (the stdin copy, the
    temporary result files) and, for ``merge``, of its results until its run.json accounts for them
    (:meth:`note_results`).

    The lock file holds :data:`LOCK_TEXT`, then one JSON line per such file (its path below the folder)
    with its stamp. A run killed by SIGKILL leaves both behind; the next run on the output takes the lock
    over (its text says the tool wrote it) and removes each noted file that still carries its stamp —
    what the killed run made, unchanged since — and nothing else. A file noted while still being written
    (``growing``: noted as soon as it is created) is removed when it is still that very file (same inode
    and device), since its size and times were still changing when the run was killed; so is a folder
    the run made for itself (:meth:`note_folder`), with all it holds.
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
        """Note ``path`` (a file this run made in the lock's folder or below it, removed by the run when
        done) in the lock file, in place of an earlier note of it; ``growing``: still being written."""
        name = path.relative_to(self.folder).as_posix()
        entry = {"file": name, "stamp": file_stamp(path), **({"growing": True} if growing else {})}
        self._noted = [e for e in self._noted if e["file"] != name] + [entry]
        self.rewrite()

    def note_folder(self, path: Path) -> None:
        """Note ``path``, a private folder this run made below the lock's folder (``mkdtemp``: mode 0700)
        and removes with all it holds when done (``build``'s staging folder)."""
        name = path.relative_to(self.folder).as_posix()
        self._noted = [e for e in self._noted if e.get("folder") != name]
        self._noted.append({"folder": name, "stamp": file_stamp(path)})
        self.rewrite()

    def rewrite(self) -> None:
        """Write the lock file anew: :data:`LOCK_TEXT` and this run's notes (a killed run's are gone)."""
        notes = [*self._noted, *([{"results": self.results}] if self.results else [])]
        data = (LOCK_TEXT + "".join(json.dumps(entry) + "\n" for entry in notes)).encode("utf-8")
        os.pwrite(self._fd, data, 0)  # then cut what is left of a longer body: a SIGKILL in between
        os.ftruncate(self._fd, len(data))  # leaves the new notes, never an empty file

    def remove_left_behind(self, content: bytes) -> None:
        """Remove the files a killed run noted in ``content`` (its lock file) that still carry their
        stamps: they are that run's, unchanged since. Its noted results are only carried over
        (:meth:`note_results`)."""
        for line in content.decode("utf-8", "replace").splitlines()[1:]:
            try:
                entry = parse_json(line)
                if isinstance(entry, dict) and isinstance(entry.get("results"), dict):
                    self.results = {n: e for n, e in entry["results"].items() if _result_entry(n, e)}
                    continue
                folder = "folder" in entry
                path = self._noted_path(entry["folder"] if folder else entry["file"], folder)
                stamp = entry["stamp"]
            except (ValueError, KeyError, TypeError, UserError):
                continue
            if path is None or not isinstance(stamp, list) or len(stamp) != 5:
                continue
            with contextlib.suppress(OSError):
                found = file_stamp(path)
                same_inode = found[3:] == stamp[3:]
                if found == stamp or (same_inode and (folder or entry.get("growing") is True)):
                    log.info("removing %s, left by an interrupted run", path)
                    if folder:
                        shutil.rmtree(path)
                    else:
                        path.unlink()

    def _noted_path(self, name: object, folder: bool) -> Path | None:
        """The regular file (or with ``folder``, the folder) a lock file's note names below the lock's
        folder, reached through real folders only (no symbolic link on the way); None when it is
        anything else. Each step must be a plain name."""
        if not isinstance(name, str):
            raise TypeError(name)
        path = self.folder
        for part in name.split("/"):
            if path != self.folder and (path.is_symlink() or not path.is_dir()):
                return None
            path = path / check_member_name(part, "lock file entry")
        if path.is_symlink():
            return None
        return path if (path.is_dir() if folder else path.is_file()) else None

    def still_ours(self) -> bool:
        """True while the lock file at its name is the very file this lock holds (not replaced since)."""
        try:
            here, held = os.lstat(self.path), os.fstat(self._fd)
        except OSError:
            return False
        return (here.st_dev, here.st_ino) == (held.st_dev, held.st_ino)


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
    """Hold ``.NAME.lock`` beside the output file ``output`` for the run; another run writing the same
    file fails at once (exit 2). See :func:`_held_lock`."""
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
