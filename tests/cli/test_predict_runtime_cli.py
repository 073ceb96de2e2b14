"""``predict``'s runtime: worker processes, shards, crash/respawn, failure, resume, SIGKILL and SIGINT.

Byte-identical comparisons use one torch thread per worker everywhere: on CPU the thread count changes
fp32 sums in the last bits (as the token budget does), the number of workers does not.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.cli.helpers import run_cli
from virnucpro_trt.sequences.synthetic import generate_reads

RESULT_FILES = (
    "prediction_results.txt",
    "prediction_results_highestscore.csv",
    "sequences.tsv",
    "frames.tsv",
)
SMALL_SHARDS = ("--shard-records", "10")
FAULT_ENV = "VIRNUCPRO_TEST_FAIL_SHARD"


@pytest.fixture(scope="module")
def many_reads(tmp_path_factory) -> Path:
    """600 records: 3 shards by the default rule, 60 with --shard-records 10."""
    reads = generate_reads(590, 500, seed=41, coding_fraction=0.6, long_reads=8, long_length=1234, prefix="m")
    reads += [("empty_one", ""), ("all_n", "N" * 420)]
    reads += generate_reads(8, 333, seed=42, prefix="short")
    path = tmp_path_factory.mktemp("many") / "many.fa"
    path.write_text("".join(f">{rid} desc\n{seq}\n" for rid, seq in reads))
    return path


def _args(tiny_set, reads: Path, out: Path, *extra: str) -> list[str]:
    return [
        "predict", str(reads), "-o", str(out), "--dnabert", str(tiny_set.dnabert), "--esm",
        str(tiny_set.esm_hf), "--classifier", str(tiny_set.classifier), "--device", "cpu",
        "--max-batch-tokens", "700", *extra,
    ]  # fmt: skip


def _predict(tiny_set, reads: Path, out: Path, *extra: str):
    return run_cli(*_args(tiny_set, reads, out, *extra))


def _assert_same_results(a: Path, b: Path) -> None:
    for name in RESULT_FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def _run_json(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


@pytest.fixture(scope="module")
def reference_small(tiny_set, many_reads, tmp_path_factory) -> Path:
    """Uninterrupted single-worker run with 60 small shards."""
    out = tmp_path_factory.mktemp("ref_small")
    result = _predict(tiny_set, many_reads, out, *SMALL_SHARDS, "--threads", "1")
    assert result.code == 0, result.stderr
    assert _run_json(out)["shards"]["total"] == 60
    assert not (out / ".work").exists()
    return out


def test_two_workers_equal_one_worker_and_shards_do_not_depend_on_workers(
    tiny_set, many_reads, tmp_path, monkeypatch
):
    import virnucpro_trt.runtime.shards as shards_module

    # the default rule with its floor scaled down (the real 4,096 records would make one shard of these)
    monkeypatch.setattr(shards_module, "MIN_SHARD_RECORDS", 256)
    one, two = tmp_path / "one", tmp_path / "two"
    common = ("--save-embeddings", "--keep-work")
    result = _predict(tiny_set, many_reads, one, *common, "--threads", "1")
    assert result.code == 0, result.stderr
    result = _predict(tiny_set, many_reads, two, *common, "--workers", "2", "--threads", "2")
    assert result.code == 0, result.stderr
    _assert_same_results(one, two)
    with h5py.File(one / "embeddings.h5") as a, h5py.File(two / "embeddings.h5") as b:
        assert a["ids"][:].tolist() == b["ids"][:].tolist()
        np.testing.assert_array_equal(a["dnabert"][:], b["dnabert"][:])
        np.testing.assert_array_equal(a["esm"][:], b["esm"][:])
    # Same shards (the default rule: 600 records -> 256 per shard), whatever the worker count.
    run_one, run_two = _run_json(one), _run_json(two)
    assert run_one["shards"]["total"] == run_two["shards"]["total"] == 3
    assert run_one["shards"]["records_per_shard"] == run_two["shards"]["records_per_shard"] == 256
    shard_files = sorted(p.name for p in (one / ".work" / "shards").glob("shard-*.fa"))
    assert shard_files == sorted(p.name for p in (two / ".work" / "shards").glob("shard-*.fa"))
    for name in shard_files:
        assert (one / ".work/shards" / name).read_bytes() == (two / ".work/shards" / name).read_bytes()
    # Per-worker throughput in run.json.
    workers = run_two["workers"]
    assert [w["slot"] for w in workers] == [0, 1] and {w["threads"] for w in workers} == {1}
    assert sum(w["frames"] for w in workers) == run_two["counts"]["frames"] > 0
    assert sum(w["shards"] for w in workers) == 3
    assert all(w["device_name"] == "cpu" and w["restarts"] == 0 for w in workers)
    # A spawned worker is ready after its interpreter started and its models loaded.
    assert all(w["ready_s"] > w["load_models_s"] > 0 for w in workers)
    throughput = run_two["throughput"]
    assert throughput["frames_per_s_steady"] > throughput["frames_per_s_workers_wall"] > 0
    # Steady: every worker ready -> last shard done, so without start-up before or shutdown after.
    assert 0 < throughput["steady_s"] < run_two["timings_s"]["workers"] - max(w["ready_s"] for w in workers)
    frames = run_two["counts"]["frames"]
    assert throughput["frames_per_s_steady"] == pytest.approx(frames / throughput["steady_s"], rel=1e-3)
    assert run_one["counts"] == run_two["counts"]


def test_killed_worker_is_respawned_and_its_shard_redone(
    tiny_set, many_reads, reference_small, tmp_path, monkeypatch
):
    monkeypatch.setenv(FAULT_ENV, "1:1")  # the worker running shard 1 dies (os._exit(3)) the first time
    result = _predict(tiny_set, many_reads, tmp_path, *SMALL_SHARDS, "--workers", "2", "--threads", "2")
    assert result.code == 0, result.stderr
    _assert_same_results(reference_small, tmp_path)
    run = _run_json(tmp_path)
    assert run["restarts"] == 1 and run["shards"]["failed_attempts"] == 1
    assert sum(w["restarts"] for w in run["workers"]) == 1
    assert "died on shard 1 (records 11-20) (exit code 3)" in result.stderr


def test_a_stopped_worker_is_stopped_for_good_and_its_shards_redone(
    tiny_set, many_reads, reference_small, tmp_path, monkeypatch
):
    """A worker process stopped with SIGSTOP (or hung) held its shards for ever: the run never ended and
    said nothing. The stall watch warns of it, SIGKILLs it past --stall-timeout, and respawns the slot;
    the results are the same bytes."""
    monkeypatch.setenv(FAULT_ENV, "1:1:stop")  # the worker running shard 1 stops itself, the first time
    two = ("--workers", "2", "--threads", "2")
    result = _predict(tiny_set, many_reads, tmp_path, *SMALL_SHARDS, *two, "--stall-timeout", "10")
    assert result.code == 0, result.stderr
    _assert_same_results(reference_small, tmp_path)
    run = _run_json(tmp_path)
    assert run["restarts"] == 1 and run["shards"]["failed_attempts"] == 1
    assert run["settings"]["run"]["stall_timeout_s"] == 10
    shard = r"shard 1 \(records 11-20\)"
    assert re.search(rf"has said nothing for [56] s on {shard} \(hung, or stopped\?\)", result.stderr)
    assert "it is stopped and restarted at 10 s of silence (--stall-timeout)" in result.stderr
    died = rf"died on {shard} \(silent for 1[01] s on {shard}: stopped as hung \(--stall-timeout\)\)"
    assert re.search(died, result.stderr), result.stderr


def test_an_outdir_moved_away_mid_run_is_said_so_and_the_run_resumes_once_it_is_back(
    tiny_set, many_reads, reference_small, tmp_path, monkeypatch
):
    """An OUTDIR moved away while the workers ran was said as "shard-000000.fa: input file not found"
    (exit 2), the move's doing blamed on a file."""
    from virnucpro_trt.pipeline import predict

    out, moved = tmp_path / "out", tmp_path / "moved"
    running = predict._run_shards

    def moving(*args, **kwargs):
        out.rename(moved)  # mv OUTDIR elsewhere, as the workers start
        return running(*args, **kwargs)

    monkeypatch.setattr(predict, "_run_shards", moving)
    result = _predict(tiny_set, many_reads, out, *SMALL_SHARDS, "--threads", "1")
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.code == 2 and len(errors) == 1, result.stderr
    assert errors[0].startswith(f"error: {out} was moved or removed while the run went on (then: "), errors
    assert "put it back and rerun the same command to resume" in errors[0]
    assert not out.exists() and (moved / ".work").is_dir()
    monkeypatch.setattr(predict, "_run_shards", running)
    moved.rename(out)
    result = _predict(tiny_set, many_reads, out, *SMALL_SHARDS, "--threads", "1")
    assert result.code == 0, result.stderr
    _assert_same_results(reference_small, out)


