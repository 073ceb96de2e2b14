"""A batch that runs out of memory is split in halves and retried, down to one item."""

from __future__ import annotations

import logging

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
