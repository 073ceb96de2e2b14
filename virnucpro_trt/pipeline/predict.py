"""``virnucpro-trt predict``: reads -> chunks -> kept frames -> DNABERT-S + ESM-2 -> classifier -> files.

Order of work, chosen so that a run fails early and never leaves a misleading file:

1. resolve the three models (a missing one fails before the input is even read);
2. validate the whole input (one fast pass; a bad record fails with one line, no file written);
3. load the classifier and both encoders and check that the widths fit together;
4. stream the input in blocks (records never split across blocks): prepare, embed, classify, and append
   every table's rows to ``*.partial`` files;
5. write the sorted highest-score file, rename every result into place, then write run.json.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from virnucpro_trt import __version__
from virnucpro_trt.cli.progress import ProgressReporter
from virnucpro_trt.models.classifier import (
    MLPClassifier,
    check_classifier_width,
    classify,
    labels_from_probabilities,
)
from virnucpro_trt.models.resolve import resolve_model
from virnucpro_trt.outputs.atomic import ResultSet, remove_if_exists, write_text_atomic
from virnucpro_trt.outputs.embeddings_h5 import FrameEmbeddingsWriter
from virnucpro_trt.outputs.tables import FRAMES_TSV, SEQUENCES_TSV, write_frame_rows, write_sequence_rows
from virnucpro_trt.outputs.upstream import (
    HIGHEST_SCORE,
    PREDICTION_HEADER,
    PREDICTION_RESULTS,
    ChunkMaxima,
    write_prediction_rows,
)
from virnucpro_trt.pipeline.encoders import LoadedEncoder, open_models
from virnucpro_trt.pipeline.inputs import materialise, validate_input
from virnucpro_trt.runtime.device import describe_device
from virnucpro_trt.runtime.embedding import embed_sequences
from virnucpro_trt.sequences.prepare import PreparedBlock, prepare_blocks
from virnucpro_trt.sequences.reader import read_records
from virnucpro_trt.settings import PredictSettings

log = logging.getLogger(__name__)

RUN_JSON = "run.json"
EMBEDDINGS_H5 = "embeddings.h5"
_BLOCK_RECORDS = {"cpu": 2048, "cuda": 32768}


class _Timer:
    """Accumulates wall time per stage for run.json."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def stage(self, name: str):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        try:
            yield
        finally:
            self.totals[name] += time.perf_counter() - start