def test_a_finished_shards_results_changed_mid_run_are_not_merged(
    tiny_set, many_reads, reference_small, tmp_path, monkeypatch
):
    """A shard's result file in .work edited while the run went on was merged as it was (a resume
    checks each against its marker; the live run believed them): now checked before the merge (a
    stat per file), the run fails with one line, and the rerun redoes that shard."""
    from virnucpro_trt.pipeline import predict

    running = predict._run_shards

    def editing(*args, **kwargs):
        report = running(*args, **kwargs)
        frames = tmp_path / ".work" / "results" / "shard-000003.frames.tsv"
        frames.write_text(frames.read_text().replace("\t", "\t0", 1))  # one table cell edited in place
        return report

    monkeypatch.setattr(predict, "_run_shards", editing)
    result = _predict(tiny_set, many_reads, tmp_path, *SMALL_SHARDS, "--threads", "1")
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.code == 1 and errors == [
        f"error: the results of shard 3 (records 31-40) changed in {tmp_path / '.work' / 'results'} while "
        "the run went on; rerun the same command (they are redone)"
    ], result.stderr
    for name in (*RESULT_FILES, "run.json"):
        assert not (tmp_path / name).exists(), name
    monkeypatch.setattr(predict, "_run_shards", running)
    result = _predict(tiny_set, many_reads, tmp_path, *SMALL_SHARDS, "--threads", "1")
    assert result.code == 0, result.stderr
    assert "59 of 60 shard(s) already finished" in result.stderr
    _assert_same_results(reference_small, tmp_path)


