"""One real ``bench`` run shared by the tests: tiny random weights, CPU, an ONNX Runtime engine built on
the fly and TensorRT (never importable here) reported as unavailable.

Later runs pass the same ``--workdir``, so they reuse its random checkpoints and its engine directory
instead of writing and building them again (the whole folder stays well under two minutes on 2 cores).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.cli.helpers import CliResult, run_cli

# Small but real: ~140 reads keep ~100 frames; the reference is timed on the reads holding 40 of them.
TINY_RUN = (
    "--random-weights",
    "tiny",
    "--device",
    "cpu",
    "--reads",
    "140",
    "--repeats",
    "1",
    "--threads",
    "1",
)


@dataclass(frozen=True)
class BenchRun:
    result: CliResult
    report: dict[str, Any]
    json_path: Path
    workdir: Path


def bench(workdir: Path, *args: str) -> CliResult:
    """``virnucpro-trt bench`` with the tiny settings and the shared work folder."""
    return run_cli("bench", *TINY_RUN, "--workdir", str(workdir), *args)


@pytest.fixture(scope="session")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> BenchRun:
    root = tmp_path_factory.mktemp("bench")
    workdir, json_path = root / "work", root / "bench.json"
    result = bench(
        workdir, "--backends", "torch,onnxruntime,tensorrt", "--precision", "fp32",
        "--reference-frames", "40", "--gate", "0.01", "--json", str(json_path),
    )  # fmt: skip
    assert result.code == 0, result.stderr
    return BenchRun(result, json.loads(json_path.read_text()), json_path, workdir)


# The peer run: torch.compile rows at fp32 (and fp8, unavailable on a CPU), on the 100-1000 bp length mix
# and the outlier-channel weights. Compiling the two tiny encoders is most of its time (~1-2 min cold).
PEER_RUN = (
    "--random-weights",
    "tiny-outliers",
    "--device",
    "cpu",
    "--length-mix",
    "mixed",
    "--reads",
    "40",
    "--repeats",
    "1",
    "--threads",
    "1",
)


@pytest.fixture(scope="session")
def peer_run(tmp_path_factory: pytest.TempPathFactory) -> BenchRun:
    root = tmp_path_factory.mktemp("bench_peer")
    workdir, json_path = root / "work", root / "peer.json"
    result = run_cli(
        "bench", *PEER_RUN, "--workdir", str(workdir), "--backends", "torch,compile", "--precision",
        "fp32,fp8", "--reference-frames", "15", "--gate", "0.01", "--json", str(json_path),
    )  # fmt: skip
    assert result.code == 0, result.stderr
    return BenchRun(result, json.loads(json_path.read_text()), json_path, workdir)
