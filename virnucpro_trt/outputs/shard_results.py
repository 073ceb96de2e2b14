"""One shard's results in ``OUTDIR/.work/results``: the rows of each final file, and a done-marker.

Per shard ``shard-NNNNNN``:

* ``.prediction.txt``, ``.frames.tsv``, ``.sequences.tsv`` — that shard's rows of the final files,
  without headers, exactly as they will appear there (the merge only concatenates);
* ``.maxima.tsv`` — per chunk, max P(others) and max P(virus) (chunks never span shards, so the merge
  folds these into the highest-score file without seeing a frame);
* ``.embeddings.npz`` — with ``--save-embeddings``: frame ids and both encoders' outputs;
* ``.done.json`` — written last (:class:`~virnucpro_trt.runtime.shard_marker.ShardMarker`): shard id,
  record range, counts, timings, worker/device and the size, SHA-256 and stamp of every file above. A
  shard without a verifiable marker is redone on resume; a file that still carries its stamp is not
  read again to verify it (``files/stamps.py``; with ``--save-embeddings`` these files are large).

Everything is written whole from memory through a temporary name and a rename (no fsync: a marker whose
files did not reach the disk fails its hash check on resume and the shard is simply redone).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from virnucpro_trt.files.atomic import write_bytes_atomic
from virnucpro_trt.files.digests import sha256_bytes
from virnucpro_trt.files.stamps import file_stamp
from virnucpro_trt.runtime.shard_marker import (
    RESULT_SUFFIXES,
    ResultFile,
    ShardMarker,
    ShardReport,
    marker_path,
)
from virnucpro_trt.runtime.shards import ShardSpec


def write_shard_results(
    results: Path, shard: ShardSpec, contents: dict[str, bytes], report: ShardReport
) -> ShardMarker:
    """Write ``contents`` (role -> bytes, roles as in
    :data:`~virnucpro_trt.runtime.shard_marker.RESULT_SUFFIXES`), then the marker; return it."""
    files = {}
    for role, data in contents.items():
        name = shard.stem + RESULT_SUFFIXES[role]
        write_bytes_atomic(results / name, data)
        # Right after the rename (a rename changes the ctime): what a resume compares. Only a change in
        # the instant between the rename and this stat, in the tool's own folder, could slip past it.
        stamp = tuple(file_stamp(results / name))
        files[role] = ResultFile(name, len(data), sha256_bytes(data), stamp if stamp[0] == len(data) else ())
    marker = ShardMarker(shard.id, shard.first, shard.records, report, files)
    write_bytes_atomic(marker_path(results, shard), marker.encode())
    return marker


def embeddings_npz(frame_ids: list[str], dnabert: np.ndarray, esm: np.ndarray) -> bytes:
    """The shard's embeddings as an uncompressed ``.npz`` (ids as a unicode array: no pickle needed)."""
    buffer = io.BytesIO()
    ids = np.asarray(frame_ids, dtype=str) if frame_ids else np.zeros(0, dtype="<U1")
    np.savez(buffer, ids=ids, dnabert=dnabert.astype(np.float32), esm=esm.astype(np.float32))
    return buffer.getvalue()


def read_embeddings_npz(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return data["ids"].tolist(), data["dnabert"], data["esm"]
