"""What one shard goes through in a ``predict`` worker: reads -> frames -> embeddings -> scores -> files.

:class:`PredictShardJob` is the picklable recipe a worker receives; its ``open`` loads the models once
(eager PyTorch, or the engine directory the coordinator already checked/built) and returns a
:class:`PredictShardProcessor`:

* ``prepare`` (the worker's prefetch thread, CPU): read the shard file, chunk, translate, tokenize;
* ``process`` (the worker's main thread, the device): embed all the shard's frames (DNABERT-S, then
  ESM-2), each length-sorted and batched by the token budget over the whole shard, classify, and write
  the shard's rows of every result file plus its marker (``outputs/shard_results.py``).

Both halves are :mod:`virnucpro_trt.runtime.frame_path`, the path ``bench`` times too; what is this
module's own is reading shards and writing their results.

Because a shard's results depend only on its records and the settings, any worker may run any shard and
the merged files are the same bytes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from virnucpro_trt.errors import RunFailure
from virnucpro_trt.models.kinds import ENCODER_NAMES, checkpoint_specs
from virnucpro_trt.outputs.shard_results import embeddings_npz, write_shard_results
from virnucpro_trt.outputs.tables import write_frame_rows, write_sequence_rows
from virnucpro_trt.outputs.upstream import ChunkMaxima, write_prediction_rows
from virnucpro_trt.pipeline.encoders import RunWeights, open_models
from virnucpro_trt.runtime.device import describe_device
from virnucpro_trt.runtime.encoder import LoadedEncoder
from virnucpro_trt.runtime.frame_path import PreparedFrames, prepare_frames, score_frames
from virnucpro_trt.runtime.shard_marker import EMBEDDINGS_ROLE, ShardMarker, ShardReport
from virnucpro_trt.runtime.worker import ShardTask, WorkerSlot
from virnucpro_trt.runtime.worker_facts import ClassifierFacts, EncoderFacts, WorkerFacts
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
    "status_too_short",
    "dnabert_tokens",
    "esm_tokens",
    # tokens the encoders computed, padding included (runtime.embedding.BatchStats): against the two
    # above, the share of each encoder's work spent on padding
    "dnabert_computed_tokens",
    "esm_computed_tokens",
)
STAGES = ("prepare", "tokenize", "embed_dnabert", "embed_esm", "classify", "write")
# run.json's names for the shared path's stages (runtime/frame_path.STAGES).
_STAGE_NAMES = {"dnabert": "embed_dnabert", "esm": "embed_esm"}


def total_counts(per_shard: Iterable[Mapping[str, int]]) -> dict[str, int | None]:
    """Each of :data:`COUNT_KEYS` summed over the shards; None where a shard lacks it. A resumed run can
    hold shards finished by an earlier version that did not count a key yet (the computed tokens were
    added after the other counts): an unknown total, not a sum that silently leaves them out."""
    totals: dict[str, int | None] = dict.fromkeys(COUNT_KEYS, 0)
    for counts in per_shard:
        for key in COUNT_KEYS:
            value, total = counts.get(key), totals[key]
            totals[key] = None if value is None or total is None else total + value
    return totals


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
    """The CPU half of a shard, ready for the models, and the seconds it took."""

    frames: PreparedFrames
    timings: dict[str, float]


class PredictShardProcessor:
    """A worker's loaded models and the two halves of shard processing."""

    def __init__(self, job: PredictShardJob, slot: WorkerSlot):
        settings = job.settings
        self.job = job
        self.slot = slot
        encoders = dataclasses.replace(settings.encoders, device=slot.device, threads=slot.threads)
        named = checkpoint_specs(settings.dnabert, settings.esm, settings.classifier)
        # With engines, the coordinator already checked the named checkpoints against the manifest.
        engines = job.known.engines.folder if job.known.engines is not None else None
        specs = named if engines is None else dict.fromkeys(named)
        models = open_models(
            encoders, specs, ENCODER_NAMES, True, engines, rebuild=False, known=job.known
        )
        self.models = models.frame_models()  # the classifier goes to the GPU on CUDA
        self.dnabert: LoadedEncoder = self.models.dnabert
        self.esm: LoadedEncoder = self.models.esm
        weights, classifier_path = models.classifier, models.classifier_path
        assert weights is not None and classifier_path is not None
        self.device = describe_device(models.device)
        if models.device.type == "cuda":
            self._warm_up()
        self.facts = WorkerFacts(
            dnabert=EncoderFacts.of(self.dnabert),
            esm=EncoderFacts.of(self.esm),
            classifier=ClassifierFacts.of(weights, classifier_path),
            device=self.device,
            precision=models.precision,
            backend=models.backend,
            engines=str(models.engine_dir) if models.engine_dir else None,
        )

    def _warm_up(self) -> None:
        """One small batch through each encoder before the worker reports ready.

        Why: on CUDA the first call of an engine loads its kernels (AOTInductor loads cubins lazily;
        cuBLAS/cuDNN create handles and pick algorithms), which takes seconds. Paid here, it
        counts as model loading instead of slowing the first shard, so the per-worker frames/s in the
        log and run.json measure steady work.
        """
        dna = self.dnabert.tokenizer.encode_batch(["ACGTTGCA" * 12, "ATGGCC" * 8])
        protein = self.esm.tokenizer.encode_batch(["MKTAYIAKQR" * 5, "MSTNPKPQRK" * 3])
        score_frames(self.models, PreparedFrames([], ["w1", "w2"], dna, protein))

    def _stage(self, timings: dict[str, float]) -> Callable[[str], contextlib.AbstractContextManager[None]]:
        return lambda name: _timed(timings, _STAGE_NAMES.get(name, name))

    def prepare(self, task: ShardTask) -> PreparedShard:
        shard = task.shard
        timings = dict.fromkeys(STAGES, 0.0)
        records = _renumbered(read_records(self.job.shards_dir / shard.file, "dna"), shard.first)
        settings = self.job.settings
        frames = prepare_frames(
            self.models, records, settings.chunk_length, self._stage(timings), min_length=settings.min_length
        )
        if frames.records != shard.records:
            raise RunFailure(
                f"{shard.file} holds {frames.records} records instead of {shard.records}: the work folder "
                "is damaged; rerun with --force"
            )
        return PreparedShard(frames, timings)

    def process(
        self, prepared: PreparedShard, task: ShardTask, progress: Callable[[int], None]
    ) -> ShardMarker:
        started = time.perf_counter()
        timings = prepared.timings
        frames = prepared.frames
        scored = score_frames(self.models, frames, self._stage(timings), progress)
        probs, labels = scored.probabilities, scored.labels
        counts = dict.fromkeys(COUNT_KEYS, 0)
        with _timed(timings, "write"):
            contents = self._result_files(frames, probs, labels, counts)
            if self.job.settings.save_embeddings:
                contents[EMBEDDINGS_ROLE] = embeddings_npz(frames.frame_ids, scored.dnabert, scored.esm)
        counts["dnabert_tokens"] = frames.dnabert_tokens
        counts["esm_tokens"] = frames.esm_tokens
        counts["dnabert_computed_tokens"] = scored.padding["dnabert"].computed_tokens
        counts["esm_computed_tokens"] = scored.padding["esm"].computed_tokens
        timings["process"] = time.perf_counter() - started
        report = ShardReport(
            counts=counts,
            timings_s={k: round(v, 6) for k, v in timings.items()},
            worker=self.slot.index,
            device=self.slot.device,
            device_name=self.device.name,
            attempt=task.attempt,
            pid=os.getpid(),
        )
        return write_shard_results(self.job.results_dir, task.shard, contents, report)

    @staticmethod
    def _result_files(
        prepared: PreparedFrames, probs: np.ndarray, labels: np.ndarray, counts: dict[str, int]
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
