"""What a process killed by SIGKILL left in its unpacking folder (a whole engine package: 3-6 GB for a
full-size ESM-2) is removed by the next process that makes one; nothing of a live process, of another
tool or reached through a link is touched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from virnucpro_trt.files import swept_folders, unpacking

ALIVE = ".alive"  # unpacking.ALIVE
_HOLD = (
    "import time; from virnucpro_trt.files import unpacking; f = unpacking.current_folder(); "
    "(f / 'wrapper.so').write_bytes(b'weights'); print(f, flush=True); time.sleep(120)"
)


def _holder(tmp: Path) -> tuple[subprocess.Popen[str], Path]:
    """A process that made its unpacking folder in ``tmp``, unpacked into it and lives on."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD], env={**os.environ, "TMPDIR": str(tmp)}, stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    return proc, Path(proc.stdout.readline().strip())


@pytest.fixture
def fresh_process_state(tmp_path, monkeypatch) -> Path:
    """This process as one that has not made its unpacking folder yet, its temporary folder ``tmp``."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)
    monkeypatch.setattr(unpacking, "_folder", None)
    monkeypatch.setattr(unpacking, "_owned", False)
    yield tmp
    unpacking.remove_folder()


def test_the_next_process_removes_what_a_killed_one_unpacked(fresh_process_state) -> None:
    tmp = fresh_process_state
    killed, killed_folder = _holder(tmp)
    live, live_folder = _holder(tmp)
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
        other_tool = tmp / f"{unpacking.PREFIX}abcd1234"  # the name, but no lock file: not made by one
        other_tool.mkdir()
        (other_tool / "keep").write_text("keep")
        elsewhere = tmp.parent / "elsewhere"
        elsewhere.mkdir()
        (elsewhere / ALIVE).write_text("")
        (tmp / f"{unpacking.PREFIX}link5678").symlink_to(elsewhere)
        assert killed_folder.is_dir() and (killed_folder / "wrapper.so").is_file()

        mine = unpacking.current_folder()
        assert mine.parent == tmp and mine.is_dir()
        assert not killed_folder.exists()  # left before: nothing ever removed it
        assert (live_folder / "wrapper.so").is_file()  # its maker lives
        assert (other_tool / "keep").is_file() and (elsewhere / ALIVE).is_file()
        assert (tmp / f"{unpacking.PREFIX}link5678").is_symlink()
    finally:
        live.kill()
        live.wait(timeout=30)
        killed.kill()
        killed.wait(timeout=30)


def test_a_live_process_keeps_its_folder_locked_against_every_sweep(fresh_process_state) -> None:
    """The lock is held from before the lock file has its name: a sweep at any time leaves it alone."""
    tmp = fresh_process_state
    mine = unpacking.current_folder()
    assert (mine / unpacking.ALIVE).is_file()
    assert swept_folders.remove_abandoned(tmp, unpacking.PREFIX) == [] and mine.is_dir()
    assert sorted(p.name for p in mine.iterdir()) == [unpacking.ALIVE]


def test_a_run_folder_lets_its_lock_go_when_it_closes(fresh_process_state) -> None:
    """A coordinator makes one per run: its lock descriptor closes with it (one per run stayed open)."""
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        run = unpacking.RunFolder()
        assert (run.path / unpacking.ALIVE).is_file()
        run.close()
        assert not run.path.exists()
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_file_system_without_flock_still_unpacks(fresh_process_state, monkeypatch) -> None:
    """Some network file systems refuse ``flock``: the folder is made without a lock file (so no sweep
    ever takes it) and loading goes on, where it failed."""

    def no_flock(fd: int, operation: int) -> None:
        raise OSError(95, "Operation not supported")

    monkeypatch.setattr(swept_folders.fcntl, "flock", no_flock)
    with unpacking.unpacking() as folder:
        assert folder.parent == fresh_process_state and list(folder.iterdir()) == []
    assert swept_folders.remove_abandoned(fresh_process_state, unpacking.PREFIX) == [] and folder.is_dir()
