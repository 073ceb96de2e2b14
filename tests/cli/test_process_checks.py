"""The program in a process it cannot fully use: closed standard streams, a removed working folder,
cache variables naming files, a cache folder that cannot be made (cli/process_checks.py)."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
from pathlib import Path

from tests.cli.helpers import error_lines, run_cli
from virnucpro_trt.sequences.synthetic import generate_reads

RESULTS = ("prediction_results.txt", "prediction_results_highestscore.csv", "sequences.tsv", "run.json")


def _reads(folder: Path) -> Path:
    path = folder / "reads.fa"
    path.write_text("".join(f">{rid}\n{seq}\n" for rid, seq in generate_reads(3, 500, seed=3)))
    return path


def _predict_command(tiny_set, reads: Path, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "virnucpro_trt", "predict", str(reads), "-o", str(out),
        "--dnabert", str(tiny_set.dnabert), "--esm", str(tiny_set.esm_hf),
        "--classifier", str(tiny_set.classifier), "--device", "cpu", "--threads", "1",
    ]  # fmt: skip


def _run(command: list[str], closing: tuple[int, ...] = (), **kwargs) -> subprocess.CompletedProcess:
    def close() -> None:
        for descriptor in closing:
            os.close(descriptor)

    return subprocess.run(command, preexec_fn=close, timeout=300, text=True, **kwargs)


def test_a_run_started_without_stderr_finishes(tiny_set, tmp_path):
    """``2>&-`` (a daemon's start): logging's setup met Python's None stderr and the run ended with exit 1
    and nothing said."""
    out = tmp_path / "out"
    proc = _run(_predict_command(tiny_set, _reads(tmp_path), out), closing=(2,), stdout=subprocess.PIPE)
    assert proc.returncode == 0
    assert all((out / name).is_file() for name in RESULTS)


def test_a_run_started_without_stdout_exits_0(tiny_set, tmp_path):
    """``>&-``: a finished run exited 120, as if its output could not be written (there was none)."""
    out = tmp_path / "out"
    proc = _run(_predict_command(tiny_set, _reads(tmp_path), out), closing=(1,), stderr=subprocess.PIPE)
    assert proc.returncode == 0, proc.stderr
    assert all((out / name).is_file() for name in RESULTS)


def test_a_closed_descriptor_is_not_taken_by_the_next_file(tmp_path):
    """The next file opened would take a closed descriptor (the lowest free one: 0 here, 2 for the
    next), and what a library writes to stderr would land in it."""
    script = (
        "import os\nimport sys\n"
        "from virnucpro_trt.cli.process_checks import prepare_standard_streams\n"
        "prepare_standard_streams()\n"
        f"handle = open({str(tmp_path / 'result')!r}, 'w')\n"
        "os.write(2, b'library noise')\n"
        "handle.write('result'); handle.close()\n"
        "print('no stderr', file=sys.stderr)\n"
    )
    proc = _run([sys.executable, "-c", script], closing=(0, 2))
    assert proc.returncode == 0
    assert (tmp_path / "result").read_text() == "result"


def test_a_removed_working_folder_is_one_line(tiny_set, tmp_path):
    """Started in a folder removed since: torch's oneMKL aborted while loading (exit 2, its own message)."""
    reads = _reads(tmp_path)
    gone = tmp_path / "gone"
    gone.mkdir()

    def enter_then_remove() -> None:
        os.chdir(gone)
        os.rmdir(gone)

    proc = subprocess.run(
        _predict_command(tiny_set, reads, tmp_path / "out"), preexec_fn=enter_then_remove,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    assert (
        proc.stderr.startswith("error: the current folder cannot be found") and proc.stderr.count("\n") == 1
    )
    assert not (tmp_path / "out").exists()


def test_a_compiler_cache_variable_naming_a_file_is_one_line(tiny_set, tmp_path):
    """Inductor makes its cache at a worker's first compile: a file there killed the worker and each
    restart, and the run ended naming an unrelated assertion of the restarted worker."""
    reads = _reads(tmp_path)
    for value in (reads, reads / "cache"):
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(value)}
        proc = _run(_predict_command(tiny_set, reads, tmp_path / "out"), capture_output=True, env=env)
        lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert proc.returncode == 2 and lines == [
            f"error: TORCHINDUCTOR_CACHE_DIR={value}: {reads} is a file, not a folder; "
            "point TORCHINDUCTOR_CACHE_DIR at a folder or unset it"
        ], proc.stderr
        assert not (tmp_path / "out").exists()


def test_a_cache_folder_that_cannot_be_made_is_one_line(tmp_path, monkeypatch):
    """``XDG_CACHE_HOME=/proc/self``: the demo's model folder could not be made, and the run said
    "unexpected failure: FileNotFoundError"."""
    monkeypatch.setenv("VIRNUCPRO_TRT_CACHE", "/proc/self/virnucpro-trt-cache")
    result = run_cli("demo", "-o", str(tmp_path / "out"))
    assert result.code == 2 and error_lines(result) == [
        "error: cannot make the folder /proc/self/virnucpro-trt-cache (No such file or directory); "
        "set VIRNUCPRO_TRT_CACHE to another folder"
    ], result.stderr


def test_a_missing_input_is_said_before_the_demo_models_are_built(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("VIRNUCPRO_TRT_CACHE", str(cache))
    result = run_cli("predict", "--demo", str(tmp_path / "missing.fa"), "-o", str(tmp_path / "out"))
    assert result.code == 2 and error_lines(result) == [f"error: input {tmp_path}/missing.fa: no such file"]
    assert not cache.exists() and not (tmp_path / "out").exists()


def test_a_terminal_that_cannot_show_every_character_still_runs(tiny_set, tmp_path):
    """On a terminal in an ASCII (or Latin-1) locale, a log line with a path of accented letters (or the
    demo's dash) raised UnicodeEncodeError in the log handler and the progress bar: exit 1, no results."""
    import threading

    out = tmp_path / "r\u00e9sultats"
    primary, secondary = os.openpty()
    shown = bytearray()

    def drain() -> None:
        with contextlib.suppress(OSError):
            while chunk := os.read(primary, 4096):
                shown.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    command = _predict_command(tiny_set, _reads(tmp_path), out)
    proc = subprocess.run(
        command, stdin=subprocess.DEVNULL, stdout=secondary, stderr=secondary, env=env, timeout=300
    )
    os.close(secondary)
    reader.join(timeout=10)
    os.close(primary)
    text = shown.decode("ascii", "replace")
    assert proc.returncode == 0, text
    assert "Traceback" not in text and "Logging error" not in text
    assert all((out / name).is_file() for name in RESULTS)


def test_too_few_file_descriptors_is_the_limit_not_the_files(tiny_set, tmp_path):
    """``ulimit -n`` too low: reading a model failed as "cannot read as a torch.save archive ([Errno 24]
    Too many open files)" or "cannot be read", exit 2, blaming a good file."""
    import resource

    reads = _reads(tmp_path)
    failed = []
    for limit in (6, 7, 8, 9, 10):

        def lower(limit: int = limit) -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

        proc = subprocess.run(
            _predict_command(tiny_set, reads, tmp_path / f"out{limit}"), preexec_fn=lower,
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        if proc.returncode != 0:
            failed.append(limit)
            lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
            assert proc.returncode == 1 and len(lines) == 1, (limit, proc.stderr)
            assert lines[0].startswith(
                "error: Too many open files: raise the limit on open files (ulimit -n)"
            )
    assert failed, "no limit was low enough to fail"


def test_out_of_memory_is_one_line_naming_it(tmp_path, monkeypatch):
    """A MemoryError has no message: the line was "unexpected failure: MemoryError:"."""
    from virnucpro_trt.pipeline import prepare

    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(prepare, "run_prepare", no_memory)
    result = run_cli("prepare", str(_reads(tmp_path)), "-o", str(tmp_path / "out"))
    assert result.code == 1 and error_lines(result) == [
        "error: out of memory: free memory or raise the limit (ulimit -v, the job's memory), or use fewer "
        "--workers or a smaller --max-batch-tokens, and rerun the same command"
    ]


def test_a_resource_shortage_is_found_behind_the_error_it_became():
    from virnucpro_trt.errors import CheckpointError, resource_shortage

    try:
        try:
            raise OSError(errno.EMFILE, "Too many open files")
        except OSError as exc:
            raise CheckpointError("model.bin: cannot read") from exc
    except CheckpointError as wrapped:
        assert isinstance(resource_shortage(wrapped), OSError)
    assert resource_shortage(CheckpointError("model.bin: not a checkpoint")) is None
    assert resource_shortage(OSError(errno.ENOENT, "missing")) is None


def test_a_shortage_is_said_alike_in_the_main_process_and_a_worker():
    """The line was put together twice (the main process: ``LINE (message)``; a worker: ``LINE (Type:
    message)`` for the tool's own errors too): now one helper, the tool's message as it is, any other
    exception with its type."""
    from virnucpro_trt.errors import CheckpointError, shortage_line

    def behind(outer: Exception) -> Exception:
        try:
            try:
                raise OSError(errno.EMFILE, "Too many open files")
            except OSError as exc:
                raise outer from exc
        except Exception as wrapped:
            return wrapped

    limit = "Too many open files: raise the limit on open files (ulimit -n) and rerun the same command"
    assert shortage_line(behind(CheckpointError("model.bin: cannot read"))) == (
        f"{limit} (model.bin: cannot read)", 1,
    )  # fmt: skip
    assert shortage_line(behind(RuntimeError("torch: cannot open"))) == (
        f"{limit} (RuntimeError: torch: cannot open)", 1,
    )  # fmt: skip
    assert shortage_line(OSError(errno.EMFILE, "Too many open files")) == (limit, 1)
    assert shortage_line(CheckpointError("model.bin: not a checkpoint")) is None
