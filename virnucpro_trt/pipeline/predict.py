"""``virnucpro-trt predict``: reads -> chunks -> kept frames -> DNABERT-S + ESM-2 -> classifier -> files.

Order of work, chosen so that a run fails early, survives what it can, and never leaves a misleading
file:

1. resolve the three models and the worker slots, check where the run reads and writes
   (``run_paths.py``), read the classifier and check an engine directory that needs no build — a
   missing or bad model, GPU or path fails before OUTDIR exists;
2. hash the input (stdin is first copied to a file the run creates new, never over another) and look
   at OUTDIR: files at the result names must be this run's finished results, or the tool's results
   that ``.work``'s state notes (a run killed between its merge and run.json); anything else is
   refused unless ``--force``. Then ``.work``: resume it, or refuse work of another input/settings (or a
   ``.work`` holding files the tool did not write, FIFOs included);
3. validate the whole input in one pass that also writes it as shard files (a bad record fails with one
   line, no file written);
4. build the engine directory if it needs it (once), identify every model by content and refuse
   finished shards computed with other weights, then run the shards on one worker per device
   (``runtime/coordinator.py``); finished shards of an earlier attempt are skipped;
5. merge the per-shard results in input order into the final files (each renamed into place only when
   all are complete), note them in ``.work``'s state, write run.json, and remove what the run wrote in
   ``.work`` (unless ``--keep-work``).

A failure before any shard finished removes everything the run created; a later one (or an interrupt)
keeps ``.work`` for the rerun that resumes it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from virnucpro_trt import __version__
from virnucpro_trt.engines.manifest import CLASSIFIER_FILE, EngineManifest
from virnucpro_trt.errors import EngineMismatchError, RunFailure, UserError, VirnucproError, one_line, shown
from virnucpro_trt.files.atomic import remove_quietly
from virnucpro_trt.files.digests import sha256_file
from virnucpro_trt.files.folders import made_folder
from virnucpro_trt.files.names import check_parent_folders
from virnucpro_trt.files.no_replace import check_still_free
from virnucpro_trt.files.ownership import changed_since, reuse_finished, unreplaceable_among
from virnucpro_trt.files.result_names import EMBEDDINGS_H5, RESULT_NAMES, RUN_JSON, unrecorded_results
from virnucpro_trt.files.run_lock import FOLDER_STDIN, LOCK_FILE, STDIN_COPY, KeptFiles, outdir_lock
from virnucpro_trt.files.stamps import stamp_at
from virnucpro_trt.interrupts import SignalsHeldLater
from virnucpro_trt.models.checkpoints import precheck_models
from virnucpro_trt.models.classifier import classifier_source, load_classifier_weights
from virnucpro_trt.models.identity import WeightsIdentity, identify_checkpoint
from virnucpro_trt.models.kinds import DNABERT_S, ENCODER_NAMES, ESM2, MODELS, checkpoint_specs
from virnucpro_trt.models.resolve import resolve_model
from virnucpro_trt.outputs.demo_note import demo_note_files, with_demo_note
from virnucpro_trt.outputs.embeddings_h5 import FrameEmbeddingsWriter
from virnucpro_trt.outputs.merge import merge_shard_results
from virnucpro_trt.pipeline.completion import Completion
from virnucpro_trt.pipeline.encoders import RunWeights, engine_dir_for_run
from virnucpro_trt.pipeline.inputs import InputSummary, InputWatch, materialise, validate_input
from virnucpro_trt.pipeline.run_paths import check_input_file, check_run_paths
from virnucpro_trt.pipeline.run_record import (
    RunInput,
    RunRecord,
    read_previous_run,
    throughput,
)
from virnucpro_trt.pipeline.shard_predictor import STAGES, PredictShardJob, total_counts
from virnucpro_trt.pipeline.split_manifest import settings_for_input
from virnucpro_trt.runtime.coordinator import (
    Coordinator,
    CoordinatorReport,
    RunInterrupted,
    plan_worker_slots,
)
from virnucpro_trt.runtime.device import computing_releases
from virnucpro_trt.runtime.progress import ProgressTasks, SilentProgress
from virnucpro_trt.runtime.resume import WORK_DIR, WorkDir, changed_models
from virnucpro_trt.runtime.shard_marker import ShardMarker, result_roles
from virnucpro_trt.runtime.shards import (
    ShardIndex,
    ShardSpec,
    ShardSplitter,
    default_shard_records,
    write_shard_index,
)
from virnucpro_trt.runtime.worker import WorkerSlot
from virnucpro_trt.runtime.worker_facts import WorkerFacts
from virnucpro_trt.settings import CHUNK_LENGTHS, PredictSettings, settings_difference

if TYPE_CHECKING:
    from virnucpro_trt.engines.engine_set import CheckedEngines

log = logging.getLogger(__name__)

ENGINE_CACHE = "engines"  # --backend without --engines builds here
# Every file a run writes directly in OUTDIR (an input at one of these paths is refused).
OUTPUT_NAMES = (*RESULT_NAMES, LOCK_FILE, STDIN_COPY)
# What a run keeps in OUTDIR while it runs: its result files' temporaries and its copy of stdin.
KEPT_FILES = KeptFiles(RESULT_NAMES, stdin=FOLDER_STDIN)
INTERRUPTED = "interrupted; rerun the same command to resume"


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


@dataclass
class _RunContext:
    """What the stages of one ``predict`` run share."""

    settings: PredictSettings
    specs: dict[str, str | None]
    slots: list[WorkerSlot]
    progress: ProgressTasks
    timer: _Timer
    command: Sequence[str]
    demo: bool
    started: tuple[dt.datetime, float]
    engines: CheckedEngines | None = None  # checked before OUTDIR existed, when no build was needed
    # notes a temporary file in OUTDIR in the run's lock, so the rerun after a SIGKILL removes it
    note_temporary: Callable[[Path], None] | None = None
    # the summary, once run.json is in place: an interrupt after that is no failure
    completion: Completion = dataclasses.field(default_factory=Completion)

    @property
    def device_type(self) -> str:
        """``cpu`` or ``cuda``: where the run computes (what its recorded settings name)."""
        return self.slots[0].device.split(":")[0]


def run_predict(
    settings: PredictSettings,
    progress: ProgressTasks | None = None,
    command: Sequence[str] = (),
    demo: bool = False,
) -> RunRecord:
    """Run the whole prediction and return its record (also written as run.json).

    Raises :class:`~virnucpro_trt.runtime.coordinator.RunInterrupted` (exit 130) on SIGINT (and SIGTERM
    under :func:`~virnucpro_trt.interrupts.sigterm_as_interrupt`, as every command runs),
    with the finished shards kept in ``OUTDIR/.work`` for a rerun of the same command. Any other failure
    before a shard finished removes everything this run created (OUTDIR included, when it made it).
    """
    ctx = _RunContext(
        settings,
        checkpoint_specs(settings.dnabert, settings.esm, settings.classifier),
        [],
        progress or SilentProgress(),
        _Timer(),
        command,
        demo,
        (dt.datetime.now(dt.timezone.utc), time.perf_counter()),
    )
    outdir = settings.outdir
    with ctx.timer.stage("resolve_models"):  # a missing model fails before the input is read
        model_paths = [resolve_model(spec, MODELS[kind].short) for kind, spec in ctx.specs.items() if spec]
    run = settings.run
    ctx.slots = plan_worker_slots(
        settings.encoders.device, run.gpus, run.workers, settings.encoders.threads, run.workers_per_gpu
    )
    if settings.classifier or settings.engines:
        classifier = Path(settings.classifier or Path(settings.engines or "") / CLASSIFIER_FILE)
        _warn_chunk_length_mismatch(classifier, settings.chunk_length)
    check_parent_folders(outdir)
    check_input_file(settings.input)
    check_run_paths(
        [settings.input, *model_paths, settings.engines],
        [outdir / name for name in OUTPUT_NAMES],
        [outdir / WORK_DIR, *([outdir / ENGINE_CACHE] if settings.engines is None else [])],
    )
    with ctx.timer.stage("check_models"):  # a bad classifier or engine directory fails before OUTDIR exists
        ctx.engines = _preflight(ctx)

    work_left = f" (the same command removes what is left of {outdir / WORK_DIR})"
    left = "" if settings.run.keep_work else work_left
    # a failed run leaves no folder it made; one holding results or resumable work stays
    with (
        ctx.completion.interrupt_is_no_failure(left),
        made_folder(outdir),
        outdir_lock(outdir, KEPT_FILES) as lock,
    ):
        where = _folder_identity(outdir)
        # never over another file; noted while it grows, so a SIGKILL's leftover goes on the rerun (a
        # SIGTERM is an interrupt: cli/main.py)
        noted = functools.partial(lock.note, growing=True) if lock is not None else None
        ctx.note_temporary = noted
        path, display = materialise(settings.input, outdir / STDIN_COPY, noted)
        if lock is not None and path == outdir / STDIN_COPY:
            lock.note(path)  # a rerun after a SIGKILL removes it (and only it)
        try:
            try:
                return _run(ctx, path, display)
            except KeyboardInterrupt:
                raise RunInterrupted(INTERRUPTED) from None
        except RunInterrupted:
            raise
        except BaseException as exc:
            if isinstance(exc, Exception) and _folder_identity(outdir) != where:  # the failure's cause
                then = one_line(exc, 200, name=not isinstance(exc, VirnucproError))
                raise UserError(
                    f"{outdir} was moved or removed while the run went on (then: {then}); put it back and "
                    "rerun the same command to resume, or start again in a new OUTDIR"
                ) from exc
            work = WorkDir(outdir)
            # nothing worth resuming: what the tool wrote there goes, also in a .work that was there
            # before (an empty one, or a killed run's with no shard finished); anything else stays
            if work.finished_count() == 0:
                work.wipe()
            raise
        finally:
            if path == outdir / STDIN_COPY:
                remove_quietly(path)
    return ctx.completion.result()  # the block returns, unless interrupted once its results were complete


def _check_still_finished(
    work: WorkDir, shards: list[ShardSpec], markers: dict[int, ShardMarker], save_embeddings: bool
) -> None:
    """Fail (exit 1) when a finished shard's files no longer verify as its marker recorded them (size,
    stamp, else SHA-256: a stat per file), because they were edited, replaced or removed while the run
    went on: merged, they would have been believed, where a resume checks them. Their markers go, so
    the rerun redoes those shards."""
    still = work.finished_shards(shards, result_roles(save_embeddings))  # warns of each, removes its marker
    changed = [shard for shard in shards if shard.id in markers and shard.id not in still]
    if changed:
        raise RunFailure(
            f"the results of {changed[0].describe()}"
            + (f" and {len(changed) - 1} more shard(s)" if len(changed) > 1 else "")
            + f" changed in {work.results} while the run went on; rerun the same command (they are redone)"
        )


def _folder_identity(folder: Path) -> list[int] | None:
    """The folder at ``folder`` as the system knows it (inode, device), None when nothing is there: a
    worker that fails on a shard file of an OUTDIR moved away mid-run says "input file not found",
    which is the move's doing, and the clean-up must not act on whatever is at that path now."""
    stamp = stamp_at(folder)
    return None if stamp is None else stamp[3:]


