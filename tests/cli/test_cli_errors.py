"""CLI manners: exit codes, one-line errors, no result file after a failure, version and env."""

from __future__ import annotations

import json
import lzma
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.helpers import run_cli
from virnucpro_trt import __version__

GOOD = ">a\nACGTACGTAAACCCGGGTTT\n>b\nTTTTGGGGCCCCAAAA\n"

BAD_INPUTS = {
    "protein_fasta": (b">p1\nMKVLAAGIVGLLLAEEPQRS\n", "record 1"),
    "digits": (b">ok\nACGT\n>d1\nACGT1234ACGT\n", "record 2"),
    "binary": (bytes(range(256)) * 4, "binary"),
    "duplicate_ids": (b">x first\nACGT\n>y\nAC\n>x again\nGGTT\n", "duplicate"),
    "not_fasta": (b"this is just a text file\nwith two lines\n", "FASTA"),
    "zstd": (b"\x28\xb5\x2f\xfd" + b"\0" * 32, "zstd"),
    "empty_id": (b">\nACGT\n", "id"),
}


def _assert_one_line_error(result, needle: str) -> None:
    assert result.code == 2, (result.code, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert needle.lower() in errors[0].lower(), errors[0]


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_predict_exits_2_with_one_line_and_no_results(case, tiny_set, tmp_path):
    data, needle = BAD_INPUTS[case]
    path = tmp_path / "input.fa"
    path.write_bytes(data)
    out = tmp_path / "out"
    result = run_cli(
        "predict", str(path), "-o", str(out), "--dnabert", str(tiny_set.dnabert), "--esm",
        str(tiny_set.esm_hf), "--classifier", str(tiny_set.classifier), "--device", "cpu",
    )  # fmt: skip
    _assert_one_line_error(result, needle)
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())


@pytest.mark.parametrize("case", ["protein_fasta", "duplicate_ids", "binary"])
def test_bad_input_prepare_and_compressed(case, tmp_path):
    data, needle = BAD_INPUTS[case]
    path = tmp_path / "input.xz"
    path.write_bytes(lzma.compress(data))
    result = run_cli("prepare", str(path), "-o", str(tmp_path / "out"))
    _assert_one_line_error(result, needle)
    assert not (tmp_path / "out" / "identified_nucleotide.fa").exists()


def test_missing_input_and_missing_model_say_where(tiny_set, tmp_path):
    result = run_cli("prepare", str(tmp_path / "nope.fa"), "-o", str(tmp_path / "o"))
    _assert_one_line_error(result, "no such file")
    reads = tmp_path / "r.fa"
    reads.write_text(GOOD)
    result = run_cli(
        "predict", str(reads), "-o", str(tmp_path / "o2"), "--dnabert", "zhihan1996/DNABERT-S",
        "--esm", str(tiny_set.esm_hf), "--classifier", str(tiny_set.classifier),
    )  # fmt: skip
    _assert_one_line_error(result, "looked in")
    assert "download zhihan1996/DNABERT-S" in result.stderr
    result = run_cli(
        "predict", str(reads), "-o", str(tmp_path / "o3"), "--dnabert", str(tiny_set.dnabert),
        "--esm", "esm2_t36_3B_UR50D", "--classifier", str(tiny_set.classifier),
    )  # fmt: skip
    _assert_one_line_error(result, "hub")


def test_classifier_width_mismatch_is_a_user_error(tiny_set, tmp_path):
    reads = tmp_path / "r.fa"
    reads.write_text(GOOD)
    result = run_cli(
        "predict", str(reads), "-o", str(tmp_path / "o"), "--dnabert", str(tiny_set.dnabert),
        "--esm", str(tiny_set.esm_hf), "--classifier", str(tiny_set.classifier_wrong_width),
        "--device", "cpu",
    )  # fmt: skip
    _assert_one_line_error(result, "input features")
    assert not (tmp_path / "o" / "prediction_results.txt").exists()


def test_usage_errors_exit_2(tmp_path):
    assert run_cli("predict", "-o", str(tmp_path)).code == 2
    assert run_cli("prepare", "x.fa", "-o", str(tmp_path), "--chunk-length", "400").code == 2
    result = run_cli(
        "embed",
        "x.fa",
        "--model",
        "dnabert-s",
        "--weights",
        "w",
        "-o",
        str(tmp_path / "e.h5"),
        "--device",
        "cuda:7",
    )
    assert result.code == 2


def test_cuda_request_without_gpu_is_one_line(tiny_set, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the error path cannot be exercised")
    reads = tmp_path / "r.fa"
    reads.write_text(GOOD)
    result = run_cli(
        "predict", str(reads), "-o", str(tmp_path / "o"), "--dnabert", str(tiny_set.dnabert),
        "--esm", str(tiny_set.esm_hf), "--classifier", str(tiny_set.classifier), "--device", "cuda",
    )  # fmt: skip
    _assert_one_line_error(result, "no CUDA device")


def test_version_and_env(tmp_path):
    result = run_cli("--version")
    assert result.code == 0 and __version__ in result.stdout
    result = run_cli("env", "--json")
    assert result.code == 0
    report = json.loads(result.stdout)
    assert report["virnucpro_trt"] == __version__
    assert "torch" in report["libraries"] and "importable" in report["tensorrt"]
    assert isinstance(report["onnxruntime_providers"], list | str)
    assert run_cli("env").code == 0


def test_console_script_help_and_exit_code():
    proc = subprocess.run([sys.executable, "-m", "virnucpro_trt", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "predict" in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "virnucpro_trt", "prepare", "/nonexistent.fa", "-o", "/tmp/x"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error:")
    assert "Traceback" not in proc.stderr


def test_log_file_gets_debug_details(tmp_path):
    log = tmp_path / "run.log"
    reads = tmp_path / "r.fa"
    reads.write_text(GOOD)
    result = run_cli("prepare", str(reads), "-o", str(tmp_path / "o"), "--log-file", str(log))
    assert result.code == 0
    assert "virnucpro-trt" in log.read_text()
    assert Path(tmp_path / "o" / "identified_protein.faa").exists()
