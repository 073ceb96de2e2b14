"""run.json, the account of one finished run (``predict``, or ``merge`` of a split's parts): its one
typed shape (:class:`RunRecord`), how it is read back, and the throughput block both writers compute
by one rule.

A run.json is read back by a rerun (is the finished run there this very run?) and by ``merge`` (is each
part a finished predict of its split?). Either way it is hostile input: bounded in size, a JSON object,
and parsed by :meth:`RunRecord.from_json` alone, which types every field a reader relies on or raises
:class:`RunRecordError` naming the field. Both writers build a :class:`RunRecord` and write
:meth:`RunRecord.to_json`, so the keys, their nesting and their order are known in this one place.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from virnucpro_trt.files.bounded_read import read_bounded
from virnucpro_trt.files.json_fields import SHA256, FieldError, finite_number, parse_json

MAX_RUN_JSON_BYTES = 64 << 20
UNREADABLE: dict[str, Any] = {"status": "unreadable"}  # a damaged or foreign file: another run's
TOOL = "virnucpro-trt"
COMPLETE = "complete"  # the only status a run.json is written with: it is written when the run is
READ_COUNTS = ("records", "frames", "virus_sequences")  # the counts every reader uses: known in any record


class RunRecordError(FieldError):
    """A run.json that is no usable record: a field missing or mistyped (the message names it), or, as
    :class:`NotFinishedRun`, not the record of a finished run at all. Readers tell the two apart only in
    their messages; either way the results beside it are another run's."""


class NotFinishedRun(RunRecordError):
    """A run.json that is no record of a finished virnucpro-trt run: not an object, another tool's, or
    not ``complete`` (also what :func:`read_run_json` makes of a file that is not JSON)."""


def _fail(where: str, what: str) -> RunRecordError:
    return RunRecordError(f"{where}: {what}")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(where, "missing or not an object")
    return value


def _optional_object(value: Any, where: str) -> dict[str, Any] | None:
    return None if value is None else _object(value, where)


def _text(value: Any, where: str, sha256: bool = False) -> str:
    if not isinstance(value, str) or (sha256 and SHA256.fullmatch(value) is None):
        raise _fail(where, "missing or not a SHA-256" if sha256 else "missing or not a string")
    return value


def _optional_text(value: Any, where: str) -> str | None:
    return None if value is None else _text(value, where)


def _count(value: Any, where: str) -> int:
    if not _is_count(value):
        raise _fail(where, "not a count (an integer >= 0)")
    return value


def _objects(value: Any, where: str) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise _fail(where, "missing or not a list of objects")
    return tuple(value)


@dataclass(frozen=True)
class RunInput:
    """run.json's ``input``: the whole input a run (or a merge's split) read, by content."""

    path: str  # as the command named it
    sha256: str
    size_bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "size_bytes": self.size_bytes}

    @classmethod
    def from_json(cls, data: Any) -> RunInput:
        data = _object(data, "input")
        return cls(
            _text(data.get("path"), "input.path"),
            _text(data.get("sha256"), "input.sha256", sha256=True),
            _count(data.get("size_bytes"), "input.size_bytes"),
        )


@dataclass(frozen=True)
class SplitOrigin:
    """A merge's run.json ``split``: which split its parts came from (its rerun compares the id and the
    number of parts)."""

    split_id: str
    parts: int
    records_per_shard: int
    shard_records: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "split_id": self.split_id,
            "parts": self.parts,
            "records_per_shard": self.records_per_shard,
            "shard_records": self.shard_records,
        }

    @classmethod
    def from_json(cls, data: Any) -> SplitOrigin:
        data = _object(data, "split")
        shard_records = data.get("shard_records")
        return cls(
            _text(data.get("split_id"), "split.split_id", sha256=True),
            _count(data.get("parts"), "split.parts"),
            _count(data.get("records_per_shard"), "split.records_per_shard"),
            None if shard_records is None else _count(shard_records, "split.shard_records"),
        )


