"""``virnucpro-trt merge``: the parts' ``predict`` results joined into the files of one whole run.

Every part must be there once, from one split, run with the same models and settings; otherwise the
merge stops (exit 2, one line naming the problem) before it writes anything. What "the same" means:

* each part's ``run.json`` is complete and names its part (``settings.part``, from ``split.json``);
* one split id, every index 1..N exactly once, each part's record count and SHA-256 as split listed;
* the settings fingerprint without the part-specific settings (input, part, ``--save-embeddings``:
  :func:`~virnucpro_trt.settings.settings_fingerprint` with ``across_parts``);
* the virnucpro-trt version, backend, precision, engine directory, device type, the encoders'
  ``weights_sha256`` and, when both parts carry it, ``model_identity``;
* every result file the merge reads is a regular file in its part folder with the size and SHA-256
  the part's ``run.json`` records under ``outputs`` (:func:`verify_part_files`): a result edited after
  ``predict`` is refused, naming the part and the file, instead of merged silently.

The files are then written as ``predict`` writes them: ``.partial`` names renamed into place together
at the end (:class:`~virnucpro_trt.outputs.atomic.ResultSet`), ``run.json`` last; ``embeddings.h5``
only when every part saved embeddings. ``run.json`` sums counts, timings and shard figures over the
parts, recomputes throughput from the sums (per device-second), lists each part's provenance (with the
SHA-256 of the part's ``run.json``) and, as ``predict``'s does, each result file's size and SHA-256.

Idempotent, as ``predict`` is: an OUTDIR that already holds this very merge (same split, the same part
``run.json`` files, its result files unchanged) is left as it is, exit 0. Anything else at the result
names (another run's or merge's results, this merge's edited since, a user's file) is refused, exit 2,
unless ``--force``, which replaces them (:func:`_finished_merge`); folders there are refused even then.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from virnucpro_trt.environment import ensure_open_files
from virnucpro_trt.errors import UserError, shown
from virnucpro_trt.files.bounded_read import FileTooLarge, read_bounded
from virnucpro_trt.files.folders import made_folder
from virnucpro_trt.files.json_fields import parse_json
from virnucpro_trt.files.names import UnsafeMemberName, member_path
from virnucpro_trt.files.no_replace import check_still_free
from virnucpro_trt.files.ownership import changed_since, is_output_entry, reuse_finished, unreplaceable_among
from virnucpro_trt.files.result_names import (
    EMBEDDINGS_H5,
    FINAL_TEXT_FILES,
    FRAMES_TSV,
    HIGHEST_SCORE,
    PREDICTION_RESULTS,
    RESULT_NAMES,
    RUN_JSON,
    SEQUENCES_TSV,
    unrecorded_results,
)
from virnucpro_trt.files.run_lock import KeptFiles, outdir_lock
from virnucpro_trt.interrupts import SignalsHeldLater
from virnucpro_trt.outputs.atomic import ResultSet
from virnucpro_trt.outputs.demo_note import demo_note_files, with_demo_note
from virnucpro_trt.outputs.embeddings_h5 import FrameEmbeddingsWriter
from virnucpro_trt.outputs.part_merge import (
    TableCounts,
    append_embeddings,
    append_table,
    embedding_attrs,
    embedding_dims,
    merge_sorted_table,
    shard_frame_counts,
)
from virnucpro_trt.outputs.tables import FRAME_COLUMNS, SEQUENCE_COLUMNS
from virnucpro_trt.outputs.upstream import HIGHEST_HEADER, PREDICTION_HEADER
from virnucpro_trt.pipeline.completion import Completion
from virnucpro_trt.pipeline.run_paths import check_run_paths
from virnucpro_trt.pipeline.run_record import (
    MAX_RUN_JSON_BYTES,
    RunInput,
    RunRecord,
    SplitOrigin,
    read_previous_run,
    throughput,
)
from virnucpro_trt.runtime.resume import WORK_DIR, changed_models
from virnucpro_trt.settings import MergeSettings, SplitPart, settings_difference, settings_fingerprint

log = logging.getLogger(__name__)

# Besides one table per part: the standard streams, the log file, the lock, the results being written,
# the HDF5 writer's and the interpreter's own (a few dozen at most).
_FILES_BESIDE_PARTS = 64
_HEADERS = {
    PREDICTION_RESULTS: PREDICTION_HEADER,
    SEQUENCES_TSV: "\t".join(SEQUENCE_COLUMNS) + "\n",
    FRAMES_TSV: "\t".join(FRAME_COLUMNS) + "\n",
}


class MergeRefused(UserError):
    """The part results given cannot be merged into one run's results."""


