"""SIGTERM as Ctrl-C (``interrupts.py``): raised once as KeyboardInterrupt, ignored while the command
cleans up, the previous handler back afterwards."""

from __future__ import annotations

import os
import signal

import pytest

from virnucpro_trt.interrupts import sigterm_as_interrupt


def test_the_first_sigterm_interrupts_and_a_second_is_ignored_during_the_clean_up() -> None:
    before = signal.getsignal(signal.SIGTERM)
    cleaned = False
    with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            raise AssertionError("SIGTERM did not interrupt")
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # a scheduler's second signal: ignored, not a new interrupt
            cleaned = True
    assert cleaned and signal.getsignal(signal.SIGTERM) == before


def test_a_handler_not_set_from_python_comes_back_as_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    real = signal.signal
    calls: list[object] = []

    def recording(sig: int, handler: object) -> object:
        calls.append(handler)
        previous = real(sig, handler)  # type: ignore[arg-type]
        return None if len(calls) == 1 else previous  # what signal.signal says for a C-level handler

    monkeypatch.setattr(signal, "signal", recording)
    with sigterm_as_interrupt():
        pass
    monkeypatch.undo()
    assert calls[-1] == signal.SIG_DFL
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def test_a_signal_while_the_program_exits_after_its_command_does_not_kill_it() -> None:
    """Python's exit after a finished command takes up to a second (torch's modules); a SIGTERM there
    killed the program (exit 143) after a complete run. In the program (``console``) a signal then ends
    the exit at once with the command's own code: 0 stands."""
    import subprocess
    import sys

    script = (
        "import atexit, os, signal, sys, time\n"
        "atexit.register(lambda: (os.kill(os.getpid(), signal.SIGTERM), time.sleep(30)))\n"
        "sys.argv = ['virnucpro-trt', '--version']\n"
        "from virnucpro_trt.cli.main import console\n"
        "console()\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
