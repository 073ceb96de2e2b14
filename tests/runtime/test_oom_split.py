"""A batch that runs out of memory is split in halves and retried, down to one item."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from virnucpro_trt.runtime.embedding import OUT_OF_MEMORY_ERRORS, embed_sequences


class FakeBackend:
    """Pools by summing token ids; 'runs out of memory' on batches larger than ``limit`` items."""

    name = "fake"
    dim = 3
    pad_id = 0

    def __init__(self, limit: int, error: type[BaseException] = torch.OutOfMemoryError):
        self.limit = limit
        self.error = error
        self.batch_sizes: list[int] = []

    def embed_padded(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        if len(input_ids) > self.limit:
            raise self.error("CUDA out of memory (fake)")
        self.batch_sizes.append(len(input_ids))
        total = (input_ids * attention_mask).sum(axis=1).astype(np.float32)
        return np.stack([total, attention_mask.sum(axis=1).astype(np.float32), total * 0 + 1], axis=1)


def _tokens(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.integers(1, 30, size=int(rng.integers(3, 12))) for _ in range(n)]


def test_both_names_of_the_error_are_caught():
    assert torch.cuda.OutOfMemoryError in OUT_OF_MEMORY_ERRORS
    assert torch.OutOfMemoryError in OUT_OF_MEMORY_ERRORS


@pytest.mark.parametrize("error", [torch.OutOfMemoryError, torch.cuda.OutOfMemoryError])
def test_oom_batches_are_split_until_they_fit(caplog, error):
    tokens = _tokens(40)
    reference = embed_sequences(FakeBackend(limit=10**6), tokens, max_batch_tokens=1000)
    backend = FakeBackend(limit=3, error=error)
    progress: list[int] = []
    with caplog.at_level(logging.WARNING, logger="virnucpro_trt.runtime.embedding"):
        out = embed_sequences(backend, tokens, max_batch_tokens=1000, progress=progress.append)
    np.testing.assert_array_equal(out, reference)
    assert max(backend.batch_sizes) <= 3 and sum(backend.batch_sizes) == 40
    assert sum(progress) == 40
    splits = [r for r in caplog.records if "ran out of memory" in r.getMessage()]
    assert splits and all("retrying as" in r.getMessage() for r in splits)
    # One log line per split: 40 -> 20+20 -> 10+10 ... each split logged once.
    assert len(splits) == sum(1 for r in caplog.records if r.levelno == logging.WARNING)


def test_a_single_item_that_does_not_fit_fails():
    with pytest.raises(torch.OutOfMemoryError):
        embed_sequences(FakeBackend(limit=0), _tokens(4), max_batch_tokens=1000)


# --- engines: each reports running out of memory its own way --------------------------------------


def _sum_pool(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    total = (input_ids * attention_mask).sum(axis=1).astype(np.float32)
    return np.stack([total, attention_mask.sum(axis=1).astype(np.float32), total * 0 + 1], axis=1)


class FakeOrtSession:
    """Stands in for an onnxruntime session whose arena cannot hold batches over ``limit`` rows."""

    def __init__(self, limit: int, message: str):
        self.limit = limit
        self.message = message
        self.batch_sizes: list[int] = []

    def get_providers(self) -> list[str]:
        return ["CPUExecutionProvider"]

    def get_modelmeta(self) -> SimpleNamespace:  # what an esm2 fp32 export records (onnx_export)
        meta = {"virnucpro_trt.kind": "esm2", "virnucpro_trt.precision": "fp32"}
        return SimpleNamespace(custom_metadata_map=meta)

    def get_outputs(self) -> list[SimpleNamespace]:
        return [SimpleNamespace(shape=["batch", 3])]

    def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        ids, mask = feeds.values()
        if len(ids) > self.limit:
            from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException

            raise RuntimeException(self.message)
        self.batch_sizes.append(len(ids))
        return [_sum_pool(ids, mask)]


def _assert_split_gives_the_same_embeddings(runner, caplog) -> None:
    """40 items through ``runner``: equal to an engine with room for all, with a split logged."""
    tokens = _tokens(40)
    reference = embed_sequences(FakeBackend(limit=10**6), tokens, max_batch_tokens=1000)
    with caplog.at_level(logging.WARNING, logger="virnucpro_trt.runtime.embedding"):
        out = embed_sequences(runner, tokens, max_batch_tokens=1000)
    np.testing.assert_array_equal(out, reference)
    assert any(f"{runner.name} ran out of memory" in r.getMessage() for r in caplog.records)


ORT_ARENA = (
    "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running MatMul node. "
    "Name:'/layers.0/attention/MatMul' Status Message: /onnxruntime_src/onnxruntime/core/framework/"
    "bfc_arena.cc:376 void* onnxruntime::BFCArena::AllocateRawInternal(size_t, bool, onnxruntime::Stream*, "
    "bool, onnxruntime::WaitNotificationFn) Failed to allocate memory for requested buffer of size 8589934592"
)


def _ort_runner(session: FakeOrtSession):
    from virnucpro_trt.engines.onnxruntime_backend import OrtRunner
    from virnucpro_trt.engines.spec import LoadRequest, ShapeRange

    shapes = ShapeRange(1, 8, 64, 1, 8, 64)
    return OrtRunner(session, LoadRequest(Path("e.onnx"), "esm2", torch.device("cpu"), "fp32", 3, 0, shapes))


@pytest.mark.parametrize("message", [ORT_ARENA, "CUDA failure 2: out of memory ; GPU=0 ; hostname=h200"])
def test_onnxruntime_allocation_failures_are_split(caplog, monkeypatch, message):
    from virnucpro_trt.runtime import out_of_memory

    def counter(device):
        raise AssertionError("ONNX Runtime does not allocate through torch: its counter is not read")

    monkeypatch.setattr(out_of_memory, "oom_count", counter)
    session = FakeOrtSession(limit=4, message=message)
    _assert_split_gives_the_same_embeddings(_ort_runner(session), caplog)
    assert max(session.batch_sizes) <= 4 and sum(session.batch_sizes) == 40


def test_other_engine_errors_are_not_mistaken_for_memory():
    message = "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions for input: input_ids"
    session = FakeOrtSession(limit=0, message=message)
    from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException

    with pytest.raises(RuntimeException, match="INVALID_ARGUMENT"):
        embed_sequences(_ort_runner(session), _tokens(8), max_batch_tokens=1000)
    assert session.batch_sizes == []


class FakeAotiPackage:
    """An AOTInductor package: on a batch over ``limit`` rows the caching allocator fails (its
    ``num_ooms`` counter goes up) and the wrapper raises a RuntimeError that does not say why."""

    def __init__(self, limit: int, allocator: dict[str, int]):
        self.limit = limit
        self.allocator = allocator
        self.batch_sizes: list[int] = []

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if len(ids) > self.limit:
            self.allocator["num_ooms"] += 1
            raise RuntimeError(
                "run_func_( container_handle_, input_handles.data(), input_handles.size(), "
                "output_handles.data(), output_handles.size(), cuda_stream_handle, proxy_executor_handle_) "
                "API call failed at /pytorch/torch/csrc/inductor/aoti_runner/model_container_runner.cpp"
            )
        self.batch_sizes.append(len(ids))
        return torch.from_numpy(_sum_pool(ids.numpy(), mask.numpy()))


def _inductor_runner(package: FakeAotiPackage):
    from virnucpro_trt.engines.inductor_runner import InductorRunner, LoadedPackage
    from virnucpro_trt.engines.inductor_shapes import GraphShapes
    from virnucpro_trt.engines.spec import ShapeRange

    loaded = LoadedPackage(package, {}, {})
    return InductorRunner(
        loaded, GraphShapes(1, 64, 1, 64), torch.device("cpu"), 3, 0, ShapeRange(1, 8, 64, 1, 8, 64)
    )


def test_inductor_failures_counted_by_the_allocator_are_split(monkeypatch, caplog):
    from virnucpro_trt.runtime import out_of_memory

    allocator = {"num_ooms": 0}
    monkeypatch.setattr(out_of_memory, "oom_count", lambda device: allocator["num_ooms"])
    package = FakeAotiPackage(limit=5, allocator=allocator)
    _assert_split_gives_the_same_embeddings(_inductor_runner(package), caplog)
    assert max(package.batch_sizes) <= 5 and allocator["num_ooms"] > 0


def test_inductor_failures_without_an_allocator_failure_pass_through(monkeypatch):
    from virnucpro_trt.runtime import out_of_memory

    monkeypatch.setattr(out_of_memory, "oom_count", lambda device: 0)  # the counter never moves
    package = FakeAotiPackage(limit=0, allocator={"num_ooms": 0})
    with pytest.raises(RuntimeError, match="API call failed") as caught:
        embed_sequences(_inductor_runner(package), _tokens(8), max_batch_tokens=1000)
    assert not isinstance(caught.value, torch.OutOfMemoryError)