@dataclass(frozen=True)
class PartResult:
    """One part's ``predict`` output folder, as far as the merge needs it."""

    folder: Path
    run: RunRecord
    part: SplitPart
    run_sha256: str  # of the part's run.json bytes: what identifies its results in a merge's record

    @property
    def name(self) -> str:
        return f"part {self.part.index} ({self.folder})"

    @property
    def has_embeddings(self) -> bool:
        return self.run.saved_embeddings and (self.folder / EMBEDDINGS_H5).is_file()

    @property
    def merged_files(self) -> list[str]:
        """The part's files the merge reads."""
        return [*FINAL_TEXT_FILES, *([EMBEDDINGS_H5] if self.has_embeddings else [])]

    def shard_sizes(self) -> Iterator[int]:
        """Records of each shard, lazily: a forged layout of 10^9 shards costs no memory, and the part's
        sequences.tsv runs out of rows at its first missing one."""
        for records, shards in self.part.layout:
            for _ in range(shards):
                yield records


def run_merge(settings: MergeSettings, command: Sequence[str] = ()) -> RunRecord:
    """Check the parts, write the merged result files into ``settings.outdir``; returns the record
    (also written as run.json)."""
    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.perf_counter()
    outdir = settings.outdir
    check_run_paths([], [outdir / RUN_JSON])  # not inside another run's working area
    parts = check_parts([read_part(folder) for folder in settings.parts])
    ensure_open_files(len(parts) + _FILES_BESIDE_PARTS, f"merging {len(parts)} parts (a file of each open)")
    for part in parts:
        verify_part_files(part)
        if outdir.is_dir() and os.path.samefile(outdir, part.folder):
            raise MergeRefused(f"{outdir} is {part.name}'s own folder; merge into another folder")
    completion = Completion()
    # a failed merge leaves no folder it made
    with completion.interrupt_is_no_failure(), made_folder(outdir), outdir_lock(outdir, KEPT_FILES) as lock:
        finished = _finished_merge(outdir, parts, settings.force, lock.results if lock is not None else {})
        if lock is not None:  # the noted files are now removed, or accounted for by run.json
            lock.forget_results()
        if finished is not None:
            return finished
        embeddings = all(p.has_embeddings for p in parts)
        if not embeddings and any(p.has_embeddings for p in parts):
            log.warning("not every part saved embeddings: no embeddings.h5 is written")
        demo = _demo_random_weights([part.run for part in parts])
        outputs: dict[str, dict[str, Any]] = {}
        placing = SignalsHeldLater()

        merged: list[RunRecord] = []

        def record(entries: dict[str, dict[str, Any]]) -> dict[str, str]:
            """Note the results in the lock before they are renamed into place, hold Ctrl-C and SIGTERM
            from here to run.json (see predict's), and give back the texts put in place after them."""
            outputs.update(with_demo_note(entries, demo))
            if lock is not None:
                lock.note_results(outputs)
            placing.hold()
            summary = _summary(parts, outdir, embeddings, command, started, time.perf_counter() - t0)
            merged.append(dataclasses.replace(summary, outputs=outputs))
            return {**demo_note_files(demo), RUN_JSON: merged[-1].text()}

        noted = functools.partial(lock.note, growing=True) if lock is not None else None
        check_still_free(outdir, RESULT_NAMES)  # free since _finished_merge (the HDF5 writer's name too)
        with placing:
            _write_files(outdir, parts, embeddings, record, noted)
            completion.done(merged[-1])  # from here an interrupt only cuts the clean-up short
        if lock is not None:
            lock.forget_results()
    return completion.result()  # the block returns, unless interrupted once its results were complete


KEPT_FILES = KeptFiles(outputs=RESULT_NAMES, results=True)  # its results' temporaries, and its note of them


