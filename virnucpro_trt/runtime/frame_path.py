"""The one path kept frames take: reads -> frames -> tokens -> DNABERT-S -> ESM-2 -> classifier scores.

``predict``'s workers (:mod:`virnucpro_trt.pipeline.shard_predictor`) and ``bench``
(:mod:`virnucpro_trt.bench.path`) both run it, so what the benchmark times is what a run does: the same
batching, the classifier on the same device (on a GPU it runs there, fp32 with TF32 off; on a CPU on the
CPU). It comes in two halves because a worker overlaps them on two threads: :func:`prepare_frames` (CPU:
chunk, translate, tokenize) and :func:`score_frames` (the device). The token budget of each encoder is a
field of its :class:`~virnucpro_trt.runtime.encoder.LoadedEncoder`, which is how ``bench``'s reference
keeps upstream's batching on this path.

Stage names are :data:`STAGES`; callers time them with their own clock through ``stage(name)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from virnucpro_trt.errors import NonFiniteError
from virnucpro_trt.models.classifier import (
    ClassifierWeights,
    MLPClassifier,
    check_classifier_width,
    classify,
    labels_from_probabilities,
)
from virnucpro_trt.runtime.device import configure_fp32_reference
from virnucpro_trt.runtime.embedding import BatchStats
from virnucpro_trt.runtime.encoder import LoadedEncoder
from virnucpro_trt.sequences.prepare import DEFAULT_BLOCK_RECORDS, PreparedBlock, prepare_blocks
from virnucpro_trt.sequences.reader import SeqRecord

STAGES = ("prepare", "tokenize", "dnabert", "esm", "classify")
Stage = Callable[[str], contextlib.AbstractContextManager[Any]]


def _untimed(_: str) -> contextlib.AbstractContextManager[Any]:
    return contextlib.nullcontext()


@dataclass
class FrameModels:
    """Both encoders and the classifier, on the device the classifier runs on."""

    dnabert: LoadedEncoder
    esm: LoadedEncoder
    classifier: MLPClassifier
    device: torch.device

    @classmethod
    def create(
        cls,
        dnabert: LoadedEncoder,
        esm: LoadedEncoder,
        weights: ClassifierWeights,
        device: torch.device,
        classifier_path: Path | str | None = None,
    ) -> FrameModels:
        """Check the classifier's width against the encoders and put it on ``device``.

        On CUDA the classifier runs on the GPU in fp32 with TF32 off (upstream's arithmetic): on the CPU
        it cost a visible share of a full-size run's shard work, on the GPU next to nothing (measurement
        log, 2026-11-29).
        """
        check_classifier_width(weights, dnabert.dim, esm.dim, classifier_path or "classifier")
        classifier = MLPClassifier.from_weights(weights)
        if device.type == "cuda":
            configure_fp32_reference()
            classifier = classifier.to(device)
        return cls(dnabert, esm, classifier, device)


@dataclass
class PreparedFrames:
    """The CPU half: records chunked and translated, and the kept frames tokenized for both encoders."""

    blocks: list[PreparedBlock]
    frame_ids: list[str]
    dna_tokens: list[np.ndarray]
    protein_tokens: list[np.ndarray]

    @property
    def records(self) -> int:
        return sum(b.n_records for b in self.blocks)

    @property
    def dnabert_tokens(self) -> int:
        return int(sum(len(t) for t in self.dna_tokens))

    @property
    def esm_tokens(self) -> int:
        return int(sum(len(t) for t in self.protein_tokens))


@dataclass
class ScoredFrames:
    """The device half: embeddings and class probabilities of every kept frame, in frame order."""

    dnabert: np.ndarray  # float32 [N, DNABERT width]
    esm: np.ndarray  # float32 [N, ESM-2 width]
    probabilities: np.ndarray  # float32 [N, 2]: P(others), P(virus)
    padding: dict[str, BatchStats] = field(default_factory=dict)  # "dnabert" / "esm"

    @property
    def labels(self) -> np.ndarray:
        return labels_from_probabilities(self.probabilities)


def prepare_frames(
    models: FrameModels,
    records: Iterable[SeqRecord],
    chunk_length: int,
    stage: Stage = _untimed,
    block_records: int = DEFAULT_BLOCK_RECORDS,
    min_length: int = 0,
) -> PreparedFrames:
    """Chunk, translate and tokenize ``records`` (stages ``prepare`` and ``tokenize``); reads shorter
    than ``min_length`` are kept as records without chunks."""
    with stage("prepare"):
        blocks = list(
            prepare_blocks(records, chunk_length, min_length=min_length, block_records=max(block_records, 1))
        )
        frame_ids = [fid for b in blocks for fid in b.frames.frame_id]
        dna = [s for b in blocks for s in b.frames.dna]
        protein = [s for b in blocks for s in b.frames.protein]
    with stage("tokenize"):
        dna_tokens = models.dnabert.tokenizer.encode_batch(dna) if dna else []
        protein_tokens = models.esm.tokenizer.encode_batch(protein) if protein else []
    return PreparedFrames(blocks, frame_ids, dna_tokens, protein_tokens)


def score_frames(
    models: FrameModels,
    prepared: PreparedFrames,
    stage: Stage = _untimed,
    progress: Callable[[int], None] | None = None,
) -> ScoredFrames:
    """Embed every frame with both encoders, then classify (stages ``dnabert``, ``esm``, ``classify``).

    Each encoder sees all of ``prepared``'s frames at once, length-sorted into batches by its budget;
    ``progress`` counts frames as ESM-2 (the slow encoder) finishes them, and is called with 0 after each
    DNABERT-S batch: the inline worker is asked to stop there (``WorkerStopped``), so an interrupt does
    not wait for a whole shard's DNABERT-S stage (a minute and more on a CPU).
    """
    ids = prepared.frame_ids
    padding = {"dnabert": BatchStats(), "esm": BatchStats()}
    with stage("dnabert"):
        between = None if progress is None else lambda _done: progress(0)
        dna = models.dnabert.embed(prepared.dna_tokens, ids, between, stats=padding["dnabert"])
    with stage("esm"):
        esm = models.esm.embed(prepared.protein_tokens, ids, progress, stats=padding["esm"])
    with stage("classify"):
        probabilities = classify(models.classifier, np.concatenate([dna, esm], axis=1))
        check_probabilities(probabilities, ids)
    return ScoredFrames(dna, esm, probabilities, padding)


def check_probabilities(probabilities: np.ndarray, frame_ids: list[str]) -> None:
    """Fail the batch when the classifier gave NaN/Inf for any frame, naming a few of them.

    The embeddings were checked finite (runtime/embedding.py), and the weights at load; finite but huge
    weights can still overflow to Inf and make softmax NaN. NaN compares false both ways, so it would be
    written as an ``others`` call with ``nan`` scores in a result that looks complete.
    """
    finite = np.isfinite(probabilities).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        names = [frame_ids[i] if i < len(frame_ids) else f"#{i}" for i in bad[:3]]
        raise NonFiniteError(
            f"the classifier produced NaN/Inf scores for {len(bad)} of {len(finite)} frame(s) "
            f"(e.g. {', '.join(names)}); check the classifier's weights"
        )
