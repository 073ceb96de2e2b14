"""One import point for the encoder checkpoint loaders.

``load_dnabert`` and ``load_esm2`` return ``(model fp32 CPU eval, tokenizer, info)``, ``info`` a dict of
their own (weight files, config, ignored keys) for this package and its tests. :func:`load_encoder` is
the boundary: it returns a typed :class:`~virnucpro_trt.models.origin.EncoderOrigin` instead, with the
weights' identity (:mod:`virnucpro_trt.models.identity`: ``weights_sha256``, and ``weights_identity``
with the stamps) that engine manifests, resume keys and run.json record.
"""

from __future__ import annotations

from pathlib import Path

import torch

from virnucpro_trt.models.classifier import ClassifierWeights, check_classifier_width
from virnucpro_trt.models.dnabert_checkpoint import load_dnabert, precheck_dnabert
from virnucpro_trt.models.esm_checkpoint import load_esm2, precheck_esm2
from virnucpro_trt.models.identity import WeightsIdentity, confirm_checkpoint, confirm_still
from virnucpro_trt.models.origin import EncoderOrigin
from virnucpro_trt.models.tokenization import DnaTokenizer, ProteinTokenizer

__all__ = ["load_dnabert", "load_encoder", "load_esm2", "precheck_encoder", "precheck_models"]


def load_encoder(
    kind: str, path: Path, identity: WeightsIdentity | None = None
) -> tuple[torch.nn.Module, DnaTokenizer | ProteinTokenizer, EncoderOrigin, int]:
    """``(model, tokenizer, origin, width)`` of ``dnabert-s`` or ``esm2``; ``origin`` names the weights.

    ``identity`` is what the caller already knows of ``path`` (a run's coordinator hashed it): reused
    while the files carry its stamps, and refused when they no longer hold those weights. The files are
    stamped before loading and checked after, so the hash always describes what was loaded.
    """
    found = confirm_checkpoint(kind, path, identity)
    if kind == "dnabert-s":
        model, tokenizer, info = load_dnabert(path)
        dim = model.config.hidden_size
    else:
        model, tokenizer, info = load_esm2(path)
        dim = model.config.embed_dim
    confirm_still(found, path)
    origin = EncoderOrigin(
        path=info["path"], format=info["format"], layout=info["layout"], weights_sha256=found.sha256,
        weights_identity=found,
    )  # fmt: skip
    return model, tokenizer, origin, dim


def precheck_encoder(kind: str, path: Path) -> int | None:
    """What a run's main process checks of an encoder checkpoint before its workers load it, without
    loading the weights: the tokenizer file against the embedding rows its config declares (an id past
    the embedding would otherwise fail inside every worker, at the first batch holding it) and, for a
    fair-esm ``.pt``, its structure (keys and args, memory-mapped), so a file of the wrong kind is named
    before the input is read. The workers read the same file again; the first read is cheap. Returns the
    embedding width the checkpoint declares (None where nothing is at ``path``): what the classifier's
    input width is checked against before anything loads or compiles (:func:`precheck_models`)."""
    if kind == "dnabert-s":
        return precheck_dnabert(path)
    return precheck_esm2(path)


def precheck_models(
    encoders: dict[str, Path], classifier: ClassifierWeights | None, source: Path | None
) -> None:
    """:func:`precheck_encoder` of each encoder given, then the classifier's input width against the two
    widths they declare (``classifier`` read from ``source``): a classifier of other encoders was refused
    only once both were loaded — or, in ``build``, once both were compiled (minutes for ESM-2 3B)."""
    widths = {kind: precheck_encoder(kind, path) for kind, path in encoders.items()}
    dnabert, esm = widths.get("dnabert-s"), widths.get("esm2")
    if classifier is not None and source is not None and dnabert is not None and esm is not None:
        check_classifier_width(classifier, dnabert, esm, source)
