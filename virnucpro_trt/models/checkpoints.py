"""One import point for the encoder checkpoint loaders.

``load_dnabert`` and ``load_esm2`` return ``(model fp32 CPU eval, tokenizer, info)``; ``info["weight_files"]``
feeds :func:`weights_sha256`, the identity of the weights recorded in engine manifests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from virnucpro_trt.models.checkpoint_io import weights_sha256
from virnucpro_trt.models.dnabert_checkpoint import load_dnabert
from virnucpro_trt.models.esm_checkpoint import load_esm2
from virnucpro_trt.models.tokenization import DnaTokenizer, ProteinTokenizer

__all__ = ["load_dnabert", "load_encoder", "load_esm2", "weights_sha256"]


def load_encoder(
    kind: str, path: Path
) -> tuple[torch.nn.Module, DnaTokenizer | ProteinTokenizer, dict[str, Any], int]:
    """``(model, tokenizer, info, width)`` of ``dnabert-s`` or ``esm2``; ``info`` gains ``weights_sha256``."""
    if kind == "dnabert-s":
        model, tokenizer, info = load_dnabert(path)
        dim = model.config.hidden_size
    else:
        model, tokenizer, info = load_esm2(path)
        dim = model.config.embed_dim
    info = dict(info)
    info["weights_sha256"] = weights_sha256(info.get("weight_files") or [path])
    return model, tokenizer, info, dim
