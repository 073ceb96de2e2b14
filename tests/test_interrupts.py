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


def test_an_inline_worker_still_computing_when_the_program_exits_does_not_abort_it() -> None:
    """The coordinator stops waiting for an inline worker inside a long batch (real models on a CPU);
    the interpreter's exit then destroyed torch's thread pools under it and the process aborted (exit
    134, "terminate called without an active exception") after saying "interrupted"; this script, with
    torch 2.13 on this box, aborted 3 times in 3 before. The program now ends with the command's own
    code."""
    import subprocess
    import sys

    script = (
        "import sys, threading, time, torch\n"
        "torch.set_num_threads(1)\n"
        "def work():\n"
        "    a = torch.randn(2000, 2000)\n"
        "    while True:\n"
        "        a @ a\n"
        "threading.Thread(target=work, daemon=True, name='virnucpro-worker 0 (cpu)').start()\n"
        "time.sleep(1)\n"
        "sys.argv = ['virnucpro-trt', '--version']\n"
        "from virnucpro_trt.cli.main import console\n"
        "console()\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "terminate called" not in done.stderr, (done.returncode, done.stderr)
    assert done.stdout.strip()


def test_a_signal_while_python_tears_its_modules_down_does_not_kill_the_program() -> None:
    """Python's exit puts the default signal handlers back before it tears the modules down (up to a
    second with torch's): a SIGTERM there killed the program (exit 143) after a complete run. The
    program now ends without that teardown: a global whose teardown would signal never runs it."""
    import subprocess
    import sys

    script = (
        "import os, signal, sys, time\n"
        "class Teardown:\n"
        "    def __del__(self):\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        time.sleep(30)\n"
        "kept = Teardown()\n"
        "sys.argv = ['virnucpro-trt', '--version']\n"
        "from virnucpro_trt.cli.main import console\n"
        "console()\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert done.stdout.strip()


def test_a_hangup_interrupts_like_sigterm_unless_nohup_ignores_it() -> None:
    """A closed terminal (SIGHUP) killed the command at once: no clean-up, its ``.partial`` files and
    locks left, the workers' pipes broken mid-log. It now takes the Ctrl-C path; under ``nohup`` (SIGHUP
    ignored) it stays ignored."""
    before = signal.getsignal(signal.SIGHUP)
    try:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGHUP)
            raise AssertionError("SIGHUP did not interrupt")
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        with sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGHUP)  # ignored: the block goes on
            assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before)


def test_signals_held_are_raised_once_after_the_block() -> None:
    """HDF5 calls back into Python to write: a KeyboardInterrupt raised there unwinds through C that
    cannot take it (and HDF5 then segfaults). Held, the interrupt comes once the block is done."""
    from virnucpro_trt.interrupts import signals_held

    finished = False
    with pytest.raises(KeyboardInterrupt), signals_held():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        finished = True  # not interrupted inside
    assert finished and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with signals_held():  # nothing held: nothing raised
        pass


def test_signals_are_held_only_from_hold_to_the_blocks_end() -> None:
    """predict's and merge's results: an interrupt before the first rename acts at once; from it to
    run.json it waits for the block's end; holding twice holds once."""
    from virnucpro_trt.interrupts import SignalsHeldLater

    with pytest.raises(KeyboardInterrupt), SignalsHeldLater():
        os.kill(os.getpid(), signal.SIGINT)  # not held yet: interrupted here
        raise AssertionError("not interrupted before hold()")
    finished = False
    with pytest.raises(KeyboardInterrupt), SignalsHeldLater() as placing:
        placing.hold()
        placing.hold()
        os.kill(os.getpid(), signal.SIGINT)
        finished = True
    assert finished and signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_while_hdf5_writes_leaves_no_file_and_no_crash(tmp_path) -> None:
    """A Ctrl-C while blocks are written ends the writer with a KeyboardInterrupt, its file removed, no
    crash. Bounded: an interrupt lost (raised where Python ignores it: CI once saw it land in a weakref
    callback) ends the loop after 2,000 small blocks and says so, instead of filling the disk."""
    import subprocess
    import sys

    script = (
        "import os, signal, sys, threading\n"
        "from pathlib import Path\n"
        "import numpy as np\n"
        "from virnucpro_trt.outputs.embeddings_h5 import EmbeddingsWriter\n"
        "started = threading.Event()\n"
        "def interrupt():\n"
        "    started.wait()\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "threading.Thread(target=interrupt, daemon=True).start()\n"
        "try:\n"
        "    with EmbeddingsWriter(Path(sys.argv[1]), 256, {}) as writer:\n"
        "        for block in range(2000):\n"
        "            writer.append([f'r{block}'] * 64, np.ones((64, 256), np.float32), ['ok'] * 64)\n"
        "            if block == 20:\n"
        "                started.set()\n"
        "    print('not interrupted')\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted')\n"
    )
    out = tmp_path / "e.h5"
    done = subprocess.run(
        [sys.executable, "-c", script, str(out)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and done.stdout.strip() == "interrupted", (
        done.returncode,
        done.stderr[-2000:],
    )
    assert "Traceback" not in done.stderr and list(tmp_path.iterdir()) == []
