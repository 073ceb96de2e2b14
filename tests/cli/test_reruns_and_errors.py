"""What a user meets on a second run and when something is wrong: a finished run is not redone, another
run's results are not overwritten without --force, and each mistake is one line naming the cause and the
fix, with the right exit code."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.helpers import error_lines, predict_tiny, run_cli

RESULTS = ("prediction_results.txt", "prediction_results_highestscore.csv", "sequences.tsv", "frames.tsv")




def _snapshot(out: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir() if p.is_file()}


@pytest.fixture(scope="module")
def finished(tiny_set, reads_fasta, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "out"
    result = predict_tiny(tiny_set, reads_fasta, out)
    assert result.code == 0, result.stderr
    return out


def test_the_same_command_on_a_finished_outdir_touches_nothing(tiny_set, reads_fasta, finished):
    before = _snapshot(finished)
    result = predict_tiny(tiny_set, reads_fasta, finished)
    assert result.code == 0 and "already finished, nothing recomputed" in result.stderr, result.stderr
    assert _snapshot(finished) == before
    run = json.loads((finished / "run.json").read_text())
    assert set(run["outputs"]) == set(RESULTS)
    assert set(run["model_weights"]) == {"dnabert-s", "esm2", "classifier"}


def test_naming_a_default_is_the_same_run_and_a_real_difference_is_named(
    tiny_set, reads_fasta, finished, tmp_path
):
    """``--precision fp32``, ``--backend torch``, ``--max-batch-tokens 4096`` (the CPU default) and
    ``--device auto`` (the CPU here) compute the same bytes as leaving them out: the rerun finds its
    finished run (it was refused as "different settings"). A setting that does differ is named."""
    import torch

    before = _snapshot(finished)
    defaults = ["--precision", "fp32", "--backend", "torch", "--max-batch-tokens", "4096"]
    if not torch.cuda.is_available():
        defaults += ["--device", "auto"]
    result = predict_tiny(tiny_set, reads_fasta, finished, *defaults)
    assert result.code == 0 and "already finished, nothing recomputed" in result.stderr, result.stderr
    assert _snapshot(finished) == before
    result = predict_tiny(tiny_set, reads_fasta, finished, "--max-batch-tokens", "2048")
    assert result.code == 2, result.stderr
    assert "different settings (encoders.max_batch_tokens: None vs 2048)" in error_lines(result)[0]
    assert _snapshot(finished) == before


_KILL_ONCE_RUN_JSON_IS_IN_PLACE = """
import os, signal, sys
from virnucpro_trt.cli.main import main
from virnucpro_trt.files import no_replace
real_rename = no_replace.rename_no_replace
def rename(src, dst):
    real_rename(src, dst)
    if os.fspath(dst).endswith("run.json"):  # finished: .work is removed next
        os.kill(os.getpid(), signal.SIGKILL)
no_replace.rename_no_replace = rename  # how run.json is put in place, after the results (ResultSet.publish)
main(sys.argv[1:])
"""


def test_work_left_by_a_run_killed_after_its_run_json_goes_with_the_rerun(tiny_set, reads_fasta, tmp_path):
    """A SIGKILL (or a signal) between run.json and the removal of ``.work`` left the input's copy and
    every shard's results in ``OUTDIR/.work`` for good: the rerun found the run finished and touched
    nothing. It now removes that run's ``.work`` (and still recomputes nothing)."""
    out = tmp_path / "out"
    args = ["predict", str(reads_fasta), "-o", str(out), "--dnabert", str(tiny_set.dnabert), "--esm",
            str(tiny_set.esm_hf), "--classifier", str(tiny_set.classifier), "--device", "cpu",
            "--threads", "1"]  # fmt: skip
    script = [sys.executable, "-c", _KILL_ONCE_RUN_JSON_IS_IN_PLACE, *args]
    killed = subprocess.run(script, text=True, capture_output=True)
    assert killed.returncode == -9, killed.stderr
    assert (out / ".work").is_dir() and (out / "run.json").is_file()
    before = {name: got for name, got in _snapshot(out).items() if name != ".work.lock"}
    result = predict_tiny(tiny_set, reads_fasta, out)
    assert result.code == 0 and "already finished, nothing recomputed" in result.stderr, result.stderr
    assert not (out / ".work").exists() and _snapshot(out) == before
    assert not (out / ".work.lock").exists()


