"""SIGTERM is an interrupt, like Ctrl-C, for every command.

Schedulers stop a job with SIGTERM (Slurm at its time limit, Snakemake on cancel, ``kill``). Python's
default for it is to die at once, skipping every ``finally``: a half-written ``.partial``, a copy of
stdin and the folders the run made were left behind, and no rerun removed them. Raised as
``KeyboardInterrupt`` instead, it takes the Ctrl-C path: the command cleans up what it made, keeps what
a rerun can resume (``predict``'s finished shards), says "interrupted" and exits 130.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, the first SIGTERM raises ``KeyboardInterrupt`` in the main thread and later ones
    are ignored while the command cleans up (elsewhere: unchanged). Python runs the handler between
    bytecodes: a SIGTERM during one long native call (a compiler's build) takes effect when it returns."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: a second one must not cut the clean-up short
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
