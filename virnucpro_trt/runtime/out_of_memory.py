"""Recognising "the batch did not fit in device memory", whichever library ran the batch.

The embedding loop splits a batch that runs out of memory (see :mod:`virnucpro_trt.runtime.embedding`),
but only eager PyTorch raises ``torch.OutOfMemoryError``. The engines report it their own way:

* AOTInductor allocates its intermediate buffers through PyTorch's caching allocator, but the wrapper
  catches the C++ exception, prints it to stderr and raises a bare ``RuntimeError("run_func_(...) API
  call failed ...")`` — the message no longer says why. The allocator's ``num_ooms`` counter does: it is
  read before the batch and compared after.
* ONNX Runtime's CUDA arena raises ``RuntimeException`` "... Failed to allocate memory for requested
  buffer of size ..." (or "CUDA failure 2: out of memory").
* TensorRT logs "Error Code 1: Cuda Runtime (out of memory)" and ``execute_async_v3`` returns False;
  the backend raises with the logged errors in its message.

:func:`device_memory_errors` turns each of these into ``torch.OutOfMemoryError`` (keeping the original
as ``__cause__``), so the loop has one exception to catch and every backend gets the same split.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import torch

# torch.OutOfMemoryError is the new name; torch.cuda.OutOfMemoryError the old one (an alias today).
OUT_OF_MEMORY_ERRORS: tuple[type[BaseException], ...] = tuple(
    {
        cls
        for cls in (getattr(torch, "OutOfMemoryError", None), torch.cuda.OutOfMemoryError)
        if cls is not None
    }
)

_MESSAGE = re.compile(
    r"out of memory|failed to allocate memory|could not be allocated|CUDA_ERROR_OUT_OF_MEMORY"
    r"|cudaErrorMemoryAllocation",
    re.IGNORECASE,
)


def says_out_of_memory(exc: BaseException) -> bool:
    """Whether an engine's error message reports a failed device (or arena) allocation."""
    return bool(_MESSAGE.search(str(exc)))


def oom_count(device: torch.device) -> int:
    """How many allocations PyTorch's caching allocator has failed on ``device`` (0 off CUDA)."""
    if device.type != "cuda" or not torch.cuda.is_initialized():
        return 0
    # The nested form: memory_stats() would flatten ~100 entries in Python on every batch.
    return int(torch.cuda.memory.memory_stats_as_nested_dict(device).get("num_ooms", 0))


@contextmanager
def device_memory_errors(
    device: torch.device, engine: str, *, torch_allocator: bool = False
) -> Iterator[None]:
    """Re-raise an engine's out-of-memory failure inside the block as ``torch.OutOfMemoryError``.

    ``torch_allocator``: the engine allocates through PyTorch's caching allocator (AOTInductor), so its
    failure counter is read around the block; the others are judged by their message alone, and the
    counter is not read on their hot path. Anything else passes through unchanged, so a real bug is
    not retried as if it were memory.
    """
    before = oom_count(device) if torch_allocator else 0
    try:
        yield
    except OUT_OF_MEMORY_ERRORS:
        raise
    except Exception as exc:
        if says_out_of_memory(exc) or (torch_allocator and oom_count(device) > before):
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise torch.OutOfMemoryError(f"{engine} ran out of memory on {device}: {first}") from exc
        raise