def _preflight(ctx: _RunContext) -> CheckedEngines | None:
    """Models a run can check without writing anything: the classifier file, the encoders' tokenizers
    against their embedding rows (workers load the weights later; a mismatch there would fail in each of
    them), and an engine directory that needs no build. A directory that does need one is built after
    the input is validated."""
    settings = ctx.settings
    device_settings = dataclasses.replace(settings.encoders, device=ctx.slots[0].device)
    if settings.engines is None or settings.rebuild:  # the checkpoints are loaded: check what is cheap
        source = resolve_model(settings.classifier, "classifier") if settings.classifier else None
        weights = load_classifier_weights(source) if source is not None else None
        named = {kind: spec for kind in ENCODER_NAMES if (spec := ctx.specs[kind])}
        encoders = {kind: resolve_model(spec, MODELS[kind].short) for kind, spec in named.items()}
        precheck_models(encoders, weights, source)
    cache = _engine_cache(settings)
    try:
        return engine_dir_for_run(device_settings, ctx.specs, settings.engines, False, cache, build=False)
    except EngineMismatchError:
        if settings.rebuild or settings.engines is None:  # (re)built once the input is known to be good
            return None
        raise


def _engine_cache(settings: PredictSettings) -> Path:
    """``OUTDIR/engines``, where ``--backend`` without ``--engines`` builds: a folder of this run's own,
    so a symbolic link there (which would make the build write, or replace engines, elsewhere) is
    refused in one line."""
    cache = settings.outdir / ENGINE_CACHE
    if cache.is_symlink():
        raise UserError(
            f"{cache} is a symbolic link; predict builds its engines there itself. Give an engine folder "
            "with --engines, or move the link away"
        )
    return cache


