"""bench's build child ends as ``build`` ends on an interrupt, however its parent ends
(``bench/build_worker.py``).

The child here is the real ``build_worker.main`` with a stand-in build (no torch: it waits, and notes
whether its clean-up ran), started by the real ``build_in_child`` in a parent process of its own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

_CHILD = """
import sys, time, types
from pathlib import Path

marks = Path({marks!r})


class Settings:
    @staticmethod
    def from_json(data):
        return data


def build_engines(settings, command, wait=False):
    (marks / "pid").write_text(str(__import__("os").getpid()))
    try:
        while True:
            time.sleep(0.05)
    finally:  # what the real build does here: its staging folder, its lock, an unfinished compile
        (marks / "cleaned").write_text("yes")


fake = types.ModuleType("virnucpro_trt.engines.build")
fake.BuildSettings, fake.build_engines = Settings, build_engines
sys.modules["virnucpro_trt.engines.build"] = fake
from virnucpro_trt.bench.build_worker import main

code = main(sys.argv[3:])  # after "-m virnucpro_trt.bench.build_worker"
(marks / "exit").write_text(str(code))
sys.exit(code)
"""

_PARENT = """
import sys
from virnucpro_trt.bench import build_worker

build_worker.sys.executable = {launcher!r}


class Settings:
    def to_json(self):
        return {{}}


build_worker.build_in_child(Settings())
"""


def _wait_for(path: Path, seconds: float = 60) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("ending", ["parent SIGKILLed", "child SIGTERMed"])
def test_the_build_child_cleans_up_and_ends_when_interrupted_or_orphaned(tmp_path: Path, ending: str) -> None:
    """SIGTERM (what an interrupted bench sends it) used to kill the child at once, leaving the build's
    staging folder and lock in --workdir and an unfinished compile's folder (the weights) in Inductor's
    cache; a bench killed by SIGKILL left the child building on, an orphan, for minutes."""
    marks = tmp_path / "marks"
    marks.mkdir()
    child = tmp_path / "child.py"
    child.write_text(_CHILD.format(marks=str(marks)))
    launcher = tmp_path / "child.sh"
    launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{child}" "$@"\n')
    launcher.chmod(0o755)
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_PARENT.format(launcher=str(launcher)))],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=Path(__file__).parents[2],
    )  # fmt: skip
    pid = None
    try:
        assert _wait_for(marks / "pid"), "the stand-in build never started"
        pid = int((marks / "pid").read_text())
        if ending == "parent SIGKILLed":
            parent.kill()
        else:
            os.kill(pid, signal.SIGTERM)
        assert _wait_for(marks / "exit", 30), f"the build child did not end through its clean-up ({ending})"
        assert (marks / "cleaned").read_text() == "yes"
        assert (marks / "exit").read_text() == "130"
    finally:
        parent.kill()
        parent.wait()
        if pid is not None and not (marks / "exit").exists():
            os.kill(pid, signal.SIGKILL)  # the child of a failed run: not left sleeping
