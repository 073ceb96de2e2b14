"""What AOTInductor's loader unpacks (the whole ``.pt2``: 3-6 GB for a full-size ESM-2 3B engine) is
removed however a run ends: a worker killed mid-run, a run stopped by SIGTERM, the main process killed
by SIGKILL. Before ``files/unpacking.py`` each of these left one ``aotinductor_*`` folder per package
and per worker in ``$TMPDIR`` (the loader removes it only in its destructor, which ``os._exit`` and a
signal never run)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli.helpers import run_cli
from virnucpro_trt.files import unpacking
from virnucpro_trt.sequences.synthetic import generate_reads

FAULT_ENV = "VIRNUCPRO_TEST_FAIL_SHARD"
SHARDS = ("--shard-records", "10", "--max-batch-tokens", "700")


@pytest.fixture(scope="module")
def inductor_engines(tiny_set, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("inductor_engines")
    result = run_cli(
        "build", "--dnabert", str(tiny_set.dnabert), "--esm", str(tiny_set.esm_hf),
        "--classifier", str(tiny_set.classifier), "--backend", "inductor", "--device", "cpu",
        "--max-batch-tokens", "700", "-o", str(out),
    )  # fmt: skip
    assert result.code == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def reads_600(tmp_path_factory) -> Path:
    """600 records: 60 shards of 10, long enough to be stopped after its first shard."""
    reads = generate_reads(600, 500, seed=43, coding_fraction=0.6, prefix="u")
    path = tmp_path_factory.mktemp("unpack_reads") / "reads.fa"
    path.write_text("".join(f">{rid}\n{seq}\n" for rid, seq in reads))
    return path


def _left_behind(tmp: Path) -> list[str]:
    return sorted(p.name for p in tmp.iterdir() if p.name.startswith(("aotinductor_", unpacking.PREFIX)))


def _command(engines: Path, reads: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "virnucpro_trt", "predict", str(reads), "--engines", str(engines),
        "-o", str(out), "--threads", "2", *SHARDS, *extra,
    ]  # fmt: skip


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "TMPDIR": str(tmp), **extra}


def _wait_until(condition, timeout: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_finished_run_and_a_killed_worker_leave_nothing_unpacked(
    inductor_engines, reads_600, tmp_path, workers
) -> None:
    """The first worker dies (``os._exit``) on its first shard and is respawned; the run passes. One
    worker runs inline (in the main process), two run as processes."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = _env(tmp, **{FAULT_ENV: "0:1"}) if workers == "2" else _env(tmp)
    done = subprocess.run(
        _command(inductor_engines, reads_600, tmp_path / "out", "--workers", workers),
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert workers == "1" or "died on shard 0" in done.stderr
    assert _left_behind(tmp) == []


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_stopped_or_killed_run_leaves_nothing_unpacked(inductor_engines, reads_600, tmp_path, stop) -> None:
    """SIGTERM (a scheduler's stop): the coordinator stops its workers and removes their folders.
    SIGKILL of the main process alone: each worker sees its coordinator gone and removes its own folder,
    the last one the coordinator's."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = tmp_path / "out"
    proc = subprocess.Popen(
        _command(inductor_engines, reads_600, out, "--workers", "2"),
        env=_env(tmp), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        results = out / ".work" / "results"
        assert _wait_until(lambda: proc.poll() is not None or (results.is_dir() and any(results.iterdir())))
        assert proc.poll() is None, "the run ended before it could be stopped"
        assert any(p.name.startswith(unpacking.PREFIX) for p in tmp.iterdir())  # where the loaders unpack
        os.kill(proc.pid, stop)
        proc.wait(timeout=120)
        assert _wait_until(lambda: _left_behind(tmp) == [], timeout=60), _left_behind(tmp)
    finally:
        with contextlib.suppress(ProcessLookupError):  # whatever is left of the run (nothing, if it passed)
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == (130 if stop == signal.SIGTERM else -signal.SIGKILL)


def test_the_loader_sees_the_unpacking_folder_and_nothing_else_does(tmp_path, monkeypatch) -> None:
    """``$TMPDIR`` names the folder only while a loader runs; Python's own temporary folder never
    becomes it (``tempfile`` keeps its first answer)."""
    import tempfile

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    monkeypatch.setattr(unpacking, "_folder", None)
    monkeypatch.setattr(unpacking, "_owned", False)
    try:
        with unpacking.unpacking() as folder:
            assert os.environ["TMPDIR"] == str(folder) and folder.parent == tmp_path
            assert folder.name.startswith(unpacking.PREFIX) and folder.stat().st_mode & 0o777 == 0o700
            assert tempfile.gettempdir() == str(tmp_path)
        assert os.environ["TMPDIR"] == str(tmp_path)
        unpacking.remove_folder()
        assert not folder.exists()
    finally:
        unpacking.remove_folder()
