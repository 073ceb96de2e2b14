"""``bench`` without ``--workdir`` works in a folder of the temporary folder (its random checkpoints and
engines: gigabytes at full size). Removed when it ends; after a SIGKILL, by the next bench, which finds
the folder's lock free (``files/swept_folders.py``). It stayed for good before: no later run looks
there."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.bench.conftest import TINY_RUN
from virnucpro_trt.bench.runner import BENCH_FOLDER_PREFIX


def _bench(tmp: Path, *extra: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "virnucpro_trt", "bench", *TINY_RUN, "--backends", "torch", *extra]
    return subprocess.Popen(
        command, env={**os.environ, "TMPDIR": str(tmp)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def _work_folders(tmp: Path) -> list[Path]:
    return sorted(p for p in tmp.iterdir() if p.name.startswith(BENCH_FOLDER_PREFIX))


def test_a_killed_benchs_work_folder_goes_with_the_next_bench(tmp_path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    killed = _bench(tmp)
    try:
        deadline = time.monotonic() + 120
        while not any((f / "models").exists() or any(f.iterdir()) for f in _work_folders(tmp)):
            assert killed.poll() is None and time.monotonic() < deadline, "bench ended before its models"
            time.sleep(0.05)
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=60)
    finally:
        if killed.poll() is None:
            killed.kill()
    left = _work_folders(tmp)
    assert len(left) == 1 and any(left[0].iterdir())  # what a SIGKILL leaves

    done = _bench(tmp, "--json", str(tmp_path / "bench.json"))
    _, stderr = done.communicate(timeout=600)
    assert done.returncode == 0, stderr[-3000:]
    assert _work_folders(tmp) == []  # the killed one's swept, its own removed