def run_predict(
    settings: PredictSettings,
    progress: ProgressReporter | None = None,
    command: Sequence[str] = (),
    demo: bool = False,
) -> dict[str, Any]:
    """Run the whole prediction and return the run summary (also written as run.json)."""
    progress = progress or ProgressReporter(enabled=False)
    timer = _Timer()
    started_at = dt.datetime.now(dt.timezone.utc)
    t0 = time.perf_counter()
    outdir = settings.outdir

    specs = {"dnabert-s": settings.dnabert, "esm2": settings.esm, "classifier": settings.classifier}
    with timer.stage("resolve_models"):  # a missing model fails before the input is read
        for kind, spec in specs.items():
            if spec:
                resolve_model(spec, {"dnabert-s": "dnabert", "esm2": "esm"}.get(kind, kind))

    path, display = materialise(settings.input, outdir)
    try:
        with timer.stage("validate_input"):
            summary_in = validate_input(path, display, "dna", settings.chunk_length)

        with timer.stage("load_models"):
            models = open_models(
                settings.encoders, specs, ("dnabert-s", "esm2"), True, settings.engines, settings.rebuild,
                engine_cache=outdir / "engines",
            )  # fmt: skip
            dnabert, esm = models.encoders["dnabert-s"], models.encoders["esm2"]
            weights, classifier_path = models.classifier, models.classifier_path
            assert weights is not None and classifier_path is not None
            _warn_chunk_length_mismatch(Path(settings.classifier or classifier_path), settings.chunk_length)
            check_classifier_width(weights, dnabert.dim, esm.dim, classifier_path)
            classifier = MLPClassifier.from_weights(weights)

        remove_if_exists(outdir / RUN_JSON)
        counts: dict[str, int] = defaultdict(int)
        for key in (
            "frames",
            "virus_frames",
            "virus_sequences",
            "status_scored",
            "status_no_stop_free_frame",
            "status_empty",
        ):
            counts[key] = 0
        names = [PREDICTION_RESULTS, HIGHEST_SCORE, SEQUENCES_TSV, FRAMES_TSV]
        maxima = ChunkMaxima()
        with ResultSet(outdir, names) as results, contextlib.ExitStack() as stack:
            emb_writer = None
            remove_if_exists(outdir / EMBEDDINGS_H5)
            if settings.save_embeddings:
                emb_writer = stack.enter_context(
                    FrameEmbeddingsWriter(
                        outdir / EMBEDDINGS_H5,
                        dnabert.dim,
                        esm.dim,
                        _embedding_attrs(settings, models.precision),
                    )
                )
            results[PREDICTION_RESULTS].write(PREDICTION_HEADER)
            write_sequence_rows(results[SEQUENCES_TSV], None)
            write_frame_rows(results[FRAMES_TSV], None)
            block_records = _BLOCK_RECORDS.get(models.device.type, 2048)
            with progress.task("predict", summary_in.frames, "frames") as advance:
                for block in prepare_blocks(
                    read_records(path, "dna"), settings.chunk_length, block_records=block_records
                ):
                    _process_block(
                        block, dnabert, esm, classifier, results, maxima, emb_writer, counts, timer, advance
                    )
            with timer.stage("write"):
                maxima.write(results[HIGHEST_SCORE])
                if emb_writer is not None:
                    emb_writer.commit()
                results.commit()

        counts["records"] = summary_in.records
        counts["empty_records"] = summary_in.empty_records
        counts["bases"] = summary_in.bases
        counts["chunks"] = summary_in.chunks
        counts["chunks_with_frames"] = len(maxima)
        timer.totals["total"] = time.perf_counter() - t0
        frames_per_s = counts["frames"] / max(timer.totals["embed_dnabert"] + timer.totals["embed_esm"], 1e-9)
        summary = {
            "tool": "virnucpro-trt",
            "version": __version__,
            "status": "complete",
            "demo_random_weights": demo,
            "command": list(command),
            "started": started_at.isoformat(timespec="seconds"),
            "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "settings": settings.to_json(),
            "settings_fingerprint": settings.fingerprint(),
            "input": {
                "path": display,
                "sha256": summary_in.sha256,
                "size_bytes": summary_in.size_bytes,
            },
            "models": {
                "dnabert": _model_facts(dnabert),
                "esm": _model_facts(esm),
                "classifier": {
                    "path": str(classifier_path),
                    "input_dim": weights.input_dim,
                    "hidden_dim": weights.hidden_dim,
                    "bn_eps": weights.bn_eps,
                },
            },
            "counts": dict(counts),
            "timings_s": {k: round(v, 4) for k, v in sorted(timer.totals.items())},
            "throughput": {
                "frames_per_s_encoders": round(frames_per_s, 2),
                "reads_per_s_total": round(summary_in.records / max(timer.totals["total"], 1e-9), 2),
            },
            "device": describe_device(models.device),
            "precision": models.precision,
            "backend": models.backend,
            "engines": str(models.engine_dir) if models.engine_dir else None,
        }
        write_text_atomic(outdir / RUN_JSON, json.dumps(summary, indent=2) + "\n")
        return summary
    finally:
        if settings.input == "-":
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _process_block(
    block: PreparedBlock,
    dnabert: LoadedEncoder,
    esm: LoadedEncoder,
    classifier: MLPClassifier,
    results: ResultSet,
    maxima: ChunkMaxima,
    emb_writer: FrameEmbeddingsWriter | None,
    counts: dict[str, int],
    timer: _Timer,
    advance: Any,
) -> None:
    frames = block.frames
    n = len(frames)
    probs = np.zeros((0, 2), dtype=np.float32)
    labels = np.zeros(0, dtype=np.int8)
    if n:
        with timer.stage("tokenize"):
            dna_tokens = dnabert.tokenizer.encode_batch(frames.dna)
            protein_tokens = esm.tokenizer.encode_batch(frames.protein)
        with timer.stage("embed_dnabert"):
            dna_emb = embed_sequences(dnabert.backend, dna_tokens, dnabert.max_batch_tokens, frames.frame_id)
        with timer.stage("embed_esm"):
            esm_emb = embed_sequences(
                esm.backend, protein_tokens, esm.max_batch_tokens, frames.frame_id, advance
            )
        with timer.stage("classify"):
            features = np.concatenate([dna_emb, esm_emb], axis=1)
            probs = classify(classifier, features)
            labels = labels_from_probabilities(probs)
        counts["frames"] += n
        counts["virus_frames"] += int(labels.sum())
        counts["dnabert_tokens"] += int(sum(len(t) for t in dna_tokens))
        counts["esm_tokens"] += int(sum(len(t) for t in protein_tokens))
        if emb_writer is not None:
            emb_writer.append(frames.frame_id, dna_emb, esm_emb)
    with timer.stage("write"):
        write_prediction_rows(results[PREDICTION_RESULTS], frames.frame_id, probs, labels)
        maxima.update(frames.frame_id, probs)
        write_frame_rows(results[FRAMES_TSV], block, probs, labels)
        statuses, virus_records = write_sequence_rows(results[SEQUENCES_TSV], block, probs)
        for status, count in statuses.items():
            counts[f"status_{status}"] += count
        counts["virus_sequences"] += virus_records


def _model_facts(encoder: LoadedEncoder) -> dict[str, Any]:
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


def _embedding_attrs(settings: PredictSettings, precision: str) -> dict[str, str]:
    return {
        "tool": f"virnucpro-trt {__version__}",
        "dnabert": settings.dnabert or str(settings.engines),
        "esm": settings.esm or str(settings.engines),
        "precision": precision,
        "pooling_dnabert": "mean over all tokens incl. [CLS] and [SEP]",
        "pooling_esm": "mean over residues 1..min(1024, len) (no BOS/EOS)",
    }


def _warn_chunk_length_mismatch(classifier_path: Path, chunk_length: int) -> None:
    """Upstream names its classifiers ``300_model.pth`` / ``500_model.pth``: catch the obvious mix-up."""
    name = classifier_path.name
    for other in (300, 500):
        if other != chunk_length and name.startswith(f"{other}_"):
            log.warning(
                "classifier %s looks trained for %d bp chunks but --chunk-length is %d",
                name,
                other,
                chunk_length,
            )
