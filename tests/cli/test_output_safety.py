"""A run writes only files it creates and removes only files it made: planted links, a user's files at the
names a run uses, FIFOs in its working area and impossible output paths are each refused in one line
(exit 2) and left as they were. Each test is the audit's case, done for real on the tiny models."""

from __future__ import annotations

import functools
import io
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.cli.helpers import error_lines, predict_tiny, run_cli
from virnucpro_trt.errors import UserError
from virnucpro_trt.files.atomic import temporary_name
from virnucpro_trt.files.bounded_read import NotARegularFile, read_bounded
from virnucpro_trt.files.ownership import RECORD, changed_since
from virnucpro_trt.files.run_lock import (
    BUILD_STAGING,
    LOCK_FILE,
    LOCK_TEXT,
    KeptFiles,
    outdir_lock,
    output_lock,
)
from virnucpro_trt.files.stamps import stat_stamp
from virnucpro_trt.outputs.embeddings_h5 import EmbeddingsWriter
from virnucpro_trt.pipeline.inputs import materialise, private_spool
from virnucpro_trt.pipeline.merge_parts import KEPT_FILES as MERGE_KEPT
from virnucpro_trt.pipeline.predict import KEPT_FILES as PREDICT_KEPT
from virnucpro_trt.pipeline.prepare import KEPT_FILES as PREPARE_KEPT
from virnucpro_trt.runtime.resume import WorkDir
from virnucpro_trt.runtime.shards import read_shard_index
from virnucpro_trt.sequences.prepare import IdentifiedFilesWriter
from virnucpro_trt.workflow import KEPT_FILES as WORKFLOW_KEPT

RESULTS = ("prediction_results.txt", "prediction_results_highestscore.csv", "sequences.tsv", "frames.tsv")


def _refused(result, *words: str) -> str:
    """The one error line of a run refused with exit 2, holding every one of ``words``."""
    errors = error_lines(result)
    assert result.code == 2 and len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def stdin_reads(reads_fasta, monkeypatch):
    """``predict -`` in this process: stdin holds the reads."""
    data = reads_fasta.read_bytes()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    return data


class _Unblocker:
    """Opens a FIFO's write end after ``delay`` seconds, so a reader stuck on it (the bug) wakes up and
    the test fails instead of hanging; ``needed`` says whether it had to."""

    def __init__(self, fifo: Path, delay: float = 15.0) -> None:
        self.fifo, self.delay, self.needed, self._stop = fifo, delay, False, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        if self._stop.wait(self.delay):
            return
        for _ in range(200):
            try:
                fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # no reader (yet)
                time.sleep(0.05)
                continue
            self.needed = True
            os.close(fd)
            return

    def __enter__(self) -> _Unblocker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


# -- 1. the stdin copy ----------------------------------------------------------------------------


def test_the_stdin_copy_never_follows_a_planted_link(tiny_set, stdin_reads, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious data, not reads\n")
    (out / ".stdin.input").symlink_to(victim)
    _refused(predict_tiny(tiny_set, "-", out), ".stdin.input", "symbolic link")
    assert victim.read_text() == "precious data, not reads\n"
    assert (out / ".stdin.input").is_symlink()
    dangling = tmp_path / "out2"
    dangling.mkdir()
    (dangling / ".stdin.input").symlink_to(tmp_path / "created_by_the_run")
    _refused(predict_tiny(tiny_set, "-", dangling), "symbolic link")
    assert not (tmp_path / "created_by_the_run").exists()


def test_the_stdin_copy_never_overwrites_or_removes_a_users_file(tiny_set, stdin_reads, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".stdin.input").write_text("my notes\n")
    _refused(predict_tiny(tiny_set, "-", out), ".stdin.input", "did not make it")
    assert (out / ".stdin.input").read_text() == "my notes\n"
    assert sorted(p.name for p in out.iterdir()) == [".stdin.input"]


def test_materialise_creates_its_copy_new_and_removes_only_that(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b">a\nACGT\n")))
    taken = tmp_path / "taken"
    taken.write_text("mine\n")
    with pytest.raises(UserError, match="already exists"):
        materialise("-", taken)
    assert taken.read_text() == "mine\n"
    spool = private_spool(tmp_path / "new")
    assert not spool.exists()  # created by materialise itself, exclusively
    path, display = materialise("-", spool)
    assert (path, display) == (spool, "<stdin>") and spool.read_bytes() == b">a\nACGT\n"


def test_a_stdin_copy_left_by_a_killed_run_is_removed_by_the_next_one(tmp_path):
    """The lock notes the copy with its stamp; a rerun after SIGKILL removes it only while unchanged."""
    out = tmp_path / "out"
    with outdir_lock(out, PREDICT_KEPT) as lock:
        spool = out / ".stdin.input"
        spool.write_text(">a\nACGT\n")
        lock.note(spool)
        content = (out / LOCK_FILE).read_bytes()
    killed = out / LOCK_FILE  # what SIGKILL leaves: the lock file and the copy
    killed.write_bytes(content)
    spool.write_text(">a\nACGT\n")  # a new file now: not the one noted
    with outdir_lock(out, PREDICT_KEPT):
        pass
    assert spool.exists(), "a file with another stamp is not the killed run's"
    with outdir_lock(out, PREDICT_KEPT) as lock:
        lock.note(spool)
        content = (out / LOCK_FILE).read_bytes()
    killed.write_bytes(content)
    with outdir_lock(out, PREDICT_KEPT):
        assert not spool.exists()
    assert not killed.exists()


def test_results_noted_in_the_lock_are_carried_over_and_never_removed(tmp_path):
    """A merge's note of its results survives a failed run (the lock file stays) and the next run's
    takeover (carried into its lock file); a malformed note is dropped; nothing is removed for it."""
    out = tmp_path / "out"
    good = {"bytes": 3, "sha256": "a" * 64}
    with pytest.raises(RuntimeError), outdir_lock(out, MERGE_KEPT) as lock:
        lock.note_results({"sequences.tsv": good})
        raise RuntimeError("stopped before run.json")
    assert (out / LOCK_FILE).is_file()  # kept: it notes results no run.json accounts for
    (out / "sequences.tsv").write_text("abc")
    hostile = {"../x": good, "frames.tsv": {"bytes": "3", "sha256": "a" * 64}, "b.tsv": {"bytes": 1}}
    with open(out / LOCK_FILE, "a") as handle:
        handle.write(json.dumps({"results": hostile}) + "\n")  # the last note is the one taken
    with outdir_lock(out, MERGE_KEPT) as lock:
        assert lock.results == {}
    assert not (out / LOCK_FILE).exists() and (out / "sequences.tsv").read_text() == "abc"
    with pytest.raises(RuntimeError), outdir_lock(out, MERGE_KEPT) as lock:
        lock.note_results({"sequences.tsv": good})
        raise RuntimeError
    # killed again before it noted its own
    with pytest.raises(RuntimeError), outdir_lock(out, MERGE_KEPT) as lock:
        assert lock.results == {"sequences.tsv": good}
        raise RuntimeError
    with outdir_lock(out, MERGE_KEPT) as lock:
        assert lock.results == {"sequences.tsv": good}
        lock.forget_results()
    assert not (out / LOCK_FILE).exists() and (out / "sequences.tsv").read_text() == "abc"
    with pytest.raises(RuntimeError), outdir_lock(out, MERGE_KEPT) as lock:
        lock.note_results({"sequences.tsv": good})
        raise RuntimeError
    for kept in (PREPARE_KEPT, PREDICT_KEPT):  # only merge keeps results: anyone else's lock drops the note
        with outdir_lock(out, kept) as lock:
            assert lock.results == {}
        assert not (out / LOCK_FILE).exists()  # it used to stay after every successful run
        (out / LOCK_FILE).write_text(LOCK_TEXT + json.dumps({"results": {"sequences.tsv": good}}) + "\n")
    with outdir_lock(out, MERGE_KEPT) as lock:
        assert lock.results == {"sequences.tsv": good}
    hostile = {"sequences.tsv": {"bytes": True, "sha256": "a" * 64}}  # a bool is not a size
    (out / LOCK_FILE).write_text(LOCK_TEXT + json.dumps({"results": hostile}) + "\n")
    with outdir_lock(out, MERGE_KEPT) as lock:
        assert lock.results == {}


