"""One loaded encoder, whatever runs it: eager PyTorch, ``torch.compile`` or an engine from a directory.

Every caller that embeds (``predict``'s workers, ``embed``, ``bench``, the engine loader) holds an
encoder as this one type, so an encoder opened one way can be run by any of them. The token budget is a
field, not a constant: ``bench``'s reference replaces it with upstream's batching (one sequence per
DNABERT-S forward, 2048 tokens per ESM-2 batch) through :func:`dataclasses.replace`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from virnucpro_trt.models.origin import EncoderOrigin
from virnucpro_trt.runtime.embedding import BatchStats, EmbeddingBackend, embed_sequences
from virnucpro_trt.settings import PaddingCap


@dataclass
class LoadedEncoder:
    """An encoder ready to embed: its backend, tokenizer, width, batch token budget and provenance.

    ``kind`` is ``dnabert-s`` or ``esm2``; ``origin`` is where it came from, typed
    (:class:`~virnucpro_trt.models.origin.EncoderOrigin`: what run.json records — path, layout, weights
    hash — and for engines the build's parity); ``padding_cap`` may close a batch before its budget is
    full (:class:`~virnucpro_trt.settings.PaddingCap`).
    """

    kind: str
    backend: EmbeddingBackend
    tokenizer: Any  # DnaTokenizer | ProteinTokenizer
    dim: int
    max_batch_tokens: int
    origin: EncoderOrigin
    padding_cap: PaddingCap | None = None

    def embed(
        self,
        tokens: Sequence[np.ndarray],
        labels: Sequence[str] | None = None,
        progress: Callable[[int], None] | None = None,
        stats: BatchStats | None = None,
    ) -> np.ndarray:
        """Pooled float32 embeddings [N, dim] of ``tokens`` in input order, batched by the token budget."""
        return embed_sequences(
            self.backend, tokens, self.max_batch_tokens, labels, progress, stats, self.padding_cap
        )