@dataclass(frozen=True)
class RunRecord:
    """One finished run's run.json (``predict``'s, or ``merge``'s of a split's parts).

    The fields readers rely on are typed here, once: the rerun checks (input, settings fingerprint, the
    demo marker, model identity, outputs), ``merge``'s checks of a part (version, models, device,
    counts, shards, settings) and of its own earlier merge (split, the parts' run.json SHA-256s). Parts
    of the record that are only informational or owned by another module's rule stay JSON objects
    (settings, models, device, throughput, workers, each output's entry). A record is always of a
    finished run: run.json is written only then, so tool and status are constants here, and anything
    else reads as :class:`NotFinishedRun`.

    ``model_identity`` is absent from a merge of parts that lack it; ``model_weights`` only ``predict``
    writes; ``split`` and ``parts`` only ``merge``. ``reused`` is not written: it marks the record a
    command returns when it found this very run already finished.
    """

    version: str
    demo_random_weights: bool
    command: tuple[str, ...]
    started: str
    finished: str
    settings: dict[str, Any]
    settings_fingerprint: str
    input: RunInput
    models: dict[str, Any]
    counts: dict[str, int | None]  # None: unknown (total_counts), never under-counted; READ_COUNTS known
    timings_s: dict[str, float]
    throughput: dict[str, Any]
    device: dict[str, Any]
    precision: str | None
    backend: str | None
    engines: str | None
    shards: dict[str, int]
    workers: tuple[dict[str, Any], ...]
    restarts: int
    outputs: dict[str, dict[str, Any]]  # result name -> entry (files/ownership.py reads each entry)
    model_identity: dict[str, Any] | None = None  # compared whole, never read by key
    model_weights: dict[str, Any] | None = None  # models/identity.WeightsIdentity per model
    split: SplitOrigin | None = None
    parts: tuple[dict[str, Any], ...] | None = None  # each part's provenance
    reused: bool = dataclasses.field(default=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        """The JSON object written as run.json, keys in the order run.json has always had."""
        data: dict[str, Any] = {
            "tool": TOOL,
            "version": self.version,
            "status": COMPLETE,
            "demo_random_weights": self.demo_random_weights,
            "command": list(self.command),
            "started": self.started,
            "finished": self.finished,
            "settings": self.settings,
            "settings_fingerprint": self.settings_fingerprint,
            "input": self.input.to_json(),
            "models": self.models,
        }
        if self.model_identity is not None:
            data["model_identity"] = self.model_identity
        data.update(
            counts=self.counts,
            timings_s=self.timings_s,
            throughput=self.throughput,
            device=self.device,
            precision=self.precision,
            backend=self.backend,
            engines=self.engines,
            shards=self.shards,
            workers=list(self.workers),
            restarts=self.restarts,
        )
        if self.model_weights is not None:
            data["model_weights"] = self.model_weights
        if self.split is not None:
            data["split"] = self.split.to_json()
        if self.parts is not None:
            data["parts"] = list(self.parts)
        data["outputs"] = self.outputs
        return data

    def text(self) -> str:
        """run.json's text: :meth:`to_json`, indented by 2, with a final newline."""
        return json.dumps(self.to_json(), indent=2) + "\n"

    @classmethod
    def from_json(cls, data: Any) -> RunRecord:
        """The record in ``data`` (a parsed run.json, hostile): :class:`NotFinishedRun` unless it is an
        object of this tool with status ``complete``, else :class:`RunRecordError` naming the first field
        that is missing or of the wrong type. Never another exception."""
        if not isinstance(data, dict) or data.get("tool") != TOOL or data.get("status") != COMPLETE:
            raise NotFinishedRun("not a complete virnucpro-trt run")
        if not isinstance(data.get("demo_random_weights"), bool):
            raise _fail("demo_random_weights", "missing or not true/false")
        command = data.get("command")
        if not isinstance(command, list) or not all(isinstance(arg, str) for arg in command):
            raise _fail("command", "missing or not a list of strings")
        counts = _object(data.get("counts"), "counts")
        for key, value in counts.items():
            if value is not None:
                _count(value, f"counts.{key}")
        for key in READ_COUNTS:
            _count(counts.get(key), f"counts.{key}")
        timings = _object(data.get("timings_s"), "timings_s")
        for key, value in timings.items():
            if not finite_number(value) or value < 0:
                raise _fail(f"timings_s.{key}", "not a number of seconds")
        throughput = _object(data.get("throughput"), "throughput")
        steady_s = throughput.get("steady_s")
        if steady_s is not None and not (finite_number(steady_s) and steady_s >= 0):
            raise _fail("throughput.steady_s", "not a number of seconds")
        shards = _object(data.get("shards"), "shards")
        for key, value in shards.items():
            _count(value, f"shards.{key}")
        outputs = _object(data.get("outputs"), "outputs")
        for name, entry in outputs.items():
            _object(entry, f"outputs.{name}")
        parts = data.get("parts")
        if parts is not None:
            parts = _objects(parts, "parts")
            for index, part in enumerate(parts):
                _text(part.get("run_json_sha256"), f"parts[{index}].run_json_sha256", sha256=True)
        split = data.get("split")
        return cls(
            version=_text(data.get("version"), "version"),
            demo_random_weights=data["demo_random_weights"],
            command=tuple(command),
            started=_text(data.get("started"), "started"),
            finished=_text(data.get("finished"), "finished"),
            settings=_object(data.get("settings"), "settings"),
            settings_fingerprint=_text(data.get("settings_fingerprint"), "settings_fingerprint", sha256=True),
            input=RunInput.from_json(data.get("input")),
            models=_object(data.get("models"), "models"),
            counts=counts,
            timings_s=timings,
            throughput=throughput,
            device=_object(data.get("device"), "device"),
            precision=_optional_text(data.get("precision"), "precision"),
            backend=_optional_text(data.get("backend"), "backend"),
            engines=_optional_text(data.get("engines"), "engines"),
            shards=shards,
            workers=_objects(data.get("workers"), "workers"),
            restarts=_count(data.get("restarts"), "restarts"),
            outputs=outputs,
            model_identity=_optional_object(data.get("model_identity"), "model_identity"),
            model_weights=_optional_object(data.get("model_weights"), "model_weights"),
            split=None if split is None else SplitOrigin.from_json(split),
            parts=parts,
        )

    # -- what readers ask of the informational objects, typed where they ask it ----------------------
    @property
    def keep_work(self) -> bool:
        """Whether the run was asked to keep its ``.work`` (``settings.run.keep_work``)."""
        run = self.settings.get("run")
        return isinstance(run, dict) and run.get("keep_work") is True

    @property
    def saved_embeddings(self) -> bool:
        """Whether the run was asked for ``embeddings.h5`` (``settings.save_embeddings``)."""
        return bool(self.settings.get("save_embeddings"))

    @property
    def device_type(self) -> str:
        """``cpu`` or ``cuda`` (``device.device`` without its index)."""
        return str(self.device.get("device", "")).split(":")[0]

    @property
    def steady_s(self) -> float | None:
        """The steady-state seconds behind ``throughput`` (None: not measured)."""
        return self.throughput.get("steady_s")

    def weights_sha256(self, kind: str) -> Any:
        """``models.<kind>.weights_sha256`` as recorded (None when absent), for comparing."""
        model = self.models.get(kind)
        return model.get("weights_sha256") if isinstance(model, dict) else None

    @property
    def part_run_sha256s(self) -> list[str] | None:
        """A merge's parts, by the SHA-256 of each part's run.json (None: not a merge's record)."""
        return None if self.parts is None else [part["run_json_sha256"] for part in self.parts]


def read_run_json(path: Path) -> dict[str, Any] | None:
    """A run.json, or None when there is no regular file there; a damaged or foreign one reads as
    :data:`UNREADABLE` (whose status is not "complete": another run's). A link, FIFO or folder there
    counts as none: the stray-file check then refuses it."""
    if path.is_symlink() or not path.is_file():
        return None
    try:
        data = parse_json(read_bounded(path, MAX_RUN_JSON_BYTES))
    except (OSError, ValueError):  # FileTooLarge and a FIFO swapped in included
        return dict(UNREADABLE)
    return data if isinstance(data, dict) else dict(UNREADABLE)


def read_run_record(path: Path) -> RunRecord | None:
    """The record at ``path`` (:func:`read_run_json`, then :meth:`RunRecord.from_json`): None when there
    is no regular file there, :class:`RunRecordError` (:class:`NotFinishedRun` included) when it is no
    record of a finished run."""
    data = read_run_json(path)
    return None if data is None else RunRecord.from_json(data)


def read_previous_run(path: Path, unfinished: str) -> tuple[RunRecord | None, str | None]:
    """What a rerun finds at ``path``: ``(record, None)``; ``(None, None)`` when there is no run.json;
    ``(None, why)`` when it is no usable record: ``unfinished`` (the caller's words) for another tool's
    or an unfinished run's, else "its run.json is damaged" naming the field. Either way the results
    beside such a file are another run's."""
    try:
        return read_run_record(path), None
    except NotFinishedRun:
        return None, unfinished
    except RunRecordError as exc:
        return None, f"its run.json is damaged: {exc}"


def throughput(
    frames: int, records: int, timings_s: dict[str, float], steady_s: float | None
) -> dict[str, Any]:
    """run.json's ``throughput`` block: ``frames`` scored over the encoders' summed time, over the wall
    time the workers ran, and over the steady state (every worker ready to the last shard done: start-up
    and shutdown left out; None when not measured), and ``records`` over the whole command."""
    encoder_s = timings_s.get("embed_dnabert", 0.0) + timings_s.get("embed_esm", 0.0)
    return {
        "frames_per_s_encoders": round(frames / max(encoder_s, 1e-9), 2),
        "frames_per_s_workers_wall": round(frames / max(timings_s.get("workers", 0.0), 1e-9), 2),
        "frames_per_s_steady": round(frames / steady_s, 2) if steady_s else None,
        "steady_s": round(steady_s, 4) if steady_s is not None else None,
        "reads_per_s_total": round(records / max(timings_s.get("total", 0.0), 1e-9), 2),
    }
