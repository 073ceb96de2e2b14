"""The attention-kernel rule (runtime/attention_kernel.py): what it restricts, where, and the build check.

The restriction itself is global SDPA flags, which exist (and can be read) without a GPU, so the CPU test
checks the flags inside and after the context; whether Inductor honours them when it lowers attention is
checked on the H200 (tests/engines/test_inductor_backend.py, ``gpu``).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from virnucpro_trt.errors import BuildError
from virnucpro_trt.runtime.attention_kernel import (
    ATTENTION_KERNELS,
    attention_kernel,
    check_lowered_attention,
    sdpa_backends,
)
from virnucpro_trt.runtime.embedding import TorchBackend

CUDA, CPU = torch.device("cuda", 0), torch.device("cpu")


def _flags() -> dict[str, bool]:
    cuda = torch.backends.cuda
    return {
        "cudnn": cuda.cudnn_sdp_enabled(),
        "efficient": cuda.mem_efficient_sdp_enabled(),
        "flash": cuda.flash_sdp_enabled(),
        "math": cuda.math_sdp_enabled(),
    }


def test_names() -> None:
    assert ATTENTION_KERNELS == ("efficient", "cudnn", "auto")
    assert sdpa_backends("auto") is None
    with pytest.raises(ValueError, match="unknown attention kernel 'fast'"):
        sdpa_backends("fast")


@pytest.mark.parametrize(
    ("name", "inside"),
    [
        ("efficient", {"cudnn": False, "efficient": True, "flash": True, "math": False}),
        ("cudnn", {"cudnn": True, "efficient": False, "flash": False, "math": False}),
    ],
)
def test_cuda_context_restricts_then_restores(name: str, inside: dict[str, bool]) -> None:
    before = _flags()
    with attention_kernel(name, CUDA):
        assert _flags() == inside
    assert _flags() == before


@pytest.mark.parametrize(("name", "device"), [("efficient", CPU), ("cudnn", CPU), ("auto", CUDA)])
def test_no_restriction_on_cpu_or_auto(name: str, device: torch.device) -> None:
    before = _flags()
    with attention_kernel(name, device):
        assert _flags() == before


def test_build_check_refuses_another_kernel() -> None:
    cudnn = {"mm": 48, "_scaled_dot_product_cudnn_attention": 12}
    efficient = {"mm": 48, "_scaled_dot_product_efficient_attention": 12}
    with pytest.raises(BuildError, match="asked for efficient attention but the engine calls _scaled_dot_"):
        check_lowered_attention(cudnn, "efficient", CUDA, "dnabert-s (bf16)")
    with pytest.raises(BuildError, match="asked for cudnn attention"):
        check_lowered_attention({**cudnn, **efficient}, "cudnn", CUDA, "esm2 (bf16)")
    flash = {"_scaled_dot_product_flash_attention": 12}  # no mask: an engine's masked call is never it
    with pytest.raises(BuildError, match="asked for efficient attention"):
        check_lowered_attention({**efficient, **flash}, "efficient", CUDA, "esm2 (bf16)")
    check_lowered_attention(efficient, "efficient", CUDA, "x")
    check_lowered_attention(cudnn, "cudnn", CUDA, "x")
    check_lowered_attention(cudnn, "auto", CUDA, "x")
    check_lowered_attention(cudnn, "efficient", CPU, "x")  # CPU engines are not restricted


def test_build_check_of_an_engine_with_its_own_attention_kernel() -> None:
    """ESM-2's Triton attention (engines/rotary_attention.py) replaces SDPA: any SDPA call is refused on
    CUDA, whatever kernel was asked for; CPU engines are not checked."""
    check_lowered_attention({"mm": 4}, "efficient", CUDA, "esm2 (bf16)", own_kernel=True)
    with pytest.raises(BuildError, match="its own attention kernel but the engine calls"):
        check_lowered_attention(
            {"_scaled_dot_product_efficient_attention": 2}, "efficient", CUDA, "esm2 (bf16)", own_kernel=True
        )
    check_lowered_attention(
        {"_scaled_dot_product_efficient_attention": 2}, "efficient", CPU, "x", own_kernel=True
    )


def test_build_check_logs_when_it_cannot_tell(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="virnucpro_trt.runtime.attention_kernel"):
        check_lowered_attention({"mm": 48}, "efficient", CUDA, "esm2 (bf16)")
    assert "esm2 (bf16): no attention kernel call found" in caplog.text


def test_eager_backend_runs_inside_the_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """The eager backend enters the rule around the forward (seen by the model), on its device."""
    seen: list[tuple[str, str]] = []

    class Probe(torch.nn.Module):
        def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            seen.append(("forward", str(_flags())))
            return torch.zeros(ids.shape[0], 3)

    def fake(name: str, device: torch.device):  # records the call, then behaves like the real one
        seen.append((name, device.type))
        return attention_kernel(name, CUDA)

    monkeypatch.setattr("virnucpro_trt.runtime.embedding.attention_kernel", fake)
    backend = TorchBackend(Probe(), 3, 0, CPU, torch.float32)
    out = backend.embed_padded(np.ones((2, 4), dtype=np.int64), np.ones((2, 4), dtype=np.int64))
    assert out.shape == (2, 3)
    assert seen[0] == ("efficient", "cpu")
    assert "'cudnn': False" in seen[1][1]