def _finished_merge(
    outdir: Path, parts: list[PartResult], force: bool, left: dict[str, Any]
) -> RunRecord | None:
    """The run.json of the merge OUTDIR already holds, when it is this very merge (and not ``force``,
    which asks to merge again); else None, once what is at the result names may be replaced (nothing
    there; files a merge killed before its run.json noted in the lock, ``left``, still as noted; or
    ``force``: then the names this merge may not write again are removed, so no earlier file is left
    beside its results). Otherwise refused."""
    if (never := unreplaceable_among(outdir, RESULT_NAMES)) is not None:
        raise MergeRefused(f"{never}; move it away or choose another OUTDIR")
    if os.path.lexists(outdir / WORK_DIR):  # a predict's unfinished work: its rerun would then misread it
        raise MergeRefused(
            f"{outdir} holds {WORK_DIR}, a predict run's work folder (unfinished, or kept by --keep-work); "
            "finish that run (rerun its predict) or merge into another OUTDIR"
        )
    present = [name for name in RESULT_NAMES if os.path.lexists(outdir / name)]
    if not present:
        return None
    previous, why = read_previous_run(outdir / RUN_JSON, "not a finished merge")
    if previous is None and why is None:
        if all(n in left and changed_since(outdir, n, left[n]) is None for n in present):
            log.info("replacing %s, left by a merge interrupted before its run.json", ", ".join(present))
            for name in present:
                (outdir / name).unlink()
            return None
        why = "no run.json accounts for them"
    elif previous is not None:
        why = _other_merge(previous, parts, present)
    if why is not None:
        why = f"{', '.join(present)}: {why}"
    outputs = previous.outputs if previous is not None else None
    if reuse_finished(outdir, outputs, why, force, "this merge", "results it cannot reuse"):
        assert previous is not None
        return dataclasses.replace(previous, reused=True)
    for name in present:  # --force: no earlier result is left beside this merge's
        (outdir / name).unlink()
    return None


def _other_merge(previous: RunRecord, parts: list[PartResult], present: list[str]) -> str | None:
    """Why ``previous`` (a run.json) is not the record of merging ``parts`` into the files ``present``,
    in words, or None."""
    recorded = previous.part_run_sha256s
    if previous.split is None or recorded is None:  # a predict's record
        return "not a finished merge"
    if previous.split.split_id != parts[0].part.split_id:
        return "a merge of another split"
    if previous.split.parts != len(parts):
        return "its run.json is damaged"
    if recorded != [p.run_sha256 for p in parts]:
        return "a merge of other part results"
    runs = [p.run for p in parts]  # each checked against the SHA-256 recorded: its figures are the parts'
    if previous.counts != _summed_counts(runs) or previous.demo_random_weights != _demo_random_weights(runs):
        return "its run.json's counts or demo flag are not its parts' (edited since)"
    outputs = previous.outputs
    if not outputs or any(n not in RESULT_NAMES for n in outputs):
        return "its run.json records no result files"
    if any(n != RUN_JSON and n not in outputs for n in present):
        return "files its run.json does not account for"
    embeddings = all(p.has_embeddings for p in parts)
    if missing := unrecorded_results(outputs, embeddings, _demo_random_weights(runs)):
        return f"its run.json does not account for {', '.join(missing)}"
    return None


def read_part(folder: Path) -> PartResult:
    """A part's ``run.json``, read as hostile (bounded, typed where the merge relies on it)."""
    path = folder / RUN_JSON
    if not folder.is_dir():
        raise MergeRefused(f"{folder}: no such folder (a part's predict output folder)")
    if path.is_symlink():  # like its result files: the part's own, inside its folder
        raise MergeRefused(f"{path} is a symbolic link; a part's run.json is a plain file in its folder")
    try:
        raw = read_bounded(path, MAX_RUN_JSON_BYTES)
    except FileTooLarge as exc:
        raise MergeRefused(f"{path}: not a predict result: {exc}") from None
    except OSError:
        raise MergeRefused(f"{folder}: no {RUN_JSON}: the part's predict has not finished") from None
    try:
        run = RunRecord.from_json(parse_json(raw.decode("utf-8")))
        for key, value in run.counts.items():
            if value is None:  # unknown: a part's counts are summed, so each must be known
                raise ValueError(f"counts.{key}: not a count (an integer >= 0)")
    except ValueError as exc:  # UnicodeDecodeError and RunRecordError included
        raise MergeRefused(f"{path}: not a predict result: {exc}") from None
    if run.settings.get("part") is None:
        raise MergeRefused(
            f"{folder}: its input was not a part of a split (predict each part file from PARTS_DIR, "
            "where split.json lists it)"
        )
    try:
        part = SplitPart.from_json(run.settings["part"])
    except ValueError as exc:
        raise MergeRefused(f"{path}: {exc}") from None
    if run.input.sha256 != part.sha256 or run.counts.get("records") != part.records:
        raise MergeRefused(f"{folder}: its input is not the part its run.json names")
    names = [*FINAL_TEXT_FILES, *([EMBEDDINGS_H5] if run.saved_embeddings else [])]
    for name in names:
        if not (folder / name).is_file():
            raise MergeRefused(f"{folder}: {name} is missing")
    return PartResult(folder, run, part, hashlib.sha256(raw).hexdigest())


