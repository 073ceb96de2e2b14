"""One worker: loads its models once, then processes the shards the coordinator sends it.

The worker is generic: what a shard *means* comes from a :class:`ShardJob` (for ``predict``:
:class:`~virnucpro_trt.pipeline.shard_predictor.PredictShardJob`), whose ``open`` loads the models and
returns a :class:`ShardProcessor` with a CPU half (``prepare``: parse, chunk, translate, tokenize) and a
model half (``process``: embed, classify, write the shard's results). A prefetch thread runs ``prepare``
for shard k+1 while the main thread runs ``process`` for shard k, so the GPU does not wait for Python.

It runs as a spawned process (one per GPU, or per CPU worker), or — for a run with exactly one CPU
worker — as a thread of the main process ("inline"): the same code and messages, without the 3-4 s a
fresh interpreter needs to import torch, which would dominate small runs.

Messages to the coordinator (:mod:`~virnucpro_trt.runtime.worker_messages`, one dataclass per kind, over
a ``multiprocessing`` Pipe, one per worker, so a worker that dies mid-message can only garble its own
channel):

* ``Ready(slot, facts, load_s)`` — models loaded (:class:`~virnucpro_trt.runtime.worker_facts.WorkerFacts`);
* ``Started(slot, shard)`` — ``process`` begins (a crash from here on is charged to this shard);
* ``Progress(slot, shard, frames)`` — that many more frames embedded (0: still working, a heartbeat);
* ``Done(slot, shard, marker)`` — the shard's files and marker
  (:class:`~virnucpro_trt.runtime.shard_marker.ShardMarker`) are on disk;
* ``Failed(slot, shard | None, message, details)`` — an unexpected exception; the worker exits and is
  respawned (its device may be in a bad state, e.g. after a CUDA error);
* ``Fatal(slot, exit_code, message, details)`` — a :class:`~virnucpro_trt.errors.VirnucproError`
  (a wrong model, NaN embeddings, a too-long input): retrying gives the same answer, so the run ends;
* ``Log(slot, record)`` — a log record from a process worker.

From the coordinator: a :class:`ShardTask`, or ``None`` (no more work).

Test-only fault injection: ``VIRNUCPRO_TEST_FAIL_SHARD=<shard>:<attempts>`` makes the worker die on that
shard for its first ``<attempts>`` attempts — ``os._exit(3)`` in a worker process, the end of the
thread (exit code 3) for the inline worker; ``<shard>:<attempts>:stop`` makes a worker process stop
itself (SIGSTOP) instead, for the stall watch. It exists so the crash/respawn path can be tested; it is
read only when a shard starts and does nothing when unset.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol

from virnucpro_trt.errors import (
    EXIT_FAILURE,
    VirnucproError,
    describe_os_error,
    one_line,
    shortage_line,
)
from virnucpro_trt.files import unpacking
from virnucpro_trt.log_records import WORKER_TEXT
from virnucpro_trt.runtime.shard_marker import ShardMarker
from virnucpro_trt.runtime.shards import ShardSpec
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

log = logging.getLogger(__name__)

FAULT_ENV = "VIRNUCPRO_TEST_FAIL_SHARD"
EXIT_FAILED = EXIT_FAILURE  # the worker's own failure (its parent names the shard)
EXIT_INJECTED = 3
_POLL_S = 0.2
_HEARTBEAT_S = 2.0  # a shard's "still working" at least this often between batches (Progress of 0 frames)


@dataclass(frozen=True)
class WorkerSlot:
    """A place a worker runs: its number, device (``cpu`` / ``cuda:N``) and torch CPU threads."""

    index: int
    device: str
    threads: int | None = None

    @property
    def label(self) -> str:
        return f"worker {self.index} ({self.device})"


@dataclass(frozen=True)
class ShardTask:
    shard: ShardSpec
    attempt: int  # 1-based


class ShardProcessor(Protocol):
    """What a worker runs for each shard (see the module docstring)."""

    facts: WorkerFacts

    def prepare(self, task: ShardTask) -> Any: ...

    def process(self, prepared: Any, task: ShardTask, progress: Callable[[int], None]) -> ShardMarker: ...


class ShardJob(Protocol):
    """Picklable recipe for a worker's processor (sent to spawned workers)."""

    def open(self, slot: WorkerSlot) -> ShardProcessor: ...


