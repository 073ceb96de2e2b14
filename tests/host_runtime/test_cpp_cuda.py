"""``virnucpro-host`` on CUDA engines: the Python runtime's batches and embeddings, and a batch that runs
out of device memory run in halves (the CUDA build's own error path, ``VIRNUCPRO_WITH_CUDA``).

GPU tests: run on the H200 host. The out-of-memory case uses the host's test fault
(``VIRNUCPRO_HOST_TEST_OOM_ROWS``), which raises where a real one would; a real device OOM is not
provoked here.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.cli.helpers import run_cli
from tests.host_runtime.test_cpp_batching import KINDS, _halved, _python_batches, _tokens
from virnucpro_trt.engines.engine_set import EngineSet, open_engine_set
from virnucpro_trt.models.tokenization import pad_batch
from virnucpro_trt.runtime.embedding import embed_sequences

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the H200 host)"),
]
CUDA = torch.device("cuda", 0)


@pytest.fixture(scope="module")
def cuda_engines(tiny_set, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny inductor fp32 engines built for CUDA."""
    out = tmp_path_factory.mktemp("host_cuda_engines")
    result = run_cli(
        "build", "--dnabert", str(tiny_set.dnabert), "--esm", str(tiny_set.esm_hf), "--classifier",
        str(tiny_set.classifier), "--backend", "inductor", "--precision", "fp32", "--device", "cuda",
        "-o", str(out),
    )  # fmt: skip
    assert result.code == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def cuda_set(cuda_engines: Path) -> EngineSet:
    return open_engine_set(cuda_engines, CUDA, {"dnabert-s": None, "esm2": None, "classifier": None})


def _host(host_tool: Path, engines: Path, arrays: list, tmp_path: Path, *options: str, env=None):
    inputs, outputs = tmp_path / "in.pt", tmp_path / "out.pt"
    torch.save(tuple(torch.from_numpy(a) for a in arrays), inputs)
    command = [str(host_tool), str(engines), str(inputs), str(outputs), "--device", "cuda", *options]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})})
    return done, outputs


def test_the_host_on_cuda_halves_a_batch_that_runs_out_of_memory(
    host_tool: Path, cuda_engines: Path, cuda_set: EngineSet, tmp_path: Path
) -> None:
    tokens = _tokens(
        cuda_set, [300, 120, 250, 31, 500, 120, 480, 31, 250, 90], [98, 40, 166, 10, 49] * 2, seed=4
    )
    arrays = [
        *pad_batch(tokens["dnabert-s"], cuda_set.dnabert.backend.pad_id),
        *pad_batch(tokens["esm2"], cuda_set.esm.backend.pad_id),
    ]
    budget = 4096
    plain, out = _host(host_tool, cuda_engines, arrays, tmp_path, "--max-batch-tokens", str(budget))
    assert plain.returncode == 0, plain.stderr
    unsplit = [t.numpy() for t in torch.load(out)][:2]

    done, out = _host(
        host_tool, cuda_engines, arrays, tmp_path, "--max-batch-tokens", str(budget), "--print-batches",
        env={"VIRNUCPRO_HOST_TEST_OOM_ROWS": "3"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    batches: dict[str, list[list[int]]] = {kind: [] for kind in KINDS}
    for line in done.stdout.splitlines():
        if line.startswith("batch "):
            _, kind, *indices = line.split()
            batches[kind].append([int(i) for i in indices])
    want = _python_batches(cuda_set, tokens, budget)
    got = [t.numpy() for t in torch.load(out)][:2]
    for index, (kind, encoder) in enumerate((("dnabert-s", cuda_set.dnabert), ("esm2", cuda_set.esm))):
        assert batches[kind] == [half for b in want[kind] for half in _halved(b, 3)]
        python = embed_sequences(encoder.backend, tokens[kind], budget)
        np.testing.assert_allclose(unsplit[index], python, atol=1e-4, rtol=0)  # the Python runtime's
        np.testing.assert_allclose(got[index], unsplit[index], atol=1e-4, rtol=0)  # halves change nothing
    assert done.stderr.count("ran out of memory") >= 4 and "retrying as" in done.stderr
