"""``call_times_ms`` times the device's work, not the host's launch path."""

from __future__ import annotations

import time

import pytest
import torch

from virnucpro_trt.bench.timing import call_times_ms, warm_enqueue_seconds


def test_on_the_cpu_each_call_is_timed_by_the_host_clock() -> None:
    calls = []

    def call() -> None:
        calls.append(1)
        time.sleep(0.002)

    times = call_times_ms(call, torch.device("cpu"), warmup=2, iters=3)
    assert len(calls) == 6 and len(times) == 3 and all(2.0 <= t < 200 for t in times)  # + the enqueue probe


def test_the_stream_hold_follows_a_warm_call_not_a_first_call_that_compiled() -> None:
    """A first call that compiles for a second must not set the hold before every timed call (the
    attention diagnostic's 20 calls then took minutes)."""
    delays = iter([1.0, 0.001, 0.001])

    def call() -> None:
        time.sleep(next(delays))

    call()  # the warm-up's first call: compiles
    call()
    assert warm_enqueue_seconds(call, torch.device("cpu")) < 0.5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the H200 host)")
def test_a_short_kernel_behind_a_slow_launch_path_is_timed_as_the_kernel() -> None:
    """A kernel of a few microseconds behind 3 ms of host work per call: the GPU's time, far below the
    host's (without holding the stream, the events would span the host's 3 ms)."""
    x = torch.zeros(1024, device="cuda")

    def call() -> None:
        time.sleep(0.003)
        x.add_(1)

    times = call_times_ms(call, torch.device("cuda", 0), warmup=2, iters=5)
    assert len(times) == 5 and max(times) < 1.0
    assert x[0].item() == 8  # 2 warm-up calls, the enqueue probe, 5 timed
