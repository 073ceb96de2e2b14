"""What one shard goes through in a ``predict`` worker: reads -> frames -> embeddings -> scores -> files.

:class:`PredictShardJob` is the picklable recipe a worker receives; its ``open`` loads the models once
(eager PyTorch, or the engine directory the coordinator already checked/built) and returns a
:class:`PredictShardProcessor`:

* ``prepare`` (the worker's prefetch thread, CPU): read the shard file, chunk, translate, tokenize;
* ``process`` (the worker's main thread, the device): embed all the shard's frames (DNABERT-S, then
  ESM-2), each length-sorted and batched by the token budget over the whole shard, classify, and write
  the shard's rows of every result file plus its marker (``outputs/shard_results.py``).

Because a shard's results depend only on its records and the settings, any worker may run any shard and
the merged files are the same bytes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from virnucpro_trt.errors import RunFailure
from virnucpro_trt.models.classifier import (
    MLPClassifier,
    check_classifier_width,
    classify,
    labels_from_probabilities,
)
from virnucpro_trt.outputs.shard_results import embeddings_npz, write_shard_results
from virnucpro_trt.outputs.tables import write_frame_rows, write_sequence_rows
from virnucpro_trt.outputs.upstream import ChunkMaxima, write_prediction_rows
from virnucpro_trt.pipeline.encoders import LoadedEncoder, RunWeights, open_models
from virnucpro_trt.runtime.device import configure_fp32_reference, describe_device
from virnucpro_trt.runtime.embedding import embed_sequences
from virnucpro_trt.runtime.worker import ShardTask, WorkerSlot
from virnucpro_trt.sequences.prepare import PreparedBlock, prepare_blocks
from virnucpro_trt.sequences.reader import SeqRecord, read_records
from virnucpro_trt.settings import PredictSettings

COUNT_KEYS = (
    "records",
    "chunks",
    "frames",
    "virus_frames",
    "virus_sequences",
    "status_scored",
    "status_no_stop_free_frame",
    "status_empty",
    "dnabert_tokens",
    "esm_tokens",
)
STAGES = ("prepare", "tokenize", "embed_dnabert", "embed_esm", "classify", "write")


@dataclass(frozen=True)
class PredictShardJob:
    """Everything a worker needs to build its processor (sent to spawned workers, so picklable)."""

    settings: PredictSettings
    known: RunWeights  # what the coordinator checked: weights identities, or the engine directory
    shards_dir: Path
    results_dir: Path

    def open(self, slot: WorkerSlot) -> PredictShardProcessor:
        return PredictShardProcessor(self, slot)


@dataclass
class PreparedShard:
    """The CPU half of a shard, ready for the models."""

    blocks: list[PreparedBlock]
    frame_ids: list[str]
    dna_tokens: list[np.ndarray]
    protein_tokens: list[np.ndarray]
    timings: dict[str, float]


class PredictShardProcessor:
    """A worker's loaded models and the two halves of shard processing."""

    def __init__(self, job: PredictShardJob, slot: WorkerSlot):
        settings = job.settings
        self.job = job
        self.slot = slot
        encoders = dataclasses.replace(settings.encoders, device=slot.device, threads=slot.threads)
        named = {"dnabert-s": settings.dnabert, "esm2": settings.esm, "classifier": settings.classifier}
        # With engines, the coordinator already checked the named checkpoints against the manifest.
        engines = job.known.engines.folder if job.known.engines is not None else None
        specs = named if engines is None else dict.fromkeys(named)
        models = open_models(
            encoders, specs, ("dnabert-s", "esm2"), True, engines, rebuild=False, known=job.known
        )
        self.dnabert: LoadedEncoder = models.encoders["dnabert-s"]
        self.esm: LoadedEncoder = models.encoders["esm2"]
        weights, classifier_path = models.classifier, models.classifier_path
        assert weights is not None and classifier_path is not None
        check_classifier_width(weights, self.dnabert.dim, self.esm.dim, classifier_path)
        self.classifier = MLPClassifier.from_weights(weights)
        self.device = describe_device(models.device)
        if models.device.type == "cuda":
            configure_fp32_reference()  # the classifier is fp32 on the GPU: no TF32 in its matmuls
            self.classifier = self.classifier.to(models.device)
            self._warm_up()
        self.facts: dict[str, Any] = {
            "models": {
                "dnabert": model_facts(self.dnabert),
                "esm": model_facts(self.esm),
                "classifier": {
                    "path": str(classifier_path),
                    "input_dim": weights.input_dim,
                    "hidden_dim": weights.hidden_dim,
                    "bn_eps": weights.bn_eps,
                },
            },
            "dims": {"dnabert": self.dnabert.dim, "esm": self.esm.dim},
            "device": self.device,
            "precision": models.precision,
            "backend": models.backend,
            "engines": str(models.engine_dir) if models.engine_dir else None,
        }

    def _warm_up(self) -> None:
        """One small batch through each encoder before the worker reports ready.

        Why: on CUDA the first call of an engine loads its kernels (AOTInductor loads cubins lazily;
        cuBLAS/cuDNN create handles and pick algorithms), ~1-2 s per encoder on the H200. Paid here, it
        counts as model loading instead of slowing the first shard, so the per-worker frames/s in the
        log and run.json measure steady work.
        """
        dna = self.dnabert.tokenizer.encode_batch(["ACGTTGCA" * 12, "ATGGCC" * 8])
        protein = self.esm.tokenizer.encode_batch(["MKTAYIAKQR" * 5, "MSTNPKPQRK" * 3])
        dna_emb = embed_sequences(self.dnabert.backend, dna, self.dnabert.max_batch_tokens)
        esm_emb = embed_sequences(self.esm.backend, protein, self.esm.max_batch_tokens)
        classify(self.classifier, np.concatenate([dna_emb, esm_emb], axis=1))

    def prepare(self, task: ShardTask) -> PreparedShard:
        shard = task.shard
        timings = dict.fromkeys(STAGES, 0.0)
        with _timed(timings, "prepare"):
            records = _renumbered(read_records(self.job.shards_dir / shard.file, "dna"), shard.first)
            blocks = list(prepare_blocks(records, self.job.settings.chunk_length))
            found = sum(b.n_records for b in blocks)
            if found != shard.records:
                raise RunFailure(
                    f"{shard.file} holds {found} records instead of {shard.records}: the work folder is "
                    "damaged; rerun with --force"
                )
            frame_ids = [fid for b in blocks for fid in b.frames.frame_id]
            dna = [s for b in blocks for s in b.frames.dna]
            protein = [s for b in blocks for s in b.frames.protein]
        with _timed(timings, "tokenize"):
            dna_tokens = self.dnabert.tokenizer.encode_batch(dna) if dna else []
            protein_tokens = self.esm.tokenizer.encode_batch(protein) if protein else []
        return PreparedShard(blocks, frame_ids, dna_tokens, protein_tokens, timings)

    def process(
        self, prepared: PreparedShard, task: ShardTask, progress: Callable[[int], None]
    ) -> dict[str, Any]:
        started = time.perf_counter()
        timings = prepared.timings
        ids = prepared.frame_ids
        with _timed(timings, "embed_dnabert"):
            dna_emb = embed_sequences(
                self.dnabert.backend, prepared.dna_tokens, self.dnabert.max_batch_tokens, ids
            )
        with _timed(timings, "embed_esm"):
            esm_emb = embed_sequences(
                self.esm.backend, prepared.protein_tokens, self.esm.max_batch_tokens, ids, progress
            )
        with _timed(timings, "classify"):
            probs = classify(self.classifier, np.concatenate([dna_emb, esm_emb], axis=1))
            labels = labels_from_probabilities(probs)
        counts = dict.fromkeys(COUNT_KEYS, 0)
        with _timed(timings, "write"):
            contents = self._result_files(prepared, probs, labels, counts)
            if self.job.settings.save_embeddings:
                contents["embeddings"] = embeddings_npz(ids, dna_emb, esm_emb)
        counts["dnabert_tokens"] = int(sum(len(t) for t in prepared.dna_tokens))
        counts["esm_tokens"] = int(sum(len(t) for t in prepared.protein_tokens))
        timings["process"] = time.perf_counter() - started
        facts = {
            "counts": counts,
            "timings_s": {k: round(v, 6) for k, v in timings.items()},
            "worker": self.slot.index,
            "device": self.slot.device,
            "device_name": self.device.get("name"),
            "attempt": task.attempt,
            "pid": os.getpid(),
        }
        return write_shard_results(self.job.results_dir, task.shard, contents, facts)

    @staticmethod
    def _result_files(
        prepared: PreparedShard, probs: np.ndarray, labels: np.ndarray, counts: dict[str, int]
    ) -> dict[str, bytes]:
        texts = {role: io.StringIO() for role in ("prediction", "frames", "sequences", "maxima")}
        maxima = ChunkMaxima()
        offset = 0
        for block in prepared.blocks:
            frames = block.frames
            rows = slice(offset, offset + len(frames))
            offset += len(frames)
            block_probs, block_labels = probs[rows], labels[rows]
            write_prediction_rows(texts["prediction"], frames.frame_id, block_probs, block_labels)
            write_frame_rows(texts["frames"], block, block_probs, block_labels)
            statuses, virus_records = write_sequence_rows(texts["sequences"], block, block_probs)
            maxima.update(frames.frame_id, block_probs)
            for status, count in statuses.items():
                counts[f"status_{status}"] += count
            counts["virus_sequences"] += virus_records
            counts["records"] += block.n_records
            counts["chunks"] += len(block.chunk_ids)
        maxima.write_maxima(texts["maxima"])
        counts["frames"] = len(prepared.frame_ids)
        counts["virus_frames"] = int(labels.sum())
        return {role: text.getvalue().encode("utf-8") for role, text in texts.items()}


def model_facts(encoder: LoadedEncoder) -> dict[str, Any]:
    """What run.json records about an encoder."""
    info = encoder.info
    return {
        "spec": info.get("spec"),
        "path": info.get("path"),
        "format": info.get("format"),
        "layout": info.get("layout"),
        "dim": encoder.dim,
        "weights_sha256": info.get("weights_sha256"),
        "max_batch_tokens": encoder.max_batch_tokens,
    }


def _renumbered(records: Iterator[SeqRecord], first: int) -> Iterator[SeqRecord]:
    """Records of a shard file with their index in the whole input."""
    for r in records:
        yield SeqRecord(r.index + first, r.id, r.description, r.sequence)


@contextlib.contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] += time.perf_counter() - start