def verify_part_files(part: PartResult) -> None:
    """Refuse a part whose result files are not the ones its ``predict`` wrote (run.json ``outputs``).

    Each file the merge reads must be a regular file inside the part folder with the recorded size and
    SHA-256. Why: run.json is the part's account of its results; a file edited, replaced or damaged
    since would otherwise be merged silently into results that claim to be one run's.
    """
    for name in part.merged_files:
        entry = part.run.outputs.get(name)
        if not is_output_entry(entry):
            raise MergeRefused(
                f"{part.name}: its {RUN_JSON} records no size and SHA-256 for {name}; predict the part "
                "again with this version"
            )
        try:
            member_path(part.folder, name, str(part.folder))  # a plain file inside the part's folder
            changed = changed_since(part.folder, name, entry)  # predict's own rule for its results
        except (UnsafeMemberName, OSError) as exc:
            raise MergeRefused(f"{part.name}: {name} cannot be checked: {exc}") from None
        if changed is not None:
            raise MergeRefused(
                f"{part.name}: {name} is not the file its predict wrote (size or SHA-256 differs from "
                f"its {RUN_JSON}): it was changed or damaged since; predict the part again"
            )


def check_parts(parts: list[PartResult]) -> list[PartResult]:
    """Every part of one split once, run alike; returns them in part order (or raises MergeRefused)."""
    if not parts:
        raise MergeRefused("no part results given")
    first = parts[0]
    by_index: dict[int, PartResult] = {}
    for part in parts:
        if part.part.split_id != first.part.split_id:
            raise MergeRefused(
                f"{part.folder} and {first.folder} are parts of different splits "
                f"({part.part.split_id[:12]} vs {first.part.split_id[:12]})"
            )
        seen = by_index.get(part.part.index)
        if seen is not None:
            raise MergeRefused(f"part {part.part.index} is given twice ({seen.folder} and {part.folder})")
        by_index[part.part.index] = part
    missing = [i for i in range(1, first.part.parts + 1) if i not in by_index]
    if missing:
        listed = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
        raise MergeRefused(
            f"missing part(s) {listed} of {first.part.parts} (split {first.part.split_id[:12]})"
        )
    ordered = [by_index[i] for i in range(1, first.part.parts + 1)]
    reference = ordered[0]
    for part in ordered[1:]:
        problem = _difference(reference, part)
        if problem:
            raise MergeRefused(f"{part.name} was run differently from {reference.name}: {problem}")
    return ordered


def _difference(a: PartResult, b: PartResult) -> str | None:
    """What makes two parts' results incomparable, in words, or None."""
    ra, rb = a.run, b.run
    if ra.version != rb.version:
        return f"virnucpro-trt {shown(ra.version)} vs {shown(rb.version)}"
    for kind in ("dnabert", "esm"):
        wa, wb = ra.weights_sha256(kind), rb.weights_sha256(kind)
        if wa != wb:
            return f"{kind} weights differ ({str(wa)[:12]} vs {str(wb)[:12]})"
    ia, ib = ra.model_identity, rb.model_identity
    if ia is not None and ib is not None and ia != ib:
        return f"model_identity differs ({changed_models(ia, ib)}: other weights, engines or libraries)"
    # The engine directory is compared by its path only when a part lacks model_identity, which names
    # the engines by content: parts that each built the same engines into their own folders merge.
    by_content = ia is not None and ib is not None
    keys = ("backend", "precision") if by_content else ("backend", "precision", "engines")
    for key in keys:
        va, vb = getattr(ra, key), getattr(rb, key)
        if va != vb:
            return f"{key} {va} vs {vb}"
    if ra.device_type != rb.device_type:
        return f"device {ra.device_type} vs {rb.device_type}"
    if settings_fingerprint(ra.settings, True) != settings_fingerprint(rb.settings, True):
        return f"settings differ ({settings_difference(ra.settings, rb.settings, True)})"
    return None


