"""The classification path a configuration is timed on: prepare -> tokenize -> DNABERT-S -> ESM-2 -> MLP.

The whole path, not the encoders alone, because that is what a user waits for and what the upstream
baseline did; the per-stage split is kept so a slow CPU stage shows up instead of hiding in the total.
It is ``predict``'s own path (:mod:`virnucpro_trt.runtime.frame_path`), run over all kept frames of the
input at once (one pass over the records), so batching sees the whole workload the way a worker sees
one large shard; each stage boundary is synchronised with the device (:class:`~.timing.StageClock`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from virnucpro_trt.bench.timing import StageClock
from virnucpro_trt.models.classifier import labels_from_probabilities
from virnucpro_trt.runtime.frame_path import STAGES, FrameModels, prepare_frames, score_frames
from virnucpro_trt.sequences.reader import SeqRecord

__all__ = ["STAGES", "PathResult", "run_path"]


@dataclass
class PathResult:
    """What one pass produced, in upstream frame order, and how long each stage took."""

    frame_ids: list[str]
    dnabert: np.ndarray  # float32 [N, 768]
    esm: np.ndarray  # float32 [N, 2560]
    probabilities: np.ndarray  # float32 [N, 2]: P(others), P(virus)
    reads: int
    dnabert_tokens: int
    esm_tokens: int
    stages_s: dict[str, float]
    padding: dict[str, dict[str, Any]] = field(default_factory=dict)  # "dnabert"/"esm": BatchStats json

    @property
    def frames(self) -> int:
        return len(self.frame_ids)

    @property
    def tokens(self) -> int:
        return self.dnabert_tokens + self.esm_tokens

    @property
    def labels(self) -> np.ndarray:
        return labels_from_probabilities(self.probabilities)


def run_path(models: FrameModels, records: list[SeqRecord], chunk_length: int) -> PathResult:
    """One pass of the whole path over ``records``."""
    timer = StageClock(models.device)
    prepared = prepare_frames(models, records, chunk_length, timer.stage, block_records=len(records))
    scored = score_frames(models, prepared, timer.stage)
    return PathResult(
        prepared.frame_ids,
        scored.dnabert,
        scored.esm,
        scored.probabilities,
        len(records),
        prepared.dnabert_tokens,
        prepared.esm_tokens,
        timer.seconds,
        {encoder: stats.to_json() for encoder, stats in scored.padding.items()},
    )
