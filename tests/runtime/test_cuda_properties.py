"""One probe of a GPU's name, compute capability and memory, read by every record that states them."""

from __future__ import annotations

import types

import pytest
import torch

from virnucpro_trt.environment import CudaProperties
from virnucpro_trt.runtime.device import describe_device

H200 = types.SimpleNamespace(name="NVIDIA H200", major=9, minor=0, total_memory=int(139.8 * 2**30) + 12345)


@pytest.fixture
def one_h200(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: H200)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


def test_every_record_states_the_gpu_alike(one_h200: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from virnucpro_trt.bench.hardware import gpu_facts
    from virnucpro_trt.engines import build
    from virnucpro_trt.environment import cuda_devices

    assert CudaProperties.of(0) == CudaProperties("NVIDIA H200", "9.0", 139.8)
    cuda = torch.device("cuda", 0)
    facts = describe_device(cuda)
    assert (facts.name, facts.compute_capability, facts.memory_gib) == ("NVIDIA H200", "9.0", 139.8)
    assert gpu_facts(cuda) == {"gpu": "NVIDIA H200", "compute_capability": "9.0", "gpu_memory_gib": 139.8}
    (listed,) = cuda_devices()
    assert listed == {"index": 0, "name": "NVIDIA H200", "compute_capability": "9.0", "memory_gib": 139.8}
    monkeypatch.setattr(build, "arch_tag", lambda device: "sm_90")
    assert build.device_facts(cuda).to_json() == {
        "type": "cuda", "arch": "sm_90", "name": "NVIDIA H200", "compute_capability": "9.0",
    }  # fmt: skip
