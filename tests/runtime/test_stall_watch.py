"""The stall watch: a worker silent while it holds shards is warned of, then stopped past the limit.

Before it, a worker stopped with SIGSTOP (or hung in a driver call) held its two shards for ever and the
run never ended, whatever the other workers had finished; nothing was said. The end-to-end case (a worker
process that stops itself is restarted and the results are unchanged) is in
``tests/cli/test_predict_runtime_cli.py``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest

from virnucpro_trt.runtime import stall_watch
from virnucpro_trt.runtime.coordinator import Coordinator
from virnucpro_trt.runtime.device import DeviceFacts
from virnucpro_trt.runtime.shard_marker import ShardMarker, ShardReport
from virnucpro_trt.runtime.shards import ShardSpec
from virnucpro_trt.runtime.stall_watch import GAP_S, LOAD_ALLOWANCE_S, StallWatch, Verdict
from virnucpro_trt.runtime.worker import ShardTask, WorkerSlot
from virnucpro_trt.runtime.worker_facts import ClassifierFacts, EncoderFacts, WorkerFacts


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _watch(limit: float | None) -> tuple[StallWatch, _Clock]:
    clock = _Clock()
    return StallWatch(limit, clock), clock


def _ticks(
    watch: StallWatch, clock: _Clock, until: float, holding: dict[int, bool], ready: bool = True
) -> list[tuple]:
    """Checks every half second up to ``until`` seconds from now (every worker ``ready``, or none):
    (seconds, slot, verdict) of each."""
    seen, start = [], clock.now
    while clock.now - start < until:
        clock.now += 0.5
        seen += [
            (clock.now - start, slot, v) for slot, v in watch.check(holding, holding if ready else ()).items()
        ]
    return seen


def test_a_ready_worker_is_warned_of_at_half_the_limit_then_stopped_at_it() -> None:
    watch, clock = _watch(100.0)
    watch.started(0)
    watch.heard(0)
    seen = _ticks(watch, clock, 120, {0: True})
    assert seen[0] == (50.0, 0, Verdict.WARN)  # once
    assert [s for s in seen if s[2] is Verdict.WARN] == [seen[0]]
    assert seen[1] == (100.0, 0, Verdict.STOP)
    assert watch.silent_s(0) == pytest.approx(120.0)


def test_the_warning_comes_at_most_warn_s_in_and_a_message_ends_the_silence() -> None:
    watch, clock = _watch(7200.0)
    watch.started(3)
    watch.heard(3)
    seen = _ticks(watch, clock, stall_watch.WARN_S + 1, {3: True})
    assert seen == [(stall_watch.WARN_S, 3, Verdict.WARN)]
    assert watch.heard(3) == pytest.approx(stall_watch.WARN_S + 1)  # the silence it ends, warned of
    assert watch.heard(3) is None  # no silence warned of: nothing to say
    assert _ticks(watch, clock, stall_watch.WARN_S - 1, {3: True}) == []  # counts afresh


def test_loading_the_models_is_allowed_more() -> None:
    watch, clock = _watch(10.0)
    watch.started(1)  # spawned, not ready: importing torch, loading ESM-2 3B
    seen = _ticks(watch, clock, LOAD_ALLOWANCE_S + 11, {1: True}, ready=False)
    assert [(t, v) for t, _, v in seen[:2]] == [
        (LOAD_ALLOWANCE_S + 5, Verdict.WARN),
        (LOAD_ALLOWANCE_S + 10, Verdict.STOP),
    ]


def test_a_worker_waiting_for_work_is_not_silent() -> None:
    watch, clock = _watch(10.0)
    watch.started(0)
    watch.heard(0)
    assert _ticks(watch, clock, 60, {0: False}) == []  # idle: nothing held
    assert _ticks(watch, clock, 4.5, {0: True}) == []  # given shards: its silence counts from then
    assert _ticks(watch, clock, 1, {0: True}) == [(0.5, 0, Verdict.WARN)]


def test_without_a_limit_a_worker_is_only_warned_of() -> None:
    watch, clock = _watch(None)
    watch.started(0)
    watch.heard(0)
    seen = _ticks(watch, clock, 5 * stall_watch.WARN_S, {0: True})
    assert [v for _, _, v in seen] == [Verdict.WARN]


@pytest.mark.parametrize("stopped_s", [20.0, 3600.0])
def test_time_the_coordinator_was_stopped_itself_is_no_silence(stopped_s: float) -> None:
    """Ctrl-Z stops the whole job; after ``fg`` every worker would look silent for as long as it was
    stopped and be killed at once. A gap counted up to 30 s: a 20 s Ctrl-Z killed healthy workers at
    a 10 s limit (helper-81)."""
    watch, clock = _watch(10.0)
    watch.started(0)
    watch.heard(0)
    assert _ticks(watch, clock, 4, {0: True}) == []
    clock.now += stopped_s  # no check meanwhile
    assert watch.check({0: True}, {0}) == {}
    assert watch.silent_s(0) == pytest.approx(4.0)  # the stop is not counted
    clock.now += GAP_S * 0.9  # a gap the checks allow is counted
    assert watch.check({0: True}, {0}) == {0: Verdict.WARN}


# -- the inline worker: a thread of this process, warned of, never stopped -------------------------------

_FACTS = WorkerFacts(
    EncoderFacts("d", "/d", "huggingface", "BertModel", 8, None, 64),
    EncoderFacts("e", "/e", "huggingface", "EsmModel", 8, None, 64),
    ClassifierFacts("/c", 16, 4, 1e-5),
    DeviceFacts("cpu", "torch", "cpu", threads=1),
    "fp32",
    "torch",
    None,
)


class _SlowProcessor:
    facts = _FACTS

    def __init__(self, silent_s: float) -> None:
        self.silent_s = silent_s

    def prepare(self, task: ShardTask) -> Any:
        return None

    def process(self, prepared: Any, task: ShardTask, progress: Any) -> ShardMarker:
        if task.shard.id == 1:
            threading.Event().wait(self.silent_s)  # hung for a while: no progress, no heartbeat
        report = ShardReport({"frames": 2}, {"process": 0.01}, 0, "cpu", "cpu", task.attempt, 0)
        return ShardMarker(task.shard.id, task.shard.first, task.shard.records, report, {})


class _SlowJob:
    def __init__(self, silent_s: float) -> None:
        self.silent_s = silent_s

    def open(self, slot: WorkerSlot) -> _SlowProcessor:
        return _SlowProcessor(self.silent_s)


def _shard(i: int) -> ShardSpec:
    return ShardSpec(i, 10 * i, 10, 5000, 10, 2, f"shard-{i:06d}.fa", 100, "0" * 64)


def test_a_silent_inline_worker_is_warned_of_and_its_return_said(caplog: pytest.LogCaptureFixture) -> None:
    coordinator = Coordinator(_SlowJob(3.0), [WorkerSlot(0, "cpu", 1)], stall_s=1.0)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        report = coordinator.run([_shard(0), _shard(1), _shard(2)])
    assert time.monotonic() - started >= 3.0
    assert sorted(report.markers) == [0, 1, 2] and report.restarts == 0  # never stopped: a thread
    said = [r.getMessage() for r in caplog.records]
    warned = [m for m in said if "has said nothing for" in m]
    assert len(warned) == 1, said
    assert "worker 0 (cpu)" in warned[0] and "on shard 1 (records 11-20)" in warned[0]
    assert "runs inside this process and cannot be restarted" in warned[0]
    assert any("worker 0 (cpu) is speaking again after" in m for m in said), said


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0.1", "9.5"])
def test_a_stall_timeout_that_is_no_number_of_seconds_is_refused(value: str, tmp_path) -> None:
    """``nan`` passed click's range (it fails every comparison) and would have been written into
    run.json as ``NaN``, which is no JSON. Below 10 s (0 apart) healthy workers were stopped in every
    shard, between two heartbeats, and the run failed blaming a shard."""
    from tests.cli.helpers import run_cli

    reads = tmp_path / "r.fa"
    reads.write_text(">a\nACGT\n")
    result = run_cli("predict", str(reads), "-o", str(tmp_path / "out"), "--demo", "--stall-timeout", value)
    assert result.code == 2 and "--stall-timeout" in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


def test_a_stopped_worker_process_is_reaped_not_waited_for_for_ever() -> None:
    """A worker stopped (SIGSTOP) while idle after its work: the run said PASSED and then never exited,
    its SIGTERM pending on a stopped process, the interpreter's exit joining it (helper-81)."""
    import multiprocessing
    import os
    import signal

    from virnucpro_trt.runtime.coordinator import _reap, _Worker

    context = multiprocessing.get_context("spawn")
    process = context.Process(target=time.sleep, args=(600,), daemon=True)
    process.start()
    os.kill(process.pid, signal.SIGSTOP)
    ours, _theirs = multiprocessing.Pipe()
    started = time.monotonic()
    _reap(_Worker(WorkerSlot(1, "cpu", 1), ours, process=process), 0.5, "terminate")
    assert not process.is_alive() and time.monotonic() - started < 15
    assert process.exitcode == -signal.SIGTERM  # continued, it acted on the SIGTERM at once


