"""A folder written whole (the demo's models, bench's random weights): what a killed run leaves goes with
the next run, a second run waits for the first and finds its folder, and nothing else is touched."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from virnucpro_trt.errors import UserError
from virnucpro_trt.files.whole_folder import write_folder_whole

_KILLED_WHILE_WRITING = """
import os, signal, sys
from pathlib import Path
from virnucpro_trt.files.whole_folder import write_folder_whole

def write(staging):
    (staging / "weights.bin").write_bytes(b"w" * 4096)
    os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer, or a scheduler's kill after its grace time

write_folder_whole(Path(sys.argv[1]), write, lambda folder: (folder / "done").is_file(), "foreign", "place")
"""


def _finished(folder: Path) -> bool:
    return (folder / "done").is_file()


def _write(staging: Path) -> None:
    (staging / "weights.bin").write_bytes(b"w" * 4096)
    (staging / "done").write_text("yes\n")


def test_a_staging_folder_left_by_a_sigkill_goes_with_the_next_run(tmp_path: Path) -> None:
    """A SIGKILL while the folder was written left its private staging folder (gigabytes for bench's
    full-size weights) for good; the lock now notes it, and the next run removes it before writing."""
    root = tmp_path / "cache" / "models"
    killed = subprocess.run([sys.executable, "-c", _KILLED_WHILE_WRITING, str(root)], capture_output=True)
    assert killed.returncode == -9, killed.stderr
    left = [p.name for p in root.parent.iterdir()]
    assert any(name.startswith(".models-") for name in left) and ".models.run.lock" in left, left
    assert write_folder_whole(root, _write, _finished, "foreign", "place")
    assert sorted(p.name for p in root.parent.iterdir()) == ["models"]
    assert sorted(p.name for p in root.iterdir()) == ["done", "weights.bin"]  # no lock token in the set
    assert not write_folder_whole(root, _write, _finished, "foreign", "place")  # finished: reused


def test_what_the_lock_did_not_note_is_named_and_kept(tmp_path: Path, caplog) -> None:
    """A staging folder no lock noted (left before this rule, or a user's look-alike) is only named."""
    root = tmp_path / "models"
    older = tmp_path / ".models-abcd1234"
    older.mkdir()
    (older / "x").write_text("x")
    with caplog.at_level("WARNING"):
        assert write_folder_whole(root, _write, _finished, "foreign", "place")
    assert (older / "x").read_text() == "x" and "was left by an interrupted run" in caplog.text


def test_anything_else_at_the_name_is_refused_and_left(tmp_path: Path) -> None:
    root = tmp_path / "models"
    (root / "mine").mkdir(parents=True)
    with pytest.raises(UserError, match="foreign"):
        write_folder_whole(root, _write, _finished, "foreign", "place")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]
    assert [p.name for p in root.iterdir()] == ["mine"]


def test_a_second_run_waits_for_the_first_and_finds_its_folder(tmp_path: Path) -> None:
    """Two runs at once (two demos with one cache, two bench runs with one --workdir) used to write two
    sets side by side; the second now waits on the lock and then finds the first's set."""
    root = tmp_path / "models"
    writing, release = threading.Event(), threading.Event()
    written: list[str] = []

    def slow_write(staging: Path) -> None:
        writing.set()
        assert release.wait(30)
        _write(staging)
        written.append("first")

    first = threading.Thread(target=write_folder_whole, args=(root, slow_write, _finished, "f", "p"))
    first.start()
    assert writing.wait(30)
    results: list[bool] = []

    def second_run() -> None:
        results.append(write_folder_whole(root, lambda s: written.append("second"), _finished, "f", "p"))

    second = threading.Thread(target=second_run)
    second.start()
    second.join(0.5)
    assert second.is_alive()  # waiting for the first
    release.set()
    first.join(30)
    second.join(30)
    assert results == [False] and written == ["first"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]


def test_a_clean_up_cut_short_keeps_the_lock_that_notes_the_staging_folder(
    tmp_path: Path, monkeypatch
) -> None:
    """A second Ctrl-C while the staging folder of an interrupted run was removed: the lock file (its
    only note) went anyway, and the next run could only name the leftover. The lock now stays while
    what it notes is still there, and the next run removes it."""
    import virnucpro_trt.files.whole_folder as whole_folder

    root = tmp_path / "models"
    real_rmtree = whole_folder.shutil.rmtree

    def interrupted(staging: Path) -> None:
        (staging / "weights.bin").write_bytes(b"w" * 4096)
        raise KeyboardInterrupt

    def rmtree_cut_short(path, ignore_errors=False):
        raise KeyboardInterrupt

    monkeypatch.setattr(whole_folder.shutil, "rmtree", rmtree_cut_short)
    with pytest.raises(KeyboardInterrupt):
        write_folder_whole(root, interrupted, _finished, "foreign", "place")
    monkeypatch.setattr(whole_folder.shutil, "rmtree", real_rmtree)
    assert ".models.run.lock" in [p.name for p in tmp_path.iterdir()]
    assert write_folder_whole(root, _write, _finished, "foreign", "place")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]


def test_a_finished_folder_is_used_without_a_lock(tmp_path: Path, monkeypatch) -> None:
    """A finished set in a folder this user cannot write (a shared, read-only --workdir) is used as it
    is: no lock file is made for it (making one there failed)."""
    import virnucpro_trt.files.whole_folder as whole_folder

    root = tmp_path / "models"
    assert write_folder_whole(root, _write, _finished, "foreign", "place")

    def no_lock(*args, **kwargs):
        raise PermissionError("read-only folder")

    monkeypatch.setattr(whole_folder, "folder_lock", no_lock)
    assert not write_folder_whole(root, _write, _finished, "foreign", "place")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]
