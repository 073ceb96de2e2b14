"""What the program checks about the process it runs in, before a command does anything: its standard
streams, its working folder, and the cache folders torch's compilers are told to use.

Each is a place where a library fails later in its own way: Python leaves a closed stream ``None``
(logging's setup then failed, exit 1, nothing said), oneMKL aborts loading torch from a working folder
that was removed ("Intel oneMKL FATAL ERROR", exit 2), and Inductor's cache variable naming a file
killed every worker at its first compile. Checked here, each is one line naming what to change.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from virnucpro_trt.errors import UserError
from virnucpro_trt.files.names import blocking_non_folder, not_a_folder

# Folders torch's compilers make at their first compile when these name them (Inductor on every device,
# Triton on CUDA).
COMPILER_CACHE_VARIABLES = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")


def prepare_standard_streams() -> None:
    """Put ``/dev/null`` under each standard descriptor the program was started without (``<&-``,
    ``>&-``, ``2>&-``, as a daemon or a scheduler may start it), and give Python's stdout and stderr a
    writer there.

    Why: a closed descriptor is the lowest free one, so the next file opened (the log, a result being
    written) would take it as its descriptor, and whatever torch or a C library writes to stderr would
    land in that file. stdin stays ``None`` in Python, so reading ``-`` still says stdin is closed.
    Both streams write what their encoding cannot hold escaped (``\\u2014``), as Python's own stderr
    does: on a terminal in an ASCII or Latin-1 locale a dash in a warning or an accented path raised
    ``UnicodeEncodeError`` inside the log and the progress bar, and the run failed.
    """
    for descriptor in (0, 1, 2):
        try:
            os.fstat(descriptor)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != descriptor:  # a lower descriptor was free too: not the case in this loop's order
                os.dup2(null, descriptor)
                os.close(null)
    if sys.stdout is None:
        sys.stdout = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 (the process's, never closed)
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):  # not a TextIOWrapper (embedded), closed
            stream.reconfigure(errors="backslashreplace")


def working_folder_problem() -> str | None:
    """Why the working folder cannot be used (it was removed or moved away, or is not readable), or
    None. Relative paths could not be resolved there, and torch's oneMKL aborts while loading."""
    try:
        os.getcwd()
    except OSError as exc:
        return (
            f"the current folder cannot be found ({exc.strerror or exc}): it was removed or moved away "
            "after this shell entered it; cd into a folder that exists and run the command again"
        )
    return None


def check_compiler_cache_variables() -> None:
    """Refuse (exit 2) a compiler cache variable whose folder cannot be made: the path, or a folder
    above it, is a file. Inductor makes its cache folder at its first compile, inside a worker, where
    the failure killed the worker and each restart of it."""
    for name in COMPILER_CACHE_VARIABLES:
        value = os.environ.get(name)
        if not value:
            continue
        place = blocking_non_folder(Path(value))
        if place is not None:
            what = f"{place} is {not_a_folder(place)}"
            raise UserError(f"{name}={value}: {what}; point {name} at a folder or unset it")