def _write_files(
    outdir: Path,
    parts: list[PartResult],
    embeddings: bool,
    record: Callable[[dict[str, dict[str, Any]]], dict[str, str]],
    on_create: Callable[[Path], None] | None,
) -> None:
    """The merged files, written complete under temporary names (each told to ``on_create`` as it is
    created), given to ``record`` (name -> size and SHA-256), then renamed into place with the texts it
    gives back (:meth:`~virnucpro_trt.outputs.atomic.ResultSet.publish`)."""
    with contextlib.ExitStack() as stack:
        writer = None
        if embeddings:
            attrs = embedding_attrs(parts[0].folder / EMBEDDINGS_H5)
            _, dnabert_dim, esm_dim = embedding_dims(parts[0].folder / EMBEDDINGS_H5)
            for part in parts:
                path = part.folder / EMBEDDINGS_H5
                same_attrs = list(embedding_attrs(path).items()) == list(attrs.items())
                if not same_attrs or embedding_dims(path)[1:] != (dnabert_dim, esm_dim):
                    raise MergeRefused(f"{path}: other embedding widths or attributes than part 1's")
            writer = stack.enter_context(
                FrameEmbeddingsWriter(outdir / EMBEDDINGS_H5, dnabert_dim, esm_dim, attrs, on_create)
            )
        with ResultSet(outdir, FINAL_TEXT_FILES, on_create) as final:
            tables = [TableCounts() for _ in parts]
            for name, header in _HEADERS.items():
                final[name].write(header)
                for part, counted in zip(parts, tables, strict=True):
                    tally = {PREDICTION_RESULTS: counted.predictions, SEQUENCES_TSV: counted.sequences}
                    rows = append_table(final[name], part.folder / name, header, tally.get(name))
                    _check_rows(part, name, rows)
            for part, counted in zip(parts, tables, strict=True):
                _check_counts(part, counted.counts)
            highest = merge_sorted_table(
                final[HIGHEST_SCORE], [p.folder / HIGHEST_SCORE for p in parts], HIGHEST_HEADER
            )
            for part, rows in zip(parts, highest, strict=True):
                _check_rows(part, HIGHEST_SCORE, rows)
            if writer is not None:
                for part in parts:
                    blocks = shard_frame_counts(part.folder / SEQUENCES_TSV, part.shard_sizes())
                    append_embeddings(writer, part.folder / EMBEDDINGS_H5, blocks)
            final.publish(record, writer)


def _check_rows(part: PartResult, name: str, rows: int) -> None:
    """A part's table holds one row per record of the part (``sequences.tsv``: the part as split.json
    made it), per chunk with kept frames (the highest-score file) or per kept frame (the others; both
    its run.json's counts), else it is refused: a row removed with run.json's hashes forged to match
    was merged into files that claimed every record."""
    if name == SEQUENCES_TSV:
        expected, what = part.part.records, "records (split.json)"
    elif name == HIGHEST_SCORE:
        expected = part.run.counts.get("chunks_with_frames")
        what = "chunks with kept frames (its run.json)"
    else:
        expected, what = part.run.counts.get("frames"), "kept frames (its run.json)"
    if rows != expected:
        raise MergeRefused(f"{part.folder / name}: {rows} rows, but the part has {expected} {what}")


def _check_counts(part: PartResult, tallied: dict[str, int]) -> None:
    """A part's run.json counts that its tables also hold (bases, empty records, chunks, statuses,
    sequences and frames labelled virus) must be what the tables hold, else it is refused: a count
    edited in run.json went into the merged run.json and its PASSED line unseen."""
    recorded = part.run.counts
    statuses = {key for key in (*recorded, *tallied) if key.startswith("status_")}
    for key in sorted(statuses | set(tallied)):
        if key not in recorded and key not in statuses:
            continue  # a count this part's run.json does not carry: nothing to hold it to
        if recorded.get(key, 0) != tallied.get(key, 0):
            raise MergeRefused(
                f"{part.folder / RUN_JSON}: counts.{key} is {recorded.get(key)}, but the part's tables "
                f"hold {tallied.get(key, 0)} (its run.json was changed since); predict the part again"
            )


def _demo_random_weights(runs: list[RunRecord]) -> bool:
    """Whether the merge is of demo runs (random weights): its run.json says so, and the note is written."""
    return any(r.demo_random_weights for r in runs)


