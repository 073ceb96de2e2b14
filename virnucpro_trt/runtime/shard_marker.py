"""A shard's done-marker: the record, written last, that the shard's results are complete.

``.work/results/shard-NNNNNN.done.json`` (schema 2) holds::

    schema, shard, first_record, records      which records the results are of
    counts, timings_s                         what the worker counted and timed (run.json sums them)
    worker, device, device_name, attempt, pid who ran it
    files: {role: {name, bytes, sha256, stamp}}  every result file (roles: RESULT_SUFFIXES); stamp since
                                              schema 2 (files/stamps.py: a resume re-hashes only a file
                                              whose stamp changed; schema 1 markers are hashed)

The worker writes it (:mod:`virnucpro_trt.outputs.shard_results`) and sends it to the coordinator;
:mod:`~virnucpro_trt.runtime.resume` reads it back on a rerun, where it is hostile input: bounded in
size, every field typed, every file named as the tool names it. A marker that fails any of that is
not an error but a shard to redo.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from virnucpro_trt.files.json_fields import (
    SHA256,
    FieldError,
    count,
    counts,
    obj,
    optional_text,
    read_json_object,
    text,
    timings,
)
from virnucpro_trt.runtime.shards import ShardSpec, shard_stem

MARKER_SCHEMA = 2  # 2: each file's stamp; a schema-1 marker (no stamps) is still read, and hashed
_READ_SCHEMAS = (1, 2)
_FILE_KEYS = {1: ("name", "bytes", "sha256"), 2: ("name", "bytes", "sha256", "stamp")}
MARKER_SUFFIX = ".done.json"
MAX_MARKER_BYTES = 1 << 20  # a marker is about 1 KB
# A shard's result files by role: its rows of the three final text files, its chunk maxima, and with
# --save-embeddings its embeddings (outputs/shard_results.py says what each holds).
RESULT_SUFFIXES = {
    "prediction": ".prediction.txt",
    "frames": ".frames.tsv",
    "sequences": ".sequences.tsv",
    "maxima": ".maxima.tsv",
    "embeddings": ".embeddings.npz",
}
EMBEDDINGS_ROLE = "embeddings"
TEXT_ROLES = ("prediction", "frames", "sequences", "maxima")  # every shard has these

_REPORT_KEYS = ("counts", "timings_s", "worker", "device", "device_name", "attempt", "pid")
_MARKER_KEYS = ("schema", "shard", "first_record", "records", *_REPORT_KEYS, "files")


def marker_path(results: Path, shard: ShardSpec) -> Path:
    """Where ``shard``'s marker lives in the results folder."""
    return results / f"{shard.stem}{MARKER_SUFFIX}"


def result_roles(embeddings: bool) -> tuple[str, ...]:
    """The result files a shard of a run has (``embeddings``: the run saves them)."""
    return (*TEXT_ROLES, EMBEDDINGS_ROLE) if embeddings else TEXT_ROLES


@dataclass(frozen=True)
class ResultFile:
    """One result file of a shard: its name in ``.work/results``, size, SHA-256 and the file's stamp
    when it was written (empty: none recorded, the file is hashed)."""

    name: str
    size: int
    sha256: str
    stamp: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "bytes": self.size, "sha256": self.sha256, "stamp": list(self.stamp)}


@dataclass(frozen=True)
class ShardReport:
    """What the worker that ran a shard says about it: counts, seconds per stage, who and where."""

    counts: dict[str, int]
    timings_s: dict[str, float]  # per stage, and "process": the whole model half
    worker: int
    device: str
    device_name: str | None
    attempt: int
    pid: int

    def to_json(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in _REPORT_KEYS}


@dataclass(frozen=True)
class ShardMarker:
    """A shard's done-marker (see the module docstring)."""

    shard: int
    first_record: int
    records: int
    report: ShardReport
    files: dict[str, ResultFile]

    @property
    def frames(self) -> int:
        return self.report.counts.get("frames", 0)

    @property
    def process_s(self) -> float:
        return self.report.timings_s.get("process", 0.0)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": MARKER_SCHEMA,
            "shard": self.shard,
            "first_record": self.first_record,
            "records": self.records,
            **self.report.to_json(),
            "files": {role: entry.to_json() for role, entry in self.files.items()},
        }

    def encode(self) -> bytes:
        return (json.dumps(self.to_json(), indent=1) + "\n").encode()

    @classmethod
    def from_json(cls, data: Any) -> ShardMarker:
        """A marker from its JSON, every field checked; :class:`FieldError` names the first bad one."""
        data = obj(data, "marker", _MARKER_KEYS)
        schema = data["schema"]
        if isinstance(schema, bool) or schema not in _READ_SCHEMAS:
            raise FieldError(f"schema: not one of {_READ_SCHEMAS}")
        shard = count(data, "shard")
        report = ShardReport(
            counts=counts(data, "counts"),
            timings_s=timings(data, "timings_s"),
            worker=count(data, "worker"),
            device=text(data, "device"),
            device_name=optional_text(data, "device_name"),
            attempt=count(data, "attempt", 1),
            pid=count(data, "pid"),
        )
        files = {}
        stem = shard_stem(shard)
        for role, entry in obj(data["files"], "files").items():
            if role not in RESULT_SUFFIXES:
                raise FieldError(f"files: unknown role {role!r}")
            entry = obj(entry, f"files.{role}", _FILE_KEYS[schema])
            name = text(entry, "name")
            if name != stem + RESULT_SUFFIXES[role]:
                raise FieldError(f"files.{role}: {name!r} is not the shard's {role} file")
            stamp = tuple(entry.get("stamp", ()))
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in stamp):
                raise FieldError(f"files.{role}.stamp: not a list of integers >= 0")
            files[role] = ResultFile(name, count(entry, "bytes"), text(entry, "sha256", SHA256), stamp)
        missing = [role for role in TEXT_ROLES if role not in files]
        if missing:
            raise FieldError(f"files: no {', '.join(missing)}")
        return cls(shard, count(data, "first_record"), count(data, "records"), report, files)

    @classmethod
    def read(cls, path: Path) -> ShardMarker:
        """The marker in ``path``: :class:`FieldError` when it is malformed, ``OSError`` when unreadable."""
        return cls.from_json(read_json_object(path, MAX_MARKER_BYTES))

    def lacks(self, roles: Collection[str]) -> list[str]:
        """Which of ``roles`` this marker lists no file for."""
        return [role for role in roles if role not in self.files]
