"""The stall watch: a worker that holds shards and says nothing for too long is hung, or stopped.

A worker speaks at least every few seconds while it works (each batch's progress, a heartbeat between
DNABERT-S batches: ``runtime/worker.py``), so a long silence means it is stuck: a GPU or driver hang, a
file system that stopped answering, a process stopped with SIGSTOP. Without a watch the run waits for
it forever, however many other GPUs are idle. The rules:

* Only a worker holding shards is watched; one waiting for work may stay silent.
* Silence counts from the worker's last message, or from when it was given work after waiting. Before
  it is ready (interpreter start, imports, model loading: minutes for ESM-2 3B on a slow disk) it is
  allowed :data:`LOAD_ALLOWANCE_S` more.
* At half the limit (at most :data:`WARN_S`) a warning says which worker and which shard, once per
  silence; a message from the worker ends the silence (and says so when it was warned of).
* At the limit (``predict --stall-timeout``; 0: never) the worker is stopped with SIGKILL and counts as
  dead: its shards go back in the queue and it is respawned, as for a crash. The inline CPU worker is a
  thread of this process and cannot be stopped: it is only warned of.
* Time in which the coordinator itself was not running (the whole job stopped with Ctrl-Z, the main
  process stopped, or busy) is not silence: a gap longer than :data:`GAP_S` between two checks is not
  counted (counting less only delays a verdict).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass, field
from enum import Enum

WARN_S = 600.0
LOAD_ALLOWANCE_S = 600.0
GAP_S = 2.0  # the coordinator checks twice a second; a longer gap means it was stopped itself
MIN_LIMIT_S = 10.0  # predict --stall-timeout (or 0): a healthy worker may be silent for a heartbeat or two


class Verdict(Enum):
    """What the coordinator does about one worker after a check."""

    WARN = "warn"
    STOP = "stop"


def allowance_s(ready: bool) -> float:
    """Seconds of silence beyond the limits a worker is allowed: :data:`LOAD_ALLOWANCE_S` until it is
    ready (the coordinator's ``_Worker.ready``)."""
    return 0.0 if ready else LOAD_ALLOWANCE_S


@dataclass
class _Silence:
    since: float
    warned: bool = False


@dataclass
class StallWatch:
    """The silences of the workers of one run, keyed by slot (see the module docstring)."""

    limit_s: float | None  # None: never stop a worker, only warn
    clock: Callable[[], float] = time.monotonic
    _workers: dict[int, _Silence] = field(default_factory=dict)
    _last_check: float | None = None

    @property
    def warn_s(self) -> float:
        return WARN_S if self.limit_s is None else min(WARN_S, self.limit_s / 2)

    def started(self, slot: int) -> None:
        """A worker was (re)started in ``slot``: silent from now."""
        self._workers[slot] = _Silence(self.clock())

    def heard(self, slot: int) -> float | None:
        """A message from ``slot``'s worker; the silence it ends when that was warned of (seconds), else
        None."""
        now = self.clock()
        silence = self._workers.setdefault(slot, _Silence(now))
        ended = now - silence.since if silence.warned else None
        silence.since, silence.warned = now, False
        return ended

    def forget(self, slot: int) -> None:
        self._workers.pop(slot, None)

    def silent_s(self, slot: int) -> float:
        return self.clock() - self._workers[slot].since

    def check(self, holding: Mapping[int, bool], ready: Container[int]) -> dict[int, Verdict]:
        """The verdicts for the workers in ``holding`` (slot -> whether it holds shards; ``ready``: the
        slots whose workers are ready): WARN once per silence at :attr:`warn_s`, then STOP at the limit
        (each plus :func:`allowance_s`)."""
        now = self.clock()
        if self._last_check is not None and now - self._last_check > GAP_S:
            for silence in self._workers.values():  # the coordinator was not watching: not their silence
                silence.since += now - self._last_check
        self._last_check = now
        verdicts: dict[int, Verdict] = {}
        for slot, holds in holding.items():
            silence = self._workers.get(slot)
            if silence is None:
                continue
            if not holds:  # waiting for work is no silence: it counts from the next shard on
                silence.since, silence.warned = now, False
                continue
            quiet = now - silence.since - allowance_s(slot in ready)
            if quiet >= self.warn_s and not silence.warned:  # always warned of first, then stopped
                silence.warned = True
                verdicts[slot] = Verdict.WARN
            elif silence.warned and self.limit_s is not None and quiet >= self.limit_s:
                verdicts[slot] = Verdict.STOP
        return verdicts
