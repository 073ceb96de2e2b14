"""Embedding backends and the loop that feeds them token-budget batches.

A backend turns one padded batch (``input_ids``/``attention_mask``, int64 [B, T]) into pooled float32
embeddings [B, D]; the pooling rule lives in the model (DNABERT-S: mean over every real token; ESM-2:
mean over residues). :func:`embed_sequences` owns batching, input order, progress and the NaN/Inf check,
so every backend (eager PyTorch here; ONNX Runtime, AOTInductor and TensorRT engines later) shares them.

A batch that runs out of GPU memory is split in halves and each half retried (recursively, down to one
item) instead of failing the shard: the token budget is a good guess, not a guarantee (allocator
fragmentation, another process on the GPU). Engines report running out of memory in their own ways;
:mod:`virnucpro_trt.runtime.out_of_memory` turns each into ``torch.OutOfMemoryError``. The halves keep
the input order of their rows, so the result is the same set of embeddings; only fp32 sums in the last
bits can differ from an unsplit batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from virnucpro_trt.errors import NonFiniteError, ShapeRangeError
from virnucpro_trt.models.tokenization import pad_batch
from virnucpro_trt.runtime.attention_kernel import DEFAULT_ATTENTION, attention_kernel
from virnucpro_trt.runtime.batching import token_budget_batches
from virnucpro_trt.runtime.out_of_memory import OUT_OF_MEMORY_ERRORS
from virnucpro_trt.settings import PaddingCap

log = logging.getLogger(__name__)


class EmbeddingBackend(Protocol):
    """What the embedding loop needs from an engine."""

    name: str
    dim: int
    pad_id: int

    def embed_padded(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Pooled float32 embeddings [B, D] for one padded batch."""
        ...


