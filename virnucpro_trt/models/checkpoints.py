"""One import point for the encoder checkpoint loaders.

``load_dnabert`` and ``load_esm2`` return ``(model fp32 CPU eval, tokenizer, info)``; ``info["weight_files"]``
feeds :func:`weights_sha256`, the identity of the weights recorded in engine manifests.
"""

from __future__ import annotations

from virnucpro_trt.models.checkpoint_io import weights_sha256
from virnucpro_trt.models.dnabert_checkpoint import load_dnabert
from virnucpro_trt.models.esm_checkpoint import load_esm2

__all__ = ["load_dnabert", "load_esm2", "weights_sha256"]