def _run(ctx: _RunContext, path: Path, display: str) -> RunRecord:
    settings, timer = ctx.settings, ctx.timer
    outdir = settings.outdir
    work = WorkDir(outdir)
    with timer.stage("hash_input"):
        watch = InputWatch.start(path, display)  # the bytes hashed are the bytes sharded while it holds
        sha256 = sha256_file(path)
    settings = ctx.settings = settings_for_input(settings, path, sha256)  # a part: the split's shards
    with timer.stage("check_finished"):
        finished = _finished_run(ctx, sha256, work)
    if finished is not None:
        return finished
    resumed = work.open(sha256, settings.fingerprint(ctx.device_type), settings.run.force)
    index = work.shard_index() if resumed else None
    if index is None:
        with timer.stage("validate_input"):
            summary, shards = _validate_and_shard(settings, work, watch, sha256, ctx.device_type)
    else:
        shards = index.shards
        summary = InputSummary.from_counts(path, display, index.input)
        timer.totals["validate_input"] += 0.0
    with timer.stage("check_engines"):  # built here, once, before any worker exists
        engines = ctx.engines or engine_dir_for_run(
            dataclasses.replace(settings.encoders, device=ctx.slots[0].device),
            ctx.specs,
            settings.engines,
            settings.rebuild,
            _engine_cache(settings),
        )
    with timer.stage("identify_models"):
        known, identity = _identify_models(ctx, engines, work)
        work.confirm_models(identity, {k: w.to_json() for k, w in known.weights.items()}, settings.run.force)
    for name in RESULT_NAMES:  # no older result beside this run
        remove_quietly(outdir / name)

    markers = work.finished_shards(shards, result_roles(settings.save_embeddings))
    skipped = len(markers)
    if skipped:
        log.info(
            "resuming: %d of %d shard(s) already finished in %s are skipped", skipped, len(shards), work.root
        )
    pending = [s for s in shards if s.id not in markers]
    facts = work.read_facts() if skipped else None
    report = None
    if pending or facts is None:
        report = _run_shards(ctx, known, work, pending, facts is None)
        markers.update(report.markers)
        facts = report.facts or facts  # this run's devices when it ran any worker
    assert facts is not None
    _check_still_finished(work, shards, markers, settings.save_embeddings)

    outputs: dict[str, dict[str, Any]] = {}
    placing = SignalsHeldLater()
    recorded: list[RunRecord] = []
    merge_started = time.perf_counter()

    def record(entries: dict[str, dict[str, Any]], chunks_with_frames: int) -> dict[str, str]:
        """Note the result files in ``.work``'s state before they are renamed into place: a run killed
        from there to its run.json leaves files its rerun knows as its own (``_check_stray_results``).
        From here to run.json (milliseconds) Ctrl-C and SIGTERM wait (``interrupts.SignalsHeldLater``): one
        between the renames left results in place without their run.json and exited 130, one during
        run.json's rename exited 130 on complete results. Gives back the texts put in place after the
        results: the demo note and run.json."""
        outputs.update(with_demo_note(entries, ctx.demo))
        work.record_outputs(outputs)
        placing.hold()
        timer.totals["merge"] += time.perf_counter() - merge_started
        run_record = _summary(
            ctx, summary, shards, markers, report, facts, skipped, chunks_with_frames, identity
        )
        run_record = dataclasses.replace(
            run_record,
            model_weights={kind: w.to_json() for kind, w in known.weights.items()},
            outputs=outputs,
        )
        recorded.append(run_record)
        return {**demo_note_files(ctx.demo), RUN_JSON: run_record.text()}

    with placing:
        _merge(settings, work, shards, markers, facts, record, ctx.note_temporary)
        ctx.completion.done(recorded[-1])  # from here an interrupt only cuts the clean-up short
    if settings.run.keep_work:
        log.info("kept the work folder %s (--keep-work)", work.root)
    else:
        work.wipe()
    return recorded[-1]


