"""The command-line habits users bring from other tools: -v before the command, -t, honest help texts."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat

from tests.cli.helpers import run_cli
from virnucpro_trt.cli.command_options import CLI_STATE
from virnucpro_trt.cli.logging_setup import _WarnOnce
from virnucpro_trt.log_records import WORKER_TEXT


def _models(tiny_set) -> list[str]:
    return [
        "--dnabert", str(tiny_set.dnabert), "--esm", str(tiny_set.esm_hf),
        "--classifier", str(tiny_set.classifier), "--device", "cpu",
    ]  # fmt: skip


def test_verbosity_and_log_file_before_the_command(tiny_set, reads_fasta, tmp_path):
    log = tmp_path / "run.log"
    result = run_cli(
        "-v", "--log-file", str(log), "predict", str(reads_fasta), "-o", str(tmp_path / "v"),
        *_models(tiny_set), "-t", "1",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    assert " DEBUG " in result.stderr and "PASSED" in result.stderr
    assert "PASSED" in log.read_text()
    run = json.loads((tmp_path / "v" / "run.json").read_text())
    assert run["settings"]["encoders"]["threads"] == 1  # -t is --threads

    result = run_cli("-q", "predict", str(reads_fasta), "-o", str(tmp_path / "q"), *_models(tiny_set))
    assert result.code == 0, result.stderr
    assert "PASSED" not in result.stderr and " INFO " not in result.stderr

    result = run_cli("predict", str(reads_fasta), "-o", str(tmp_path / "plain"), *_models(tiny_set))
    assert result.code == 0 and " DEBUG " not in result.stderr and "PASSED" in result.stderr


def test_verbosity_counts_on_both_sides_of_the_command(reads_fasta, tmp_path):
    result = run_cli("-v", "prepare", str(reads_fasta), "-o", str(tmp_path / "p"), "-v")
    assert result.code == 0, result.stderr
    assert CLI_STATE["verbose"] == 2  # -vv: unexpected errors print their traceback
    result = run_cli("prepare", str(reads_fasta), "-o", str(tmp_path / "p2"))
    assert result.code == 0 and CLI_STATE["verbose"] == 0
    result = run_cli("-v", "split", str(reads_fasta), "-o", str(tmp_path / "parts"), "--parts", "2")
    assert result.code == 0 and " DEBUG " in result.stderr and CLI_STATE["verbose"] == 1


def test_threads_short_option_on_every_command_that_has_threads():
    for command in ("predict", "embed", "demo", "bench"):
        result = run_cli(command, "--help")
        assert result.code == 0
        assert "-t, --threads" in result.stdout, command


def test_embed_help_names_no_outdir_it_does_not_have():
    embed = run_cli("embed", "--help").stdout
    assert "OUTDIR" not in embed
    assert "--engines ENGINE_DIR" in embed  # what an engine backend needs instead
    assert "OUTDIR/engines" in run_cli("predict", "--help").stdout


def test_converted_classifier_follows_the_umask_like_every_other_file(tiny_set, tmp_path):
    for umask in (0o022, 0o002):
        previous = os.umask(umask)
        try:
            out = tmp_path / f"c{umask:o}.safetensors"
            result = run_cli("convert-classifier", str(tiny_set.classifier), str(out))
            other = tmp_path / f"other{umask:o}"
            other.write_text("x")
        finally:
            os.umask(previous)
        assert result.code == 0, result.stderr
        assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask == stat.S_IMODE(other.stat().st_mode)
        assert not list(tmp_path.glob(".*partial"))


def test_a_log_file_where_the_command_writes_is_refused_before_it_is_opened(tiny_set, reads_fasta, tmp_path):
    """A log at a result name was opened first, then taken for a result no run accounts for (or, with
    --force, replaced under the open log); inside OUTDIR under another name it is fine, reruns too."""
    out, parts = tmp_path / "out", tmp_path / "parts"
    predict = ("predict", str(reads_fasta), "-o", str(out), *_models(tiny_set))
    cases = [
        (*predict, "--log-file", str(out / "run.json")),
        (*predict, "--log-file", str(out / ".work")),
        (*predict, "--log-file", str(out / ".frames.tsv.12-34-abcd.partial")),  # a temporary name of it
        ("prepare", str(reads_fasta), "-o", str(out), "--log-file", str(out / "identified_protein.faa")),
        ("prepare", str(reads_fasta), "-o", str(out), "--log-file", str(out / ".work.lock")),  # its lock
        ("embed", str(reads_fasta), "--model", "dnabert-s", "--weights", str(tiny_set.dnabert),
         "-o", str(out / "e.h5"), "--log-file", str(out / "e.h5")),
        ("embed", str(reads_fasta), "--model", "dnabert-s", "--weights", str(tiny_set.dnabert),
         "-o", str(out / "e.h5"), "--log-file", str(out / ".e.h5.run.lock")),  # its lock, beside it
        ("workflow", "-o", str(parts), "--log-file", str(parts / ".work.lock")),
        ("convert-classifier", str(tiny_set.classifier), str(out / "c.safetensors"),
         "--log-file", str(out / "c.safetensors")),
        ("split", str(reads_fasta), "--parts", "2", "-o", str(parts), "--log-file", str(parts / "split.log")),
    ]  # fmt: skip
    for args in cases:
        log = args[-1]
        result = run_cli(*args, "--force") if args[0] not in ("split", "workflow") else run_cli(*args)
        assert result.code == 2 and result.stderr.strip().splitlines() == [
            f"error: --log-file {log} is where {args[0]} writes its output; put the log elsewhere (or under "
            "another name)"
        ], (args, result.stderr)
        assert not os.path.lexists(log), args
    result = run_cli("--log-file", str(out / "frames.tsv"), *predict)
    assert result.code == 2 and "--log-file" in result.stderr  # the group's --log-file is the same log
    for _ in range(2):  # beside the results in OUTDIR: a finished run, then "nothing to do"
        log = out / "run.log"
        result = run_cli(*predict, "--log-file", str(log))
        assert result.code == 0, result.stderr
    assert "nothing to do" in result.stderr and "PASSED" in (out / "run.log").read_text()
    result = run_cli(*predict, "--log-file", str(out / ".predict.log"))  # hidden, but not a name it writes
    assert result.code == 0 and (out / ".predict.log").is_file(), result.stderr

    # What the command reads, and files with other names: the log is appended to, so it would change them
    run_json = (out / "run.json").read_bytes()
    (tmp_path / "hard.log").hardlink_to(out / "run.json")
    reads_before = reads_fasta.read_bytes()
    for log, what in (
        (reads_fasta, f"{reads_fasta}, which predict reads"),
        (tiny_set.dnabert / "config.json", f"inside {tiny_set.dnabert}, which predict reads"),
        (tmp_path / "hard.log", "a file with other names (hard links)"),
    ):
        result = run_cli(*predict, "--log-file", str(log))
        assert result.code == 2 and f"--log-file {log} is {what}" in result.stderr, result.stderr
    assert (out / "run.json").read_bytes() == run_json and reads_fasta.read_bytes() == reads_before
    # What it reads without an option naming it (a model in a cache, a part's split.json, the demo's
    # reads): no existing file but a log of this tool's is appended to
    (tmp_path / "split.json").write_text('{"parts": []}\n')
    (tmp_path / "empty.log").touch()
    foreign = tmp_path / "split.json"
    before = foreign.read_bytes()
    result = run_cli(*predict, "--log-file", str(foreign))
    assert result.code == 2 and result.stderr.strip().splitlines() == [
        f"error: --log-file {foreign} is a file that is not a virnucpro-trt log, which the log would be "
        "appended to; put the log elsewhere (or under another name)"
    ], result.stderr
    assert foreign.read_bytes() == before
    for ours in (out / "run.log", tmp_path / "empty.log"):  # a log of ours (a rerun's), an empty file
        result = run_cli(*predict, "--log-file", str(ours))
        assert result.code == 0 and "nothing to do" in ours.read_text(), result.stderr
    record = out.parent / "e" / ".virnucpro-trt-outputs.json"  # beside a file output: its record
    result = run_cli("embed", str(reads_fasta), "--model", "dnabert-s", "--weights", str(tiny_set.dnabert),
                     "-o", str(out.parent / "e" / "x.h5"), "--log-file", str(record))  # fmt: skip
    assert result.code == 2 and "is where embed writes its output" in result.stderr and not record.exists()


def test_a_warning_every_worker_repeats_is_shown_once(tiny_set, reads_fasta, tmp_path):
    """The main process checks the ESM-2 config and each worker loads it again: the warning about its
    left-out fields was on the terminal once per process. Now once; the log file keeps every record."""
    esm = tmp_path / "esm"
    shutil.copytree(tiny_set.esm_hf, esm)
    config = json.loads((esm / "config.json").read_text())
    assert config.pop("token_dropout") is True
    (esm / "config.json").write_text(json.dumps(config))
    models = [*_models(tiny_set)]
    models[models.index("--esm") + 1] = str(esm)
    log = tmp_path / "run.log"
    result = run_cli(
        "--log-file", str(log), "predict", str(reads_fasta), "-o", str(tmp_path / "out"), *models,
        "--workers", "2", "--shard-records", "2", "--threads", "2",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    said = "config.json states no token_dropout"
    assert result.stderr.count(said) == 1, result.stderr
    in_log = [line for line in log.read_text().splitlines() if said in line]
    assert len(in_log) == 3 and sum("[worker " in line for line in in_log) == 2, in_log  # main + two workers


def test_the_terminal_shows_a_warnings_text_once_whoever_says_it():
    """The filter itself: a worker's relayed record is judged by its text without the worker's label;
    other texts, and records below or above WARNING, always pass."""
    shown = _WarnOnce()

    def record(level: int, message: str, worker_text: str | None = None, *args: str) -> logging.LogRecord:
        made = logging.LogRecord("virnucpro_trt.x", level, __file__, 1, message, args or None, None)
        if worker_text is not None:
            setattr(made, WORKER_TEXT, worker_text)
        return made

    assert shown.filter(record(logging.WARNING, "a model says %s", None, "so"))
    assert not shown.filter(record(logging.WARNING, "[gpu1] a model says so", "a model says so"))
    assert shown.filter(record(logging.WARNING, "[gpu1] another thing", "another thing"))
    assert not shown.filter(record(logging.WARNING, "another thing"))
    assert shown.filter(record(logging.INFO, "loaded")) and shown.filter(record(logging.INFO, "loaded"))
    assert shown.filter(record(logging.ERROR, "failed")) and shown.filter(record(logging.ERROR, "failed"))


def test_demo_with_models_of_ones_own_says_the_results_are_labelled_demo(tiny_set, reads_fasta, tmp_path):
    """``workflow --demo`` writes ``demo: true``; running that workflow on one's own models gave results
    labelled as the random-weight demo's with no word why. predict now says so (and still labels them:
    the label errs on the safe side)."""
    result = run_cli("predict", str(reads_fasta), "-o", str(tmp_path / "o"), *_models(tiny_set), "--demo")
    assert result.code == 0, result.stderr
    assert "--demo with models of your own" in result.stderr
    assert (tmp_path / "o" / "DEMO_RANDOM_WEIGHTS.txt").is_file()


def test_written_model_weights_follow_the_umask_like_every_other_file(tmp_path):
    """safetensors' ``save_file`` creates its file 0600: the demo cache's (and ``random-weights``')
    ``model.safetensors`` was private where the config and tokenizer beside it followed the umask."""
    from virnucpro_trt.files.atomic import umask_file_mode
    from virnucpro_trt.models.random_checkpoints import write_dnabert_checkpoint

    for umask in (0o022, 0o002):
        previous = os.umask(umask)
        try:
            assert umask_file_mode() == 0o666 & ~umask
            folder = write_dnabert_checkpoint(tmp_path / f"d{umask:o}", weights_format="safetensors")
        finally:
            os.umask(previous)
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}
        assert modes["model.safetensors"] == modes["config.json"] == 0o666 & ~umask, modes
