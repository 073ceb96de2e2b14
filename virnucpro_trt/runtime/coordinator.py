"""The coordinator: one worker per device slot, shards handed out, deaths survived, results collected.

Why it is shaped like this:

* **One process per GPU** (``spawn``, never ``fork``: a forked CUDA context is unusable), each loading
  its models once. CPU runs get ``--workers N`` processes with ``threads // N`` torch threads each.
  Exactly one CPU worker runs *inline*, as a thread of this process (see ``runtime/worker.py``).
* **Shards are handed out by the coordinator**, at most two per worker at a time (the one being
  embedded and the one being prefetched), so it always knows which shards a dead worker held.
* **A dead worker** (crash, kill, CUDA error, unexpected exception) has its shards re-queued at the
  front and its slot respawned, up to :data:`MAX_RESPAWNS` times per slot. The shard it was running is
  charged one failed attempt; a shard that fails :data:`MAX_ATTEMPTS` times ends the run (exit 1) with
  one line naming the shard and its records. We fail the run rather than mark those records as
  unclassified and carry on: a complete-looking result with holes in it is the one outcome users must
  never get, and a shard that kills three workers in a row is a bug or a broken device to look at.
* **Deterministic errors** (:class:`~virnucpro_trt.errors.VirnucproError`: wrong model, NaN embeddings,
  a sequence longer than an engine's shape range) end the run at once with their own message and exit
  code: retrying would only repeat them.
* **A silent worker** holding shards is warned of, and past ``--stall-timeout`` stopped (SIGKILL) and
  treated as dead: a hung GPU or a stopped process must not stall a run that other workers could finish
  (``runtime/stall_watch.py``).
* **SIGINT** (and SIGTERM, which the CLI turns into the same interrupt: ``interrupts.py``) stops the
  workers (SIGTERM to processes; inline: at the next batch) and raises :class:`RunInterrupted`; finished
  shards stay in ``OUTDIR/.work`` for the rerun to skip.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import torch

from virnucpro_trt.environment import available_cpus
from virnucpro_trt.errors import EXIT_INTERRUPTED, RunFailure, UserError, VirnucproError
from virnucpro_trt.files.unpacking import RunFolder
from virnucpro_trt.interrupts import STOP_SIGNALS, handlers_within
from virnucpro_trt.log_records import EVENT
from virnucpro_trt.runtime.device import resolve_device
from virnucpro_trt.runtime.shard_marker import ShardMarker
from virnucpro_trt.runtime.shards import ShardSpec
from virnucpro_trt.runtime.stall_watch import StallWatch, Verdict, allowance_s
from virnucpro_trt.runtime.worker import (
    EXIT_FAILED,
    ShardJob,
    ShardTask,
    WorkerSlot,
    process_entry,
    run_worker,
)
from virnucpro_trt.runtime.worker_facts import WorkerFacts
from virnucpro_trt.runtime.worker_messages import (
    Done,
    Failed,
    Fatal,
    Log,
    Progress,
    Ready,
    Started,
    WorkerMessage,
)
from virnucpro_trt.settings import DEFAULT_STALL_TIMEOUT_S

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
MAX_RESPAWNS = 3
SHARDS_PER_WORKER = 2  # one being embedded, one being prepared
_WAIT_S = 0.5
_JOIN_S = 10.0


class RunInterrupted(VirnucproError):
    """SIGINT (or the CLI's SIGTERM): workers stopped, finished shards kept for a rerun."""

    exit_code = EXIT_INTERRUPTED


class ShardFailedError(RunFailure):
    """A shard failed :data:`MAX_ATTEMPTS` times, or no worker is left to run it."""


class WorkerError(VirnucproError):
    """A deterministic error raised inside a worker, re-raised here with its exit code."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def plan_worker_slots(
    device_spec: str,
    gpus: tuple[int, ...] | None,
    workers: int | None,
    threads: int | None,
    per_gpu: int = 1,
) -> list[WorkerSlot]:
    """The worker slots of a run: ``per_gpu`` per selected GPU, or ``workers`` CPU slots.

    GPU indices are the visible ones (``CUDA_VISIBLE_DEVICES`` applies, as everywhere in torch). A
    second process on a GPU can run its shard's CPU half and start-up while the first one computes;
    each loads its own copy of the models. Shards do not depend on the slot that runs them, so the
    results are the same bytes with any number of slots.
    """
    device = resolve_device(device_spec)
    total_threads = threads or available_cpus()
    if per_gpu < 1:
        raise UserError(f"--workers-per-gpu {per_gpu}: must be at least 1")
    if device.type == "cpu":
        if gpus is not None:
            raise UserError(
                f"--gpus selects CUDA devices, but this run is on the CPU (--device {device_spec})"
            )
        if per_gpu != 1:
            raise UserError("--workers-per-gpu is for CUDA runs; on the CPU choose --workers")
        count = workers or 1
        return [WorkerSlot(i, "cpu", max(1, total_threads // count)) for i in range(count)]
    if workers is not None:
        raise UserError(
            "--workers is for CPU runs; on CUDA there is one worker per GPU (choose them with --gpus)"
        )
    visible = torch.cuda.device_count()
    explicit = device_spec.strip().lower().startswith("cuda:")
    if gpus is not None and explicit:
        raise UserError(f"give either --device {device_spec} or --gpus, not both")
    if gpus is not None:
        indices = list(gpus)
    elif explicit:
        indices = [device.index or 0]
    else:
        indices = list(range(visible))
    for index in indices:
        if index >= visible:
            raise UserError(
                f"--gpus {index}: only {visible} CUDA device(s) visible (0..{visible - 1}; indices count "
                "within CUDA_VISIBLE_DEVICES)"
            )
    if len(set(indices)) != len(indices):
        raise UserError(f"--gpus {','.join(map(str, indices))}: a GPU is listed twice")
    per_worker = max(1, total_threads // (len(indices) * per_gpu))
    devices = [f"cuda:{index}" for index in indices for _ in range(per_gpu)]
    return [WorkerSlot(n, device, per_worker) for n, device in enumerate(devices)]


def runs_inline(slots: list[WorkerSlot]) -> bool:
    """Exactly one CPU worker runs as a thread of the main process (no interpreter start-up)."""
    return len(slots) == 1 and slots[0].device == "cpu"


@dataclass
class WorkerStats:
    """What one slot did in this run (run.json and the closing log lines)."""

    slot: int
    device: str
    threads: int | None
    device_name: str | None = None
    frames: int = 0
    busy_s: float = 0.0
    shards: int = 0
    restarts: int = 0
    load_s: float = 0.0
    ready_s: float = 0.0  # spawn (interpreter start, imports) to "ready", as the coordinator saw it

    def to_json(self) -> dict[str, Any]:
        return {
            "slot": self.slot,
            "device": self.device,
            "device_name": self.device_name,
            "threads": self.threads,
            "shards": self.shards,
            "frames": self.frames,
            "seconds": round(self.busy_s, 4),
            "frames_per_s": round(self.frames / self.busy_s, 2) if self.busy_s > 0 else None,
            "load_models_s": round(self.load_s, 4),
            "ready_s": round(self.ready_s, 4),
            "restarts": self.restarts,
        }


@dataclass
class CoordinatorReport:
    markers: dict[int, ShardMarker]
    workers: list[WorkerStats]
    facts: WorkerFacts | None
    restarts: int
    failed_attempts: int
    wall_s: float
    # From the moment every slot had first reported ready to the last shard's "done": the steady part
    # of the run, without worker start-up and model loading before it or worker shutdown after it.
    steady_s: float | None = None


@dataclass
class _Worker:
    """A running worker as the coordinator sees it."""

    slot: WorkerSlot
    conn: Connection
    process: Any = None  # multiprocessing.Process (spawned) ...
    thread: threading.Thread | None = None  # ... or the inline thread
    stop: threading.Event = field(default_factory=threading.Event)
    outstanding: list[int] = field(default_factory=list)
    running: int | None = None
    failure: str | None = None
    eof: bool = False
    code: int | None = None  # the inline thread's exit code
    spawned_at: float = field(default_factory=time.perf_counter)
    ready: bool = False  # its models are loaded
    unpack_folder: Path | None = None  # a process's folder for its engine packages (files/unpacking.py)

    def alive(self) -> bool:
        if self.process is not None:
            return bool(self.process.is_alive())
        return self.thread is not None and self.thread.is_alive()

    def exit_code(self) -> int | None:
        if self.process is not None:
            self.process.join(_JOIN_S)
            return self.process.exitcode
        if self.thread is not None:
            self.thread.join(_JOIN_S)
        return self.code

    def terminate(self) -> None:
        if self.process is not None:
            if self.process.is_alive():
                self.process.terminate()
                with contextlib.suppress(OSError):  # a stopped process (SIGSTOP) acts on it once continued
                    os.kill(self.process.pid, signal.SIGCONT)
        else:
            self.stop.set()


class Coordinator:
    """Runs shards on worker slots (see the module docstring for the policies)."""

    def __init__(
        self,
        job: ShardJob,
        slots: list[WorkerSlot],
        progress: Callable[[int], None] = lambda n: None,
        on_ready: Callable[[WorkerFacts], None] | None = None,
        max_attempts: int = MAX_ATTEMPTS,
        max_respawns: int = MAX_RESPAWNS,
        stall_s: float = DEFAULT_STALL_TIMEOUT_S,
    ):
        self.job = job
        self.slots = slots
        self.inline = runs_inline(slots)
        self.progress = progress
        self.on_ready = on_ready
        self.max_attempts = max_attempts
        self.max_respawns = max_respawns
        self.workers: dict[int, _Worker] = {}
        self.stats = {s.index: WorkerStats(s.index, s.device, s.threads) for s in slots}
        self.pending: collections.deque[int] = collections.deque()
        self.specs: dict[int, ShardSpec] = {}
        self.attempts: collections.Counter[int] = collections.Counter()
        # The first failure of each shard and of each slot, named beside the last when a run gives up: a
        # failure can leave a restarted worker failing otherwise (the inline worker's thread re-imports
        # what its first failure left half loaded), and the first one is the cause to fix.
        self._first_shard_failure: dict[int, str] = {}
        self._first_slot_failure: dict[int, str] = {}
        self.credited: collections.Counter[int] = collections.Counter()
        self.markers: dict[int, ShardMarker] = {}
        self.facts: WorkerFacts | None = None
        self.need_facts = False
        self._ctx = multiprocessing.get_context("spawn")
        self._first_ready: dict[int, float] = {}  # slot -> when it first reported ready
        self._last_done: float | None = None  # when the last shard so far was reported done
        self._unpacking: RunFolder | None = None  # the process workers' unpacking folders, this run
        self.stalls = StallWatch(stall_s or None)

    # -- the run ---------------------------------------------------------------------------------
    def run(self, shards: list[ShardSpec], need_facts: bool = False) -> CoordinatorReport:
        """Process ``shards``; with ``need_facts`` also wait for one worker's model facts (even with no
        shards, so an empty input still checks its models)."""
        started = time.perf_counter()
        self._first_ready, self._last_done = {}, None
        self.need_facts = need_facts
        self.specs = {s.id: s for s in shards}
        self.pending = collections.deque(s.id for s in shards)
        self._unpacking = None if self.inline else RunFolder()
        try:
            for slot in self.slots[: max(1, min(len(self.slots), len(shards)))]:
                self._spawn(slot)
            while self.pending or self._in_flight() or (need_facts and self.facts is None):
                self._assign()
                self._wait_and_handle()
            self._finish_workers()
        except BaseException:
            self._stop_all()
            raise
        finally:  # every worker has ended: what they unpacked goes, however they ended
            if self._unpacking is not None:
                self._unpacking.close()
        return CoordinatorReport(
            markers=self.markers,
            workers=list(self.stats.values()),
            facts=self.facts,
            restarts=sum(s.restarts for s in self.stats.values()),
            failed_attempts=sum(self.attempts.values()),
            wall_s=time.perf_counter() - started,
            steady_s=self._steady_s(),
        )

    def _steady_s(self) -> float | None:
        if self._last_done is None or not self._first_ready:
            return None
        return max(self._last_done - max(self._first_ready.values()), 0.0)

    def _in_flight(self) -> bool:
        return any(w.outstanding for w in self.workers.values())

    def _spawn(self, slot: WorkerSlot) -> None:
        if self.inline:
            parent, child = multiprocessing.Pipe(duplex=True)
            worker = _Worker(slot, parent)

            def target() -> None:
                try:
                    worker.code = run_worker(slot, child, self.job, worker.stop, own_process=False)
                except BaseException:
                    worker.code = EXIT_FAILED
                    log.exception("%s failed", slot.label)
                finally:
                    child.close()

            worker.thread = threading.Thread(target=target, name=f"virnucpro-{slot.label}", daemon=True)
            worker.thread.start()
        else:
            assert self._unpacking is not None
            unpack_folder = self._unpacking.for_worker(f"worker-{slot.index}")
            parent, child = self._ctx.Pipe(duplex=True)
            process = self._ctx.Process(
                target=process_entry,
                args=(slot, child, self.job, _forwarded_log_level(), unpack_folder),
                name=f"virnucpro-worker-{slot.index}",
                daemon=True,
            )
            process.start()
            child.close()
            worker = _Worker(slot, parent, process=process, unpack_folder=unpack_folder)
            log.debug("%s started (pid %s)", slot.label, process.pid)
        self.workers[slot.index] = worker
        self.stalls.started(slot.index)

    def _assign(self) -> None:
        """Hand out pending shards, at most :data:`SHARDS_PER_WORKER` a worker: ready workers first (a
        shard re-queued from a dead worker waited for the restarted slot to load its models while
        another worker stood idle), then by slot."""
        for index in sorted(self.workers, key=lambda i: (not self.workers[i].ready, i)):
            worker = self.workers[index]
            while not worker.eof and len(worker.outstanding) < SHARDS_PER_WORKER and self.pending:
                shard_id = self.pending.popleft()
                task = ShardTask(self.specs[shard_id], self.attempts[shard_id] + 1)
                try:
                    worker.conn.send(task)
                except OSError:  # it died; the wait below notices
                    self.pending.appendleft(shard_id)
                    break
                worker.outstanding.append(shard_id)

    def _wait_and_handle(self) -> None:
        by_conn = {w.conn: w for w in self.workers.values() if not w.eof}
        by_sentinel = {w.process.sentinel: w for w in self.workers.values() if w.process is not None}
        ready = wait([*by_conn, *by_sentinel], timeout=_WAIT_S)
        for item in ready:
            worker = by_conn.get(item)  # type: ignore[call-overload]  # sentinels are ints
            if worker is not None:
                self._drain(worker)
        for worker in list(self.workers.values()):
            if not worker.eof and not worker.alive():
                self._drain(worker)  # read what it said before dying
                worker.eof = True
            if worker.eof:
                self._handle_exit(worker)
        self._watch_stalls()

    def _watch_stalls(self) -> None:
        """Warn of a worker silent while it holds shards; past the limit stop it (SIGKILL) and handle it
        as a dead one (``runtime/stall_watch.py``)."""
        holding = {i: bool(w.outstanding) for i, w in self.workers.items() if not w.eof}
        ready = {i for i, w in self.workers.items() if w.ready}
        for index, verdict in self.stalls.check(holding, ready).items():
            worker = self.workers[index]
            silent = self.stalls.silent_s(index)
            doing = (
                f"on {self.specs[worker.running].describe()}"
                if worker.running is not None
                else ("holding shards" if worker.ready else "loading its models")
            )
            if verdict is Verdict.STOP and worker.process is not None:
                worker.failure = f"silent for {silent:.0f} s {doing}: stopped as hung (--stall-timeout)"
                worker.process.kill()  # SIGKILL: a stopped (SIGSTOP) or hung process ignores SIGTERM
                worker.process.join(_JOIN_S)
                self._drain(worker)
                worker.eof = True
                self._handle_exit(worker)
            elif verdict is Verdict.WARN:
                limit = self.stalls.limit_s
                if worker.process is None:
                    then = "it runs inside this process and cannot be restarted: stop the run if it stays so"
                elif limit is None:
                    then = "it is left running (--stall-timeout 0)"
                else:
                    at = limit + allowance_s(worker.ready)
                    then = f"it is stopped and restarted at {at:.0f} s of silence (--stall-timeout)"
                said = "%s has said nothing for %.0f s %s (hung, or stopped?); %s"
                log.warning(said, worker.slot.label, silent, doing, then, extra=EVENT)

    def _drain(self, worker: _Worker) -> None:
        try:
            while worker.conn.poll():
                self._handle(worker, worker.conn.recv())
        except (EOFError, OSError):
            worker.eof = True

    # -- messages --------------------------------------------------------------------------------
    def _handle(self, worker: _Worker, message: WorkerMessage) -> None:
        stats = self.stats[worker.slot.index]
        ended = self.stalls.heard(worker.slot.index)
        if ended is not None:
            log.warning("%s is speaking again after %.0f s of silence", worker.slot.label, ended, extra=EVENT)
        if isinstance(message, Log):
            logging.getLogger(message.record.name).handle(message.record)
        elif isinstance(message, Ready):
            worker.ready = True
            stats.load_s = message.load_s
            stats.ready_s = time.perf_counter() - worker.spawned_at
            self._first_ready.setdefault(worker.slot.index, time.perf_counter())
            stats.device_name = message.facts.device.name
            log.info("%s ready (models loaded in %.1f s)", worker.slot.label, message.load_s)
            if self.facts is None:
                self.facts = message.facts
                if self.on_ready is not None:
                    self.on_ready(message.facts)
        elif isinstance(message, Started):
            worker.running = message.shard
        elif isinstance(message, Progress):
            self.credited[message.shard] += message.frames
            self.progress(message.frames)
        elif isinstance(message, Done):
            shard_id, marker = message.shard, message.marker
            self.markers[shard_id] = marker
            if shard_id in worker.outstanding:
                worker.outstanding.remove(shard_id)
            worker.running = None
            self._settle_progress(shard_id, marker.frames)
            stats.shards += 1
            stats.frames += marker.frames
            stats.busy_s += marker.process_s
            self._last_done = time.perf_counter()
            log.debug("%s done by %s", self.specs[shard_id].describe(), worker.slot.label)
        elif isinstance(message, Failed):
            worker.failure = message.message
            log.debug("%s: %s", worker.slot.label, message.details)
        elif isinstance(message, Fatal):
            log.debug("%s: %s", worker.slot.label, message.details)
            raise WorkerError(message.message, message.exit_code)

    def _settle_progress(self, shard_id: int, frames: int) -> None:
        """Make the bar count exactly ``frames`` for this shard (e.g. after an OOM split or a retry)."""
        credited = self.credited.pop(shard_id, 0)
        if credited != frames:
            self.progress(frames - credited)

    # -- deaths ----------------------------------------------------------------------------------
    def _handle_exit(self, worker: _Worker) -> None:
        slot = worker.slot
        del self.workers[slot.index]
        self.stalls.forget(slot.index)
        code = worker.exit_code()
        with contextlib.suppress(OSError):
            worker.conn.close()
        if worker.unpack_folder is not None:  # a killed worker's unpacked packages (gigabytes) go now
            RunFolder.release(worker.unpack_folder)
        if not worker.outstanding and worker.failure is None and code == 0:
            return  # a clean exit after "no more work"
        reason = worker.failure or _describe_exit(code)
        first_of_slot = self._first_slot_failure.setdefault(slot.index, reason)
        charged = worker.running if worker.running is not None else None
        for shard_id in worker.outstanding:
            self._settle_progress(shard_id, 0)
        if charged is not None:
            self.attempts[charged] += 1
            spec = self.specs[charged]
            first_of_shard = self._first_shard_failure.setdefault(charged, reason)
            if self.attempts[charged] >= self.max_attempts:
                raise ShardFailedError(
                    f"{spec.describe()} failed {self.attempts[charged]} times "
                    f"(last: {_and_first(reason, first_of_shard)}); "
                    "the run is stopped and no result file was written"
                )
        self.pending.extendleft(reversed(worker.outstanding))
        where = f" on {self.specs[charged].describe()}" if charged is not None else ""
        log.warning("%s died%s (%s); its shards go back in the queue", slot.label, where, reason, extra=EVENT)
        stats = self.stats[slot.index]
        work_left = bool(self.pending) or self._in_flight() or (self.need_facts and self.facts is None)
        if work_left and stats.restarts < self.max_respawns:
            stats.restarts += 1
            restart = "restarting %s (restart %d of %d)"
            log.warning(restart, slot.label, stats.restarts, self.max_respawns, extra=EVENT)
            self._spawn(slot)
        elif work_left:
            log.error("%s died %d times: no more restarts for it", slot.label, stats.restarts + 1)
            if not self.workers:
                raise ShardFailedError(
                    f"every worker died and {len(self.pending)} shard(s) are left (last: {slot.label}, "
                    f"{_and_first(reason, first_of_slot)}); the run is stopped and no result file was written"
                )

    # -- shutting down ---------------------------------------------------------------------------
    def _finish_workers(self) -> None:
        for worker in self.workers.values():
            with contextlib.suppress(OSError):
                worker.conn.send(None)
        for worker in list(self.workers.values()):
            _reap(worker, _JOIN_S, "terminate")
        self.workers.clear()

    def _stop_all(self) -> None:
        """Stop every worker now (failure or interrupt); a further Ctrl-C, SIGTERM or SIGHUP meanwhile is
        ignored (raised in the middle of the reaping, it would leave workers running)."""
        if not self.workers:
            return
        with handlers_within((signal.SIGINT, *STOP_SIGNALS), signal.SIG_IGN):
            for worker in self.workers.values():
                worker.terminate()
            deadline = time.monotonic() + _JOIN_S
            for worker in self.workers.values():
                _reap(worker, max(0.1, deadline - time.monotonic()), "kill")
            self.workers.clear()


def _reap(worker: _Worker, wait_s: float, escalate: str) -> None:
    """Wait up to ``wait_s`` for a worker to end; a process still alive then gets ``escalate``
    (``terminate``: SIGTERM, then SIGKILL when that does not end it either; ``kill``: SIGKILL). Its pipe
    is closed either way."""
    if worker.process is not None:
        worker.process.join(wait_s)
        if worker.process.is_alive() and escalate == "terminate":
            worker.terminate()
            worker.process.join(_JOIN_S)
        if worker.process.is_alive():  # a worker that is never reaped hangs the interpreter's exit
            worker.process.kill()
            worker.process.join(_JOIN_S)
    elif worker.thread is not None:
        worker.thread.join(wait_s)
    with contextlib.suppress(OSError):
        worker.conn.close()


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "did not exit"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit code {code}"


def _forwarded_log_level() -> int:
    """The lowest level any of this process's log handlers shows: what workers need to send."""
    root = logging.getLogger()
    levels = [h.level or logging.DEBUG for h in root.handlers]
    return min(levels) if levels else root.getEffectiveLevel()


def _and_first(last: str, first: str) -> str:
    """A failure's last reason, and its first where that differs."""
    return last if last == first else f"{last}; first: {first}"
