"""The messages between a worker and the coordinator: one frozen dataclass per kind.

They travel over a ``multiprocessing`` Pipe (pickled) or, for the inline worker, the same Pipe within
one process; :mod:`~virnucpro_trt.runtime.worker` documents when each is sent, and
:mod:`~virnucpro_trt.runtime.coordinator` handles them. Every message names the worker's ``slot``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from virnucpro_trt.runtime.shard_marker import ShardMarker
from virnucpro_trt.runtime.worker_facts import WorkerFacts


@dataclass(frozen=True)
class Ready:
    """Models loaded (``load_s`` seconds, warm-up included)."""

    slot: int
    facts: WorkerFacts
    load_s: float


@dataclass(frozen=True)
class Started:
    """The model half of a shard begins: a crash from here on is charged to this shard."""

    slot: int
    shard: int


@dataclass(frozen=True)
class Progress:
    """``frames`` more frames embedded in ``shard``."""

    slot: int
    shard: int
    frames: int


@dataclass(frozen=True)
class Done:
    """The shard's result files and marker are on disk."""

    slot: int
    shard: int
    marker: ShardMarker


@dataclass(frozen=True)
class Failed:
    """An unexpected exception (on ``shard``, or while loading when None): the worker exits and is
    respawned, the shard re-queued."""

    slot: int
    shard: int | None
    message: str  # one line
    details: str  # the traceback, for the debug log


@dataclass(frozen=True)
class Fatal:
    """A :class:`~virnucpro_trt.errors.VirnucproError`, or a full disk or read-only location: retrying gives
    the same answer, the run ends."""

    slot: int
    exit_code: int
    message: str
    details: str


@dataclass(frozen=True)
class Log:
    """A log record from a worker process, logged by the coordinator as its own."""

    slot: int
    record: logging.LogRecord


WorkerMessage = Ready | Started | Progress | Done | Failed | Fatal | Log
