"""The final result files from the per-shard ones, in shard order (= input order).

The merge only concatenates rows that the shards already formatted, so the final files are the same
bytes whatever the number of workers and whichever worker ran which shard. The highest-score file is the
one place that needs all shards at once: it is sorted by chunk id over the whole input, so it is built
from every shard's chunk maxima here. Each final file is written ``.partial`` and renamed only after all
of them are complete (:class:`~virnucpro_trt.outputs.atomic.ResultSet`), as a single-process run does.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from virnucpro_trt.files.result_names import (
    FINAL_TEXT_FILES,
    FRAMES_TSV,
    HIGHEST_SCORE,
    PREDICTION_RESULTS,
    SEQUENCES_TSV,
)
from virnucpro_trt.outputs.atomic import ResultSet
from virnucpro_trt.outputs.embeddings_h5 import FrameEmbeddingsWriter
from virnucpro_trt.outputs.shard_results import read_embeddings_npz
from virnucpro_trt.outputs.tables import write_frame_rows, write_sequence_rows
from virnucpro_trt.outputs.upstream import PREDICTION_HEADER, ChunkMaxima
from virnucpro_trt.runtime.shard_marker import EMBEDDINGS_ROLE, ShardMarker
from virnucpro_trt.runtime.shards import ShardSpec

_COPY_BUFFER = 1 << 20


def merge_shard_results(
    outdir: Path,
    results: Path,
    shards: list[ShardSpec],
    markers: dict[int, ShardMarker],
    embeddings: FrameEmbeddingsWriter | None = None,
    record: Callable[[dict[str, dict[str, Any]], int], dict[str, str]] | None = None,
    on_create: Callable[[Path], None] | None = None,
) -> int:
    """Write the final files from every shard's results; returns the number of chunks with frames.

    ``markers`` maps shard id to its done-marker (which names the shard's files). ``embeddings``, when
    given, is filled and committed too. ``record`` is given every file's final name and entry (size,
    SHA-256) and the number of chunks with frames once all are complete and before any is renamed into
    place, and returns the texts that go in place last (run.json: :meth:`ResultSet.publish`): a run
    killed while renaming them, or before its run.json, leaves files its rerun can tell are its own.
    ``on_create`` is told of each temporary file as it is created (:class:`~virnucpro_trt.outputs.atomic.
    ResultSet`).
    """
    maxima = ChunkMaxima()
    with ResultSet(outdir, FINAL_TEXT_FILES, on_create) as final:
        final[PREDICTION_RESULTS].write(PREDICTION_HEADER)
        write_sequence_rows(final[SEQUENCES_TSV], None)
        write_frame_rows(final[FRAMES_TSV], None)
        for shard in shards:
            files = markers[shard.id].files
            for role, name in (
                ("prediction", PREDICTION_RESULTS),
                ("sequences", SEQUENCES_TSV),
                ("frames", FRAMES_TSV),
            ):
                with open(results / files[role].name, encoding="utf-8", newline="") as src:
                    shutil.copyfileobj(src, final[name], _COPY_BUFFER)
            with open(results / files["maxima"].name, encoding="utf-8", newline="") as src:
                maxima.merge_maxima(src)
            if embeddings is not None:
                ids, dnabert, esm = read_embeddings_npz(results / files[EMBEDDINGS_ROLE].name)
                embeddings.append(ids, dnabert, esm)
        maxima.write(final[HIGHEST_SCORE])
        chunks = len(maxima)
        final.publish(lambda entries: record(entries, chunks) if record else {}, embeddings)
    return len(maxima)
