"""Session-wide fixtures: one tiny random model set in the real formats, and example reads; and how the
suite splits over pytest-xdist's workers (`make test` runs two)."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from virnucpro_trt.models.random_checkpoints import (
    TINY_DNABERT_CONFIG,
    TINY_ESM2_CONFIG,
    write_dnabert_checkpoint,
    write_esm_fairesm_checkpoint,
    write_esm_hf_checkpoint,
)
from virnucpro_trt.models.random_classifier import write_upstream_classifier
from virnucpro_trt.sequences.synthetic import generate_reads

HOST_GROUP = "cxx-host"  # the C++ host's tests: one worker builds the host (~100 s) for all of them


def _own_inductor_cache() -> None:
    """Each xdist worker compiles into an Inductor cache of its own (children inherit it). A build whose
    library holds the weights removes its cache folder (engines/inductor_cache.py), which would pull it
    from under the other worker's build of the same graph."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:
        base = os.environ.get("TORCHINDUCTOR_CACHE_DIR") or tempfile.gettempdir()
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(base, f"torchinductor_{worker}")


_own_inductor_cache()  # at import: before any test reads Inductor's settings


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """``--dist loadgroup`` groups: a test file runs on one worker (its module fixtures, such as built
    engines, are made once), and the C++ host's files all on one (its session build, once)."""
    for item in items:
        path = Path(str(item.path))
        group = HOST_GROUP if path.parent.name == "host_runtime" else str(path)
        item.add_marker(pytest.mark.xdist_group(group))


@dataclass(frozen=True)
class TinySet:
    """Paths of a tiny model set: DNABERT-S folder, ESM-2 HF folder and fair-esm file, classifiers."""

    dnabert: Path
    esm_hf: Path
    esm_pt: Path
    classifier: Path
    classifier_300: Path
    classifier_wrong_width: Path


@pytest.fixture(scope="session")
def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> TinySet:
    root = tmp_path_factory.mktemp("tiny_models")
    width = TINY_DNABERT_CONFIG.hidden_size + TINY_ESM2_CONFIG.embed_dim
    return TinySet(
        dnabert=write_dnabert_checkpoint(root / "dnabert-s", seed=21),
        esm_hf=write_esm_hf_checkpoint(root / "esm2_hf", seed=22),
        esm_pt=write_esm_fairesm_checkpoint(root / "esm2_tiny.pt", seed=22),
        classifier=write_upstream_classifier(root / "500_model.pth", width, seed=23),
        classifier_300=write_upstream_classifier(root / "300_model.pth", width, seed=24),
        classifier_wrong_width=write_upstream_classifier(root / "wrong_model.pth", width + 8, seed=25),
    )


def _write_fasta(path: Path, reads: list[tuple[str, str]], wrap: int = 70) -> Path:
    with open(path, "w", newline="\n") as handle:
        for rid, seq in reads:
            handle.write(f">{rid} some description\n")
            for i in range(0, len(seq), wrap):
                handle.write(seq[i : i + wrap] + "\n")
    return path


@pytest.fixture(scope="session")
def reads_fasta(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Mixed reads: coding and non-coding 500 bp, long reads (chunked), lower case, Ns, one empty record."""
    reads = generate_reads(
        24,
        500,
        seed=5,
        coding_fraction=0.6,
        long_reads=4,
        long_length=1234,
        lowercase_fraction=0.1,
        n_rate=0.003,
        prefix="r",
    )
    reads += generate_reads(6, 333, seed=6, coding_fraction=0.8, prefix="short")
    reads.append(("empty_one", ""))
    reads.append(("all_n", "N" * 420))
    return _write_fasta(tmp_path_factory.mktemp("reads") / "reads.fa", reads)


@pytest.fixture
def gelu_epilogue_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Widen the build's GELU-epilogue rule (CUDA bf16/fp16 ESM-2 engines) to the CPU and fp32, so that a
    CPU engine calls ``torch._addmm_activation`` as those engines do (the CPU's is addmm then the exact
    GELU: results unchanged)."""
    from virnucpro_trt.engines import inductor_backend

    monkeypatch.setattr(inductor_backend, "GELU_EPILOGUE_DEVICES", ("cuda", "cpu"))
    monkeypatch.setattr(inductor_backend, "GELU_EPILOGUE_PRECISIONS", ("bf16", "fp16", "fp32"))