def _finished_run(ctx: _RunContext, sha256: str, work: WorkDir) -> RunRecord | None:
    """The record of the run OUTDIR already holds, when it is this very run; else None.

    "This very run": same input (SHA-256), same settings fingerprint, same model identity, and result
    files that still have the sizes and SHA-256 its run.json recorded. Then nothing is recomputed or
    touched, unless ``--force``: asked to compute, it computes (same results, new timings). Results of
    another run, this run's results changed since, or result files no run.json accounts for are
    refused, exit 2, unless ``--force``, which replaces them. A run.json that is no record of a finished
    run (not JSON, unfinished, a field missing or mistyped) is another run's.
    """
    settings = ctx.settings
    outdir = settings.outdir
    if (never := unreplaceable_among(outdir, RESULT_NAMES)) is not None:  # not even with --force
        raise UserError(f"{never}; move it away or choose another OUTDIR")
    previous, why = read_previous_run(outdir / RUN_JSON, "it did not finish")
    if previous is None and why is None:
        _check_stray_results(outdir, work, settings.run.force)
        return None
    if previous is not None:
        why = _difference(ctx, previous, sha256, work)
    another = "the results of another run"
    outputs = previous.outputs if previous is not None else None
    if reuse_finished(outdir, outputs, why, settings.run.force, "this run", another):
        assert previous is not None
        reused = dataclasses.replace(previous, reused=True)
        ctx.completion.done(reused)  # the results are complete: an interrupt below cuts only the clean-up
        _remove_leftover_work(ctx, previous, sha256, work)
        return reused
    return None


