"""Running the CLI in-process with its real exit code, stdout and stderr."""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from virnucpro_trt.cli.main import main


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


def run_cli(*args: str) -> CliResult:
    """``virnucpro-trt ARGS`` in this process (much faster than a subprocess per call)."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exc:
            code = int(exc.code or 0)
    # The CLI's handlers point at the redirected stream: drop them so later calls start clean.
    for handler in list(logging.getLogger().handlers):
        logging.getLogger().removeHandler(handler)
    return CliResult(code, out.getvalue(), err.getvalue())


def predict_tiny(tiny_set: Any, reads: Path | str, out: Path, *extra: str) -> CliResult:
    """``predict`` with the tiny model set on the CPU, one thread."""
    return run_cli(
        "predict", str(reads), "-o", str(out), "--dnabert", str(tiny_set.dnabert),
        "--esm", str(tiny_set.esm_hf), "--classifier", str(tiny_set.classifier), "--device", "cpu",
        "--threads", "1", *extra,
    )  # fmt: skip


def build_tiny(tiny_set: Any, out: Path, *extra: str) -> CliResult:
    """``build`` of the tiny model set into ``out``: ONNX Runtime on the CPU, small shapes (seconds)."""
    return run_cli(
        "build", "--dnabert", str(tiny_set.dnabert), "--esm", str(tiny_set.esm_hf),
        "--classifier", str(tiny_set.classifier), "--backend", "onnxruntime", "--device", "cpu",
        "--max-batch-tokens", "512", "--max-length", "256", "-o", str(out), *extra,
    )  # fmt: skip


def error_lines(result: CliResult) -> list[str]:
    """The ``error:`` lines of a run's stderr."""
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]
