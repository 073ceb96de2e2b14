"""Run locks: one run at a time on an output, and the note of what that run keeps there while it runs.

Every command that writes results into a place of its own holds one while it writes: ``predict``,
``merge``, ``split``, ``prepare``, ``workflow`` and ``build`` on their output folder
(``OUTDIR/.work.lock``: :func:`outdir_lock`), ``embed`` on its output file (``.NAME.run.lock`` beside
it: :func:`output_lock`, so embeddings written into one folder side by side still run side by side). A
second run on the same output fails at once (exit 2): the lock is an advisory ``flock``, which the
kernel releases even after SIGKILL. The lock file is never followed through a symbolic link, and a file
at its name that the tool did not make is refused, never written to or removed.

The lock file is also the run's note of the files it makes there only while it runs (the stdin copy,
temporary result files, ``build``'s private staging folder): a run killed by SIGKILL cannot remove
them, so the next run on the same output removes them for it (:class:`RunLock`), and nothing else.
A lock file is hostile input (whoever can write the folder can write one, and inodes are public), so a
note is followed only where it names what this very command keeps there (:class:`KeptFiles`: the
temporaries of its own output names, its own stdin copy, for ``build`` a staging folder that holds
the secret token the note carries), each only while it is still the very file the killed run made.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from virnucpro_trt.errors import UserError
from virnucpro_trt.files.atomic import TEMPORARY_NAME
from virnucpro_trt.files.json_fields import parse_json
from virnucpro_trt.files.names import check_member_name
from virnucpro_trt.files.ownership import RECORD, is_output_entry
from virnucpro_trt.files.stamps import file_stamp, stat_stamp

log = logging.getLogger(__name__)

LOCK_FILE = ".work.lock"
LOCK_TEXT = "virnucpro-trt run lock: removed when the run ends\n"
RUN_LOCK_SUFFIX = ".run.lock"  # an output file's lock: .NAME.run.lock beside it
_MAX_LOCK_BYTES = 1 << 16
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_LOCK_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | _NOFOLLOW | _CLOEXEC
_FOLDER_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _NOFOLLOW | _CLOEXEC

STDIN_COPY = ".stdin.input"  # predict's copy of stdin: one per folder (the folder's lock)
_PRIVATE_STDIN = r"stdin-[0-9a-f]{16}\.input"  # a copy of stdin in a folder other runs may share
STAGING_PREFIX = ".build-"  # build's private folder in the engine folder (``mkdtemp``: 8 more letters)


def staging_names(prefix: str) -> re.Pattern[str]:
    """The names ``tempfile.mkdtemp(prefix=prefix)`` makes: ``prefix`` and 8 letters of its alphabet."""
    return re.compile(re.escape(prefix) + r"[a-z0-9_]{8}")


BUILD_STAGING = staging_names(STAGING_PREFIX)
STAGING_TOKEN = ".virnucpro-trt-staging"  # in a staging folder: the token its lock note carries
_TOKEN = re.compile(r"[0-9a-f]{32}")
_MAX_STAGING_DEPTH = 64  # a build's staging folder is a few levels deep


@dataclass(frozen=True)
class KeptFiles:
    """What one command keeps in its lock's folder only while it runs: the only things a lock file may
    have its rerun remove there, whatever else a (hand-written) note names.

    ``outputs``: paths below the folder whose ``files.atomic`` temporaries are the command's; ``stdin``:
    the names of its copies of stdin; ``staging``: the names of its private staging folders (``build``'s,
    and those in which ``demo`` and ``bench`` write a model set: :func:`folder_lock`); ``results``:
    ``merge``'s note of its results is carried over (:meth:`RunLock.note_results`).
    """

    outputs: tuple[str, ...] = ()
    stdin: re.Pattern[str] | None = None
    staging: re.Pattern[str] | None = None
    results: bool = False

    def file_may_go(self, name: str) -> bool:
        """Whether ``name`` (a path below the folder, from a note) is a file this command keeps there."""
        *folders, last = name.split("/")
        temporary = TEMPORARY_NAME.fullmatch(last)
        if temporary is not None:
            return "/".join([*folders, temporary["target"]]) in self.outputs
        return not folders and self.stdin is not None and self.stdin.fullmatch(last) is not None


FOLDER_STDIN = re.compile(rf"{re.escape(STDIN_COPY)}|\.{_PRIVATE_STDIN}")  # the stdin copies of a folder lock


def private_stdin_copy_name(output: Path | None = None) -> str:
    """A fresh name for a copy of stdin in a folder several runs may share: ``.stdin-<hex>.input`` for a
    command holding the folder's lock (``prepare``), ``.NAME.stdin-<hex>.input`` for ``output``'s."""
    prefix = f".{output.name}." if output is not None else "."
    return f"{prefix}stdin-{secrets.token_hex(8)}.input"


def output_lock_name(output: Path) -> str:
    """The name of ``output``'s lock file, beside it (:func:`output_lock`); never the folder lock's."""
    return f".{output.name}{RUN_LOCK_SUFFIX}"


def check_not_a_lock_name(output: Path) -> None:
    """Refuse (exit 2) an output file named as run locks are named: written there, it would replace
    another run's lock (with ``--force``) and let a second run onto that run's output."""
    if output.name == LOCK_FILE or output.name.endswith(RUN_LOCK_SUFFIX):
        raise UserError(f"{output}: run locks are kept under names like this; choose another output name")


class RunLock:
    """The held lock of one output (its folder's ``.work.lock``, or a file's ``.NAME.run.lock``), which
    is also the run's note of the files it keeps in that folder only while it runs (the stdin copy, the
    temporary result files) and, for ``merge``, of its results until its run.json accounts for them
    (:meth:`note_results`).

    The lock file holds :data:`LOCK_TEXT`, then one JSON line per such file (its path below the folder)
    with its stamp. A run killed by SIGKILL leaves both behind; the next run on the output takes the lock
    over (its text says the tool wrote it) and removes each noted file that is one ``kept`` names and
    still carries its stamp — what the killed run made, unchanged since — and nothing else. A file
    noted while still being written (``growing``: noted as soon as it is created) is removed when it is
    still that very file (same inode and device), since its size and times were still changing when
    the run was killed. Files are reached through descriptors opened without following links, so no
    folder on the way can be swapped for a link between the check and the removal. A staging folder
    (:meth:`note_folder`) is removed with all it holds when it is the noted folder and holds the noted
    token, which only its maker could have written into it (``mkdtemp``: mode 0700).
    """

    def __init__(self, folder: Path, path: Path, fd: int, kept: KeptFiles) -> None:
        self.folder = folder
        self.path = path
        self.kept = kept
        self._fd = fd
        self._noted: list[dict[str, Any]] = []
        self.results: dict[str, dict[str, Any]] = {}
        self.waited = False  # another run held it first: what that run wrote may be there now

    def note_results(self, entries: dict[str, dict[str, Any]]) -> None:
        """Note the result files (name -> size and SHA-256) a run is about to rename into OUTDIR, for a
        command without a work folder (``merge``; ``predict`` notes them in ``.work``). Passive: nothing
        is removed for it; until the run's run.json accounts for the files, a rerun may replace those
        still as noted (:attr:`results`, carried over from a killed run's lock file). A run that fails
        while they are noted keeps the lock file, so its rerun finds them."""
        if not self.kept.results:
            raise ValueError("this command's lock does not carry results")
        self.results = dict(entries)
        self.rewrite()

    def forget_results(self) -> None:
        """The noted results are accounted for (run.json written): the lock file may go at the end."""
        self.results = {}
        self.rewrite()

    def note(self, path: Path, growing: bool = False) -> None:
        """Note ``path`` (a file this run made in the lock's folder or below it, one of those its
        :class:`KeptFiles` names, removed by the run when done) in the lock file, in place of an earlier
        note of it; ``growing``: still being written. A name told before its file is made (nothing there
        yet: ``files.atomic.temporary_name``) is noted ``pending``, without a stamp, then noted again
        with its stamp once made; a rerun removes a pending name's file only while it is still empty."""
        name = path.relative_to(self.folder).as_posix()
        if not self.kept.file_may_go(name):
            raise ValueError(f"{name}: not a file this command keeps only while it runs")
        entry: dict[str, Any]
        if not os.path.lexists(path):
            entry = {"file": name, "pending": True}
        else:
            entry = {"file": name, "stamp": file_stamp(path), **({"growing": True} if growing else {})}
        self._noted = [e for e in self._noted if e.get("file") != name] + [entry]
        self.rewrite()

    def note_folder(self, path: Path) -> None:
        """Note ``path``, a staging folder this run has just made in the lock's folder (``mkdtemp``, a name
        :attr:`KeptFiles.staging` matches), and write a fresh token into it (:data:`STAGING_TOKEN`), the
        proof its rerun asks of the folder before removing it with all it holds."""
        staging = self.kept.staging
        if staging is None or path.parent != self.folder or not staging.fullmatch(path.name):
            raise ValueError(f"{path}: not a staging folder of {self.folder}")
        token = secrets.token_hex(16)
        fd = os.open(path / STAGING_TOKEN, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(token)
        self._noted = [e for e in self._noted if e.get("folder") != path.name]
        self._noted.append({"folder": path.name, "stamp": file_stamp(path), "token": token})
        self.rewrite()

    def rewrite(self) -> None:
        """Write the lock file anew: :data:`LOCK_TEXT` and this run's notes (a killed run's are gone)."""
        notes = [*self._noted, *([{"results": self.results}] if self.results else [])]
        data = (LOCK_TEXT + "".join(json.dumps(entry) + "\n" for entry in notes)).encode("utf-8")
        os.pwrite(self._fd, data, 0)  # then cut what is left of a longer body: a SIGKILL in between
        os.ftruncate(self._fd, len(data))  # leaves the new notes, never an empty file

    def remove_left_behind(self, content: bytes) -> None:
        """Remove the files a killed run noted in ``content`` (its lock file, read as hostile) that are
        this command's and still carry their stamps: they are that run's, unchanged since. Its noted
        results are only carried over, by a command that keeps results (:meth:`note_results`). A note
        that is malformed, or names anything else, is passed over."""
        for line in content.decode("utf-8", "replace").splitlines()[1:]:
            try:
                entry = parse_json(line)
                if not isinstance(entry, dict):
                    continue
                if isinstance(entry.get("results"), dict):
                    if self.kept.results:  # size and SHA-256 only: a stamp anyone can read is no proof
                        self.results = _results_of(entry["results"])
                elif "folder" in entry:
                    self._remove_noted_folder(entry["folder"], entry["stamp"], entry["token"])
                else:
                    growing, pending = entry.get("growing") is True, entry.get("pending") is True
                    self._remove_noted_file(entry["file"], entry.get("stamp"), growing, pending)
            except (ValueError, KeyError, TypeError, UserError, OSError):
                continue

    def _remove_noted_file(self, name: object, stamp: object, growing: bool, pending: bool = False) -> None:
        """Remove the file ``name`` (a path below the folder, read from a note) when it is the noted one;
        a ``pending`` note (the run was killed between making the file and noting its stamp) has no
        stamp: its file goes while it is still empty and this user's, as the killed run left it."""
        if not isinstance(name, str) or not (pending or _is_stamp(stamp)) or not self.kept.file_may_go(name):
            return
        *folders, last = name.split("/")
        fd = os.open(self.folder, _FOLDER_FLAGS)
        try:
            for part in folders:  # each step a real folder: O_NOFOLLOW fails on a link
                step = os.open(check_member_name(part, "lock file entry"), _FOLDER_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = step
            st = os.stat(check_member_name(last, "lock file entry"), dir_fd=fd, follow_symlinks=False)
            found = stat_stamp(st)
            if pending:
                ours = st.st_size == 0 and st.st_uid == os.geteuid()
            else:
                ours = found == stamp or (growing and found[3:] == stamp[3:])
            if stat.S_ISREG(st.st_mode) and ours:
                log.info("removing %s, left by an interrupted run", self.folder / name)
                os.unlink(last, dir_fd=fd)
        finally:
            os.close(fd)

    def _remove_noted_folder(self, name: object, stamp: object, token: object) -> None:
        """Remove the staging folder ``name`` (read from a note) when it is the very folder noted, still
        private to this user as ``mkdtemp`` made it (no one else may write into it) and holds the note's
        token; through descriptors, without recursion (a deep tree is no error)."""
        staging = self.kept.staging
        if not (staging is not None and isinstance(name, str) and staging.fullmatch(name)):
            return
        if not (_is_stamp(stamp) and isinstance(token, str) and _TOKEN.fullmatch(token)):
            return
        parent = os.open(self.folder, _FOLDER_FLAGS)
        try:
            top = os.open(name, _FOLDER_FLAGS, dir_fd=parent)
            try:
                st = os.fstat(top)
                private = st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & 0o077 == 0
                if [st.st_ino, st.st_dev] != stamp[3:] or not private or _read_token(top) != token:
                    return
                log.info("removing %s, left by an interrupted run", self.folder / name)
                _empty_folder(top)
            finally:
                os.close(top)
            os.rmdir(name, dir_fd=parent)  # only an empty folder: one swapped in since loses nothing
        finally:
            os.close(parent)

    def still_ours(self) -> bool:
        """True while the lock file at its name is the very file this lock holds (not replaced since)."""
        return _held_at(self.path, self._fd)

    def notes_what_is_left(self) -> bool:
        """True while a file or folder this run noted is still there: its clean-up was cut short (an
        interrupt while it removed its copy of stdin or its staging folder), so the lock file must stay
        for the next run to remove them. A run that ends normally has renamed or removed them all."""
        for entry in self._noted:
            name = entry.get("file", entry.get("folder"))
            if isinstance(name, str) and os.path.lexists(self.folder / name):
                return True
        return False


def _held_at(path: Path, fd: int) -> bool:
    """True when the file at ``path`` (not followed through a link) is the open file ``fd``."""
    try:
        here, held = os.lstat(path), os.fstat(fd)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (held.st_dev, held.st_ino)


def _read_token(folder_fd: int) -> str | None:
    """The token a staging folder (open as ``folder_fd``) holds, or None when it holds none (or holds
    anything but a regular file there: opened without blocking, so a FIFO cannot hang the run)."""
    try:
        fd = os.open(STAGING_TOKEN, os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW | _CLOEXEC, dir_fd=folder_fd)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            return None
        return handle.read(64).decode("ascii", "replace")


def _empty_folder(top: int) -> None:
    """Remove everything inside the open folder ``top`` but its token, then the token: files unlinked,
    folders entered through descriptors opened without following links (never onto another file system:
    a mount inside is left, and so is the folder) and removed once empty. A loop over one listing per
    folder, not recursion; at most :data:`_MAX_STAGING_DEPTH` levels (one descriptor each). Whatever
    fails leaves the token, so the folder is still recognisably the killed build's."""
    device = os.fstat(top).st_dev
    stack: list[tuple[int, str, list[str]]] = []  # folders entered: descriptor, name, subfolders left
    try:
        current, pending = top, _clear_files(top, keep=STAGING_TOKEN)
        while True:
            if pending:
                name = pending.pop()
                fd = os.open(name, _FOLDER_FLAGS, dir_fd=current)
                if os.fstat(fd).st_dev != device or len(stack) >= _MAX_STAGING_DEPTH:
                    os.close(fd)
                    raise OSError(errno.EXDEV, "another file system, or too deep", name)
                stack.append((fd, name, pending))
                current, pending = fd, _clear_files(fd)
                continue
            if not stack:
                break
            fd, name, pending = stack.pop()
            os.close(fd)
            current = stack[-1][0] if stack else top
            os.rmdir(name, dir_fd=current)
        os.unlink(STAGING_TOKEN, dir_fd=top)
    finally:
        for fd, _, _ in stack:
            os.close(fd)


def _clear_files(folder: int, keep: str | None = None) -> list[str]:
    """Unlink every entry of the open ``folder`` that is not a folder (links included, never followed)
    but ``keep``; returns the names of its subfolders."""
    folders = []
    for entry in list(os.scandir(folder)):
        if entry.is_dir(follow_symlinks=False):
            folders.append(entry.name)
        elif entry.name != keep:
            os.unlink(entry.name, dir_fd=folder)
    return folders


def noted_results(folder: Path) -> dict[str, dict[str, Any]]:
    """The results a killed ``merge`` noted in ``folder``'s lock file (name -> size and SHA-256), read
    without taking the lock: what a check made before the merge runs (the workflow's, when Snakemake
    would remove those files) may count as the tool's own. Empty when there is no lock file of this
    user's that no one else may write, or it notes no results."""
    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW | _CLOEXEC)
    except OSError:
        return {}
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or not _notes_trusted(fd):
            return {}
        content = os.pread(fd, _MAX_LOCK_BYTES + 1, 0)
    finally:
        os.close(fd)
    if not content.startswith(LOCK_TEXT.encode()):
        return {}
    for line in content.decode("utf-8", "replace").splitlines()[1:]:
        try:
            entry = parse_json(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("results"), dict):
            return _results_of(entry["results"])
    return {}


def _results_of(notes: dict[Any, Any]) -> dict[str, dict[str, Any]]:
    """A results note's well-formed entries (:func:`_result_entry`), size and SHA-256 only."""
    return {name: _entry_of(entry) for name, entry in notes.items() if _result_entry(name, entry)}


def _entry_of(entry: dict[str, Any]) -> dict[str, Any]:
    return {"bytes": entry["bytes"], "sha256": entry["sha256"]}


def _is_stamp(value: object) -> bool:
    return isinstance(value, list) and len(value) == 5 and all(type(v) is int for v in value)


def _result_entry(name: object, entry: object) -> bool:
    """Whether a lock file's result note is well formed: a plain name, its size and SHA-256."""
    try:
        check_member_name(name, "lock file result")
    except UserError:
        return False
    return is_output_entry(entry) and type(entry["bytes"]) is int  # type: ignore[index]


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
        fd = os.open(path, _LOCK_FLAGS, 0o644)  # only its maker may write notes into it
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            raise UserError(f"{refused} (not a regular file); {advice}") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        raise UserError(f"{refused} (not a regular file of its own); {advice}")
    return fd


def _notes_trusted(fd: int) -> bool:
    """Whether the notes of the open lock file ``fd`` may be followed: it is this user's and no one
    else may write it (as this tool creates it), so what it notes was written by this user's run."""
    st = os.fstat(fd)
    return (not hasattr(os, "geteuid") or st.st_uid == os.geteuid()) and not st.st_mode & 0o022


def outdir_lock(
    outdir: Path, kept: KeptFiles | None = None, wait: bool = False
) -> contextlib.AbstractContextManager[RunLock | None]:
    """Hold ``OUTDIR/.work.lock`` for the run (the folder is made when missing); another run on the same
    folder fails at once (exit 2), or with ``wait`` is waited for (:attr:`RunLock.waited` says so).
    ``kept``: what the command keeps there while it runs (nothing when None). See :func:`_held_lock`."""
    return _held_lock(outdir, outdir / LOCK_FILE, outdir, "OUTDIR", kept or KeptFiles(), wait=wait)


def output_lock(output: Path) -> contextlib.AbstractContextManager[RunLock | None]:
    """Hold ``.NAME.run.lock`` beside the output file ``output`` for the run; another run writing the
    same file fails at once (exit 2). It keeps the file's temporaries (and the outputs record's, which
    runs side by side write under names of their own) and its copies of stdin
    (:func:`private_stdin_copy_name` with ``output``). See :func:`_held_lock`."""
    check_not_a_lock_name(output)
    stdin = re.compile(re.escape(f".{output.name}.") + _PRIVATE_STDIN)
    kept = KeptFiles(outputs=(output.name, RECORD), stdin=stdin)
    return _held_lock(output.parent, output.parent / output_lock_name(output), output, "output path", kept)


def folder_lock(root: Path, elsewhere: str) -> contextlib.AbstractContextManager[RunLock | None]:
    """Hold ``.NAME.run.lock`` beside the folder ``root``, which the run writes whole in a private staging
    folder beside it (``.NAME-`` and 8 letters: :func:`staging_names`; ``files.whole_folder``). A second
    run waits for the first (then finds its folder) instead of failing. ``elsewhere``: what to choose
    instead when a file at the lock's name is not one the tool made. See :func:`_held_lock`."""
    kept = KeptFiles(staging=staging_names(f".{root.name}-"))
    return _held_lock(root.parent, root.parent / output_lock_name(root), root, elsewhere, kept, wait=True)


@contextlib.contextmanager
def _held_lock(
    folder: Path, path: Path, output: Path, elsewhere: str, kept: KeptFiles, wait: bool = False
) -> Iterator[RunLock | None]:
    """Hold the lock file ``path`` (in ``folder``) while writing ``output``; held by another run, fail at
    once (exit 2), or with ``wait`` wait for it.

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
    waited = False
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    raise UserError(busy) from None
                log.info("%s is being written by another virnucpro-trt run; waiting for it", output)
                fcntl.flock(fd, fcntl.LOCK_EX)
                waited = True
            if not wait or _held_at(path, fd):
                break
            os.close(fd)  # the run waited for removed its lock file as it ended: take the one there now
            fd = -1
            fd = _open_lock_file(path, elsewhere)
        content = os.pread(fd, _MAX_LOCK_BYTES + 1, 0)
        if content and not content.startswith(LOCK_TEXT.encode()):
            raise UserError(
                f"{path} is not a lock file virnucpro-trt made (it holds something else); move it away or "
                f"choose another {elsewhere}"
            )
        lock = RunLock(folder, path, fd, kept)
        lock.waited = waited
        if not lock.still_ours():  # removed by a run that ended while this one opened it: another run's now
            raise UserError(busy)
        if _notes_trusted(fd):
            lock.remove_left_behind(content)
        elif len(content.splitlines()) > 1:  # it holds notes
            log.warning(
                "%s belongs to another user or others may write it: its notes are not followed (nothing "
                "it names is removed)",
                path,
            )
        lock.rewrite()
        try:
            yield lock
        finally:
            # Before unlocking, so a waiting run finds no stale file; kept while it notes results that no
            # run.json accounts for yet (a failed merge's rerun needs them), or files and folders that
            # are still there (a clean-up cut short: the next run removes them).
            if lock.still_ours() and not lock.results and not lock.notes_what_is_left():
                try:
                    path.unlink(missing_ok=True)
                except OSError as exc:  # e.g. another user's file in a sticky folder: the run's work stands
                    log.warning("could not remove the lock file %s (%s); remove it by hand", path, exc)
    finally:
        if fd >= 0:
            os.close(fd)
