"""A folder written whole or not at all: the demo's model set, bench's random-weight sets.

The folder is filled in a private staging folder beside it (``mkdtemp``: ``.NAME-`` and 8 letters) and
renamed into place, so a folder at the name is a finished one exactly when the caller's check says so;
anything else there is refused, never written into, through or over. The run holds ``.NAME.run.lock``
beside it meanwhile (:func:`~virnucpro_trt.files.run_lock.folder_lock`), which notes the staging folder:
a run killed by SIGKILL cannot remove it (at full size, gigabytes of weights), so the next run does,
and a second run waits for the first, then finds its folder instead of writing another.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from virnucpro_trt.errors import UserError
from virnucpro_trt.files.folders import nothing_there
from virnucpro_trt.files.run_lock import STAGING_TOKEN, folder_lock, staging_names

log = logging.getLogger(__name__)


def write_folder_whole(
    root: Path, write: Callable[[Path], None], finished: Callable[[Path], bool], foreign: str, elsewhere: str
) -> bool:
    """Make ``root`` with ``write`` (given the staging folder to fill) unless ``finished(root)`` already
    holds; True when this call made it. ``foreign``: the one-line refusal (exit 2) of anything else at
    ``root`` (not missing, not an empty folder); ``elsewhere``: what to choose instead when a file at
    the lock's name is not the tool's."""
    if finished(root):  # no lock needed to read a finished folder (which may be in a read-only place)
        return False
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # read-only, or below a place no folder can be made (/proc)
        raise UserError(
            f"cannot make the folder {root.parent} ({exc.strerror or exc}); set {elsewhere} to another folder"
        ) from None
    with folder_lock(root, elsewhere) as lock:
        if finished(root):  # made by the run this one waited for
            return False
        if not nothing_there(root):
            raise UserError(foreign)
        leftover = staging_names(f".{root.name}-")
        for left in sorted(root.parent.iterdir()):  # no lock noted these: left before the rule, named only
            if leftover.fullmatch(left.name) and left.is_dir() and not left.is_symlink():
                log.warning("%s was left by an interrupted run; remove it", left)
        staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
        try:
            if lock is not None:
                lock.note_folder(staging)
            write(staging)
            (staging / STAGING_TOKEN).unlink(missing_ok=True)  # the lock's proof, not part of the folder
            os.rename(staging, root)  # also replaces an empty folder there
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return True