def _remove_leftover_work(ctx: _RunContext, previous: RunRecord, sha256: str, work: WorkDir) -> None:
    """``.work`` of this very run, left after its run.json was written (a signal or a SIGKILL while the
    run removed it): removed now, as that run would have (the input's copy in shards, every shard's
    results). Kept where that run or this one asks for ``--keep-work``."""
    if previous.keep_work or ctx.settings.run.keep_work:
        return
    if work.holds_run(sha256, ctx.settings.fingerprint(ctx.device_type)):
        log.info("removing %s, left by this run after it finished", work.root)
        work.wipe()


def _check_stray_results(outdir: Path, work: WorkDir, force: bool) -> None:
    """Refuse (exit 2) files at the run's output names that no run.json accounts for, unless ``force``.

    A run removes every one of those names before it writes its own, so each must be the tool's: listed
    unchanged in ``.work``'s state (a run killed after its merge, before run.json wrote them). A user's
    file, a link (a dangling one too) or anything else is refused — whether or not ``.work`` exists (a
    folder, device, FIFO or socket even with ``force``: :func:`_finished_run` refused them first).
    """
    present = [name for name in RESULT_NAMES if os.path.lexists(outdir / name)]
    recorded = work.recorded_outputs() if present else {}
    stray = [n for n in present if n not in recorded or changed_since(outdir, n, recorded[n]) is not None]
    if not stray:
        return
    listed = ", ".join(stray)
    if force:
        log.warning("--force: replacing %s in %s (no finished run accounts for them)", listed, outdir)
        return
    raise UserError(
        f"{outdir} holds result files no finished run accounts for ({listed}); move them away, choose "
        "another OUTDIR, or add --force to replace them"
    )


def _difference(ctx: _RunContext, previous: RunRecord, sha256: str, work: WorkDir) -> str | None:
    """Why ``previous`` (a run.json) is not a record of this run, or None when it is (its result files
    are compared afterwards: :func:`~virnucpro_trt.files.ownership.changed_output`)."""
    if previous.input.sha256 != sha256:
        return "a different input"
    if previous.settings_fingerprint != ctx.settings.fingerprint(ctx.device_type):
        current = ctx.settings.to_json(ctx.device_type)
        return f"different settings ({settings_difference(previous.settings, current)})"
    if previous.version != __version__:  # results are never reused across versions, as shards are not
        return f"made by virnucpro-trt {shown(previous.version)}, this is {__version__}"
    if previous.demo_random_weights != ctx.demo:  # the DEMO marker must match the command
        return "a --demo run" if not ctx.demo else "not a --demo run"
    if ctx.settings.encoders.backend not in (None, "torch") and ctx.engines is None:
        return "its engines are not there any more"
    _, identity = _identify_models(ctx, ctx.engines, work, previous.model_weights)
    if previous.model_identity != identity:
        changed = changed_models(previous.model_identity, identity)
        return f"other model weights or configuration: {changed}"
    if not previous.outputs:
        return "it records no result files"
    for name in previous.outputs:
        if name not in OUTPUT_NAMES:
            return f"it lists an unexpected file {name!r}"
    if missing := unrecorded_results(previous.outputs, ctx.settings.save_embeddings, ctx.demo):
        return f"its run.json does not account for {', '.join(missing)}"
    return None