def test_an_interrupt_while_a_finished_run_removes_its_work_folder_is_no_failure(
    tiny_set, reads_fasta, tmp_path, monkeypatch
):
    """Ctrl-C (or a scheduler's SIGTERM) after run.json is in place, while ``.work`` is being removed,
    ended the run with exit 130 though its results were complete, so a workflow manager took the job for
    failed. It is a warning now; the rerun removes what is left of ``.work``."""
    from virnucpro_trt.runtime.resume import WorkDir

    out = tmp_path / "out"
    real_wipe = WorkDir.wipe

    def interrupted_once_finished(self):
        if (out / "run.json").exists():
            raise KeyboardInterrupt
        real_wipe(self)

    monkeypatch.setattr(WorkDir, "wipe", interrupted_once_finished)
    result = predict_tiny(tiny_set, reads_fasta, out)
    assert result.code == 0 and "interrupted after the results were complete" in result.stderr, result.stderr
    assert "removes what is left of" in result.stderr
    assert (out / ".work").is_dir()
    result = predict_tiny(tiny_set, reads_fasta, out)  # interrupted again, as the rerun removes .work
    assert result.code == 0 and "interrupted after the results were complete" in result.stderr, result.stderr
    assert "nothing recomputed" in result.stderr and (out / ".work").is_dir()
    monkeypatch.setattr(WorkDir, "wipe", real_wipe)
    result = predict_tiny(tiny_set, reads_fasta, out)
    assert result.code == 0 and "nothing recomputed" in result.stderr and not (out / ".work").exists()


@pytest.mark.parametrize("where", ["lock release", "stdin copy removal", "after --keep-work"])
def test_an_interrupt_anywhere_after_run_json_is_no_failure(
    tiny_set, reads_fasta, tmp_path, monkeypatch, where
):
    """The moments after run.json outside the ``.work`` removal (the log line of ``--keep-work``, the
    removal of the stdin copy, the lock's release) ended the run with exit 130 though its results were
    complete. Now any interrupt once run.json is in place is a warning and exit 0, and the same command
    then finds the run finished."""
    from virnucpro_trt.files import run_lock
    from virnucpro_trt.pipeline import predict

    out = tmp_path / "out"
    extra: list[str] = []
    stdin = None
    if where == "lock release":
        real_still_ours = run_lock.RunLock.still_ours

        def still_ours(self):
            if (out / "run.json").exists():
                raise KeyboardInterrupt
            return real_still_ours(self)

        monkeypatch.setattr(run_lock.RunLock, "still_ours", still_ours)
    elif where == "stdin copy removal":
        real_remove = predict.remove_quietly

        def remove_quietly(path):
            if (out / "run.json").exists():
                raise KeyboardInterrupt
            real_remove(path)

        monkeypatch.setattr(predict, "remove_quietly", remove_quietly)
        stdin = reads_fasta.read_text()
    else:
        real_info = predict.log.info

        def info(message, *args, **kwargs):
            if message.startswith("kept the work folder"):
                raise KeyboardInterrupt
            real_info(message, *args, **kwargs)

        monkeypatch.setattr(predict.log, "info", info)
        extra = ["--keep-work"]
    source = "-" if stdin is not None else reads_fasta
    with pytest.MonkeyPatch.context() as m:
        if stdin is not None:
            m.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(stdin.encode())))
        result = predict_tiny(tiny_set, source, out, *extra)
    assert result.code == 0, result.stderr
    assert "interrupted after the results were complete; they stand" in result.stderr
    assert ("removes what is left of" in result.stderr) == (where != "after --keep-work")
    run = json.loads((out / "run.json").read_text())
    assert set(run["outputs"]) == set(RESULTS)
    if where == "stdin copy removal":  # the lock stayed, noting the copy the interrupt left
        assert (out / ".stdin.input").exists() and (out / ".work.lock").exists()
    monkeypatch.undo()
    with pytest.MonkeyPatch.context() as m:  # the same command (stdin again, where it was stdin)
        if stdin is not None:
            m.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(stdin.encode())))
        result = predict_tiny(tiny_set, source, out, *extra)
    assert result.code == 0 and "nothing recomputed" in result.stderr, result.stderr
    assert not (out / ".work.lock").exists() and not (out / ".stdin.input").exists()


