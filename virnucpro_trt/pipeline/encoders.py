"""Loading the two encoders for a run: resolve, read the checkpoint, place on a device, wrap in a backend.

Kept apart from the pipelines so ``embed``, ``predict`` and (later) the engine builder and the benchmark
load models the same way and record the same facts about them (path, layout, weights hash).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from virnucpro_trt.errors import UserError
from virnucpro_trt.models.checkpoint_io import weights_sha256
from virnucpro_trt.models.dnabert_checkpoint import load_dnabert
from virnucpro_trt.models.esm_checkpoint import load_esm2
from virnucpro_trt.models.resolve import resolve_model
from virnucpro_trt.models.tokenization import DnaTokenizer, ProteinTokenizer
from virnucpro_trt.runtime.device import configure_fp32_reference, resolve_device, resolve_dtype
from virnucpro_trt.runtime.embedding import EmbeddingBackend, TorchBackend
from virnucpro_trt.settings import EncoderSettings

log = logging.getLogger(__name__)

EncoderKind = Literal["dnabert-s", "esm2"]


@dataclass
class LoadedEncoder:
    """One encoder ready to embed: its backend, tokenizer, width and what it was loaded from."""

    kind: EncoderKind
    backend: EmbeddingBackend
    tokenizer: DnaTokenizer | ProteinTokenizer
    dim: int
    max_batch_tokens: int
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Placement:
    """Where and how the encoders run."""

    device: torch.device
    dtype: torch.dtype
    precision: str


def place(encoders: EncoderSettings) -> Placement:
    """Resolve device, precision and CPU threads once per run."""
    if encoders.backend != "torch":
        raise UserError(f"--backend {encoders.backend}: only 'torch' is available in this version")
    device = resolve_device(encoders.device)
    dtype = resolve_dtype(encoders.precision, device)
    threads = encoders.threads or _available_cpus()
    torch.set_num_threads(threads)
    if dtype is torch.float32:
        configure_fp32_reference()
    return Placement(device, dtype, encoders.precision)


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def load_encoder(
    kind: EncoderKind, spec: str, placement: Placement, encoders: EncoderSettings
) -> LoadedEncoder:
    """Resolve ``spec`` locally, load the checkpoint and wrap it in the selected backend."""
    started = time.perf_counter()
    path = resolve_model(spec, "dnabert" if kind == "dnabert-s" else "esm")
    if kind == "dnabert-s":
        model, tokenizer, info = load_dnabert(path)
        dim = model.config.hidden_size
    else:
        model, tokenizer, info = load_esm2(path)
        dim = model.config.embed_dim
    info = dict(info)
    info["spec"] = spec
    info["weights_sha256"] = weights_sha256(info.get("weight_files") or [path])
    backend = TorchBackend(model, dim, tokenizer.pad_id, placement.device, placement.dtype)
    log.info(
        "loaded %s from %s (%d-wide, %s, %s) in %.1fs",
        kind,
        path,
        dim,
        placement.device,
        placement.precision,
        time.perf_counter() - started,
    )
    return LoadedEncoder(
        kind, backend, tokenizer, dim, encoders.batch_tokens_for(placement.device.type), info
    )