class WorkerStopped(Exception):
    """The coordinator asked an inline worker to stop (interrupt or failure elsewhere)."""


class _InjectedCrash(BaseException):
    """Test-only: ends an inline worker thread the way ``os._exit(3)`` ends a worker process."""


class _Sender:
    """Thread-safe sends on the worker's end of the pipe (the main and prefetch threads both send)."""

    def __init__(self, conn: Connection):
        self.conn = conn
        self.lock = threading.Lock()

    def __call__(self, message: WorkerMessage) -> None:
        with self.lock:
            self.conn.send(message)


_END = object()


def run_worker(
    slot: WorkerSlot,
    conn: Connection,
    job: ShardJob,
    stop: threading.Event,
    own_process: bool,
    send: _Sender | None = None,
) -> int:
    """The worker loop; returns its exit code (0 when told there is no more work).

    ``own_process``: a spawned worker process (True) or the inline worker thread (False).
    """
    send = send or _Sender(conn)
    started = time.perf_counter()
    try:
        processor = job.open(slot)
    except Exception as exc:
        return _report_failure(send, slot, None, exc)
    send(Ready(slot.index, processor.facts, time.perf_counter() - started))

    prepared: queue.Queue[Any] = queue.Queue(maxsize=1)
    finished = threading.Event()
    reader = threading.Thread(
        target=_prefetch,
        args=(conn, processor, prepared, finished, own_process),
        name=f"prefetch-{slot.index}",
        daemon=True,
    )
    reader.start()
    try:
        return _process_loop(slot, processor, prepared, send, stop, own_process)
    finally:
        finished.set()
        reader.join(timeout=5 * _POLL_S)


def _process_loop(
    slot: WorkerSlot,
    processor: ShardProcessor,
    prepared: queue.Queue[Any],
    send: _Sender,
    stop: threading.Event,
    own_process: bool,
) -> int:
    while True:
        try:
            item = prepared.get(timeout=_POLL_S)
        except queue.Empty:
            if stop.is_set():
                return 0
            continue
        if item is _END:
            return 0
        task, data, error = item
        shard_id = task.shard.id
        send(Started(slot.index, shard_id))
        try:
            _maybe_inject_fault(task, own_process)
            if error is not None:
                raise error

            said = [time.monotonic()]

            def progress(n: int, shard_id: int = shard_id, said: list[float] = said) -> None:
                # 0: a DNABERT-S batch done (frame_path.score_frames): a chance to stop, and a heartbeat
                # every few seconds for the coordinator's stall watch (runtime/stall_watch.py)
                if n or time.monotonic() - said[0] >= _HEARTBEAT_S:
                    send(Progress(slot.index, shard_id, n))
                    said[0] = time.monotonic()
                if stop.is_set():
                    raise WorkerStopped

            marker = processor.process(data, task, progress)
        except _InjectedCrash:
            return EXIT_INJECTED
        except WorkerStopped:
            return 0
        except Exception as exc:
            return _report_failure(send, slot, shard_id, exc)
        send(Done(slot.index, shard_id, marker))


def _report_failure(send: _Sender, slot: WorkerSlot, shard_id: int | None, exc: Exception) -> int:
    """Tell the coordinator why this worker stops; its exit code.

    A :class:`VirnucproError` is ``fatal`` (retrying gives the same answer: the run ends), and so is a
    file-system failure the user has to fix first (a full disk, a read-only location:
    :func:`~virnucpro_trt.errors.describe_os_error`) or a resource the process ran out of (open files,
    memory: :func:`~virnucpro_trt.errors.resource_shortage`), which three respawns would only repeat; anything
    else is ``failed`` (the worker is respawned and ``shard_id``, if any, re-queued), an I/O error too:
    on a network file system it may pass.
    """
    retried = isinstance(exc, OSError) and exc.errno == errno.EIO
    known = describe_os_error(exc) if isinstance(exc, OSError) and not retried else None
    if (shortage := shortage_line(exc)) is not None:  # too few file descriptors, no memory left
        line, code = shortage
        send(Fatal(slot.index, code, line, traceback.format_exc()))
    elif isinstance(exc, VirnucproError):
        send(Fatal(slot.index, exc.exit_code, str(exc), traceback.format_exc()))
    elif known is not None:
        line, code = known
        send(Fatal(slot.index, code, line, traceback.format_exc()))
    else:
        send(Failed(slot.index, shard_id, one_line(exc), traceback.format_exc()))
    return EXIT_FAILED