def test_force_on_an_unchanged_finished_run_computes_it_again(tiny_set, reads_fasta, finished, tmp_path):
    """--force asks to compute: on this very run's unchanged results it runs again (same bytes), where it
    used to say "nothing to do"."""
    out = tmp_path / "out"
    out.mkdir()
    for path in finished.iterdir():
        (out / path.name).write_bytes(path.read_bytes())
    first = json.loads((out / "run.json").read_text())
    result = predict_tiny(tiny_set, reads_fasta, out, "--force")
    assert result.code == 0 and "--force: computing this run again" in result.stderr, result.stderr
    assert "nothing recomputed" not in result.stderr
    again = json.loads((out / "run.json").read_text())
    assert not again.get("reused") and again["timings_s"] != first["timings_s"]
    assert again["outputs"] == first["outputs"]  # deterministic: the same result bytes
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # .work removed as usual


def test_a_run_json_that_leaves_a_result_file_out_is_no_finished_run(
    tiny_set, reads_fasta, finished, tmp_path
):
    """A run.json whose outputs leave frames.tsv out (a damaged or edited record) made the rerun say
    "already finished" without looking at that file: a truncated frames.tsv passed as complete."""
    out = tmp_path / "out"
    out.mkdir()
    for path in finished.iterdir():
        (out / path.name).write_bytes(path.read_bytes())
    run = json.loads((out / "run.json").read_text())
    del run["outputs"]["frames.tsv"]
    (out / "run.json").write_text(json.dumps(run))
    (out / "frames.tsv").write_bytes((finished / "frames.tsv").read_bytes()[:100])
    result = predict_tiny(tiny_set, reads_fasta, out)
    assert result.code == 2, result.stderr
    assert "its run.json does not account for frames.tsv" in error_lines(result)[0]


def test_another_input_or_settings_are_refused_then_replaced_with_force(
    tiny_set, reads_fasta, finished, tmp_path
):
    out = tmp_path / "out"
    out.mkdir()
    for path in finished.iterdir():
        (out / path.name).write_bytes(path.read_bytes())
    before = _snapshot(out)
    other = tmp_path / "other.fa"
    other.write_text(">x\n" + "ATGAAACCCGGGTTT" * 40 + "\n")
    cases = (((other,), "a different input"), ((reads_fasta, "--chunk-length", "300"), "different settings"))
    for args, why in cases:
        result = predict_tiny(tiny_set, *args[:1], out, *args[1:])
        assert result.code == 2 and len(error_lines(result)) == 1, result.stderr
        assert why in error_lines(result)[0] and "--force" in error_lines(result)[0]
        assert _snapshot(out) == before
    result = predict_tiny(tiny_set, other, out, "--force")
    assert result.code == 0, result.stderr
    assert json.loads((out / "run.json").read_text())["counts"]["records"] == 1


def test_a_damaged_run_json_is_another_runs_in_one_line_and_its_record_is_what_it_read(
    tiny_set, reads_fasta, finished, tmp_path
):
    """run.json written by predict is what its typed record writes back, byte for byte; a field of the
    wrong type makes it another run's (exit 2, one line naming the field), never a traceback, and
    ``--force`` replaces it."""
    from virnucpro_trt.pipeline.run_record import RunRecord

    raw = (finished / "run.json").read_text()
    assert RunRecord.from_json(json.loads(raw)).text() == raw
    out = tmp_path / "out"
    out.mkdir()
    for path in finished.iterdir():
        (out / path.name).write_bytes(path.read_bytes())
    for edit, why in (
        (lambda r: r["counts"].update(records="2"), "its run.json is damaged: counts.records: not a count"),
        (lambda r: r.update(outputs=["frames.tsv"]), "its run.json is damaged: outputs: "),
        (lambda r: r.update(status="running"), "(it did not finish)"),
        # the summary line prints it: a record without it is damaged, not "0 sequences labelled virus"
        (lambda r: r["counts"].pop("virus_sequences"), "damaged: counts.virus_sequences: not a count"),
        (lambda r: r["timings_s"].update(total=10**400), "damaged: timings_s.total: not a number"),
    ):
        run = json.loads(raw)
        edit(run)
        (out / "run.json").write_text(json.dumps(run))
        before = _snapshot(out)
        result = predict_tiny(tiny_set, reads_fasta, out)
        assert result.code == 2 and len(error_lines(result)) == 1, result.stderr
        assert why in error_lines(result)[0] and "--force" in error_lines(result)[0], result.stderr
        assert _snapshot(out) == before
    result = predict_tiny(tiny_set, reads_fasta, out, "--force")
    assert result.code == 0, result.stderr
    assert (out / "frames.tsv").read_bytes() == (finished / "frames.tsv").read_bytes()


