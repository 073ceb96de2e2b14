"""The classification path a configuration is timed on: prepare -> tokenize -> DNABERT-S -> ESM-2 -> MLP.

The whole path, not the encoders alone, because that is what a user waits for and what the upstream
baseline did; the per-stage split is kept so a slow CPU stage shows up instead of hiding in the total.
All kept frames of the input are embedded together (one pass over the records), so batching sees the
whole workload the way ``predict`` sees one large block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from virnucpro_trt.bench.timing import StageClock
from virnucpro_trt.models.classifier import MLPClassifier, classify, labels_from_probabilities
from virnucpro_trt.runtime.embedding import EmbeddingBackend, embed_sequences
from virnucpro_trt.sequences.prepare import prepare_blocks
from virnucpro_trt.sequences.reader import SeqRecord

STAGES = ("prepare", "tokenize", "dnabert", "esm", "classify")


@dataclass
class Encoder:
    """One encoder as a configuration runs it: backend, tokenizer and padded-token budget per batch.

    A budget of 1 means one sequence per forward without padding (upstream's DNABERT-S loop): the
    batcher closes a batch as soon as the next item would exceed the budget, and never leaves an item out.
    """

    backend: EmbeddingBackend
    tokenizer: Any  # DnaTokenizer | ProteinTokenizer
    max_batch_tokens: int


@dataclass
class PathModels:
    """Everything one configuration classifies with."""

    dnabert: Encoder
    esm: Encoder
    classifier: MLPClassifier
    device: torch.device


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

    @property
    def frames(self) -> int:
        return len(self.frame_ids)

    @property
    def tokens(self) -> int:
        return self.dnabert_tokens + self.esm_tokens

    @property
    def labels(self) -> np.ndarray:
        return labels_from_probabilities(self.probabilities)


def run_path(models: PathModels, records: list[SeqRecord], chunk_length: int) -> PathResult:
    """One pass of the whole path over ``records``."""
    timer = StageClock(models.device)
    with timer.stage("prepare"):
        frame_ids: list[str] = []
        dna: list[str] = []
        proteins: list[str] = []
        for block in prepare_blocks(records, chunk_length, block_records=max(len(records), 1)):
            frame_ids += block.frames.frame_id
            dna += block.frames.dna
            proteins += block.frames.protein
    with timer.stage("tokenize"):
        dna_tokens = models.dnabert.tokenizer.encode_batch(dna)
        protein_tokens = models.esm.tokenizer.encode_batch(proteins)
    with timer.stage("dnabert"):
        dna_emb = embed_sequences(
            models.dnabert.backend, dna_tokens, models.dnabert.max_batch_tokens, frame_ids
        )
    with timer.stage("esm"):
        esm_emb = embed_sequences(models.esm.backend, protein_tokens, models.esm.max_batch_tokens, frame_ids)
    with timer.stage("classify"):
        probabilities = classify(models.classifier, np.concatenate([dna_emb, esm_emb], axis=1))
    return PathResult(
        frame_ids,
        dna_emb,
        esm_emb,
        probabilities,
        len(records),
        int(sum(len(t) for t in dna_tokens)),
        int(sum(len(t) for t in protein_tokens)),
        timer.seconds,
    )
