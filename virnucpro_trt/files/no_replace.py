"""Putting a finished file in place without replacing one that appeared there meanwhile.

A command checks its output names when it starts and writes its results under temporary names; another
program (another command of this tool among them: ``embed -o OUTDIR/frames.tsv`` while ``predict -o
OUTDIR`` runs) may write a file at one of those names in between. A plain rename would replace that
file unseen. Where the name was free when the command cleared or checked it, the rename is one that
fails if anything is there now: Linux's ``renameat2(RENAME_NOREPLACE)``, atomic; elsewhere (another
libc, a file system without it) a check just before the rename, which leaves only that instant open.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from virnucpro_trt.errors import UserError

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_UNSUPPORTED = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP)


def _find_renameat2() -> Callable[..., int] | None:
    try:
        call = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # not glibc >= 2.28 (musl, macOS): the checked rename
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    call.restype = ctypes.c_int
    return call


_RENAMEAT2 = _find_renameat2()


def rename_no_replace(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``; FileExistsError (and nothing renamed) when anything, a link
    included, is at ``target``."""
    if _RENAMEAT2 is not None:
        if _RENAMEAT2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code not in _UNSUPPORTED:
            raise OSError(code, os.strerror(code), str(target))  # EEXIST: a FileExistsError
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target))
    os.replace(source, target)


def appeared_meanwhile(target: Path) -> UserError:
    """The refusal when a file appeared at ``target`` while the run wrote its own (exit 2)."""
    return UserError(
        f"{target} appeared while this run was working (another program wrote it there); it was left as "
        "it is and this run's result was not put in its place: move it away and rerun the same command"
    )


def check_still_free(folder: Path, names: Iterable[str]) -> None:
    """Refuse (:func:`appeared_meanwhile`) the first of ``names`` in ``folder`` that something occupies:
    names its command cleared (or found free) when it began, so what is there now another program put
    there, and it is neither removed nor written over."""
    for name in names:
        if os.path.lexists(folder / name):
            raise appeared_meanwhile(folder / name)


def place_all(pairs: list[tuple[Path, Path]]) -> None:
    """Rename each ``(source, target)`` into place, none of them over a file: every target is checked
    free first, so one that appeared meanwhile stops the run before any result is shown."""
    for _, target in pairs:
        check_still_free(target.parent, [target.name])
    for source, target in pairs:
        try:
            rename_no_replace(source, target)
        except FileExistsError:
            raise appeared_meanwhile(target) from None