def test_shard_that_always_fails_ends_the_run(tiny_set, many_reads, tmp_path, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "2:99")
    result = _predict(tiny_set, many_reads, tmp_path, *SMALL_SHARDS, "--threads", "1")
    assert result.code == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "shard 2 (records 21-30) failed 3 times" in errors[0]
    assert "Traceback" not in result.stderr
    for name in (*RESULT_FILES, "run.json"):
        assert not (tmp_path / name).exists(), name
    assert not list(tmp_path.glob("*.partial"))


def test_a_worker_that_keeps_dying_names_its_first_failure_too(tiny_set, many_reads, tmp_path, monkeypatch):
    """A restarted worker can fail otherwise than the first time (the inline worker re-imports what its
    first failure left half loaded: torch's "already registered" assertion): the run's one line named
    only the last failure, not the cause."""
    from virnucpro_trt.pipeline import shard_predictor

    failures = iter(["FileExistsError: the cache", *["AssertionError: already registered"] * 9])

    def failing_open_models(*args, **kwargs):
        raise RuntimeError(next(failures))

    monkeypatch.setattr(shard_predictor, "open_models", failing_open_models)
    result = _predict(tiny_set, many_reads, tmp_path, "--threads", "1")
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.code == 1 and len(errors) == 1, result.stderr
    assert errors[0].startswith("error: every worker died and ")
    assert "last: worker 0 (cpu), RuntimeError: AssertionError: already registered; " in errors[0]
    assert "first: RuntimeError: FileExistsError: the cache)" in errors[0]
    assert not (tmp_path / "run.json").exists()


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for_a_finished_shard(proc: subprocess.Popen, results: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if results.is_dir() and any(results.glob("*.done.json")):
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before it could be interrupted")
        time.sleep(0.005)
    raise AssertionError("no shard finished in time")


@pytest.mark.slow
def test_resume_after_sigkill_of_the_process_group(tiny_set, many_reads, reference_small, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "virnucpro_trt", *_args(tiny_set, many_reads, out, *SMALL_SHARDS)]
    cmd += ["--threads", "1"]
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(cmd, start_new_session=True, stdout=log, stderr=log)
        try:
            _wait_for_a_finished_shard(proc, out / ".work" / "results")
            os.killpg(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "prediction_results.txt").exists()
    finished = len(list((out / ".work" / "results").glob("*.done.json")))
    assert 1 <= finished < 60

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    _assert_same_results(reference_small, out)
    run = _run_json(out)
    assert run["shards"]["skipped"] >= finished
    assert run["shards"]["skipped"] + run["shards"]["processed"] == 60
    assert "resuming:" in rerun.stderr and "skipped" in rerun.stderr
    assert not (out / ".work").exists()


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM"])
def test_an_interrupt_stops_workers_and_the_run_resumes(
    tiny_set, many_reads, reference_small, tmp_path, stop
):
    """Ctrl-C in a terminal (SIGINT to the whole process group), or a scheduler's stop (SIGTERM to the
    main process only): the workers are stopped, the finished shards kept, exit 130; the rerun resumes."""
    out = tmp_path / "out"
    args = _args(tiny_set, many_reads, out, *SMALL_SHARDS)
    cmd = [sys.executable, "-m", "virnucpro_trt", *args, "--workers", "2", "--threads", "2"]
    proc = subprocess.Popen(
        cmd,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # A test suite started in the background of a non-interactive shell inherits SIGINT ignored,
        # and Python then keeps ignoring it (as it should): give the run the terminal's default back.
        preexec_fn=_sigint_default,
    )
    try:
        _wait_for_a_finished_shard(proc, out / ".work" / "results")
        if stop == "SIGINT":
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        else:
            os.kill(proc.pid, signal.SIGTERM)  # what a scheduler's stop does
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, stderr.decode()
    lines = [line for line in stderr.decode().splitlines() if line.strip()]
    assert lines[-1] == "interrupted; rerun the same command to resume"
    assert not (out / "prediction_results.txt").exists() and (out / ".work" / "state.json").exists()

    # Resumed with another worker count (not part of the resume key).
    result = run_cli(*args, "--threads", "1")
    assert result.code == 0, result.stderr
    _assert_same_results(reference_small, out)
    assert _run_json(out)["shards"]["skipped"] >= 1


def test_changed_input_or_settings_are_refused_unless_force(tiny_set, many_reads, reference_small, tmp_path):
    reads = tmp_path / "reads.fa"
    reads.write_bytes(many_reads.read_bytes())
    out = tmp_path / "out"
    base = (*SMALL_SHARDS, "--threads", "1", "--keep-work")
    result = _predict(tiny_set, reads, out, *base)
    assert result.code == 0, result.stderr
    _assert_same_results(reference_small, out)
    # The same command again: the finished run is recognised and nothing is touched.
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}
    result = _predict(tiny_set, reads, out, *base)
    assert result.code == 0, result.stderr
    assert "already finished, nothing recomputed" in result.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()} == before
    _assert_same_results(reference_small, out)
    # Other settings on the same OUTDIR: refused with one line.
    changed = [a if a != "700" else "512" for a in _args(tiny_set, reads, out, *base)]
    result = run_cli(*changed)
    assert result.code == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "different settings" in errors[0] and "--force" in errors[0]
    result = run_cli(*changed, "--force")
    assert result.code == 0, result.stderr
    assert _run_json(out)["shards"]["skipped"] == 0
    # Another input under the same path: refused too.
    with open(reads, "a") as handle:
        handle.write(">extra\nACGTACGTACGT\n")
    result = run_cli(*changed)
    assert result.code == 2 and "different input" in result.stderr
    # --gpus on a CPU run is a usage error.
    result = run_cli(*changed, "--force", "--gpus", "0")
    assert result.code == 2 and "--gpus" in result.stderr