def _identify_models(
    ctx: _RunContext,
    engines: CheckedEngines | None,
    work: WorkDir,
    recorded: dict[str, Any] | None = None,
) -> tuple[RunWeights, dict[str, str | None]]:
    """The content identity of every model this run computes with (the resume key's third part).

    With engines: the weights the set was built from and the set itself (its files were just checked).
    Eager: each checkpoint's hash, reusing an earlier attempt's (``recorded``, or ``.work``'s) where the
    files carry its stamps. Both: the releases of the libraries that compute and that no manifest pins
    (``computing_releases``).
    """
    if engines is not None:
        manifest = EngineManifest.read(engines.folder)
        identity: dict[str, str | None] = {k: manifest.models[k].weights_sha256 for k in MODELS}
        identity["engines"] = engines.identity
        identity.update(computing_releases(engines.backend))
        return RunWeights(engines=engines), identity
    recorded = recorded if isinstance(recorded, dict) else work.recorded_weights()
    weights = {}
    for kind, spec in ctx.specs.items():
        assert spec is not None  # eager runs name all three (the CLI checks)
        path = resolve_model(spec, MODELS[kind].short)
        weights[kind] = identify_checkpoint(kind, path, WeightsIdentity.from_json(recorded.get(kind)))
    identity = {kind: w.sha256 for kind, w in weights.items()}
    identity["engines"] = None
    identity.update(computing_releases())
    return RunWeights(weights=weights), identity


def _validate_and_shard(
    settings: PredictSettings, work: WorkDir, watch: InputWatch, sha256: str, device_type: str
) -> tuple[InputSummary, list[ShardSpec]]:
    """The validation pass, writing the input as shard files on the way; then the resume key. The input
    must still be the file hashed (``watch``): shards of other bytes under its hash would be resumed as
    this input's."""
    path, display = watch.path, watch.display
    folder = work.fresh_shards_folder()
    try:
        layout = settings.part.shard_sizes() if settings.part else None
        splitter = ShardSplitter(folder, settings.shard_records, layout)
        summary = validate_input(
            path, display, "dna", settings.chunk_length, splitter=splitter, sha256=sha256,
            min_length=settings.min_length, refuse_protein=settings.part is None,  # split judged the whole
        )  # fmt: skip
        shards = splitter.finish()
        watch.check("predict", [])
        per_shard = settings.shard_records or default_shard_records(summary.records)
        write_shard_index(folder, ShardIndex(shards, summary.counts, per_shard))
        work.commit_shards(folder)
        work.write_state(sha256, settings.fingerprint(device_type), settings.to_json(device_type))
    except BaseException:
        work.wipe()  # a bad input leaves nothing behind
        raise
    log.info(
        "%d record(s), %d kept frame(s) in %d shard(s) of up to %d records (%s)",
        summary.records, summary.frames, len(shards), per_shard, work.shards,
    )  # fmt: skip
    return summary, shards


def _run_shards(
    ctx: _RunContext, known: RunWeights, work: WorkDir, pending: list[ShardSpec], need_facts: bool
) -> CoordinatorReport:
    job = PredictShardJob(ctx.settings, known, work.shards, work.results)
    with ctx.progress.task("predict", sum(s.frames for s in pending), "frames") as advance:
        stall_s = ctx.settings.run.stall_timeout_s
        coordinator = Coordinator(job, ctx.slots, advance, on_ready=work.save_facts, stall_s=stall_s)
        with ctx.timer.stage("workers"):
            report = coordinator.run(pending, need_facts=need_facts)
    for stats in report.workers:
        if stats.shards or stats.restarts:
            log.info(
                "worker %d (%s%s): %d frames in %.2f s (%s frames/s), %d shard(s), %d restart(s)",
                stats.slot, stats.device, f", {stats.device_name}" if stats.device_name else "", stats.frames,
                stats.busy_s, f"{stats.frames / stats.busy_s:,.1f}" if stats.busy_s else "-", stats.shards,
                stats.restarts,
            )  # fmt: skip
    return report


