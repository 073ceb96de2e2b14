"""``virnucpro-host`` on CUDA engines: the Python runtime's batches and embeddings, and a batch that runs
out of device memory run in halves (the CUDA build's own error path, ``VIRNUCPRO_WITH_CUDA``).

GPU tests: run on the H200 host. The out-of-memory case uses the host's test fault
(``VIRNUCPRO_HOST_TEST_OOM_ROWS``), which raises where a real one would; a real device OOM is not
provoked here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.host_runtime.test_cpp_batching import _halved, _python_batches, _run, _tokens
from tests.host_runtime.tiny_engines import build_tiny_engines
from virnucpro_trt.engines.engine_set import EngineSet, open_engine_set
from virnucpro_trt.runtime.embedding import embed_sequences

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the H200 host)"),
]
CUDA = torch.device("cuda", 0)


@pytest.fixture(scope="module")
def cuda_engines(tiny_set, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny inductor fp32 engines built for CUDA."""
    return build_tiny_engines(tiny_set, tmp_path_factory.mktemp("host_cuda_engines"), "cuda")


@pytest.fixture(scope="module")
def cuda_set(cuda_engines: Path) -> EngineSet:
    return open_engine_set(cuda_engines, CUDA, {"dnabert-s": None, "esm2": None, "classifier": None})


def test_the_host_on_cuda_halves_a_batch_that_runs_out_of_memory(
    host_tool: Path, cuda_engines: Path, cuda_set: EngineSet, tmp_path: Path
) -> None:
    dna_lengths, protein_lengths = [300, 120, 250, 31, 500, 120, 480, 31, 250, 90], [98, 40, 166, 10, 49] * 2
    tokens = _tokens(cuda_set, dna_lengths, protein_lengths, seed=4)
    budget = 4096
    options = ("--device", "cuda", "--max-batch-tokens", str(budget), "--print-batches")
    _, unsplit, _ = _run(host_tool, cuda_engines, cuda_set, tokens, tmp_path, *options)
    fault = {"VIRNUCPRO_HOST_TEST_OOM_ROWS": "3"}
    batches, got, timing = _run(host_tool, cuda_engines, cuda_set, tokens, tmp_path, *options, env=fault)
    want = _python_batches(cuda_set, tokens, budget)
    for kind, encoder in (("dnabert-s", cuda_set.dnabert), ("esm2", cuda_set.esm)):
        assert batches[kind] == [half for b in want[kind] for half in _halved(b, 3)]
        python = embed_sequences(encoder.backend, tokens[kind], budget)
        np.testing.assert_allclose(unsplit[kind], python, atol=1e-4, rtol=0)  # the Python runtime's
        np.testing.assert_allclose(got[kind], unsplit[kind], atol=1e-4, rtol=0)  # halves change nothing
    assert timing["device"].startswith("cuda")
    assert timing["stderr"].count("ran out of memory") >= 4 and "retrying as" in timing["stderr"]
