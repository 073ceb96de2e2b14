"""The one table of model kinds: what each of a run's three models is called where.

A model kind has a name (``dnabert-s``, ``esm2``, ``classifier``: engine manifests, resume keys,
``embed --model``), the CLI flag that names its checkpoint, and a short name (``dnabert``, ``esm``,
``classifier``: what :func:`~virnucpro_trt.models.resolve.resolve_model` and its messages call it, and
run.json's keys). The two encoders add their token limits, the tokenizer file of an engine directory,
the alphabet their input is read in, and their pooling rule as run.json and the HDF5 files state it
(docs/upstream.md §3). Everything else looks a kind up here instead of keeping its own
translation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

EncoderName = Literal["dnabert-s", "esm2"]


@dataclass(frozen=True)
class ModelInfo:
    """One of the three models a ``predict`` run needs."""

    name: str
    flag: str  # the CLI option naming its checkpoint
    short: str  # resolve_model's kind and run.json's key
    title: str  # as messages name it


@dataclass(frozen=True)
class EncoderInfo(ModelInfo):
    """An encoder: a model that turns tokens into one pooled embedding per sequence."""

    # Longest input in tokens: DNABERT-S 3p+1 <= 501 bases plus [CLS]/[SEP] fits 512; ESM-2 takes
    # <= 1024 residues plus <cls>/<eos> (fair-esm's truncation).
    max_length: int
    # The 500 bp workload's typical length (~100-130 BPE tokens; ~168 ESM tokens): engines' opt point.
    opt_length: int
    tokenizer_file: str  # its tokenizer's file in an engine directory
    alphabet: str  # what its input is validated as (sequences/reader.py)
    pooling: str


DNABERT_S = EncoderInfo(
    name="dnabert-s",
    flag="--dnabert",
    short="dnabert",
    title="DNABERT-S",
    max_length=512,
    opt_length=128,
    tokenizer_file="dnabert-s.tokenizer.json",
    alphabet="dna",
    pooling="mean over all tokens incl. [CLS] and [SEP]",
)
ESM2 = EncoderInfo(
    name="esm2",
    flag="--esm",
    short="esm",
    title="ESM-2",
    max_length=1026,
    opt_length=170,
    tokenizer_file="esm2.vocab.txt",
    alphabet="protein",
    pooling="mean over residues 1..min(1024, len) (no BOS/EOS)",
)
CLASSIFIER = ModelInfo(name="classifier", flag="--classifier", short="classifier", title="classifier")

ENCODERS: dict[str, EncoderInfo] = {kind.name: kind for kind in (DNABERT_S, ESM2)}
MODELS: dict[str, ModelInfo] = {**ENCODERS, CLASSIFIER.name: CLASSIFIER}
ENCODER_NAMES: tuple[EncoderName, ...] = ("dnabert-s", "esm2")
MODEL_NAMES: tuple[str, ...] = tuple(MODELS)
assert tuple(ENCODERS) == ENCODER_NAMES


def checkpoint_specs(dnabert: object, esm: object, classifier: object) -> dict[str, str | None]:
    """The three checkpoints by model name, as the engine and run code key them (a path or cache name
    each, as text; None where not given: taken from an engine directory)."""
    given = (dnabert, esm, classifier)
    return {name: None if spec is None else str(spec) for name, spec in zip(MODEL_NAMES, given, strict=True)}
