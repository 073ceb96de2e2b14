"""Output paths: a file there is replaced only when virnucpro-trt wrote it and it is unchanged since.

The one rule for every command that writes results, from predict's (``predict`` keeps its record in
``run.json``; ``prepare``, ``embed`` and ``convert-classifier``, which own no run folder, in
:data:`RECORD` beside their outputs, one per folder):

* each file the tool writes is recorded with its size and SHA-256 (:func:`output_entry`); ``RECORD``
  adds its stat stamp, so an untouched file is not hashed again (``files/stamps.py``);
* a file at an output path is replaced when a record lists it and it still has the recorded size and
  SHA-256 (:func:`changed_since`): rerunning a command onto its own earlier output just works; an entry
  may also keep what the file was made from (``made``), so that ``prepare``, ``embed`` and
  ``convert-classifier`` run again onto their own unchanged output compute nothing (:func:`made_from`);
* an empty regular file is replaced too: it holds nothing to lose, and it is what ``mktemp`` or a
  workflow manager's touched placeholder leaves at an output path before the command runs;
* anything else there (a user's file, an output edited since, a symbolic link) is refused with one
  line, exit 2, before anything is written, unless ``--force`` (:func:`check_replaceable`); a folder is
  refused even then, since no command removes folders, and so is a device, FIFO or socket, which the
  rename that puts a result in place would replace with a regular file (:func:`unreplaceable`).

Why: a mistyped ``-o`` must never destroy someone's file, while idempotent reruns are a project goal.
A file written before records existed is refused once; ``--force`` takes it over. Two commands writing
into one folder at the same instant may lose one record entry: that output is then refused on a rerun
(the safe side), never replaced unseen.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from virnucpro_trt.errors import UserError
from virnucpro_trt.files.atomic import write_text_atomic
from virnucpro_trt.files.digests import sha256_bytes, sha256_file
from virnucpro_trt.files.folder_flock import folder_locked
from virnucpro_trt.files.json_fields import SHA256, FieldError, read_json_object
from virnucpro_trt.files.stamps import digest_holds, file_stamp

log = logging.getLogger(__name__)

RECORD = ".virnucpro-trt-outputs.json"
RECORD_SCHEMA = 1
# ~290,000 outputs in one folder (an entry is ~225 bytes; ~1 kB for embed's, with what it was made from)
MAX_RECORD_BYTES = 64 << 20


def record_path(folder: Path) -> Path:
    """Where the record of the files written in ``folder`` lives (an input there is refused too)."""
    return folder / RECORD


def output_entry(path: Path) -> dict[str, Any]:
    """``{"bytes", "sha256"}`` of a file the tool has just written: what a record keeps of it."""
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


def is_output_entry(entry: object) -> bool:
    """Whether ``entry`` (read from a record, a run.json or a lock file: hostile) has the shape
    :func:`output_entry` writes: ``bytes`` an integer, ``sha256`` a hex SHA-256."""
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("bytes"), int)
        and isinstance(entry.get("sha256"), str)
        and SHA256.fullmatch(entry["sha256"]) is not None
    )


def text_entry(text: str) -> dict[str, Any]:
    """:func:`output_entry` of the file ``write_text_atomic`` makes of ``text``, before it is written."""
    data = text.encode("utf-8")
    return {"bytes": len(data), "sha256": sha256_bytes(data)}


def changed_since(folder: Path, name: str, entry: object) -> str | None:
    """Why ``folder/name`` is not the file ``entry`` recorded (size and SHA-256), or None when it is.

    A file that still carries the entry's ``stamp`` (when it has one) is the recorded file without a
    re-hash; a symbolic link is never a file the tool wrote.
    """
    path = folder / name
    changed = f"its {name} was changed or removed since"
    if not isinstance(entry, dict) or path.is_symlink() or not path.is_file():
        return changed
    stamp = entry.get("stamp")
    if not (isinstance(stamp, list) and all(isinstance(v, int) for v in stamp)):
        stamp = None  # a record is read as hostile: a malformed stamp only means "hash the file"
    if path.stat().st_size != entry.get("bytes") or not digest_holds(path, entry.get("sha256"), stamp):
        return changed
    return None


def changed_output(folder: Path, outputs: dict[str, Any]) -> str | None:
    """Which file of a run's recorded ``outputs`` (name -> entry) was removed or changed since it was
    written, in words, or None when all are as recorded (predict's and merge's reruns)."""
    for name, entry in outputs.items():
        if changed_since(folder, name, entry) is not None:
            gone = not os.path.lexists(folder / name)
            return f"its own {name} was {'removed' if gone else 'changed'}"
    return None


def reuse_finished(
    folder: Path, outputs: dict[str, Any] | None, why: str | None, force: bool, job: str, other: str
) -> bool:
    """What a rerun does with the finished results ``folder`` holds (``predict``'s run, ``merge``'s merge),
    one rule for both: True to reuse them (nothing to do), False to compute (``force``), else refused.

    ``why`` says why their run.json is not this very ``job``'s record (None: it is, and ``outputs`` is
    what it recorded). This job's results still as recorded are reused, or computed again when ``force``
    asks to compute; changed since, or another job's (``other`` names them), they are refused (exit 2,
    one line naming the difference) unless ``force``, which replaces them.
    """
    if why is None:
        changed = changed_output(folder, outputs or {})
        if changed is None and not force:
            log.info("%s already holds the results of %s (run.json): nothing to do", folder, job)
            return True
        if changed is None:
            log.warning("--force: computing %s again in %s (its results were unchanged)", job, folder)
            return False
        problem = f"the results of {job}, but {changed} since"
    else:
        problem = f"{other} ({why})"
    if force:
        log.warning("--force: replacing what %s holds: %s", folder, problem)
        return False
    fix = "make them again" if why is None else "replace them"
    raise UserError(f"{folder} holds {problem}; choose another OUTDIR, or add --force to {fix}")


_FOREIGN = "is not virnucpro-trt's record of written files"


def _read_record(folder: Path) -> tuple[dict[str, dict[str, Any]], str | None]:
    """``folder``'s record, read once: its well-formed entries (none when it is missing or damaged), and
    why the file at its name is not a record this tool wrote (None: absent, or a JSON object the tool
    signed). Writing the record replaces that file, so a foreign one must not be written over unseen."""
    path = record_path(folder)
    if not os.path.lexists(path):
        return {}, None
    if path.is_symlink() or not path.is_file():
        return {}, "is a folder" if path.is_dir() and not path.is_symlink() else "is not a plain file"
    try:
        data = read_json_object(path, MAX_RECORD_BYTES)
        owner, folder_mode = path.stat().st_uid, folder.stat().st_mode
    except (OSError, FieldError):
        return {}, _FOREIGN
    if hasattr(os, "geteuid") and owner != os.geteuid() and folder_mode & (stat.S_ISVTX | stat.S_IWOTH):
        # In a folder anyone may write into (/tmp), another user's record vouches for nothing of this
        # user's: it could list a victim's file, size and SHA-256 so that the victim's next run replaced
        # it unasked. (In a group's shared folder the members' records are trusted as before; there they
        # may replace each other's files anyway.)
        return {}, None
    files = data.get("files") if data.get("schema") == RECORD_SCHEMA else None
    entries = {}
    for name, entry in files.items() if isinstance(files, dict) else ():
        if os.sep not in name and name not in ("", ".", "..") and is_output_entry(entry):
            entries[name] = entry
    return entries, None if data.get("tool") == "virnucpro-trt" else _FOREIGN


def _not_ours(target: Path, entries: dict[str, dict[str, Any]]) -> str | None:
    """Why the file at ``target`` may not be replaced without ``--force`` (``entries``: its folder's
    record), or None when it may."""
    if not target.is_symlink() and target.is_file() and target.stat().st_size == 0:
        return None  # nothing in it to lose
    entry = entries.get(target.name)
    if entry is None:
        return "virnucpro-trt did not write it"
    if changed_since(target.parent, target.name, entry) is not None:
        return "it was changed since virnucpro-trt wrote it"
    return None


def unreplaceable(path: Path) -> str | None:
    """Why what is at ``path`` may not be replaced even with ``--force`` (a few words for a refusal), or
    None. A folder: no command removes folders. A device node, FIFO or socket: the rename that puts a
    result in place would swap a regular file in for it (``bench --json /dev/null --force``, run as
    root, replaced the system's /dev/null). A link is judged as a link: a rename replaces the link."""
    try:
        mode = path.lstat().st_mode
    except OSError:
        return None
    if stat.S_ISDIR(mode):
        return "is a folder"
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        return "is a device, FIFO or socket, not a file: results are written whole and renamed into place"
    return None


def unreplaceable_among(folder: Path, names: Iterable[str]) -> str | None:
    """``PATH why`` for the first of ``names`` in ``folder`` that may not be replaced even with ``--force``
    (:func:`unreplaceable`), or None: what a command checks at its result names before anything else."""
    for name in names:
        if (never := unreplaceable(folder / name)) is not None:
            return f"{folder / name} {never}"
    return None


def check_replaceable(targets: Iterable[Path], force: bool) -> None:
    """Refuse (exit 2) an output path that holds a file the tool did not write, unless ``force``; the
    same for a file at the record's name that is not a record of ours (writing the record replaces it),
    and a folder there even with ``force``.

    Called before anything is written; see the module docstring for the rule.
    """
    targets = list(targets)
    records = {folder: _read_record(folder) for folder in dict.fromkeys(t.parent for t in targets)}
    for folder, (_, why) in records.items():
        if (never := unreplaceable(record_path(folder))) is not None:
            raise UserError(f"{record_path(folder)} {never}; move it away or choose another folder")
        if why is not None and force:
            log.warning("--force: replacing %s (it %s)", record_path(folder), why)
        elif why is not None:
            raise UserError(
                f"{record_path(folder)} {why}; move it away, choose another output folder, or add --force "
                "to replace it"
            )
    for target in targets:
        if target.name == RECORD:
            raise UserError(f"{target}: virnucpro-trt keeps its record of written files under this name")
        if not os.path.lexists(target):
            continue
        if (never := unreplaceable(target)) is not None:
            raise UserError(f"{target} {never}; choose another output path")
        why = _not_ours(target, records[target.parent][0])
        if why is None:
            continue
        if force:
            log.warning("--force: replacing %s (%s)", target, why)
            continue
        raise UserError(
            f"{target} exists and {why}; move it away, choose another output path, or add --force to "
            "replace it"
        )


def recorded_made(target: Path) -> object:
    """What ``target``'s record entry says it was made from (the ``made`` given to :func:`record_written`),
    while the file there is still the one recorded; None otherwise (no record, a foreign one, no such
    entry, or the file changed, removed or a link since).

    The value is read from a file anyone in the folder may edit: a caller compares it with what it would
    record now and reuses the output only on equality, never acting on its shape.
    """
    entries, why = _read_record(target.parent)
    entry = entries.get(target.name)
    if why is not None or entry is None or target.is_symlink():
        return None
    if changed_since(target.parent, target.name, entry) is not None:
        return None
    return entry.get("made")


def made_from(targets: Iterable[Path], key: object) -> bool:
    """Whether every file of ``targets`` is still the one its record lists, recorded as made from ``key``
    (the ``key`` of the ``made`` given to :func:`record_written`): a rerun's own finished outputs.

    Each entry counts only when its ``key`` equals the one this run would record (JSON values compared
    for equality, :func:`recorded_made`): a value of another shape, another command's or another
    version's is a difference, so the caller computes again; it is never read for anything else.
    """
    found = [recorded_made(target) for target in targets]
    return bool(found) and all(isinstance(made, dict) and made.get("key") == key for made in found)


def record_written(
    targets: Iterable[Path],
    on_create: Callable[[Path], None] | None = None,
    made: dict[str, Any] | None = None,
) -> None:
    """Record ``targets`` (just written, complete) in their folders' records; entries whose file is gone
    are dropped. A record that cannot be written is a warning: the outputs are complete, only a rerun
    onto them will need ``--force``. ``on_create`` is told the record's temporary file as soon as it
    exists (a run lock notes it, so the rerun after a SIGKILL in that moment removes it). ``made`` (JSON)
    is kept with each target's entry: what it was computed from, so that a rerun can tell its own
    finished output (:func:`recorded_made`)."""
    by_folder: dict[Path, list[Path]] = {}
    for target in targets:
        by_folder.setdefault(target.parent, []).append(target)
    for folder, written in by_folder.items():
        try:
            new: dict[str, dict[str, Any]] = {}
            for target in written:  # hashed before the folder is locked (seconds for a large output)
                stamp = file_stamp(target)  # before hashing: a change in between will not match it
                new[target.name] = {**output_entry(target), "stamp": stamp}
                if made is not None:
                    new[target.name]["made"] = made
            with folder_locked(folder):
                entries = {n: e for n, e in _read_record(folder)[0].items() if os.path.lexists(folder / n)}
                body = {"tool": "virnucpro-trt", "schema": RECORD_SCHEMA, "files": {**entries, **new}}
                text = json.dumps(body, indent=1, sort_keys=True) + "\n"
                write_text_atomic(record_path(folder), text, on_create)
        except OSError as exc:
            log.warning(
                "could not record the files written in %s (%s): a rerun onto them will need --force",
                folder,
                exc,
            )
