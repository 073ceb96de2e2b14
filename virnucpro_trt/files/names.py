"""Names read from files (manifests, split plans) that point at other files: only plain names inside a
folder are followed.

A manifest that says ``/usr/lib/x.so``, ``../other/esm2.pt2`` or names a symlink leading out of its folder
would make us load (and, for ``.pt2``, execute) a file the folder's owner never shipped. So a member name
must be a single path component (no separator, not ``.``/``..``, not absolute, no NUL) and must resolve
to a regular file inside the resolved folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from virnucpro_trt.errors import UserError


class UnsafeMemberName(UserError):
    """A file named inside a folder's metadata points outside it, or is not a plain file name."""


def check_member_name(name: object, what: str) -> str:
    """``name`` if it is a plain file name; raise :class:`UnsafeMemberName` otherwise."""
    if not isinstance(name, str) or not name:
        raise UnsafeMemberName(f"{what}: expected a file name, found {name!r}")
    separators = {"/", "\\", os.sep, *(filter(None, [os.altsep]))}
    if name in (".", "..") or "\0" in name or any(sep in name for sep in separators):
        raise UnsafeMemberName(f"{what}: {name!r} is not a plain file name inside the folder (refused)")
    return name


def member_path(folder: Path, name: object, what: str) -> Path:
    """``folder/name``, refused unless ``name`` is plain and resolves to a regular file inside ``folder``."""
    checked = check_member_name(name, what)
    path = folder / checked
    try:
        root = folder.resolve()
        resolved = path.resolve()
        exists = path.exists()
    except (OSError, RuntimeError) as exc:  # a name past NAME_MAX, a link loop (RuntimeError before 3.13)
        raise UnsafeMemberName(
            f"{what}: {checked[:60]!r} cannot be resolved ({exc.__class__.__name__})"
        ) from None
    if resolved.parent != root and root not in resolved.parents:
        raise UnsafeMemberName(f"{what}: {checked!r} resolves to {resolved}, outside {root} (refused)")
    if exists and not resolved.is_file():
        raise UnsafeMemberName(f"{what}: {checked!r} is not a regular file")
    return path


def is_within(path: Path, folder: Path) -> bool:
    """True when ``path`` (resolved) is ``folder`` or lies under it."""
    resolved, root = path.resolve(), folder.resolve()
    return resolved == root or root in resolved.parents


def same_file(a: Path, b: Path) -> bool:
    """True when both name one existing file (symlinks and hard links included) or the same path."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def not_a_folder(path: Path) -> str:
    """What occupies ``path`` where a folder should be (it exists and is not one), for a refusal."""
    if path.is_symlink():
        return "a symbolic link to a file, not a folder" if path.exists() else "a dangling symbolic link"
    return "a file, not a folder"


def check_parent_folders(path: Path, advice: str = "choose another output location") -> None:
    """Refuse (exit 2) a path a command makes that cannot be created because one of the folders above it
    is a file (``-o notes.txt/out``, ``--log-file notes.txt/run.log``, a cache variable naming a file):
    said in one line now, with ``advice``, rather than as a ``NotADirectoryError`` later.

    Only the first existing ancestor is looked at; missing folders are made by the command.
    """
    folder = blocking_non_folder(Path(path).parent)
    if folder is not None:
        raise UserError(f"{folder} is {not_a_folder(folder)}, so {path} cannot be made below it; {advice}")


def blocking_non_folder(folder: Path) -> Path | None:
    """What stops ``folder`` being made (``mkdir -p``): the first of it and the folders above it that
    exists and is no folder (a file, a link to one), or None when it can be made. Only up to the first
    existing folder: missing ones are made."""
    for place in (folder, *folder.parents):
        if place.is_dir():
            return None
        if os.path.lexists(place):
            return place
    return None
