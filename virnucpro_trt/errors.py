"""Exception types that decide how the CLI ends.

User mistakes (bad input, missing weights, wrong options) are :class:`UserError` and end with one line
on stderr and exit code 2; everything else that we anticipate is a :class:`RunFailure` (exit 1). The CLI
never shows a traceback for either; unexpected exceptions are logged in full to ``--log-file`` and
summarised in one line.
"""

from __future__ import annotations

import errno

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C


class VirnucproError(Exception):
    """Base class for errors the CLI reports in one line."""

    exit_code = EXIT_FAILURE


class UserError(VirnucproError):
    """Bad usage or bad input: the user can fix it (exit code 2)."""

    exit_code = EXIT_USAGE


class InputFormatError(UserError):
    """The sequence input is not what it must be (not FASTA/FASTQ, bad characters, duplicate ids...)."""


class ModelNotFoundError(UserError):
    """A model path / name could not be resolved locally."""


class CheckpointError(UserError):
    """A checkpoint exists but is not in a layout we can load, or is inconsistent with another one."""


class UnsafePickleError(CheckpointError):
    """A pickle asked for something outside the allow-list (it could run code): refused."""


class RunFailure(VirnucproError):
    """The run itself failed (numerical failure, device error...) (exit code 1)."""


class ShapeRangeError(UserError):
    """An input is outside the shape range a compiled engine was built for."""


class EngineMismatchError(UserError):
    """An engine directory does not match this machine, these libraries or these weights."""


class BuildError(RunFailure):
    """An engine could not be built, or failed its parity gate."""


class NonFiniteError(RunFailure):
    """A batch produced NaN or Inf: results would be silently wrong, so the batch fails."""


def one_line(exc: BaseException, limit: int | None = None, name: bool = True) -> str:
    """An exception as one line: ``TypeName: message``, every run of whitespace (line ends included) one
    space, cut to ``limit`` characters. ``name=False`` leaves the type out, for a message the tool wrote
    itself. Rows, logs and worker reports carry failures this way, so one failure never spans lines."""
    text = " ".join(str(exc).split())
    if name:
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if limit is None else text[:limit]


def shown(value: object, limit: int = 60) -> str:
    """A value read from a hostile file, for a one-line message: a printable string as it is, another
    string or a short scalar by its repr, anything else by its type (:func:`show_value`), cut to
    ``limit`` characters. Why: a value in a file must neither split a message's one line nor drive the
    terminal, and showing it must not fail (see :func:`show_value`)."""
    if isinstance(value, str) and value.isprintable():
        text = value
    elif isinstance(value, str) or _is_short_scalar(value):
        text = repr(value)
    else:
        text = show_value(value)
    return text if len(text) <= limit else text[:limit] + "..."


def show_value(value: object) -> str:
    """A hostile value with its type, for a one-line message: a string (cut) or a short scalar shown,
    anything else by its type only. Why: the repr of a deeply nested list recurses, and that of a
    5000-digit integer raises."""
    kind = type(value).__name__
    if isinstance(value, str):
        return f"{value[:40]!r} (str)"
    if _is_short_scalar(value) and value is not None:
        return f"{value!r} ({kind})"
    return f"a value of type {kind}"


def _is_short_scalar(value: object) -> bool:
    return value is None or isinstance(value, float) or (isinstance(value, int) and value.bit_length() <= 64)


NO_SPACE = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}  # a failed run to rerun, not a place to change
_NOT_WRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}
CANNOT_CREATE = {errno.ENOENT, errno.ENOTDIR}  # an output path cannot be made there (cli/main.py)


SHORT_OF_FILES = (errno.EMFILE, errno.ENFILE)  # too few file descriptors: the process's limit


def describe_os_error(exc: OSError) -> tuple[str, int] | None:
    """One line and an exit code for the file-system failures users meet and can fix, else None.

    A full disk (or quota, or file-size limit) is a failed run (exit 1): what finished is kept and a
    rerun resumes. A read-only or forbidden location is a usage error (exit 2): choose another one. An
    I/O error (a failing disk or network file system) is a failed run, named as such; the inputs and
    model files it meets first are refused by name before (``check_input_file``, the weights' hash). A
    name too long for the file system is a usage error; too few file descriptors (``ulimit -n``) a
    failed run.
    """
    where = f" ({exc.filename})" if exc.filename else ""
    reason = exc.strerror or str(exc)
    if exc.errno in NO_SPACE:
        return f"{reason}{where}: free space (or raise the limit) and rerun the same command", EXIT_FAILURE
    if exc.errno in _NOT_WRITABLE:
        return f"cannot write{where}: {reason}; choose a location you can write to", EXIT_USAGE
    if exc.errno == errno.EIO:
        return f"{reason}{where}: the storage failed to read or write; check it and rerun", EXIT_FAILURE
    if exc.errno == errno.ENAMETOOLONG:
        return f"{reason}{where}: choose a shorter name", EXIT_USAGE
    if exc.errno in SHORT_OF_FILES:
        return f"{reason}: raise the limit on open files (ulimit -n) and rerun the same command", EXIT_FAILURE
    return None


def resource_shortage(exc: BaseException) -> BaseException | None:
    """The exhausted resource behind ``exc`` (too many open files, memory), or None. Readers turn an
    OSError into "cannot read FILE": with ``ulimit -n`` or ``ulimit -v`` too low that blamed a good model
    or input file (exit 2) for what a rerun with a higher limit does."""
    cause: BaseException | None = exc
    for _ in range(16):  # a chain of causes, bounded
        if cause is None:
            return None
        if isinstance(cause, MemoryError) or (isinstance(cause, OSError) and cause.errno in SHORT_OF_FILES):
            return cause
        cause = cause.__cause__ or cause.__context__
    return None


def shortage_line(exc: BaseException) -> tuple[str, int] | None:
    """The one line and exit code for a shortage behind ``exc`` (:func:`resource_shortage`), or None:
    the shortage's own line, then what it became where that is another error (the tool's message as it
    is, any other exception with its type), so the main process and a worker say it alike."""
    shortage = resource_shortage(exc)
    if shortage is None:
        return None
    line, code = describe_shortage(shortage)
    if shortage is not exc:
        line = f"{line} ({one_line(exc, name=not isinstance(exc, VirnucproError))})"
    return line, code


def describe_shortage(shortage: BaseException) -> tuple[str, int]:
    """One line and exit 1 (a failed run: what finished is kept, a rerun resumes) for a shortage."""
    if isinstance(shortage, OSError):
        described = describe_os_error(shortage)
        assert described is not None  # resource_shortage finds only SHORT_OF_FILES among OSErrors
        return described
    return (
        "out of memory: free memory or raise the limit (ulimit -v, the job's memory), or use fewer --workers "
        "or a smaller --max-batch-tokens, and rerun the same command",
        EXIT_FAILURE,
    )