class TorchBackend:
    """Eager PyTorch: the native model on a device, in a precision.

    On CUDA attention runs on the same kernel as the engines (``attention``, default memory-efficient):
    eager bf16/fp16 would otherwise take cuDNN attention and plan every new batch shape
    (:mod:`virnucpro_trt.runtime.attention_kernel`). fp32 is unaffected (cuDNN attention has no fp32).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        dim: int,
        pad_id: int,
        device: torch.device,
        dtype: torch.dtype,
        attention: str = DEFAULT_ATTENTION,
    ):
        self.name = "torch"
        self.dim = dim
        self.pad_id = pad_id
        self.device = device
        self.dtype = dtype
        self.attention = attention
        self.model = model.to(device=device, dtype=dtype).eval()

    @torch.inference_mode()
    def embed_padded(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        ids = torch.from_numpy(input_ids).to(self.device, non_blocking=True)
        mask = torch.from_numpy(attention_mask).to(self.device, non_blocking=True)
        with attention_kernel(self.attention, self.device):
            pooled = self.model(ids, mask)
        return pooled.float().cpu().numpy()


@dataclass
class BatchStats:
    """What the batches of one encoder computed: real tokens against the padded tokens it paid for.

    ``computed_tokens`` counts every position of every batch as the backend runs it: the batcher pads to
    the longest item, and a backend that rounds shapes further (an AOTInductor engine pads the length to
    its sequence multiple and small batches up to its minimum) reports its own shape through
    ``computed_shape(batch, length)``. A batch split after running out of memory counts as its halves.
    """

    batches: int = 0
    items: int = 0
    tokens: int = 0
    computed_tokens: int = 0

    def add(self, items: int, tokens: int, computed_tokens: int) -> None:
        self.batches += 1
        self.items += items
        self.tokens += tokens
        self.computed_tokens += computed_tokens

    @property
    def padded_tokens(self) -> int:
        return self.computed_tokens - self.tokens

    @property
    def padded_fraction(self) -> float:
        """Padded tokens / computed tokens (0.0 when nothing ran)."""
        return self.padded_tokens / self.computed_tokens if self.computed_tokens else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "items": self.items,
            "tokens": self.tokens,
            "computed_tokens": self.computed_tokens,
            "padded_tokens": self.padded_tokens,
            "padded_fraction": round(self.padded_fraction, 6),
        }


def embed_sequences(
    backend: EmbeddingBackend,
    token_ids: Sequence[np.ndarray],
    max_batch_tokens: int,
    labels: Sequence[str] | None = None,
    progress: Callable[[int], None] | None = None,
    stats: BatchStats | None = None,
    cap: PaddingCap | None = None,
) -> np.ndarray:
    """Embeddings [N, D] float32 in input order; fails the batch on NaN/Inf, naming its first items.

    With ``stats``, every batch that ran is added to it (see :class:`BatchStats`); ``cap`` closes batches
    early where padding would pass it (``--max-padding``, :class:`PaddingCap`).
    """
    out = np.empty((len(token_ids), backend.dim), dtype=np.float32)
    if not token_ids:
        return out
    lengths = np.fromiter((len(t) for t in token_ids), dtype=np.int64, count=len(token_ids))
    # Compiled engines accept a bounded shape range; eager PyTorch has none.
    max_length = getattr(backend, "max_length", None)
    if max_length is not None and lengths.max() > max_length:
        longest = int(np.argmax(lengths))
        name = labels[longest] if labels is not None else f"#{longest}"
        raise ShapeRangeError(
            f"{name} has {int(lengths.max())} tokens but the {backend.name} engine accepts at most "
            f"{max_length}; rebuild the engines with a larger --max-length"
        )
    batches = token_budget_batches(lengths, max_batch_tokens, getattr(backend, "max_batch_size", None), cap)
    for batch in batches:
        _embed_batch(backend, token_ids, batch, labels, out, progress, stats)
    return out


def _embed_batch(
    backend: EmbeddingBackend,
    token_ids: Sequence[np.ndarray],
    batch: np.ndarray,
    labels: Sequence[str] | None,
    out: np.ndarray,
    progress: Callable[[int], None] | None,
    stats: BatchStats | None = None,
) -> None:
    """Embed one batch into ``out``; on out-of-memory, split it in halves and embed each."""
    ids, mask = pad_batch([token_ids[i] for i in batch], backend.pad_id)
    try:
        pooled = backend.embed_padded(ids, mask)
    except OUT_OF_MEMORY_ERRORS:
        if len(batch) == 1:
            raise
        pooled = None  # split below, outside the handler, so the failed attempt's tensors can be freed
    if pooled is None:
        del ids, mask
        _release_cached_memory()
        half = len(batch) // 2
        log.warning(
            "%s ran out of memory on a batch of %d items (longest %d tokens); retrying as %d + %d",
            backend.name,
            len(batch),
            max(len(token_ids[i]) for i in batch),
            half,
            len(batch) - half,
        )
        _embed_batch(backend, token_ids, batch[:half], labels, out, progress, stats)
        _embed_batch(backend, token_ids, batch[half:], labels, out, progress, stats)
        return
    if not np.isfinite(pooled).all():
        bad = batch[~np.isfinite(pooled).all(axis=1)]
        names = [labels[i] if labels is not None else f"#{i}" for i in bad[:3]]
        raise NonFiniteError(
            f"{backend.name} produced NaN/Inf embeddings for {len(bad)} item(s) of a batch "
            f"of {len(batch)} (e.g. {', '.join(names)}): the model's weights hold NaN/Inf, or a reduced "
            "precision overflowed (then try --precision fp32)"
        )
    out[batch] = pooled
    if stats is not None:
        rows, length = ids.shape
        computed = getattr(backend, "computed_shape", None)
        if computed is not None:
            rows, length = computed(rows, length)
        stats.add(len(batch), int(mask.sum()), rows * length)
    if progress is not None:
        progress(len(batch))


def _release_cached_memory() -> None:
    """Give the caching allocator's free blocks back so the halves start from a clean slate."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
