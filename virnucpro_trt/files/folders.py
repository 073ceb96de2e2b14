"""Output folders a run makes: created with every missing level, and removed again when left empty.

A run may remove only what it made. ``-o new/deeper/out`` makes three folders; a run that fails before
writing anything there (a bad record, a refused model) must not leave them behind, nor remove a folder
that was there before it started. :func:`made_folder` notes which levels were missing, creates them, and
on the way out removes those it made that are still empty, deepest first (a folder holding results or
resumable work stays, and so does every level above it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def made_folder(folder: Path) -> Iterator[Path]:
    """Create ``folder`` with its missing parents; on exit remove the levels this call made, if empty."""
    missing = [level for level in (folder, *folder.parents) if not level.exists() and not level.is_symlink()]
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    finally:
        for level in missing:  # deepest first; stops at the first that holds something
            try:
                level.rmdir()
            except OSError:
                break