def _merge(
    settings: PredictSettings,
    work: WorkDir,
    shards: list[ShardSpec],
    markers: dict[int, ShardMarker],
    facts: WorkerFacts,
    record: Callable[[dict[str, dict[str, Any]], int], dict[str, str]],
    on_create: Callable[[Path], None] | None,
) -> None:
    outdir = settings.outdir
    check_still_free(outdir, RESULT_NAMES)  # cleared as the run began (the HDF5 writer's name too)
    with contextlib.ExitStack() as stack:
        embeddings = None
        if settings.save_embeddings:
            embeddings = stack.enter_context(
                FrameEmbeddingsWriter(
                    outdir / EMBEDDINGS_H5,
                    facts.dnabert.dim,
                    facts.esm.dim,
                    _embedding_attrs(settings, facts.precision),
                    on_create,
                )
            )
        merge_shard_results(outdir, work.results, shards, markers, embeddings, record, on_create)


def _summary(
    ctx: _RunContext,
    summary_in: InputSummary,
    shards: list[ShardSpec],
    markers: dict[int, ShardMarker],
    report: CoordinatorReport | None,
    facts: WorkerFacts,
    skipped: int,
    chunks_with_frames: int,
    identity: dict[str, str | None],
) -> RunRecord:
    """run.json, all but ``model_weights`` and ``outputs``: counts over every shard; timings and
    throughput over the shards run this time."""
    settings, timer, command, demo, started = ctx.settings, ctx.timer, ctx.command, ctx.demo, ctx.started
    counts: dict[str, Any] = total_counts(marker.report.counts for marker in markers.values())
    counts.pop("records")
    counts.pop("chunks")
    counts.update(
        records=summary_in.records,
        empty_records=summary_in.empty_records,
        bases=summary_in.bases,
        chunks=summary_in.chunks,
        chunks_with_frames=chunks_with_frames,
    )
    ran = report.markers if report is not None else {}
    totals = timer.totals
    for stage in STAGES:
        totals[stage] = sum(m.report.timings_s.get(stage, 0.0) for m in ran.values())
    workers = [w.to_json() for w in report.workers] if report is not None else []
    totals["load_models"] = max((w["load_models_s"] for w in workers), default=0.0)
    totals["total"] = time.perf_counter() - started[1]
    frames_run = sum(m.frames for m in ran.values())
    steady_s = report.steady_s if report is not None else None
    return RunRecord(
        version=__version__,
        demo_random_weights=demo,
        command=tuple(command),
        started=started[0].isoformat(timespec="seconds"),
        finished=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        settings=settings.to_json(ctx.device_type),
        settings_fingerprint=settings.fingerprint(ctx.device_type),
        input=RunInput(summary_in.display_name, summary_in.sha256, summary_in.size_bytes),
        models=facts.models_json(),
        model_identity=identity,
        counts=counts,
        timings_s={k: round(v, 4) for k, v in sorted(totals.items())},
        throughput=throughput(frames_run, summary_in.records, totals, steady_s),  # of the shards run now
        device=facts.device.to_json(),
        precision=facts.precision,
        backend=facts.backend,
        engines=facts.engines,
        shards={
            "total": len(shards),
            "records_per_shard": settings.shard_records or default_shard_records(summary_in.records),
            "processed": len(ran),
            "skipped": skipped,
            "failed_attempts": report.failed_attempts if report is not None else 0,
        },
        workers=tuple(workers),
        restarts=report.restarts if report is not None else 0,
        outputs={},  # the result files, once written (_run)
    )


def _embedding_attrs(settings: PredictSettings, precision: str) -> dict[str, str]:
    return {
        "tool": f"virnucpro-trt {__version__}",
        "dnabert": settings.dnabert or str(settings.engines),
        "esm": settings.esm or str(settings.engines),
        "precision": precision,
        "pooling_dnabert": DNABERT_S.pooling,
        "pooling_esm": ESM2.pooling,
    }


def _warn_chunk_length_mismatch(classifier_path: Path, chunk_length: int) -> None:
    """Upstream names its classifiers ``300_model.pth`` / ``500_model.pth``: catch the obvious mix-up,
    also through a converted or engine-folder ``.safetensors``, whose metadata names its source file.
    A warning, not an error: the weights themselves do not say which chunk length they were trained on."""
    names = [classifier_path.name, classifier_source(classifier_path)]
    for name in filter(None, names):
        for other in CHUNK_LENGTHS:
            if other != chunk_length and name.startswith(f"{other}_"):
                origin = "" if name == classifier_path.name else f" (from {name})"
                log.warning(
                    "classifier %s%s looks trained for %d bp chunks but --chunk-length is %d",
                    classifier_path.name, origin, other, chunk_length,
                )  # fmt: skip
                return
