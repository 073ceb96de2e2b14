"""Which workers a run gets: --gpus (visible indices), --workers on CPU, and the thread split."""

from __future__ import annotations

import pytest
import torch

import virnucpro_trt.runtime.coordinator as coordinator
from virnucpro_trt.errors import UserError
from virnucpro_trt.runtime.coordinator import plan_worker_slots, runs_inline


def test_cpu_workers_split_the_threads():
    slots = plan_worker_slots("cpu", None, 3, 8)
    assert [(s.index, s.device, s.threads) for s in slots] == [(0, "cpu", 2), (1, "cpu", 2), (2, "cpu", 2)]
    assert not runs_inline(slots)
    one = plan_worker_slots("cpu", None, None, 4)
    assert [(s.device, s.threads) for s in one] == [("cpu", 4)] and runs_inline(one)
    assert plan_worker_slots("cpu", None, 4, 2)[0].threads == 1  # never zero
    with pytest.raises(UserError, match="--gpus"):
        plan_worker_slots("cpu", (0,), None, None)


@pytest.fixture
def four_gpus(monkeypatch):
    """Pretend 4 CUDA devices are visible (e.g. CUDA_VISIBLE_DEVICES=2,3,6,7)."""

    def fake_resolve(spec: str) -> torch.device:
        spec = spec.strip().lower()
        if spec == "cpu":
            return torch.device("cpu")
        return torch.device("cuda:0" if spec in ("auto", "cuda") else spec)

    monkeypatch.setattr(coordinator, "resolve_device", fake_resolve)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)


def test_gpu_slots(four_gpus):
    slots = plan_worker_slots("auto", None, None, 16)
    assert [s.device for s in slots] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert {s.threads for s in slots} == {4} and not runs_inline(slots)
    assert [s.device for s in plan_worker_slots("cuda", (3, 1), None, 16)] == ["cuda:3", "cuda:1"]
    assert [s.device for s in plan_worker_slots("cuda:2", None, None, 16)] == ["cuda:2"]
    with pytest.raises(UserError, match="only 4 CUDA device"):
        plan_worker_slots("auto", (0, 4), None, None)
    with pytest.raises(UserError, match="twice"):
        plan_worker_slots("auto", (1, 1), None, None)
    with pytest.raises(UserError, match="--workers is for CPU"):
        plan_worker_slots("auto", None, 2, None)
    with pytest.raises(UserError, match="not both"):
        plan_worker_slots("cuda:1", (0,), None, None)


def test_several_workers_per_gpu_share_its_threads(four_gpus):
    slots = plan_worker_slots("cuda", (0, 2), None, 16, per_gpu=2)
    assert [(s.index, s.device, s.threads) for s in slots] == [
        (0, "cuda:0", 4), (1, "cuda:0", 4), (2, "cuda:2", 4), (3, "cuda:2", 4)
    ]  # fmt: skip
    assert [s.device for s in plan_worker_slots("cuda:1", None, None, 6, per_gpu=3)] == ["cuda:1"] * 3
    with pytest.raises(UserError, match="on the CPU choose --workers"):
        plan_worker_slots("cpu", None, None, 4, per_gpu=2)


def test_a_full_disk_or_a_read_only_location_ends_the_run_at_once_instead_of_three_respawns():
    """They failed each shard three times (a respawned worker meets the same disk) before the run ended
    with 'OSError: [Errno 28] ...'; now the first one ends it with the one line main() gives them."""
    import errno

    from virnucpro_trt.runtime.worker import WorkerSlot, _report_failure
    from virnucpro_trt.runtime.worker_messages import Failed, Fatal

    sent: list = []
    slot = WorkerSlot(0, "cpu")
    full = OSError(errno.ENOSPC, "No space left on device", "out/.work/results/shard-000002.frames.tsv")
    _report_failure(sent.append, slot, 2, full)
    _report_failure(sent.append, slot, 3, OSError(errno.EROFS, "Read-only file system", "out/.work"))
    _report_failure(sent.append, slot, 4, RuntimeError("a bug"))
    _report_failure(sent.append, slot, 5, OSError(errno.EIO, "Input/output error", "/nfs/x"))  # may pass
    assert [type(m) for m in sent] == [Fatal, Fatal, Failed, Failed]
    assert sent[0].exit_code == 1 and "(out/.work/results/shard-000002.frames.tsv)" in sent[0].message
    assert "free space" in sent[0].message
    assert sent[1].exit_code == 2 and "choose a location you can write to" in sent[1].message