def _signal_while_copying_stdin(args: list[str], data: bytes, out: Path, sig: str) -> tuple[int, bytes]:
    """``virnucpro-trt ARGS`` in a new process, given half of ``data`` on stdin (the rest never comes, so
    the copy of stdin waits); once the copy exists below ``out``, send ``sig``. Returns the exit code and
    stderr."""
    import signal

    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "virnucpro_trt", *args]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdin is not None
    proc.stdin.write(data[: len(data) // 2])
    proc.stdin.flush()
    deadline = time.monotonic() + 120
    while not any(out.rglob("*stdin*")):  # the copy of stdin has begun
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(getattr(signal, sig))
    _, stderr = proc.communicate(timeout=60)
    return proc.returncode, stderr


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
def test_a_run_stopped_while_copying_stdin_leaves_nothing_its_rerun_trips_on(
    tiny_set, reads_fasta, tmp_path, monkeypatch, sig
):
    """predict - killed (or sent SIGTERM) while stdin is still being copied: SIGTERM is an interrupt
    (exit 130, the copy and the folder it made removed); after SIGKILL the rerun removes the copy it
    finds noted as still growing. Either way the same command then runs (it used to be refused for
    good: '.stdin.input already exists; this run did not make it')."""
    out = tmp_path / "out"
    args = [
        "predict", "-", "-o", str(out), "--dnabert", str(tiny_set.dnabert), "--esm", str(tiny_set.esm_hf),
        "--classifier", str(tiny_set.classifier), "--device", "cpu", "--threads", "1",
    ]  # fmt: skip
    data = reads_fasta.read_bytes()
    code, stderr = _signal_while_copying_stdin(args, data, out, sig)
    if sig == "SIGTERM":
        assert code == 130 and b"interrupted" in stderr, stderr
        assert not out.exists()
    else:
        assert (out / ".stdin.input").exists() and (out / LOCK_FILE).exists()  # what SIGKILL leaves
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    result = predict_tiny(tiny_set, "-", out)
    assert result.code == 0, result.stderr
    assert not (out / ".stdin.input").exists() and not (out / LOCK_FILE).exists()


@pytest.mark.parametrize("command", ["prepare", "embed", "split"])
def test_sigterm_is_an_interrupt_for_every_command(tiny_set, reads_fasta, tmp_path, command):
    """A scheduler's SIGTERM (Slurm's time limit, Snakemake's cancel) while stdin is still being copied:
    the command cleans up like Ctrl-C (exit 130, "interrupted"), so neither the copy of stdin nor the
    folders the run made stay behind (prepare and embed had died at once, leaving both)."""
    out = tmp_path / "new" / "out"
    args = {
        "prepare": ["-o", str(out)],
        "embed": ["--model", "dnabert-s", "--weights", str(tiny_set.dnabert), "--device", "cpu",
                  "-o", str(out / "x.h5")],
        "split": ["--parts", "2", "-o", str(out)],
    }[command]  # fmt: skip
    data = reads_fasta.read_bytes()
    code, stderr = _signal_while_copying_stdin([command, "-", *args], data, out, "SIGTERM")
    assert code == 130 and stderr.decode().strip().splitlines()[-1] == "interrupted", stderr
    assert list(tmp_path.iterdir()) == [], list(tmp_path.rglob("*"))


# -- 2. result names no finished run accounts for -------------------------------------------------


def test_an_empty_work_folder_does_not_let_a_run_replace_a_users_tables(tiny_set, reads_fasta, tmp_path):
    out = tmp_path / "out"
    (out / ".work").mkdir(parents=True)
    (out / "frames.tsv").write_text("user's own table\n")
    (out / "sequences.tsv").write_text("user's seqs\n")
    result = predict_tiny(tiny_set, reads_fasta, out)
    _refused(result, "no finished run accounts for", "frames.tsv", "--force")
    assert (out / "frames.tsv").read_text() == "user's own table\n"
    assert (out / "sequences.tsv").read_text() == "user's seqs\n"


def test_a_users_demo_note_and_a_dangling_link_at_an_output_name_are_kept(tiny_set, reads_fasta, tmp_path):
    note = tmp_path / "o4" / "DEMO_RANDOM_WEIGHTS.txt"
    note.parent.mkdir()
    note.write_text("my readme\n")
    _refused(predict_tiny(tiny_set, reads_fasta, note.parent), "DEMO_RANDOM_WEIGHTS.txt")
    _refused(predict_tiny(tiny_set, reads_fasta, note.parent, "--demo"), "DEMO_RANDOM_WEIGHTS.txt")  # demo -o
    assert note.read_text() == "my readme\n"
    link = tmp_path / "o11b" / "sequences.tsv"
    link.parent.mkdir()
    link.symlink_to(tmp_path / "nonexistent")
    _refused(predict_tiny(tiny_set, reads_fasta, link.parent), "sequences.tsv")
    assert link.is_symlink() and not (tmp_path / "nonexistent").exists()


def test_results_of_a_run_killed_before_run_json_are_its_own(tiny_set, reads_fasta, tmp_path):
    """Merged, then killed before run.json: ``.work`` notes the files, so the rerun may replace them; a
    file edited since is the user's again."""
    out = tmp_path / "out"
    assert predict_tiny(tiny_set, reads_fasta, out, "--keep-work").code == 0
    expected = {name: (out / name).read_bytes() for name in RESULTS}
    (out / "run.json").unlink()
    assert set(WorkDir(out).recorded_outputs()) == set(RESULTS)
    result = predict_tiny(tiny_set, reads_fasta, out, "--keep-work")
    assert result.code == 0, result.stderr
    assert {name: (out / name).read_bytes() for name in RESULTS} == expected
    (out / "run.json").unlink()
    with open(out / "frames.tsv", "a") as handle:
        handle.write("my own notes\n")
    _refused(predict_tiny(tiny_set, reads_fasta, out), "no finished run accounts for (frames.tsv)")
    assert (out / "frames.tsv").read_text().endswith("my own notes\n")


@pytest.mark.parametrize("save_embeddings", [False, True])
def test_a_run_interrupted_while_its_results_are_renamed_into_place_reruns(
    tiny_set, reads_fasta, tmp_path, monkeypatch, save_embeddings
):
    """The results are noted in ``.work`` before the first is renamed into place. They were noted only
    after all were renamed and hashed: an interrupt or SIGKILL in between left complete-looking files
    that no record explained, and the rerun refused them."""
    from virnucpro_trt.files import no_replace

    extra = ("--save-embeddings",) if save_embeddings else ()
    finished = tmp_path / "finished"
    assert predict_tiny(tiny_set, reads_fasta, finished, *extra).code == 0
    real_rename = no_replace.rename_no_replace

    def interrupted_at_sequences(src, dst):
        if Path(dst).name == "sequences.tsv":
            raise KeyboardInterrupt
        real_rename(src, dst)

    out = tmp_path / "out"
    monkeypatch.setattr(no_replace, "rename_no_replace", interrupted_at_sequences)
    assert predict_tiny(tiny_set, reads_fasta, out, *extra).code == 130
    monkeypatch.setattr(no_replace, "rename_no_replace", real_rename)
    assert (out / "prediction_results_highestscore.csv").is_file() and not (out / "run.json").exists()
    result = predict_tiny(tiny_set, reads_fasta, out, *extra)
    assert result.code == 0, result.stderr
    names = (*RESULTS, *(("embeddings.h5",) if save_embeddings else ()))
    for name in names:
        assert (out / name).read_bytes() == (finished / name).read_bytes(), name
    assert not [p.name for p in out.iterdir() if p.name.endswith(".partial")]


def _killed_while_closing_results(args: list[str]) -> int:
    """``virnucpro-trt ARGS`` in a new process that dies like SIGKILL (``os._exit``, no clean-up) once
    its result files are written under their temporary names, as they are closed."""

    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    script = (
        "import os, sys\n"
        "import virnucpro_trt.outputs.atomic as result_files\n"
        "result_files.ResultSet.close = lambda self: os._exit(137)\n"
        "from virnucpro_trt.cli.main import main\n"
        "main(sys.argv[1:])\n"
    )
    done = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, timeout=300)
    return done.returncode


@pytest.mark.parametrize("command", ["predict", "merge"])
def test_temporary_result_files_left_by_a_sigkill_are_removed_by_the_rerun(
    tiny_set, reads_fasta, tmp_path, command
):
    """The temporary result files are noted in the run's lock as they are created; the rerun after a
    SIGKILL removes them (they stayed, hidden, beside the results of every later run)."""
    models = ["--dnabert", str(tiny_set.dnabert), "--esm", str(tiny_set.esm_hf), "--classifier",
              str(tiny_set.classifier), "--device", "cpu", "--threads", "1", "--save-embeddings"]  # fmt: skip
    out = tmp_path / "out"
    if command == "predict":
        args = ["predict", str(reads_fasta), "-o", str(out), *models]
    else:
        assert run_cli("split", str(reads_fasta), "-o", str(tmp_path / "parts"), "--parts", "2").code == 0
        parts = []
        for index in (1, 2):
            part = tmp_path / f"part{index}"
            reads = tmp_path / "parts" / f"part-000{index}.fa"
            assert run_cli("predict", str(reads), "-o", str(part), *models).code == 0
            parts.append(str(part))
        args = ["merge", *parts, "-o", str(out)]
    assert _killed_while_closing_results(args) == 137
    left = sorted(p.name for p in out.iterdir() if p.name.endswith(".partial"))
    assert len(left) == 5, left  # four tables and embeddings.h5
    result = run_cli(*args)
    assert result.code == 0, result.stderr
    assert not [p.name for p in out.iterdir() if p.name.endswith(".partial")]
    assert {*RESULTS, "embeddings.h5", "run.json"} <= {p.name for p in out.iterdir()}


def test_a_result_removed_after_the_run_is_called_this_runs_own(tiny_set, reads_fasta, tmp_path):
    out = tmp_path / "out"
    assert predict_tiny(tiny_set, reads_fasta, out).code == 0
    (out / "sequences.tsv").unlink()
    line = _refused(predict_tiny(tiny_set, reads_fasta, out), "its own sequences.tsv was removed", "--force")
    assert "another run" not in line and "add --force to make them again" in line
    assert predict_tiny(tiny_set, reads_fasta, out, "--force").code == 0
    assert (out / "sequences.tsv").is_file()


# -- 3. the lock and the workflow's files ----------------------------------------------------------


def test_the_lock_never_follows_a_link_nor_takes_a_users_file(tiny_set, reads_fasta, tmp_path):
    linked = tmp_path / "o2"
    linked.mkdir()
    (linked / LOCK_FILE).symlink_to(tmp_path / "created_by_lock.txt")
    _refused(predict_tiny(tiny_set, reads_fasta, linked), ".work.lock", "symbolic link")
    assert not (tmp_path / "created_by_lock.txt").exists() and (linked / LOCK_FILE).is_symlink()
    users = tmp_path / "o2b"
    users.mkdir()
    (users / LOCK_FILE).write_text("mine\n")
    _refused(predict_tiny(tiny_set, reads_fasta, users), ".work.lock", "not a lock file virnucpro-trt made")
    assert (users / LOCK_FILE).read_text() == "mine\n"
    assert sorted(p.name for p in users.iterdir()) == [LOCK_FILE]


def test_a_stale_lock_the_tool_made_is_taken_over_and_removed(tmp_path):
    """What a SIGKILLed run leaves (this version's text, or an older version's empty file)."""
    for content in (LOCK_TEXT, ""):
        (tmp_path / LOCK_FILE).write_text(content)
        with outdir_lock(tmp_path):
            assert (tmp_path / LOCK_FILE).read_text() == LOCK_TEXT
        assert not (tmp_path / LOCK_FILE).exists()
    (tmp_path / "elsewhere").write_text("")
    os.link(tmp_path / "elsewhere", tmp_path / LOCK_FILE)  # a hard link: writing it changes another file
    with pytest.raises(UserError, match="not a lock file"), outdir_lock(tmp_path):
        pass
    assert (tmp_path / "elsewhere").read_text() == ""


def test_the_workflow_is_never_written_through_a_link(tmp_path):
    dangling = tmp_path / "w2"
    dangling.mkdir()
    (dangling / "Snakefile").symlink_to(tmp_path / "outside_created_by_workflow.txt")
    _refused(run_cli("workflow", "-o", str(dangling)), "Snakefile", "symbolic link")
    assert not (tmp_path / "outside_created_by_workflow.txt").exists()
    folder = tmp_path / "w4"
    folder.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (folder / "profiles").symlink_to(tmp_path / "elsewhere")
    _refused(run_cli("workflow", "-o", str(folder)), "profiles", "symbolic link")
    assert list((tmp_path / "elsewhere").iterdir()) == []
    assert not (folder / "Snakefile").exists()


# -- 4. FIFOs where the working area keeps its state -----------------------------------------------


def test_a_fifo_is_never_read_as_a_file(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with _Unblocker(fifo) as unblocker:
        with pytest.raises(NotARegularFile, match="not a regular file"):
            read_bounded(fifo, 100)
        with pytest.raises(NotARegularFile):
            read_bounded(tmp_path, 100)  # a folder neither
        (tmp_path / "shards").mkdir()
        os.mkfifo(tmp_path / "shards" / "index.json")
        assert read_shard_index(tmp_path / "shards") is None
    assert not unblocker.needed


@pytest.mark.parametrize("where", ["state.json", "shards/index.json"])
def test_a_fifo_in_the_working_area_is_refused_not_waited_on(tiny_set, reads_fasta, tmp_path, where):
    out = tmp_path / "out"
    if where == "state.json":
        (out / ".work").mkdir(parents=True)
    else:  # a resumable .work whose shard index is now a FIFO
        assert predict_tiny(tiny_set, reads_fasta, out, "--keep-work").code == 0
        for name in (*RESULTS, "run.json"):
            (out / name).unlink()
        (out / ".work" / where).unlink()
    fifo = out / ".work" / where
    os.mkfifo(fifo)
    with _Unblocker(fifo) as unblocker:
        result = predict_tiny(tiny_set, reads_fasta, out)
    assert not unblocker.needed, "the run blocked on the FIFO"
    _refused(result, where, "not a regular file")
    assert fifo.exists()


# -- 5. the demo's model cache ---------------------------------------------------------------------


def test_the_demo_never_removes_a_folder_it_did_not_build(tmp_path, monkeypatch):
    monkeypatch.setenv("VIRNUCPRO_TRT_CACHE", str(tmp_path / "cache"))
    thesis = tmp_path / "cache" / "demo-models-v1" / "mywork" / "thesis.tex"
    thesis.parent.mkdir(parents=True)
    thesis.write_text("important\n")
    _refused(run_cli("demo", "-o", str(tmp_path / "out")), "demo-models-v1", "VIRNUCPRO_TRT_CACHE")
    assert thesis.read_text() == "important\n"
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["demo-models-v1"]


_KILLED_WRITING_MODELS = """
import os, signal, sys
from pathlib import Path
import virnucpro_trt.demo as demo
import virnucpro_trt.bench.models as bench_models

def killed(root, *args):
    root.mkdir(parents=True, exist_ok=True)
    (root / "partial.bin").write_bytes(b"w" * 4096)
    os.kill(os.getpid(), signal.SIGKILL)

demo.build_demo_models = killed
bench_models._write_set = killed
if sys.argv[1] == "demo":
    demo.demo_inputs()
else:
    bench_models.random_models_in(Path(sys.argv[2]), "tiny")
"""


@pytest.mark.parametrize("writer", ["demo", "bench"])
def test_model_sets_cut_short_by_a_sigkill_leave_nothing_after_the_next_run(tmp_path, monkeypatch, writer):
    """The demo's model set and bench's random-weight sets are written in a private folder beside their
    name; a SIGKILL there left it for good (bench's full-size set: gigabytes in ``--workdir``). The next
    run removes it now, and writes the set."""
    import os
    import subprocess
    import sys

    cache, workdir = tmp_path / "cache", tmp_path / "work"
    env = {**os.environ, "VIRNUCPRO_TRT_CACHE": str(cache)}
    script = [sys.executable, "-c", _KILLED_WRITING_MODELS, writer, str(workdir)]
    killed = subprocess.run(script, env=env, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    folder = cache if writer == "demo" else workdir
    assert any(p.name.endswith(".run.lock") for p in folder.iterdir())
    assert any(p.is_dir() and p.name.startswith(".") for p in folder.iterdir())
    if writer == "demo":
        from virnucpro_trt.demo import demo_inputs

        monkeypatch.setenv("VIRNUCPRO_TRT_CACHE", str(cache))
        assert demo_inputs().classifier.is_file()
    else:
        from virnucpro_trt.bench.models import random_models_in

        assert random_models_in(workdir, "tiny").classifier.is_file()
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []


# -- 6. output paths that cannot be made -----------------------------------------------------------


def test_an_output_below_a_file_is_one_line_exit_2(tiny_set, reads_fasta, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("hi\n")
    calls = {
        "prepare": ("prepare", str(reads_fasta), "-o", str(afile / "sub")),
        "embed": ("embed", str(reads_fasta), "--model", "dnabert-s", "--weights", str(tiny_set.dnabert),
                  "--device", "cpu", "-o", str(afile / "x.h5")),
        "convert-classifier": ("convert-classifier", str(tiny_set.classifier), str(afile / "c.safetensors")),
        "workflow": ("workflow", "-o", str(afile / "wf")),
    }  # fmt: skip
    for args in calls.values():
        _refused(run_cli(*args), f"{afile} is a file, not a folder")
    result = predict_tiny(tiny_set, reads_fasta, afile / "sub" / "deeper")
    _refused(result, f"{afile} is a file, not a folder")
    assert afile.read_text() == "hi\n"


@pytest.mark.parametrize(
    "where", ["log-file", "group-log-file", "cache-is-a-file", "cache-below-a-file", "bench-workdir"]
)
def test_a_place_of_the_run_below_a_file_is_one_line_exit_2(reads_fasta, tmp_path, monkeypatch, where):
    """Not only ``-o``: a ``--log-file`` (after the command or before it), the demo's model cache
    (``VIRNUCPRO_TRT_CACHE``) and bench's ``--workdir`` that cannot be made because a file is in the way
    are a place to change (exit 2), not an "unexpected failure" (exit 1)."""
    afile = tmp_path / "afile"
    afile.write_text("hi\n")
    monkeypatch.setenv("VIRNUCPRO_TRT_CACHE", str(tmp_path / "cache"))
    demo = ("demo", "-o", str(tmp_path / "out"))
    if where == "log-file":
        args, advice = (*demo, "--log-file", str(afile / "run.log")), "put the log elsewhere"
    elif where == "group-log-file":
        args, advice = ("--log-file", str(afile / "run.log"), *demo), "put the log elsewhere"
    elif where.startswith("cache"):
        cache = afile if where == "cache-is-a-file" else afile / "cache"
        monkeypatch.setenv("VIRNUCPRO_TRT_CACHE", str(cache))
        args, advice = demo, "set VIRNUCPRO_TRT_CACHE to a folder"
    else:
        args = ("bench", "--reads", "8", "--backends", "torch", "--random-weights", "tiny",
                "--workdir", str(afile / "w"))  # fmt: skip
        advice = "choose another output location"
    _refused(run_cli(*args), f"{afile} is a file, not a folder", advice)
    assert afile.read_text() == "hi\n"
    assert not (tmp_path / "out").exists()


def _bad_input_calls(tiny_set, reads: str, out: Path) -> dict[str, tuple[str, ...]]:
    dnabert = ("--model", "dnabert-s", "--weights", str(tiny_set.dnabert), "--device", "cpu")
    models = ("--dnabert", str(tiny_set.dnabert), "--esm", str(tiny_set.esm_hf), "--classifier",
              str(tiny_set.classifier), "--device", "cpu", "--threads", "1")  # fmt: skip
    return {
        "prepare": ("prepare", reads, "-o", str(out / "prepare" / "a" / "b")),
        "predict": ("predict", reads, "-o", str(out / "predict" / "a" / "b"), *models),
        "split": ("split", reads, "--parts", "2", "-o", str(out / "split" / "a" / "b")),
        "embed": ("embed", reads, *dnabert, "-o", str(out / "embed" / "a" / "x.h5")),
    }


@pytest.mark.parametrize("source", ["file", "stdin"])
def test_a_failed_run_leaves_no_folder_it_made(tiny_set, tmp_path, monkeypatch, source):
    """``-o new/a/b`` with a bad record: every level the run made is gone again, and the message names
    the input as the user gave it (``<stdin>``, not the run's private copy of it)."""
    bad = ">r1\nACGTACGT\n>r2\nACG!T\n"
    reads, name = str(tmp_path / "bad.fa"), str(tmp_path / "bad.fa")
    Path(reads).write_text(bad)
    out = tmp_path / "out"
    out.mkdir()
    for command, args in _bad_input_calls(tiny_set, "-" if source == "stdin" else reads, out).items():
        if source == "stdin":
            monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(bad.encode())))
            name = "<stdin>"
        result = run_cli(*args)
        assert result.code == 2 and error_lines(result) == [
            f"error: {name}: record 2 (id 'r2'): invalid DNA character '!' at position 4; allowed: letters "
            "in either case (IUPAC nucleotide codes; others yield no amino acid), '-', '.' and '*'"
        ], (command, result.stderr)
        assert list(out.iterdir()) == [], (command, list(out.rglob("*")))


@pytest.mark.parametrize("work_before", ["none", "empty"])
def test_a_run_failing_before_any_shard_finished_leaves_no_work_even_in_a_work_folder_that_was_there(
    tiny_set, reads_fasta, tmp_path, monkeypatch, work_before
):
    """A failure after the input was copied into ``.work`` (its shards), before any shard finished: what
    the run wrote in ``.work`` goes. With a ``.work`` already there (an empty one, or one a killed run
    left with no shard finished) the copy of the input used to stay for good."""
    import virnucpro_trt.pipeline.predict as predict_module

    out = tmp_path / "out"
    if work_before == "empty":
        (out / ".work").mkdir(parents=True)

    def fail(*args, **kwargs):
        raise UserError("the models cannot be identified (a test's failure)")

    monkeypatch.setattr(predict_module, "_identify_models", fail)
    result = predict_tiny(tiny_set, reads_fasta, out)
    assert result.code == 2 and "a test's failure" in result.stderr, result.stderr
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*")) if out.exists() else []
    assert left == [], left


def test_an_empty_output_path_is_refused(tiny_set, reads_fasta, tmp_path, monkeypatch):
    """``-o ""`` would mean the current folder: refused, and nothing is written there."""
    monkeypatch.chdir(tmp_path)
    models = ("--dnabert", str(tiny_set.dnabert), "--esm", str(tiny_set.esm_hf), "--classifier",
              str(tiny_set.classifier), "--device", "cpu")  # fmt: skip
    _refused(run_cli("prepare", str(reads_fasta), "-o", ""), "-o/--outdir: an empty path")
    _refused(run_cli("predict", str(reads_fasta), "-o", "", *models), "-o/--outdir: an empty path")
    _refused(run_cli("demo", "-o", ""), "-o/--outdir: an empty path")
    embed = ("embed", str(reads_fasta), "--model", "dnabert-s", "--weights", str(tiny_set.dnabert), "-o", "")
    _refused(run_cli(*embed), "-o/--output: an empty path")
    _refused(run_cli("split", str(reads_fasta), "-o", "", "--parts", "2"), "-o/--outdir: an empty path")
    _refused(run_cli("merge", str(tmp_path / "part"), "-o", ""), "-o/--outdir: an empty path")
    _refused(run_cli("workflow", "-o", ""), "-o/--outdir: an empty path")
    assert list(tmp_path.iterdir()) == []


def test_run_json_records_the_outputs_in_the_work_state_too(tiny_set, reads_fasta, tmp_path):
    """The note in ``.work`` and run.json agree on every result file."""
    out = tmp_path / "out"
    assert predict_tiny(tiny_set, reads_fasta, out, "--keep-work").code == 0
    run = json.loads((out / "run.json").read_text())
    assert WorkDir(out).recorded_outputs() == run["outputs"]


def test_a_malformed_stamp_in_a_record_means_hash_the_file(tmp_path):
    """A hostile run.json / state entry with a stamp that is no list is hashed, not a TypeError."""
    from virnucpro_trt.files.ownership import changed_since, output_entry

    (tmp_path / "frames.tsv").write_text("rows\n")
    entry = {**output_entry(tmp_path / "frames.tsv"), "stamp": 5}
    assert changed_since(tmp_path, "frames.tsv", entry) is None
    assert changed_since(tmp_path, "frames.tsv", {**entry, "sha256": "0" * 64}) is not None


@pytest.mark.parametrize("command", ["prepare", "embed"])
def test_a_stdin_copy_left_by_a_killed_prepare_or_embed_is_removed_by_its_rerun(
    tiny_set, reads_fasta, tmp_path, monkeypatch, command
):
    """SIGKILL while stdin is still being copied left a hidden ``.stdin-*.input`` that no rerun removed
    (these commands took no lock); now the output's lock notes it and the rerun removes it."""
    out = tmp_path / "out"
    args = {
        "prepare": ["-o", str(out)],
        "embed": ["--model", "dnabert-s", "--weights", str(tiny_set.dnabert), "--device", "cpu",
                  "--threads", "1", "-o", str(out / "x.h5")],
    }[command]  # fmt: skip
    lock = {"prepare": LOCK_FILE, "embed": ".x.h5.run.lock"}[command]
    data = reads_fasta.read_bytes()
    code, stderr = _signal_while_copying_stdin([command, "-", *args], data, out, "SIGKILL")
    assert code == -9, stderr
    left = sorted(p.name for p in out.iterdir())
    assert lock in left and any("stdin-" in name for name in left), left  # what SIGKILL leaves
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    result = run_cli(command, "-", *args)
    assert result.code == 0, result.stderr
    results = {"prepare": ["identified_nucleotide.fa", "identified_protein.faa"], "embed": ["x.h5"]}[command]
    assert sorted(p.name for p in out.iterdir()) == sorted([RECORD, *results])


def test_the_temporary_files_of_a_killed_prepare_embed_or_workflow_are_removed_by_the_rerun(
    tiny_set, reads_fasta, tmp_path
):
    """What a SIGKILL in the middle of writing leaves (the lock file noting the temporary files, and the
    files): the same command again removes them and writes its results. They used to stay, hidden,
    beside every later result. A workflow's temporary files lie in subfolders: noted with their path."""
    prep, emb, flow = tmp_path / "prep", tmp_path / "emb", tmp_path / "flow"
    with outdir_lock(prep, PREPARE_KEPT) as lock:
        writer = IdentifiedFilesWriter(prep, functools.partial(lock.note, growing=True)).__enter__()
        writer._nuc.write(">x\nACGT\n")
        writer._stack.close()  # closed, not removed: the run is killed here
        killed = {prep / LOCK_FILE: (prep / LOCK_FILE).read_bytes()}
    with output_lock(emb / "x.h5") as lock:
        EmbeddingsWriter(emb / "x.h5", 4, {}, functools.partial(lock.note, growing=True)).file.close()
        killed[emb / ".x.h5.run.lock"] = (emb / ".x.h5.run.lock").read_bytes()
    with outdir_lock(flow, WORKFLOW_KEPT) as lock:
        (flow / "profiles" / "slurm").mkdir(parents=True)
        partial = temporary_name(flow / "profiles" / "slurm" / "config.yaml")
        partial.write_text("cut short")
        lock.note(partial, growing=True)
        partial.write_text("cut short, and longer")  # still growing when killed
        killed[flow / LOCK_FILE] = (flow / LOCK_FILE).read_bytes()
    for path, content in killed.items():
        path.write_bytes(content)
    assert len([p for p in tmp_path.rglob("*.partial")]) == 4
    runs = [
        ("prepare", str(reads_fasta), "-o", str(prep)),
        ("embed", str(reads_fasta), "--model", "dnabert-s", "--weights", str(tiny_set.dnabert), "--device",
         "cpu", "--threads", "1", "-o", str(emb / "x.h5")),
        ("workflow", "-o", str(flow)),
    ]  # fmt: skip
    for args in runs:
        result = run_cli(*args)
        assert result.code == 0, (args, result.stderr)
    assert not list(tmp_path.rglob("*.partial")) and not list(tmp_path.rglob("*.lock"))
    assert (flow / "profiles" / "slurm" / "config.yaml").is_file() and (emb / "x.h5").is_file()


_KILL_AT_THE_RECORD = """
import os, signal, sys
from virnucpro_trt.cli.main import main
real_replace = os.replace
def replace(src, dst, *args, **kwargs):
    if os.fspath(dst).endswith(".virnucpro-trt-outputs.json"):  # the record's temporary is written
        os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst, *args, **kwargs)
os.replace = replace
main(sys.argv[1:])
"""


@pytest.mark.parametrize("command", ["prepare", "embed", "convert-classifier"])
def test_the_outputs_records_temporary_left_by_a_sigkill_is_removed_by_the_rerun(
    tiny_set, reads_fasta, tmp_path, command
):
    """A SIGKILL while ``prepare``, ``embed`` or ``convert-classifier`` renames its outputs record into
    place left the record's hidden ``.partial`` file, which no rerun removed (the lock did not note it;
    ``convert-classifier`` held none); now it is noted and the rerun removes it."""
    out = tmp_path / "out"
    args = {
        "prepare": ["prepare", str(reads_fasta), "-o", str(out)],
        "embed": ["embed", str(reads_fasta), "--model", "dnabert-s", "--weights", str(tiny_set.dnabert),
                  "--device", "cpu", "--threads", "1", "-o", str(out / "x.h5")],
        "convert-classifier": ["convert-classifier", str(tiny_set.classifier), str(out / "c.safetensors")],
    }[command]  # fmt: skip
    script = [sys.executable, "-c", _KILL_AT_THE_RECORD, *args]
    killed = subprocess.run(script, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    lock = {"prepare": LOCK_FILE, "embed": ".x.h5.run.lock", "convert-classifier": ".c.safetensors.run.lock"}
    left = sorted(p.name for p in out.iterdir())
    assert lock[command] in left and any(name.startswith(f".{RECORD}.") for name in left), left
    result = run_cli(*args, "--force")  # the outputs are whole, but the record of them never landed
    assert result.code == 0, result.stderr
    results = {"prepare": ["identified_nucleotide.fa", "identified_protein.faa"], "embed": ["x.h5"],
               "convert-classifier": ["c.safetensors"]}[command]  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == sorted([RECORD, *results])


_KILL_AS_A_FILE_APPEARS = """
import os, signal, sys
from virnucpro_trt.files import run_lock
from virnucpro_trt.cli.main import main
real_note = run_lock.RunLock.note
def note(self, path, growing=False):
    if os.path.lexists(path):  # the file is made, the note of its stamp not yet written
        os.kill(os.getpid(), signal.SIGKILL)
    return real_note(self, path, growing)
run_lock.RunLock.note = note
main(sys.argv[1:])
"""


@pytest.mark.parametrize("case", ["predict", "prepare", "predict-stdin", "merge"])
def test_a_file_killed_before_its_note_is_removed_by_the_rerun(
    tiny_set, reads_fasta, tmp_path, monkeypatch, case
):
    """A SIGKILL between a temporary file's creation and the note of it in the lock (a result's
    ``.partial``, the copy of stdin) left a file no note named: a hidden ``.partial`` beside every
    later result, or a ``.stdin.input`` that refused every rerun. Now its name is noted before it is
    made (``pending``), and the rerun removes it while it is still empty."""
    models = ["--dnabert", str(tiny_set.dnabert), "--esm", str(tiny_set.esm_hf), "--classifier",
              str(tiny_set.classifier), "--device", "cpu", "--threads", "1"]  # fmt: skip
    out, data = tmp_path / "out", reads_fasta.read_bytes()
    args = {
        "predict": ["predict", str(reads_fasta), "-o", str(out), *models],
        "prepare": ["prepare", str(reads_fasta), "-o", str(out)],
        "predict-stdin": ["predict", "-", "-o", str(out), *models],
    }.get(case)
    if case == "merge":
        assert run_cli("split", str(reads_fasta), "-o", str(tmp_path / "parts"), "--parts", "2").code == 0
        parts = [str(tmp_path / f"part{i}") for i in (1, 2)]
        for i, part in enumerate(parts, 1):
            reads = tmp_path / "parts" / f"part-000{i}.fa"
            assert run_cli("predict", str(reads), "-o", part, *models).code == 0
        args = ["merge", *parts, "-o", str(out)]
    assert args is not None
    script = [sys.executable, "-c", _KILL_AS_A_FILE_APPEARS, *args]
    killed = subprocess.run(script, input=data, capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = [p for p in out.iterdir() if p.name.endswith((".partial", ".input"))]
    assert len(left) == 1 and left[0].stat().st_size == 0, left  # made, then killed before its note
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    result = run_cli(*args)
    assert result.code == 0, result.stderr
    assert not [p.name for p in out.iterdir() if p.name.endswith((".partial", ".input", ".lock"))]


def _stamp_of(path: Path) -> list[int]:
    return stat_stamp(os.lstat(path))


def test_a_hand_written_lock_file_makes_the_next_run_remove_nothing_but_a_killed_runs_own_files(tmp_path):
    """A lock file is hostile: anyone who can write the folder can write one, and inodes can be read with
    ``stat``. Passed over: notes naming a user's folder (it was removed whole; renamed to a staging
    name it still lacks the token only its maker could write into it), a user's file noted as growing,
    the lock file itself, a file reached through a symbolic link or ``..``, a name too long for the file
    system (the run failed, and every rerun with it), another command's temporaries (a live ``embed``'s
    in the same folder or a subfolder), a file noted before it was made (``pending``) that is not
    empty or not a name the command keeps, a staging folder in a lock that keeps none, one deeper than any
    build makes (it recursed, and failed every run), one whose token is a FIFO (it hung the run). Only
    what this command keeps there is removed, while still the noted file."""
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    (out / "userdata").mkdir(parents=True)
    (out / "userdata" / "a.txt").write_text("mine")
    (out / ".build-us3rd4ta").mkdir()  # a user's folder renamed to a staging name, open to all
    (out / ".build-us3rd4ta" / "a.txt").write_text("mine")
    (out / ".build-us3rd4ta" / ".virnucpro-trt-staging").write_text("ab" * 16)  # by anyone
    (out / ".build-us3rd4ta").chmod(0o777)
    (out / "notes.txt").write_text("mine")
    (out / "sub").mkdir()
    elsewhere.mkdir()
    outside = elsewhere / ".x.1-2-abcdef01.partial"
    outside.write_text("someone's")
    (out / "sub" / "link").symlink_to(elsewhere)
    live = [out / ".e.h5.1-2-abcdef04.partial", out / ".e.h5.stdin-0123456789abcdef.input",
            out / "sub" / ".c.h5.1-2-cafebabe.partial"]  # fmt: skip
    for path in live:
        path.write_text("another run's, still being written")
    ours = out / ".frames.tsv.3-4-abcdef02.partial"  # the killed run's temporary file
    ours.write_text("half")
    made = out / ".sequences.tsv.3-4-abcdef05.partial"  # made by the killed run, its stamp not yet noted
    made.touch()
    written = out / ".run.json.3-4-abcdef06.partial"  # noted pending, but not empty: not as it was made
    written.write_text("someone's")
    (out / "empty.txt").touch()
    staging = out / ".build-k1ll3d_x"  # the killed build's staging folder: its token inside
    staging.mkdir(mode=0o700)  # as mkdtemp makes it
    (staging / "a" / "b" / "c").mkdir(parents=True)
    for folder in (staging, staging / "a", staging / "a" / "b" / "c"):
        (folder / "esm2.onnx").write_text("half an engine")
    (staging / "a" / "out").symlink_to(elsewhere)  # a link inside: removed, never followed
    (staging / ".virnucpro-trt-staging").write_text("ab" * 16)
    deep = out / ".build-d33p_tr3"  # a private staging folder deeper than any build makes: left as it is
    deep.mkdir(mode=0o700)
    fd = os.open(deep, os.O_RDONLY)
    for _ in range(100):  # one descriptor per level: removal stops at 64 (and used to recurse)
        os.mkdir("d", dir_fd=fd)
        deeper = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = deeper
    os.close(fd)
    (deep / ".virnucpro-trt-staging").write_text("cd" * 16)
    fifo = out / ".build-f1f0f1f0"  # a FIFO in place of the token: it hung the run
    fifo.mkdir(mode=0o700)
    os.mkfifo(fifo / ".virnucpro-trt-staging")
    notes = [
        {"folder": "userdata", "stamp": _stamp_of(out / "userdata"), "token": "ab" * 16},
        {"folder": ".build-us3rd4ta", "stamp": _stamp_of(out / ".build-us3rd4ta"), "token": "ab" * 16},
        {"file": "notes.txt", "growing": True, "stamp": _stamp_of(out / "notes.txt")},
        {"file": LOCK_FILE, "growing": True, "stamp": [0, 0, 0, 0, 0]},
        {"file": "sub/link/.x.1-2-abcdef01.partial", "growing": True, "stamp": _stamp_of(outside)},
        {"file": "../elsewhere/.x.1-2-abcdef01.partial", "growing": True, "stamp": _stamp_of(outside)},
        {"folder": "sub/link", "stamp": _stamp_of(elsewhere), "token": "ab" * 16},
        {"file": "a" * 300, "stamp": [0, 0, 0, 0, 0]},
        {"file": "sub/" + "b" * 300 + "/.z.5-6-abcdef03.partial", "stamp": [0, 0, 0, 0, 0]},
        *({"file": p.relative_to(out).as_posix(), "growing": True, "stamp": _stamp_of(p)} for p in live),
        {"file": ours.name, "growing": True, "stamp": [0, 0, 0, *_stamp_of(ours)[3:]]},
        {"file": made.name, "pending": True},
        {"file": written.name, "pending": True},
        {"file": "empty.txt", "pending": True},  # not a name the command keeps
        {"file": "sub/link/.x.1-2-abcdef01.partial", "pending": True},
        {"folder": staging.name, "stamp": _stamp_of(staging), "token": "ab" * 16},
        {"folder": deep.name, "stamp": _stamp_of(deep), "token": "cd" * 16},
        {"folder": fifo.name, "stamp": _stamp_of(fifo), "token": "ab" * 16},
    ]
    hand_written = LOCK_TEXT + "".join(json.dumps(note) + "\n" for note in notes)
    (out / LOCK_FILE).write_text(hand_written)
    with outdir_lock(out, PREDICT_KEPT) as lock:  # keeps no staging folder: that note is passed over
        assert lock.still_ours()
    assert staging.is_dir() and not ours.exists() and not made.exists()
    assert written.read_text() == "someone's" and (out / "empty.txt").is_file()
    (out / LOCK_FILE).write_text(hand_written)
    with outdir_lock(out, KeptFiles(staging=BUILD_STAGING)) as lock:  # build's: the killed one's staging goes
        assert lock.still_ours()
        new = out / ".build-n3wn3w_y"
        new.mkdir()
        lock.note_folder(new)
        with pytest.raises(ValueError):
            lock.note(out / "notes.txt")  # not a file this command keeps
    assert not staging.exists() and (elsewhere / ".x.1-2-abcdef01.partial").is_file()
    assert (deep / ".virnucpro-trt-staging").is_file() and (fifo / ".virnucpro-trt-staging").exists()
    assert (out / "userdata" / "a.txt").read_text() == "mine" and (out / "notes.txt").read_text() == "mine"
    assert (out / ".build-us3rd4ta" / "a.txt").read_text() == "mine"
    assert outside.read_text() == "someone's" and (out / "sub" / "link").is_symlink()
    assert all(path.read_text() == "another run's, still being written" for path in live)
    # the noted staging folder is still there (left here as a killed build leaves it): the lock file,
    # its only note, stays for the next run to remove it
    assert (out / LOCK_FILE).exists() and new.name in (out / LOCK_FILE).read_text()
    assert len((new / ".virnucpro-trt-staging").read_text()) == 32  # the token a rerun asks of it
    with outdir_lock(out, PREDICT_KEPT) as lock:
        spool = out / ".stdin.input"
        spool.write_text(">a\nACGT\n")
        lock.note(spool)
        with pytest.raises(ValueError):
            lock.note(out / ".e.h5.1-2-abcdef04.partial")  # another output's temporary
        with pytest.raises(ValueError):
            lock.note_folder(new)  # predict keeps no staging folder
        spool.unlink()  # as predict removes its copy when it ends
    assert not (out / LOCK_FILE).exists()  # nothing this run noted is left


def test_two_embeds_into_one_folder_run_side_by_side_but_not_onto_one_file(tiny_set, reads_fasta, tmp_path):
    """``embed`` locks its output file, not the folder: DNABERT-S and ESM-2 embeddings written into one
    folder at once both run; a second run onto the same file is refused while the first writes it."""
    out = tmp_path / "emb"
    args = ("embed", str(reads_fasta), "--model", "dnabert-s", "--weights", str(tiny_set.dnabert),
            "--device", "cpu", "--threads", "1", "-o")  # fmt: skip
    with output_lock(out / "a.h5"):
        _refused(run_cli(*args, str(out / "a.h5")), f"{out / 'a.h5'} is being written by another")
        result = run_cli(*args, str(out / "b.h5"))
        assert result.code == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [RECORD, "b.h5"]


def test_a_lock_file_the_run_cannot_remove_at_the_end_is_a_warning_not_a_failure(
    reads_fasta, tmp_path, monkeypatch
):
    """Another user's lock file taken over in a sticky folder cannot be removed by the run at its end:
    the run's results stand (exit 0, one warning); it used to end in an error after writing them."""
    out = tmp_path / "out"
    real_unlink = Path.unlink

    def refused(self, missing_ok=False):
        if self.name == LOCK_FILE:
            raise PermissionError(1, "Operation not permitted", str(self))
        return real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", refused)
    result = run_cli("prepare", str(reads_fasta), "-o", str(out))
    assert result.code == 0, result.stderr
    assert "could not remove the lock file" in result.stderr
    assert (out / "identified_protein.faa").is_file()


def test_an_output_named_like_a_run_lock_is_refused_even_with_force(tiny_set, reads_fasta, tmp_path):
    """``embed --force -o DIR/.x.h5.run.lock`` replaced a running embed's lock file (a second run onto
    x.h5 could then start); ``convert-classifier`` could do the same to a folder's ``.work.lock``."""
    out = tmp_path / "out"
    out.mkdir()
    for name in (".x.h5.run.lock", LOCK_FILE):
        (out / name).write_text(LOCK_TEXT)
    embed = ("embed", str(reads_fasta), "--model", "dnabert-s", "--weights", str(tiny_set.dnabert),
             "--device", "cpu", "--force", "-o", str(out / ".x.h5.run.lock"))  # fmt: skip
    _refused(run_cli(*embed), "run locks are kept under names like this")
    convert = ("convert-classifier", str(tiny_set.classifier), str(out / LOCK_FILE), "--force")
    _refused(run_cli(*convert), "run locks are kept under names like this")
    assert sorted(p.name for p in out.iterdir()) == sorted([".x.h5.run.lock", LOCK_FILE])
    assert all((out / name).read_text() == LOCK_TEXT for name in (".x.h5.run.lock", LOCK_FILE))


def test_notes_are_followed_only_from_a_lock_file_no_one_else_may_write_and_results_only_by_hash(
    tmp_path, caplog
):
    """A lock file others may write (group-writable under umask 002, as it used to be created) is not
    this user's run's word: its notes are not followed. A results note's stamp (which anyone can read
    with ``stat``) made merge take a user's table for its own without hashing it; only the size and
    SHA-256 are carried now."""
    out = tmp_path / "out"
    previous = os.umask(0o002)  # a shared project's umask: files group-writable
    try:
        with outdir_lock(out, PREDICT_KEPT):
            assert stat.S_IMODE((out / LOCK_FILE).stat().st_mode) & 0o022 == 0  # created 0644 at most
    finally:
        os.umask(previous)
    table = out / "prediction_results.txt"
    table.write_text("the user's own table\n")
    forged = {table.name: {"bytes": table.stat().st_size, "sha256": "0" * 64, "stamp": _stamp_of(table)}}
    (out / LOCK_FILE).write_text(LOCK_TEXT + json.dumps({"results": forged}) + "\n")
    with outdir_lock(out, MERGE_KEPT) as lock:
        assert lock.results == {table.name: {"bytes": table.stat().st_size, "sha256": "0" * 64}}
        assert changed_since(out, table.name, lock.results[table.name]) is not None  # hashed: not merge's
        lock.forget_results()
    killed = out / ".frames.tsv.7-8-abcdef09.partial"  # a killed predict's temporary
    killed.write_text("half")
    note = {"file": killed.name, "growing": True, "stamp": _stamp_of(killed)}
    (out / LOCK_FILE).write_text(LOCK_TEXT + json.dumps(note) + "\n")
    (out / LOCK_FILE).chmod(0o664)
    with outdir_lock(out, PREDICT_KEPT):
        pass
    assert killed.is_file() and "its notes are not followed" in caplog.text
    (out / LOCK_FILE).write_text(LOCK_TEXT + json.dumps(note) + "\n")
    (out / LOCK_FILE).chmod(0o644)
    with outdir_lock(out, PREDICT_KEPT):
        pass
    assert not killed.exists()


def test_force_never_puts_a_file_where_a_device_fifo_or_socket_is(tiny_set, reads_fasta, tmp_path):
    """The rename that puts a result in place swaps a plain file in for whatever is at the name: with
    ``--force`` a FIFO (and, as root, /dev/null itself) was replaced. Now every command refuses one,
    ``--force`` or not, in one line, and leaves it."""
    out = tmp_path / "out"
    parts = tmp_path / "parts"
    assert run_cli("split", str(reads_fasta), "--parts", "2", "-o", str(parts)).code == 0
    part_outs = []
    for part in sorted(parts.glob("part-*.fa*")):
        part_outs.append(tmp_path / part.name.split(".")[0])
        assert predict_tiny(tiny_set, part, part_outs[-1]).code == 0
    embed = ("embed", str(reads_fasta), "--model", "dnabert-s", "--weights", str(tiny_set.dnabert),
             "--device", "cpu", "--threads", "1")  # fmt: skip
    cases = [
        (out / "frames.tsv", lambda: predict_tiny(tiny_set, reads_fasta, out, "--force")),
        (out / "run.json", lambda: predict_tiny(tiny_set, reads_fasta, out, "--force")),
        (out / "identified_protein.faa",
         lambda: run_cli("prepare", str(reads_fasta), "-o", str(out), "--force")),
        (out / "e.h5", lambda: run_cli(*embed, "-o", str(out / "e.h5"), "--force")),
        (out / RECORD, lambda: run_cli(*embed, "-o", str(out / "e.h5"), "--force")),
        (out / "c.safetensors", lambda: run_cli("convert-classifier", str(tiny_set.classifier),
                                                str(out / "c.safetensors"), "--force")),
        (out / "sequences.tsv", lambda: run_cli("merge", *map(str, part_outs), "-o", str(out), "--force")),
    ]  # fmt: skip
    for fifo, command in cases:
        out.mkdir(exist_ok=True)
        os.mkfifo(fifo)
        _refused(command(), str(fifo), "is a device, FIFO or socket")
        assert stat.S_ISFIFO(fifo.lstat().st_mode)
        fifo.unlink()
    assert not [p for p in out.iterdir() if not p.name.startswith(".")], list(out.iterdir())


def test_no_output_goes_inside_a_folder_the_command_reads(tiny_set, reads_fasta, tmp_path):
    """``embed -o MODEL/model.safetensors --force`` wrote its HDF5 over the weights it had just read (and
    over config.json, tokenizer.json the same way): an output inside a model folder, or an engine
    directory, is refused even with ``--force``, and the folder is left as it was."""
    import shutil

    dnabert = tmp_path / "dnabert"
    shutil.copytree(tiny_set.dnabert, dnabert)
    before = {p.name: p.read_bytes() for p in dnabert.iterdir()}
    weights = next(p for p in dnabert.iterdir() if p.name.startswith(("model", "pytorch_model")))
    result = run_cli("embed", str(reads_fasta), "--model", "dnabert-s", "--weights", str(dnabert),
                     "--device", "cpu", "-o", str(weights), "--force")  # fmt: skip
    _refused(result, f"{weights} lies inside {dnabert}, a folder this run reads")
    result = run_cli("predict", str(reads_fasta), "-o", str(dnabert / "results"), "--dnabert", str(dnabert),
                     "--esm", str(tiny_set.esm_hf), "--classifier", str(tiny_set.classifier),
                     "--device", "cpu")  # fmt: skip
    _refused(result, f"{dnabert / 'results'} lies inside {dnabert}, a folder this run reads")
    assert {p.name: p.read_bytes() for p in dnabert.iterdir()} == before


def test_a_file_written_at_a_result_name_while_predict_runs_is_left_and_stops_it(
    tiny_set, reads_fasta, tmp_path, monkeypatch
):
    """``embed -o OUTDIR/frames.tsv`` (its own lock, beside predict's) finished while ``predict -o
    OUTDIR`` ran: predict removed or renamed over the embeddings and said PASSED."""
    from virnucpro_trt.pipeline import predict as predict_module

    out = tmp_path / "out"
    run_shards = predict_module._run_shards

    def meanwhile(*args, **kwargs):
        report = run_shards(*args, **kwargs)
        (out / "frames.tsv").write_text("another program's\n")
        return report

    monkeypatch.setattr(predict_module, "_run_shards", meanwhile)
    result = predict_tiny(tiny_set, reads_fasta, out)
    assert result.code == 2 and error_lines(result) == [
        f"error: {out / 'frames.tsv'} appeared while this run was working (another program wrote it "
        "there); it was left as it is and this run's result was not put in its place: move it away and "
        "rerun the same command"
    ]
    assert (out / "frames.tsv").read_text() == "another program's\n"
    assert not (out / "run.json").exists() and not (out / "sequences.tsv").exists()
    monkeypatch.setattr(predict_module, "_run_shards", run_shards)
    (out / "frames.tsv").unlink()
    rerun = predict_tiny(tiny_set, reads_fasta, out)
    assert rerun.code == 0 and "resuming" in rerun.stderr, rerun.stderr


@pytest.mark.parametrize("at_name", ["sequences.tsv", "run.json"])
def test_ctrl_c_while_the_results_are_put_in_place_waits_for_run_json(
    tiny_set, reads_fasta, tmp_path, monkeypatch, at_name
):
    """Ctrl-C (or SIGTERM) between the renames left results without their run.json and exited 130; during
    run.json's, exit 130 on complete results. Now it waits the milliseconds to run.json: exit 0, whole."""
    from virnucpro_trt.files import atomic, no_replace

    out = tmp_path / "out"
    seen = []
    rename_no_replace, replace = no_replace.rename_no_replace, os.replace

    def counted(rename):
        def call(source, target):
            if Path(target) == out / at_name:
                seen.append(at_name)
                signal.raise_signal(signal.SIGINT)
            return rename(source, target)

        return call

    monkeypatch.setattr(no_replace, "rename_no_replace", counted(rename_no_replace))
    monkeypatch.setattr(atomic.os, "replace", counted(replace))  # run.json's (files/atomic.py)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        result = predict_tiny(tiny_set, reads_fasta, out)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert seen == [at_name]
    assert result.code == 0, result.stderr
    assert all((out / name).is_file() for name in (*RESULTS, "run.json"))