def test_results_changed_after_the_run_or_without_a_run_json_are_not_overwritten(
    tiny_set, reads_fasta, finished, tmp_path
):
    out = tmp_path / "out"
    out.mkdir()
    for path in finished.iterdir():
        (out / path.name).write_bytes(path.read_bytes())
    with open(out / "frames.tsv", "a") as handle:
        handle.write("my own notes\n")
    result = predict_tiny(tiny_set, reads_fasta, out)
    assert result.code == 2 and "frames.tsv was changed" in result.stderr
    (out / "run.json").unlink()
    result = predict_tiny(tiny_set, reads_fasta, out)
    assert result.code == 2 and "no finished run accounts for" in result.stderr
    assert (out / "frames.tsv").read_text().endswith("my own notes\n")


def test_an_unwritable_outdir_is_one_line_exit_2(tiny_set, reads_fasta, tmp_path, monkeypatch):
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):  # what a read-only mount answers (root ignores chmod here)
        if str(self).startswith(str(tmp_path / "ro")):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    result = predict_tiny(tiny_set, reads_fasta, tmp_path / "ro" / "out")
    assert result.code == 2 and error_lines(result) == [  # the first level that could not be made
        f"error: cannot write ({tmp_path / 'ro'}): Read-only file system; choose a location you can "
        "write to"
    ]


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc (no folder can be made)")
def test_an_output_folder_that_cannot_be_created_is_one_line_exit_2(tiny_set, reads_fasta):
    """Below /proc a folder cannot be made (ENOENT): it is a place to change, not an unexpected failure."""
    where = "/proc/virnucpro-trt-test"
    dnabert = ("--model", "dnabert-s", "--weights", str(tiny_set.dnabert), "--device", "cpu")
    for result in (
        predict_tiny(tiny_set, reads_fasta, Path(where) / "out"),
        run_cli("prepare", str(reads_fasta), "-o", where, "--chunk-length", "500"),
        run_cli("split", str(reads_fasta), "--parts", "2", "-o", where),
        run_cli("embed", str(reads_fasta), *dnabert, "-o", f"{where}/x.h5"),
    ):
        assert result.code == 2 and error_lines(result) == [
            f"error: cannot create {where}: No such file or directory; choose another output location"
        ], result.stderr
        assert "loaded" not in result.stderr  # refused before any model is loaded
    # /proc itself exists, but no file can be made in it: refused before the model loads, too
    for result in (
        run_cli("embed", str(reads_fasta), *dnabert, "-o", "/proc/x.h5"),
        run_cli("prepare", str(reads_fasta), "-o", "/proc"),
    ):
        assert result.code == 2 and error_lines(result) == [
            "error: cannot write in /proc: No such file or directory; choose another output location"
        ], result.stderr
        assert "loaded" not in result.stderr


def test_a_missing_file_that_is_no_output_stays_an_unexpected_failure() -> None:
    """Only a path on the way to the command's outputs is a place to change; a cache or input file gone
    mid-run is not (workers treat it as a failure to retry, not a usage error). An I/O error is a failed
    run too, but named as one (it was "unexpected failure: OSError")."""
    from virnucpro_trt.errors import describe_os_error

    gone = FileNotFoundError(errno.ENOENT, "No such file or directory", "/root/.cache/x.so")
    assert describe_os_error(gone) is None
    failing = OSError(errno.EIO, "Input/output error", "/data/engines/esm2.pt2")
    assert describe_os_error(failing) == (
        "Input/output error (/data/engines/esm2.pt2): the storage failed to read or write; check it and "
        "rerun",
        1,
    )


