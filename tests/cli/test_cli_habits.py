"""The command-line habits users bring from other tools: -v before the command, -t, honest help texts."""

from __future__ import annotations

import json
import os
import stat

from tests.cli.helpers import run_cli
from virnucpro_trt.cli.command_options import CLI_STATE


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
