"""``virnucpro-trt split``: cut the input into part files on the shard boundaries of one whole run.

Why on shard boundaries: a shard's results depend only on its records and the settings, so parts that
are predicted with exactly the shards one ``predict`` of the whole input would use (bases-based closes
included) give, merged, the same bytes as that run. The plan comes from the very class ``predict``
shards with (:class:`~virnucpro_trt.runtime.shards.ShardSplitter`), fed by the same validation pass, so
there is one rule, not two.

Parts are consecutive runs of shards. ``--parts N`` gives exactly N parts (a workflow names its jobs
before the input is read): the cuts fall on the shard boundaries nearest to equal record counts, no
part empty while there are enough shards; an input of fewer than N shards leaves the last parts empty.
``--records-per-part R`` cuts near every R records. Part files are 2-line FASTA (each record's whole
title line and its sequence as read; FASTQ qualities are not kept: nothing downstream reads them),
plain or gzip (deterministic bytes: no name, no time stamp).

Atomic: everything is written into ``PARTS_DIR/.split.work`` and moved into place only when every
part is complete, ``split.json`` last. ``PARTS_DIR`` must be empty (a leftover ``.split.work`` of an
interrupted split is removed when it holds only names split writes; anything else is refused), so parts
of two splits never sit side by side. An input inside ``PARTS_DIR`` is refused before anything is made.

Idempotent: a ``PARTS_DIR`` that holds exactly what this command would write (:func:`_finished_split`:
the same version, input bytes, chunk length, shard rule, part cuts and compression, and every part file
still as ``split.json`` records it) is left as it is, exit 0, so a rerun of a finished command (by hand
or by a workflow manager) does not fail. Any other split there is refused, naming the difference.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import functools
import gzip as gzip_module
import itertools
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, NoReturn

from virnucpro_trt import __version__
from virnucpro_trt.errors import UserError
from virnucpro_trt.files.digests import sha256_file
from virnucpro_trt.files.folders import made_folder
from virnucpro_trt.files.ownership import changed_since
from virnucpro_trt.files.run_lock import LOCK_FILE, KeptFiles, RunLock, outdir_lock
from virnucpro_trt.pipeline.inputs import materialise, validate_input
from virnucpro_trt.pipeline.run_paths import check_input_file, check_run_paths
from virnucpro_trt.pipeline.split_manifest import (
    MAX_PARTS,
    PART_FILE,
    SPLIT_JSON,
    PartEntry,
    SplitFileError,
    SplitManifest,
    check_part_holds,
    part_file_name,
    read_split_manifest,
    run_length,
    write_split_manifest,
)
from virnucpro_trt.runtime.shards import (
    MIN_SHARD_RECORDS,
    PIECE_FILE,
    PlannedShard,
    ShardSplitter,
    append_files,
    default_shard_records,
)
from virnucpro_trt.settings import SplitSettings, expand_layout

log = logging.getLogger(__name__)
_PARTS_SHOWN = 16  # parts listed one line each at the default verbosity

SPLIT_WORK = ".split.work"
GZIP_LEVEL = 6


def part_ranges(
    shard_records: list[int], parts: int | None = None, records_per_part: int | None = None
) -> list[tuple[int, int]]:
    """Shard index ranges ``[first, end)`` of each part (see the module docstring for the rule)."""
    if (parts is None) == (records_per_part is None) or (parts or records_per_part or 0) < 1:
        raise ValueError("give exactly one of parts or records_per_part, >= 1")
    shards = len(shard_records)
    bounds = [0]
    for records in shard_records:
        bounds.append(bounds[-1] + records)
    total = bounds[-1]
    if records_per_part is not None:
        count = min(max(1, -(-total // records_per_part)), max(1, shards))
        denominator = 1
        targets = [j * records_per_part for j in range(1, count)]
    else:
        assert parts is not None
        count = denominator = parts
        targets = [j * total for j in range(1, count)]
    scaled = [b * denominator for b in bounds]  # the cut targets as fractions over one denominator
    cuts = [0]
    for j, numerator in enumerate(targets, start=1):
        if shards < count:  # one shard per part, then empty parts
            cut = min(j, shards)
        else:
            at = bisect.bisect_left(scaled, numerator)
            candidates = [i for i in (at - 1, at) if 0 <= i <= shards]
            nearest = min(candidates, key=lambda i: (abs(bounds[i] * denominator - numerator), i))
            cut = min(max(nearest, cuts[-1] + 1), shards - (count - j))
        cuts.append(cut)
    cuts.append(shards)
    return list(itertools.pairwise(cuts))


# What a split keeps in OUTDIR while it runs: split.json's temporary file, and (noted as results) the
# parts renamed into place before split.json, so the split after a SIGKILL in between removes them.
KEPT_FILES = KeptFiles(outputs=(SPLIT_JSON,), results=True)


@dataclasses.dataclass(frozen=True)
class SplitOutcome:
    """What ``run_split`` did: the manifest OUTDIR holds, and whether this run wrote it (False: OUTDIR
    already held this very split, so its line says UP TO DATE, as the other idempotent commands')."""

    manifest: SplitManifest
    written: bool


def run_split(settings: SplitSettings) -> SplitOutcome:
    """Write the part files and ``split.json`` into ``settings.outdir``, unless it holds this split."""
    outdir = settings.outdir
    if outdir.exists() and not outdir.is_dir():
        raise UserError(f"{outdir}: exists and is not a folder")
    check_input_file(settings.input)
    check_run_paths([settings.input], [outdir / SPLIT_JSON], [outdir])
    # a failed split leaves no folder it made
    with made_folder(outdir), outdir_lock(outdir, KEPT_FILES) as lock:
        others = _check_empty(outdir, lock.results if lock is not None else {})
        if lock is not None:  # the parts a killed split noted are removed now, or were not its own
            lock.forget_results()
        work = outdir / SPLIT_WORK
        work.mkdir()
        try:
            if others:
                return SplitOutcome(_finished_split(settings, work, others), written=False)
            return SplitOutcome(_split(settings, work, lock), written=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)


_OURS = re.compile(rf"{PART_FILE.pattern}|stdin\.input|pieces|pieces/{PIECE_FILE.pattern}")


def _check_empty(outdir: Path, left: dict[str, Any]) -> list[str]:
    """The names in ``outdir`` (a leftover ``.split.work`` removed first); refused unless none, or a
    ``split.json`` among them (then :func:`_finished_split` decides). Parts a split killed before its
    split.json noted in the lock (``left``), still as noted, are removed first: its rerun starts over."""
    leftover = outdir / SPLIT_WORK
    if leftover.is_dir() and not leftover.is_symlink():
        found = [p for p in leftover.rglob("*")]
        foreign = [p for p in found if p.is_symlink() or not _OURS.fullmatch(str(p.relative_to(leftover)))]
        if foreign:
            raise UserError(
                f"{leftover} holds files split did not write ({foreign[0].name}); move them away first"
            )
        log.info("removing %s, left by an interrupted split", leftover)
        shutil.rmtree(leftover)
    others = sorted(p.name for p in outdir.iterdir() if p.name != LOCK_FILE)
    killed = [
        name
        for name in others
        if PART_FILE.fullmatch(name) and name in left and changed_since(outdir, name, left[name]) is None
    ]  # a lock's results note names another command's results too (merge's): only parts are split's
    if killed and SPLIT_JSON not in others:
        log.info("removing %s, left by a split interrupted before its %s", ", ".join(killed), SPLIT_JSON)
        for name in killed:
            (outdir / name).unlink()
        others = [name for name in others if name not in killed]
    if others and SPLIT_JSON not in others:
        _refuse_not_empty(outdir, others)
    return others


def _refuse_not_empty(outdir: Path, names: list[str]) -> NoReturn:
    listed = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    raise UserError(f"{outdir} is not empty ({listed}); split writes its parts into an empty folder")


def _finished_split(settings: SplitSettings, work: Path, names: list[str]) -> SplitManifest:
    """The split ``settings.outdir`` already holds, when it is exactly what this command would write.

    The settings first, then the input and the part files (each read once, hashed); then the part cuts
    are recomputed by :func:`part_ranges` from the recorded shard layout, which the same input, version
    and shard rule reproduce. Anything else is refused in one line naming the first difference.
    """
    outdir = settings.outdir
    try:
        manifest = read_split_manifest(outdir / SPLIT_JSON)
    except SplitFileError as exc:
        raise UserError(f"{outdir} is not empty and holds no split this command can reuse ({exc})") from None
    foreign = [name for name in names if name not in {SPLIT_JSON, *(p.file for p in manifest.parts)}]
    if foreign:
        _refuse_not_empty(outdir, foreign)
    why = _other_split(settings, manifest, work)
    if why is not None:
        raise UserError(f"{outdir} holds another split ({why}); choose an empty folder, or move it away")
    for entry in manifest.parts:
        changed = changed_since(outdir, entry.file, {"bytes": entry.size_bytes, "sha256": entry.sha256})
        if changed is not None:
            raise UserError(f"{outdir} holds this split, but {changed}; split again into an empty folder")
        # as predict of the part would: its records within what its bytes, as compressed, can hold
        check_part_holds(outdir / entry.file, entry, outdir / SPLIT_JSON)
    # so the expanded layouts are bounded by the part files' real bytes
    sizes = expand_layout(pair for entry in manifest.parts for pair in entry.layout)
    cuts = part_ranges(sizes, settings.parts, settings.records_per_part)
    files = [part_file_name(i, len(cuts), settings.gzip) for i in range(1, len(cuts) + 1)]
    shards = [end - start for start, end in cuts]
    if shards != [e.shards for e in manifest.parts] or files != [e.file for e in manifest.parts]:
        asked = (
            f"--parts {settings.parts}"
            if settings.parts
            else f"--records-per-part {settings.records_per_part}"
        )
        raise UserError(
            f"{outdir} holds a split of this input with other part cuts than {asked}; choose "
            "an empty folder, or move it away"
        )
    log.info("%s already holds this split (%s): nothing to do", outdir, manifest.split_id[:12])
    return manifest


def _other_split(settings: SplitSettings, manifest: SplitManifest, work: Path) -> str | None:
    """Why ``manifest`` was made from another input or with other settings, in words, or None."""
    if manifest.version != __version__:
        return f"made by virnucpro-trt {manifest.version}"
    if manifest.chunk_length != settings.chunk_length:
        return f"--chunk-length {manifest.chunk_length}"
    if manifest.shard_records != settings.shard_records:
        made = manifest.shard_records
        return f"--shard-records {made}" if made is not None else "the default shard size"
    if any(entry.file.endswith(".gz") != settings.gzip for entry in manifest.parts):
        return "gzip-compressed parts" if not settings.gzip else "plain parts"
    path, _ = materialise(settings.input, work / "stdin.input")
    if sha256_file(path) != manifest.input_sha256:
        return "of another input"
    return None


def _split(settings: SplitSettings, work: Path, lock: RunLock | None) -> SplitManifest:
    path, display = materialise(settings.input, work / "stdin.input")
    sha256 = sha256_file(path)
    splitter = ShardSplitter(work / "pieces", settings.shard_records, titles=True)
    summary = validate_input(path, display, "dna", settings.chunk_length, splitter=splitter, sha256=sha256)
    planned = splitter.plan()
    ranges = part_ranges([s.records for s in planned], settings.parts, settings.records_per_part)
    if len(ranges) > MAX_PARTS:  # only --records-per-part gets here: the CLI holds --parts to the bound
        raise UserError(
            f"--records-per-part {settings.records_per_part} cuts {len(ranges):,} parts, more than the "
            f"{MAX_PARTS:,} one split makes; give larger parts"
        )
    entries = []
    first = 0
    for index, (start, end) in enumerate(ranges, start=1):
        name = part_file_name(index, len(ranges), settings.gzip)
        shards = planned[start:end]
        _write_part(work / name, shards, settings.gzip)
        records = sum(s.records for s in shards)
        entries.append(
            PartEntry(
                index=index,
                file=name,
                sha256=sha256_file(work / name),
                size_bytes=(work / name).stat().st_size,
                first_record=first,
                records=records,
                bases=sum(s.bases for s in shards),
                frames=sum(s.frames for s in shards),
                layout=tuple(run_length([s.records for s in shards])),
            )
        )
        first += records
    manifest = SplitManifest(
        input=display,
        input_sha256=sha256,
        input_size_bytes=summary.size_bytes,
        records=summary.records,
        bases=summary.bases,
        frames=summary.frames,
        chunk_length=settings.chunk_length,
        shard_records=settings.shard_records,
        records_per_shard=settings.shard_records or default_shard_records(summary.records),
        parts=tuple(entries),
        version=__version__,
    )
    _commit(work, settings.outdir, manifest, lock)
    _log_plan(manifest, len(planned))
    return manifest


def _write_part(path: Path, shards: list[PlannedShard], gzip: bool) -> None:
    pieces = [piece for shard in shards for piece in shard.pieces]
    with open(path, "wb") as raw:
        if gzip:
            with gzip_module.GzipFile(
                filename="", mode="wb", fileobj=raw, compresslevel=GZIP_LEVEL, mtime=0
            ) as out:
                append_files(pieces, out, remove=True)
        else:
            append_files(pieces, raw, remove=True)


def _commit(work: Path, outdir: Path, manifest: SplitManifest, lock: RunLock | None) -> None:
    """Move the parts into place, then write split.json: a split without split.json is not one. The
    parts are noted in the lock first, and split.json's temporary file as it is made, so what a SIGKILL
    in between leaves is removed by the rerun."""
    moved: list[Path] = []
    noted = None
    if lock is not None:
        lock.note_results({e.file: {"bytes": e.size_bytes, "sha256": e.sha256} for e in manifest.parts})
        noted = functools.partial(lock.note, growing=True)
    try:
        for entry in manifest.parts:
            os.replace(work / entry.file, outdir / entry.file)
            moved.append(outdir / entry.file)
        write_split_manifest(outdir, manifest, noted)
        if lock is not None:
            lock.forget_results()
    except BaseException:
        for path in moved:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if lock is not None:  # the parts are gone again: nothing for a rerun to find
            lock.forget_results()
        raise


def _log_plan(manifest: SplitManifest, shards: int) -> None:
    log.info(
        "%s: %d record(s), %d kept frame(s) at %d bp chunks, %d shard(s) of up to %d records -> %d part(s)",
        manifest.input, manifest.records, manifest.frames, manifest.chunk_length, shards,
        manifest.records_per_shard, len(manifest.parts),
    )  # fmt: skip
    for number, entry in enumerate(manifest.parts):
        level = logging.INFO if number < _PARTS_SHOWN else logging.DEBUG  # 10,000 lines say nothing more
        if number == _PARTS_SHOWN:
            more = len(manifest.parts) - _PARTS_SHOWN
            log.info("  ... and %d more part(s): %s lists each (-v shows them here)", more, SPLIT_JSON)
        if not entry.records:
            log.log(level, "  %s: no records (predicts to header-only results)", entry.file)
            continue
        log.log(
            level, "  %s: records %d-%d, %d shard(s), %d kept frame(s)", entry.file, entry.first_record + 1,
            entry.first_record + entry.records, entry.shards, entry.frames,
        )  # fmt: skip
    empty = [entry.index for entry in manifest.parts if not entry.records]
    if empty and manifest.records:
        if manifest.shard_records is None:
            advice = (
                f"a shard holds at least {MIN_SHARD_RECORDS} records by default; --shard-records N spreads "
                "a small input wider"
            )
        elif manifest.shard_records > 1:
            advice = f"with --shard-records {manifest.shard_records}; a smaller N spreads a small input wider"
        else:  # one record a shard already
            advice = f"each shard is one record already: ask for at most {manifest.records} part(s)"
        log.warning(
            "the input has only %d shard(s): %d part(s) are empty (they predict to header-only results); %s",
            shards, len(empty), advice,
        )  # fmt: skip


__all__ = ["SPLIT_JSON", "part_ranges", "run_split"]