def test_offline_download_is_one_line_exit_2(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run(
        [sys.executable, "-m", "virnucpro_trt", "download", "zhihan1996/DNABERT-S"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "error: cannot download zhihan1996/DNABERT-S: HF_HUB_OFFLINE is set; download it where there is "
        "network (`virnucpro-trt download` there) and copy the folder here, then pass its path"
    ]


@pytest.mark.parametrize("repo_id", ["../../etc", "a/b/c", ""])
def test_a_download_of_something_that_is_no_repository_id_is_a_usage_error(repo_id, monkeypatch, tmp_path):
    """It was exit 1, "unexpected failure" with huggingface_hub's own error (helper-37)."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    result = run_cli("download", repo_id)
    assert result.code == 2 and result.stderr.strip().splitlines() == [
        f"error: {repo_id!r} is not a Hugging Face repository id: expected OWNER/NAME, e.g. "
        "zhihan1996/DNABERT-S"
    ]
    assert not (tmp_path / "hf").exists()


def test_a_text_file_as_classifier_and_a_missing_engine_dir_say_what_they_are(
    tiny_set, reads_fasta, tmp_path
):
    notes = tmp_path / "500_model.pth"
    notes.write_text("these are my notes, not a model\n")
    result = run_cli(
        "predict", str(reads_fasta), "-o", str(tmp_path / "o1"), "--dnabert", str(tiny_set.dnabert),
        "--esm", str(tiny_set.esm_hf), "--classifier", str(notes),
    )  # fmt: skip
    assert result.code == 2 and len(error_lines(result)) == 1
    assert "not a PyTorch checkpoint" in error_lines(result)[0]
    missing = tmp_path / "no-such-engines"
    result = run_cli("predict", str(reads_fasta), "-o", str(tmp_path / "o2"), "--engines", str(missing))
    assert result.code == 2 and error_lines(result) == [
        f"error: engine directory {missing}: no such directory; build one there with "
        f"`virnucpro-trt build ... -o {missing}` (or check the path)"
    ]
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_a_pipe_is_read_once_and_a_device_is_refused(tiny_set, reads_fasta, finished, tmp_path):
    """``predict <(zcat ...)`` gives a pipe, which can be read only once: it is copied first (like stdin)
    and removed after; the results equal those of the file."""
    out = tmp_path / "piped"
    command = (
        f'"{sys.executable}" -m virnucpro_trt predict <(cat "{reads_fasta}") -o "{out}" '
        f'--dnabert "{tiny_set.dnabert}" --esm "{tiny_set.esm_hf}" --classifier "{tiny_set.classifier}" '
        "--device cpu --threads 1"
    )
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    for name in RESULTS:
        assert (out / name).read_bytes() == (finished / name).read_bytes(), name
    assert sorted(p.name for p in out.iterdir()) == sorted([*RESULTS, "run.json"])
    refused = predict_tiny(tiny_set, Path("/dev/zero"), tmp_path / "zero")
    expected = ["error: input /dev/zero: not a regular file or a pipe"]
    assert refused.code == 2 and error_lines(refused) == expected


@pytest.mark.parametrize("command", ["predict", "prepare", "embed", "split"])
def test_an_input_that_cannot_be_read_is_one_line_before_any_output(tiny_set, tmp_path, command) -> None:
    """A regular file whose bytes cannot be read (a link to /proc/self/mem gives EIO, like a failing
    disk) was an unexpected OSError, exit 1; it is now named, exit 2, before the output exists."""
    unreadable = tmp_path / "reads.fa"
    unreadable.symlink_to("/proc/self/mem")
    out = tmp_path / "out"
    if command == "predict":
        result = predict_tiny(tiny_set, unreadable, out)
    elif command == "embed":
        out = tmp_path / "out" / "e.h5"
        result = run_cli("embed", str(unreadable), "--model", "esm2", "--weights", str(tiny_set.esm_hf),
                         "-o", str(out), "--device", "cpu")  # fmt: skip
    elif command == "split":
        result = run_cli("split", str(unreadable), "-o", str(out), "--parts", "2")
    else:
        result = run_cli("prepare", str(unreadable), "-o", str(out))
    assert result.code == 2
    assert error_lines(result) == [f"error: input {unreadable}: cannot be read (Input/output error)"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json"])
def test_a_model_file_that_cannot_be_read_is_named_in_one_line(tiny_set, tmp_path, name) -> None:
    """The weights' hash read every file of the folder first: EIO there was an unexpected OSError, exit 1."""
    folder = tmp_path / "dnabert"
    shutil.copytree(tiny_set.dnabert, folder)
    (folder / name).unlink()
    (folder / name).symlink_to("/proc/self/mem")
    reads = tmp_path / "reads.fa"
    reads.write_text(">a\nACGTACGTAC\n")
    result = run_cli("embed", str(reads), "--model", "dnabert-s", "--weights", str(folder),
                     "-o", str(tmp_path / "e.h5"), "--device", "cpu")  # fmt: skip
    assert result.code == 2
    assert error_lines(result) == [f"error: {folder / name}: cannot read (Input/output error)"]