def test_an_event_warning_is_shown_each_time_a_repeated_fact_once() -> None:
    """A worker that died twice on one shard said so once: the terminal's once-per-text filter hid the
    second death, and the restart line came with no reason (helper-81)."""
    from virnucpro_trt.cli.logging_setup import _WarnOnce
    from virnucpro_trt.log_records import EVENT

    shown = _WarnOnce()

    def record(extra: dict[str, object]) -> logging.LogRecord:
        made = logging.LogRecord("virnucpro_trt", logging.WARNING, __file__, 1, "worker 1 died", None, None)
        made.__dict__.update(extra)
        return made

    assert [shown.filter(record(EVENT)) for _ in range(3)] == [True, True, True]
    assert [shown.filter(record({})) for _ in range(2)] == [True, False]


def test_a_requeued_shard_goes_to_a_ready_worker_before_a_loading_one() -> None:
    """A shard put back after a kill went to the restarted slot when its number was lower, and waited
    for it to load its models while the other worker stood idle (helper-82)."""
    import multiprocessing

    from virnucpro_trt.runtime.coordinator import _Worker

    coordinator = Coordinator(_SlowJob(0.0), [WorkerSlot(0, "cpu", 1), WorkerSlot(1, "cpu", 1)])
    ends = [multiprocessing.Pipe() for _ in range(2)]
    loading, ready = (_Worker(WorkerSlot(i, "cpu", 1), ends[i][0]) for i in range(2))
    ready.ready = True
    coordinator.workers = {0: loading, 1: ready}
    coordinator.specs = {i: _shard(i) for i in range(3)}
    coordinator.pending.extend([0, 1, 2])
    coordinator._assign()
    assert ready.outstanding == [0, 1] and loading.outstanding == [2]  # the loading one gets what is left
    assert [ends[1][1].recv().shard.id for _ in range(2)] == [0, 1]