def _summed_counts(runs: list[RunRecord]) -> dict[str, int | None]:
    """The parts' counts summed key by key (first-seen order); None where a part lacks a key or does not
    know it (``total_counts``' rule for a resumed run's shards): an unknown total, never an under-count."""
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run.counts if k not in keys]
    return {
        k: None if any(r.counts.get(k) is None for r in runs) else sum(r.counts[k] or 0 for r in runs)
        for k in keys
    }


def _summed(tables: list[dict[str, Any]]) -> dict[str, Any]:
    """One table of figures (counts, timings, shards) summed over the parts, keys in first-seen order."""
    keys: list[str] = []
    for table in tables:
        keys += [k for k in table if k not in keys]
    return {k: sum(table.get(k, 0) for table in tables) for k in keys}


def _summary(
    parts: list[PartResult],
    outdir: Path,
    embeddings: bool,
    command: Sequence[str],
    started: dt.datetime,
    merge_s: float,
) -> RunRecord:
    """run.json of the merged result, but its ``outputs``: one run's keys, figures summed over the parts."""
    runs = [p.run for p in parts]
    first, split = runs[0], parts[0].part
    settings = json.loads(json.dumps(first.settings))
    settings.update(
        input=split.input, outdir=str(outdir), part=None, shard_records=split.shard_records,
        save_embeddings=embeddings,
    )  # fmt: skip
    counts = _summed_counts(runs)
    timings = {k: round(v, 4) for k, v in sorted(_summed([r.timings_s for r in runs]).items())}
    timings["merge_parts"] = round(merge_s, 4)
    steady = [r.steady_s for r in runs]
    steady_s = sum(s for s in steady if s is not None) if all(s is not None for s in steady) else None
    shards = _summed([r.shards for r in runs])
    shards["records_per_shard"] = split.records_per_shard
    return RunRecord(
        version=first.version,
        demo_random_weights=_demo_random_weights(runs),
        command=tuple(command),
        started=min(r.started for r in runs) or started.isoformat(timespec="seconds"),
        finished=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        settings=settings,
        settings_fingerprint=settings_fingerprint(settings),
        input=RunInput(split.input, split.input_sha256, split.input_size_bytes),
        models=first.models,
        model_identity=first.model_identity if all(r.model_identity is not None for r in runs) else None,
        counts=counts,
        timings_s=timings,
        # as in one run, but over the parts' summed device time (a part resumed after an interruption
        # counts only its last attempt's time)
        throughput=throughput(counts.get("frames", 0), counts.get("records", 0), timings, steady_s),
        device=_common_device(runs),
        precision=first.precision,
        backend=first.backend,
        engines=first.engines,
        shards=shards,
        workers=tuple({"part": p.part.index, **w} for p in parts for w in p.run.workers),
        restarts=sum(r.restarts for r in runs),
        split=SplitOrigin(split.split_id, split.parts, split.records_per_shard, split.shard_records),
        parts=tuple(_provenance(p) for p in parts),
        outputs={},  # the merged files, once written (run_merge)
    )


def _common_device(runs: list[RunRecord]) -> dict[str, Any]:
    """The parts' ``device`` where they agree; a field on which they differ (threads, a GPU's name: parts
    run on other nodes) is null, each part's own value is under ``parts``. The first part's block alone
    told a merge of 1- and 2-thread parts that every part ran on 1 thread. The device itself keeps its
    type when only the index differs (``cuda:0`` on one node, ``cuda:1`` on another: ``cuda``), as
    merge holds every part to one type."""
    first = runs[0].device
    agreed = {key for key, value in first.items() if all(r.device.get(key) == value for r in runs)}
    common = {key: value if key in agreed else None for key, value in first.items()}
    if "device" in first and "device" not in agreed:
        common["device"] = runs[0].device_type
    return common


def _provenance(part: PartResult) -> dict[str, Any]:
    """One part in the merge's ``parts``: where it came from, and its run.json's SHA-256 (what a rerun
    of the merge compares)."""
    run = part.run
    return {
        "part": part.part.index,
        "folder": str(part.folder),
        "input": run.input.to_json(),
        "first_record": part.part.first_record,
        "records": part.part.records,
        "frames": run.counts.get("frames"),
        "started": run.started,
        "finished": run.finished,
        "total_s": run.timings_s.get("total"),
        "device": run.device,
        "shards": run.shards,
        "restarts": run.restarts,
        "settings_fingerprint": run.settings_fingerprint,
        "command": list(run.command),
        "run_json_sha256": part.run_sha256,
    }
