"""The peer: the project's own encoders under ``torch.compile``, the simplest alternative a user has.

A ``compile-<precision>`` row takes the eager models of the ``torch`` row (same checkpoints, device,
precision, attention kernel and batches) and wraps each in ``torch.compile(model)`` in its default mode
and default dynamic-shape rule: the first batch shape compiles a static graph, the next one a dynamic
graph that serves the rest (the warm-up pass pays for both). Dynamo's caches are reset first, so a row
compiles as it would in a fresh process.

``compile-fp8`` is what torchao documents for float8 inference: the bf16 model, then
``quantize_(model, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))`` (e4m3 weights with
one scale per output channel, activations quantised per token row at run time, ``torch._scaled_mm``),
then ``torch.compile``. It needs torchao (the ``peer`` extra) and a CUDA GPU of compute capability >= 8.9;
elsewhere the row is unavailable with that reason. torchao's config also sets a few Inductor options for
the process (coordinate-descent tuning among them); they are part of what a user gets, so they stay for
the row, are recorded in its ``compile`` facts, and are restored afterwards so later rows compile as
they would alone.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from virnucpro_trt.bench.config_names import PEER
from virnucpro_trt.engines.inductor_fp8 import fp8_unavailable_reason
from virnucpro_trt.errors import one_line
from virnucpro_trt.runtime.embedding import TorchBackend

log = logging.getLogger(__name__)

TORCHAO_FP8 = "torchao Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())"
INSTALL_HINT = "pip install 'virnucpro-trt[peer]' (benchmarks/stage_torchao.sh for hosts without network)"


def torchao_version() -> str | None:
    """The installed torchao's version, without importing it (None when not installed)."""
    try:
        return importlib.metadata.version("torchao")
    except importlib.metadata.PackageNotFoundError:
        return None


def _torchao_fp8() -> tuple[Any, Any]:
    """``(quantize_, config)`` from torchao; ImportError (with the reason) when this torchao lacks them."""
    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_
    except Exception as exc:  # not installed, too old, or broken against this torch
        raise ImportError(f"torchao's float8 API is not importable ({type(exc).__name__}: {exc})") from exc
    return quantize_, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())


def peer_unavailable_reason(precision: str, device: torch.device) -> str | None:
    """Why ``compile-<precision>`` cannot run on ``device`` (None when it can); one line."""
    if precision != "fp8":
        return None
    problems = []
    if (reason := fp8_unavailable_reason(device)) is not None:
        problems.append(reason)
    if importlib.util.find_spec("torchao") is None:
        problems.append(f"compile-fp8 quantises with torchao, which is not installed: {INSTALL_HINT}")
    elif not problems:
        try:
            _torchao_fp8()
        except ImportError as exc:
            problems.append(f"{one_line(exc, 300, name=False)}; {INSTALL_HINT}")
    return "; ".join(problems) or None


@dataclass
class CompiledPeer:
    """Facts of a compiled configuration (its row's ``compile`` block) and how to undo its side effects."""

    facts: dict[str, Any]
    _inductor_before: dict[str, Any] = field(default_factory=dict)
    _graphs_before: int = 0

    def finish(self) -> None:
        """Record how many graphs Dynamo compiled, drop its caches (they hold the compiled models) and
        restore the Inductor options the quantisation changed."""
        import torch._dynamo

        self.facts["graphs"] = _unique_graphs() - self._graphs_before
        torch._dynamo.reset()
        if self._inductor_before:
            torch._inductor.config.load_config(self._inductor_before)
            self._inductor_before = {}


def compile_backends(backends: Iterable[TorchBackend], precision: str) -> CompiledPeer:
    """Put each eager backend's module under ``torch.compile`` (after torchao's fp8 quantisation for
    ``fp8``); the modules must already be on their device in the row's dtype (bf16 for fp8)."""
    import torch._dynamo
    import torch._inductor.config

    torch._dynamo.reset()
    before = torch._inductor.config.get_config_copy()
    facts: dict[str, Any] = {"mode": "default", "dynamic": None, "quantization": None, "torchao": None}
    backends = list(backends)
    if precision == "fp8":
        quantize, config = _torchao_fp8()
        for backend in backends:
            quantize(backend.model, config)
        facts.update(quantization=TORCHAO_FP8, torchao=torchao_version())
    after = torch._inductor.config.get_config_copy()
    changed = {k: v for k, v in after.items() if k in before and before[k] != v}
    facts["inductor_config_changed"] = {k: _plain(v) for k, v in changed.items()}
    peer = CompiledPeer(facts, {k: before[k] for k in changed}, _unique_graphs())
    for backend in backends:
        backend.model = torch.compile(backend.model)
        backend.name = PEER
    return peer


def _unique_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _plain(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool | type(None)) else repr(value)
