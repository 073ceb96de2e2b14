"""Timing that survives asynchronous GPUs, lazy initialisation and noisy neighbours.

The rules (docs/performance.md, "How to measure"): a warm-up pass first (CUDA context, cuBLAS heuristics,
autotuning and allocator growth all happen on first use and are not throughput), synchronize the device
before every clock read (a launch returns before the GPU has done the work), and report the median of
several passes (robust to one slow pass).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np
import torch

if TYPE_CHECKING:
    from virnucpro_trt.runtime.embedding import BatchStats
    from virnucpro_trt.settings import PaddingCap

T = TypeVar("T")


def synchronize(device: torch.device) -> None:
    """Wait until ``device`` has finished everything queued (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device) -> float:
    """A host clock reading taken only after ``device`` is idle."""
    synchronize(device)
    return time.perf_counter()


def call_times_ms(call: Callable[[], Any], device: torch.device, warmup: int, iters: int) -> list[float]:
    """Milliseconds of each of ``iters`` calls after ``warmup`` untimed ones, for kernel-sized calls.

    On a GPU, CUDA events around each call, with the stream first held by a spin kernel for longer
    than the host needs to enqueue the call (:func:`hold_stream`): the events then time the GPU's work
    alone. Without the hold, an idle GPU records the start event at once and waits for the host's
    launches, so a kernel shorter than its Python launch path is timed as the launch path. On the CPU,
    the host clock.
    """
    for _ in range(warmup):
        call()
        synchronize(device)
    enqueue_s = warm_enqueue_seconds(call, device)
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            hold_stream(device, 2 * enqueue_s + 1e-4)
            start.record()
            call()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            started = time.perf_counter()
            call()
            times.append(1e3 * (time.perf_counter() - started))
    return times


def add_call_timing_options(parser: argparse.ArgumentParser, warmup: int = 5, iters: int = 30) -> None:
    """The options of a diagnostic that times kernel calls with :func:`call_times_ms`: ``--warmup``,
    ``--iters``, ``--device`` (default ``cuda``: the diagnostics are for the GPU) and ``--json``."""
    parser.add_argument("--warmup", type=int, default=warmup)
    parser.add_argument("--iters", type=int, default=iters)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json", type=Path, default=None)


def chosen_names(parser: argparse.ArgumentParser, option: str, value: str, known: Sequence[str]) -> list[str]:
    """The comma-separated names of ``value``; a name not in ``known`` is a usage error naming them."""
    names = value.split(",")
    unknown = [name for name in names if name not in known]
    if unknown:
        parser.error(f"{option}: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    return names


def warm_enqueue_seconds(call: Callable[[], Any], device: torch.device) -> float:
    """Host seconds one more (untimed) call takes to return, after the warm-up.

    Not the warm-up's own times: a first call that compiles (a Triton kernel's JIT, ``torch.compile``)
    takes seconds, and holding the stream for twice that before every timed call turned a 20-call
    timing into minutes (measurement log, 2026-12-03 eleventh session)."""
    started = time.perf_counter()
    call()
    seconds = time.perf_counter() - started
    synchronize(device)
    return seconds


def hold_stream(device: torch.device, seconds: float) -> None:
    """Queue a spin kernel of about ``seconds`` on ``device``'s current stream (``torch.cuda._sleep``
    counts clock cycles, converted by :func:`_spin_cycles_per_s`)."""
    torch.cuda._sleep(max(1, int(seconds * _spin_cycles_per_s(device.index or 0))))


@functools.cache
def _spin_cycles_per_s(index: int) -> float:
    """Cycles per second of ``torch.cuda._sleep`` on GPU ``index``, timed once with CUDA events."""
    cycles = 2_000_000
    with torch.cuda.device(index):
        torch.cuda._sleep(1000)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.cuda._sleep(cycles)
        end.record()
        end.synchronize()
        return cycles / (start.elapsed_time(end) / 1e3)


@dataclass
class StageClock:
    """Wall time per named stage, each boundary synchronised with the device."""

    device: torch.device
    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = clock(self.device)
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + clock(self.device) - start


@dataclass(frozen=True)
class Measurement(Generic[T]):
    """A warm-up pass and ``repeats`` timed passes of the same work."""

    warmup_s: float
    passes_s: tuple[float, ...]
    warmup_result: T
    results: tuple[T, ...]

    @property
    def median_s(self) -> float:
        return statistics.median(self.passes_s)


def measure(run: Callable[[int], T], repeats: int, device: torch.device) -> Measurement[T]:
    """Call ``run(0)`` once untimed-for-throughput (warm-up), then ``run(1..repeats)`` timed.

    ``run`` gets the pass number so a caller can rotate its inputs between passes.
    """
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    start = clock(device)
    warmup = run(0)
    warmup_s = clock(device) - start
    times: list[float] = []
    results: list[T] = []
    for index in range(1, repeats + 1):
        start = clock(device)
        results.append(run(index))
        times.append(clock(device) - start)
    return Measurement(warmup_s, tuple(times), warmup, tuple(results))


def time_embedding(
    runner: Any,
    tokens: Sequence[np.ndarray],
    budget: int,
    repeats: int,
    device: torch.device | None = None,
    group_items: int | None = None,
    cap: PaddingCap | None = None,
    stats: BatchStats | None = None,
) -> tuple[float, np.ndarray]:
    """Median seconds of embedding all ``tokens`` (after a warm-up pass) and the embeddings.

    Encoder-only timing for ``benchmarks/engines_throughput.py``; ``device`` defaults to the current CUDA
    device when there is one. ``group_items`` batches the items in consecutive groups of that many, each
    on its own, as ``predict`` batches each shard; ``cap`` is passed to the batcher; ``stats`` receives
    the batches of the last pass.
    """
    from virnucpro_trt.runtime.embedding import embed_sequences

    if device is None:
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    size = group_items or max(len(tokens), 1)
    groups = [tokens[i : i + size] for i in range(0, len(tokens), size)] or [tokens]

    def one_pass(index: int) -> np.ndarray:
        counted = stats if index == repeats else None
        return np.concatenate([embed_sequences(runner, g, budget, stats=counted, cap=cap) for g in groups])

    result = measure(one_pass, repeats, device)
    return result.median_s, result.results[-1]