def _prefetch(
    conn: Connection,
    processor: ShardProcessor,
    prepared: queue.Queue[Any],
    finished: threading.Event,
    own_process: bool,
) -> None:
    """Receive tasks and run the CPU half of each one ahead of the model half."""
    while not finished.is_set():
        try:
            if not conn.poll(_POLL_S):
                continue
            message = conn.recv()
        except (EOFError, OSError):
            if own_process:  # the coordinator is gone: nobody will use what this worker would write
                unpacking.remove_folder(orphaned=True)  # nor remove what it unpacked
                os._exit(0)
            message = None
        if message is None:
            _put(prepared, _END, finished)
            return
        task: ShardTask = message
        try:
            item = (task, processor.prepare(task), None)
        except Exception as exc:  # reported by the main thread, in order, as this shard's failure
            item = (task, None, exc)
        if not _put(prepared, item, finished):
            return


def _put(prepared: queue.Queue[Any], item: Any, finished: threading.Event) -> bool:
    while not finished.is_set():
        try:
            prepared.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def _maybe_inject_fault(task: ShardTask, own_process: bool) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    shard_text, _, rest = spec.partition(":")
    attempts_text, _, mode = rest.partition(":")
    if int(shard_text) != task.shard.id or task.attempt > int(attempts_text or "1"):
        return
    what = "a stopped worker (SIGSTOP)" if mode == "stop" else "a worker crash"
    log.warning("%s=%s: simulating %s on %s", FAULT_ENV, spec, what, task.shard.describe())
    if own_process:
        for handler in logging.getLogger().handlers:
            handler.flush()
        if mode == "stop":
            os.kill(os.getpid(), signal.SIGSTOP)
        os._exit(EXIT_INJECTED)
    raise _InjectedCrash


class _PipeLogHandler(logging.Handler):
    """Forwards a process worker's log records to the coordinator, which logs them as its own."""

    def __init__(self, send: _Sender, slot: WorkerSlot):
        super().__init__()
        self.send = send
        self.slot = slot

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            record.msg = f"[{self.slot.label}] {text}"
            record.args = None
            setattr(record, WORKER_TEXT, text)
            if record.exc_info:
                record.msg += "\n" + "".join(traceback.format_exception(*record.exc_info))
            record.exc_info = None
            record.exc_text = None
            self.send(Log(self.slot.index, record))
        except (BrokenPipeError, ConnectionResetError, EOFError):
            pass  # the coordinator is gone (killed): nobody to tell, and no traceback for its terminal
        except Exception:  # logging must never kill a worker
            self.handleError(record)


def process_entry(
    slot: WorkerSlot, conn: Connection, job: ShardJob, log_level: int, unpack_folder: Path
) -> None:
    """Target of a spawned worker process; its engine packages are unpacked into ``unpack_folder``, which
    its coordinator made for it and removes when it has ended (``files/unpacking.py``)."""
    unpacking.use_folder(unpack_folder)
    # Ctrl-C reaches the whole process group; the coordinator decides what happens to workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(log_level)
    send = _Sender(conn)
    root.addHandler(_PipeLogHandler(send, slot))
    for noisy in ("urllib3", "filelock", "huggingface_hub", "torch", "h5py", "onnx", "onnxruntime"):
        logging.getLogger(noisy).setLevel(max(log_level, logging.WARNING))
    orphaned = False
    try:
        code = run_worker(slot, conn, job, threading.Event(), own_process=True, send=send)
    except (BrokenPipeError, ConnectionResetError, EOFError):
        code, orphaned = 0, True  # the coordinator is gone (killed): nothing is waiting for this worker
    sys.stdout.flush()
    sys.stderr.flush()
    unpacking.remove_folder(orphaned)  # os._exit runs no destructor (the loaders' own removal)
    os._exit(code)
