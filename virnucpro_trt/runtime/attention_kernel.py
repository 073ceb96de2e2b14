"""Which fused attention kernel the encoders use on CUDA, and the check that an engine got it.

Why this is a setting at all: PyTorch 2.11 on Hopper prefers cuDNN attention for bf16/fp16
``scaled_dot_product_attention`` with a mask, and cuDNN builds an execution plan for every new
(batch, length) shape, which costs far more than the attention call itself. A ``predict`` run cuts each
shard's length-sorted frames by a token budget, so almost every DNABERT-S call has a shape never seen
before; the plans made DNABERT-S several times slower per frame inside runs than alone (measured with
``benchmarks/diagnostics/sdpa_new_shapes.py`` and ``dnabert_in_run.py``: docs/measurements.md). A compiled
engine fixes the kernel when it is built (Inductor lowers SDPA to one aten kernel), so the choice is a
build option recorded in the manifest, and eager PyTorch runs use the same rule.

* ``efficient`` (default): the memory-efficient (CUTLASS) kernel; FlashAttention is allowed too but
  cannot take a mask. No per-shape plan; a little slower per call than a cached cuDNN plan.
* ``cudnn``: cuDNN attention; fastest once every shape has been seen (fixed-shape serving).
* ``auto``: whatever this PyTorch prefers.

On CPU the choice does not apply (Inductor lowers to its CPU flash kernel): every name is accepted and
nothing is restricted.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from virnucpro_trt.errors import BuildError
from virnucpro_trt.settings import ATTENTION_KERNELS, DEFAULT_ATTENTION

__all__ = [
    "ATTENTION_KERNELS",
    "DEFAULT_ATTENTION",
    "attention_kernel",
    "check_lowered_attention",
    "sdpa_backends",
]

log = logging.getLogger(__name__)

_BACKENDS: dict[str, list[SDPBackend]] = {
    "efficient": [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.FLASH_ATTENTION],
    "cudnn": [SDPBackend.CUDNN_ATTENTION],
}
# The aten kernel each choice lowers to, as named by the AOTInductor wrapper's calls (extern_kernels).
_LOWERED = {"efficient": "efficient_attention", "cudnn": "cudnn_attention"}


def sdpa_backends(name: str) -> list[SDPBackend] | None:
    """The SDPA backends allowed for ``name``; None for ``auto`` (PyTorch decides)."""
    if name not in ATTENTION_KERNELS:
        raise ValueError(f"unknown attention kernel {name!r} (choose from {', '.join(ATTENTION_KERNELS)})")
    return _BACKENDS.get(name)


@contextlib.contextmanager
def attention_kernel(name: str, device: torch.device) -> Iterator[None]:
    """Restrict ``scaled_dot_product_attention`` to ``name``'s kernels while tracing, compiling or running
    on a CUDA ``device``; a no-op on CPU and for ``auto``."""
    backends = sdpa_backends(name)
    if device.type != "cuda" or backends is None:
        yield
        return
    with sdpa_kernel(backends):
        yield


def check_lowered_attention(
    kernels: Mapping[str, int], name: str, device: torch.device, what: str, own_kernel: bool = False
) -> None:
    """Fail the build when a CUDA engine calls another attention kernel than the requested one.

    ``kernels`` are the aten calls of the generated wrapper (``inductor_runner.extern_kernels``). An
    engine that silently took another kernel would be slow in exactly the way the option exists to
    prevent, so it is an error. No attention call at all (a torch whose wrapper names calls differently,
    or SDPA decomposed into plain GEMMs) is only logged: the build facts keep the list. An engine with
    its ``own_kernel`` (ESM-2's Triton attention, ``engines.rotary_attention``) must call no SDPA kernel
    at all, whatever ``name`` says.
    """
    if device.type != "cuda":
        return
    attention = sorted(k for k in kernels if "attention" in k)
    if own_kernel:
        if attention:
            raise BuildError(
                f"{what}: built with its own attention kernel but the engine calls {', '.join(attention)}"
            )
        return
    wanted = _LOWERED.get(name)
    if wanted is None:
        return
    if not attention:
        log.warning("%s: no attention kernel call found in the engine to check against %s", what, name)
    elif any(wanted not in k for k in attention):
        raise BuildError(f"{what}: asked for {name} attention but the engine calls {', '.join(attention)}")
