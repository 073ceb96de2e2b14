"""SIGTERM (and SIGHUP) is an interrupt, like Ctrl-C, for every command.

Schedulers stop a job with SIGTERM (Slurm at its time limit, Snakemake on cancel, ``kill``); a closed
terminal or a dropped SSH session sends SIGHUP. Python's default for both is to die at once, skipping
every ``finally``: a half-written ``.partial``, a copy of stdin and the folders the run made were left
behind, and no rerun removed them. Raised as ``KeyboardInterrupt`` instead, they take the Ctrl-C path:
the command cleans up what it made, keeps what a rerun can resume (``predict``'s finished shards), says
"interrupted" and exits 130. A SIGHUP already ignored (``nohup``) stays ignored.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def stop_signals_to_take() -> list[int]:
    """The stop signals this process handles: SIGTERM, and SIGHUP unless something (``nohup``) already
    set it otherwise than the default."""
    return [sig for sig in STOP_SIGNALS if sig == signal.SIGTERM or signal.getsignal(sig) == signal.SIG_DFL]


Handler = Callable[[int, Any], None] | signal.Handlers  # a function, or SIG_IGN / SIG_DFL


@contextlib.contextmanager
def handlers_within(signals: Iterable[int], handler: Handler) -> Iterator[None]:
    """``handler`` for ``signals`` within the block, the previous handlers back after it. Only the main
    thread may set handlers (and only it runs them): elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, the first SIGTERM or SIGHUP raises ``KeyboardInterrupt`` in the main thread and
    later ones are ignored while the command cleans up (elsewhere: unchanged). A SIGHUP whose handler is
    not the default (``nohup`` ignores it) is left as it is. Python runs the handler between bytecodes: a
    signal during one long native call (a compiler's build) takes effect when it returns."""
    taken = stop_signals_to_take()

    def _raise(signum: int, frame: object) -> None:
        for sig in taken:  # once: a second one must not cut the clean-up short
            signal.signal(sig, signal.SIG_IGN)
        raise KeyboardInterrupt

    with handlers_within(taken, _raise):
        yield


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Within the block, Ctrl-C and the stop signals are held, then acted on as they would have been.

    For library calls that call back into Python (HDF5 writing through a Python file object): a
    handler that raises there unwinds through C code that cannot take an exception, and HDF5 left so
    segfaults later. Signals arriving meanwhile are noted, the previous handlers put back, and each one
    handed to its handler once, here and now: raised again with ``raise_signal``, Python ran the handler
    at some later bytecode, and when that was inside a weakref callback (h5py frees its objects through
    one) the KeyboardInterrupt was ignored and the interrupt lost. Only the main thread handles signals;
    elsewhere (and for an ignored signal) nothing changes."""
    held: list[int] = []
    chosen = [sig for sig in (signal.SIGINT, *STOP_SIGNALS) if signal.getsignal(sig) is not signal.SIG_IGN]
    try:
        with handlers_within(chosen, lambda signum, frame: held.append(signum)):
            yield
    finally:
        for sig in dict.fromkeys(held):
            handler = signal.getsignal(sig)
            if callable(handler):
                handler(sig, None)
            elif handler == signal.SIG_DFL:  # what the signal would have done: end the process
                signal.raise_signal(sig)


class SignalsHeldLater(contextlib.AbstractContextManager["SignalsHeldLater"]):
    """A block in which Ctrl-C and the stop signals are held (:func:`signals_held`) from the moment
    :meth:`hold` is called to the block's end: for ``predict`` and ``merge``, from the first rename of a
    result file into place to their run.json (an interrupt in between left results without their
    record, or exited 130 on complete ones). Holding twice holds once."""

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self._held = False

    def hold(self) -> None:
        if not self._held:
            self._stack.enter_context(signals_held())
            self._held = True

    def __exit__(self, *exc_info: object) -> bool | None:
        return self._stack.__exit__(*exc_info)  # type: ignore[arg-type]
