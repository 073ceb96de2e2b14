"""Logging for the CLI: rich on a terminal, plain timestamped lines otherwise, everything in --log-file."""

from __future__ import annotations

import logging
import re
import stat
import sys
from pathlib import Path

from virnucpro_trt.log_records import EVERY_TIME, unlabelled_text

_FORMAT = "%(asctime)s %(levelname)-7s %(message)s"
_FILE_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
# The first line _FILE_FORMAT writes: every record in a log file comes from one of this tool's loggers
# first (the command's own line), so a file that starts otherwise is not a log of ours.
_OUR_FIRST_LINE = re.compile(rb"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ +virnucpro_trt[\w.]*: ")
_FIRST_LINE_BYTES = 256


def holds_other_than_our_log(path: Path) -> bool:
    """True when ``path`` is a regular file, not empty, that does not start as a log this tool wrote.

    The log is appended to, so a file the command reads without it being named on the command line (a
    model in a cache, a part's split.json, the demo's reads) would be changed before it is read. Only
    the first line is read, and only from a regular file (a FIFO or a device is left to the caller).
    """
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
            return False
        with path.open("rb") as handle:
            first = handle.read(_FIRST_LINE_BYTES)
    except OSError:
        return False  # what cannot be read is not appended to either: the handler's own error says so
    return _OUR_FIRST_LINE.match(first) is None


class _WarnOnce(logging.Filter):
    """Lets each warning's text through once per command, whichever process says it.

    A model's warning (an ESM-2 config that leaves fields out, an engine kept despite its gate) is met
    by the main process when it checks the model and again by every worker that loads it: on eight GPUs
    nine identical lines. Only the terminal is spared; the log file keeps every record. A warning of
    an event (``log_records.EVERY_TIME``: a worker died again on the same shard) is shown each time.
    """

    def __init__(self) -> None:
        super().__init__()
        self.shown: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING or getattr(record, EVERY_TIME, False):
            return True
        text = unlabelled_text(record)
        if text in self.shown:
            return False
        self.shown.add(text)
        return True


def setup_logging(verbose: int = 0, quiet: bool = False, log_file: Path | None = None) -> None:
    """Configure the root logger once per command (idempotent: handlers are replaced)."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 0 else logging.INFO)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(logging.DEBUG)
    console: logging.Handler
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        console = RichHandler(show_path=False, rich_tracebacks=False, markup=False)
        console.setFormatter(logging.Formatter("%(message)s"))
    else:
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
    console.setLevel(level)
    console.addFilter(_WarnOnce())
    root.addHandler(console)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        # a path that is not UTF-8 (its bytes kept as surrogates) is written escaped: strict UTF-8 made
        # every record naming it a "--- Logging error ---" and a traceback on the terminal
        file_handler = logging.FileHandler(log_file, encoding="utf-8", errors="backslashreplace")
        file_handler.setFormatter(logging.Formatter(_FILE_FORMAT))
        file_handler.setLevel(logging.DEBUG)
        root.addHandler(file_handler)
    # Third-party chatter stays out of the user's terminal unless -v.
    for noisy in ("urllib3", "filelock", "huggingface_hub", "torch", "h5py", "onnx", "onnxruntime"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose < 2 else logging.DEBUG)
