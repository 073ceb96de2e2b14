"""``virnucpro-trt embed``: pooled DNABERT-S or ESM-2 embeddings of every input record, as HDF5.

Pooling is the classifier's (docs/upstream.md §3): DNABERT-S averages every token including
[CLS]/[SEP]; ESM-2 averages residues 1..min(1024, len). Records are embedded in token-budget batches and
written in input order. An empty record has nothing to embed: its row is NaN with status ``empty``, so
every input id is present and nobody mistakes a placeholder for an embedding.

The output replaces only a file an earlier command wrote there, unchanged since; anything else at that
path is refused unless ``--force`` (``files/ownership.py``: the rule every command follows). A rerun
onto its own finished output computes nothing (:func:`_made`): a large protein set is hours of GPU time.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from virnucpro_trt import __version__
from virnucpro_trt.errors import InputFormatError
from virnucpro_trt.files.folders import made_folder
from virnucpro_trt.files.ownership import check_replaceable, record_path, record_written, recorded_made
from virnucpro_trt.files.run_lock import output_lock, output_lock_name
from virnucpro_trt.models.identity import WeightsIdentity, identify_checkpoint
from virnucpro_trt.models.kinds import ENCODERS, MODELS
from virnucpro_trt.models.resolve import resolve_model
from virnucpro_trt.outputs.embeddings_h5 import EmbeddingsWriter
from virnucpro_trt.pipeline.encoders import RunWeights, engine_dir_for_run, open_models
from virnucpro_trt.pipeline.inputs import InputWatch, readable_input, validate_input
from virnucpro_trt.pipeline.run_paths import check_input_file, check_run_paths
from virnucpro_trt.runtime.device import computing_releases, resolve_device
from virnucpro_trt.sequences.reader import read_records
from virnucpro_trt.settings import EmbedSettings

log = logging.getLogger(__name__)

_BLOCK_RECORDS = 65536
# Tokens one DNABERT-S record may take in embed whatever the batch budget: a 16,384-token sequence's
# attention scores are 12 heads x 16,384^2 x 4 bytes = 13 GB per layer in fp32 on a CPU.
DNABERT_RECORD_TOKENS = 16384


@dataclass(frozen=True)
class EmbedSummary:
    """What ``embed`` did: the input's records (``empty`` of them without a letter), the width of the
    embeddings (None when nothing was computed), and whether it computed them or found them made."""

    records: int
    empty: int
    dim: int | None
    computed: bool


def run_embed(settings: EmbedSettings) -> EmbedSummary:
    """Check the paths, make the output's folder (before the model loads: a place where none can be
    made fails first), then embed; a failed run leaves no folder it made. The output's lock is held
    throughout (one run per output file; it notes the stdin copy and the temporary file, so the rerun
    after a SIGKILL removes them)."""
    check_input_file(settings.input)
    folder = settings.output.parent
    outputs = [settings.output, record_path(folder), folder / output_lock_name(settings.output)]
    kind = ENCODERS[settings.model].name
    weights = resolve_model(settings.weights, MODELS[kind].short) if settings.weights else None
    check_run_paths([settings.input, weights, settings.engines], outputs)
    check_replaceable([settings.output], settings.force)
    with made_folder(folder), output_lock(settings.output) as lock:
        noted = functools.partial(lock.note, growing=True) if lock is not None else None
        with readable_input(settings.input, folder, noted, settings.output) as (path, display):
            return _embed(settings, path, display, noted)


def _embed(
    settings: EmbedSettings, path: Path, display: str, on_create: Callable[[Path], None] | None
) -> EmbedSummary:
    """Validate the input, identify the model, and either find the output made or load the encoder and
    embed block by block; the file appears only when complete (its temporary file told to ``on_create``
    as soon as it exists)."""
    model = ENCODERS[settings.model]
    alphabet = model.alphabet
    refuse = settings.model == "esm2" and not settings.allow_nucleotide_letters
    watch = InputWatch.start(path, display)  # the bytes hashed are the bytes embedded while it holds
    summary = validate_input(path, display, alphabet, refuse_nucleotides=refuse)
    kind = model.name
    previous = recorded_made(settings.output)
    known, made = _made(settings, summary.sha256, previous)
    if isinstance(previous, dict) and previous.get("key") == made["key"] and watch.holds():
        if not settings.force:
            log.info("%s already holds these embeddings (same input, settings and model): nothing to do "
                     "(--force computes them again)", settings.output)  # fmt: skip
            return EmbedSummary(summary.records, summary.empty_records, None, computed=False)
        log.warning("--force: computing %s again (it was unchanged)", settings.output)
    recorded = WeightsIdentity.from_json(previous.get("weights")) if isinstance(previous, dict) else None
    if recorded is not None and recorded in known.weights.values():  # the record's hash spares a skip's
        known, made = _made(settings, summary.sha256, None)  # hashing only: computed, the hash is taken now
    models = open_models(
        settings.encoders, {kind: settings.weights}, (kind,), False, settings.engines, settings.rebuild,
        known=known,
    )  # fmt: skip
    encoder = models.encoders[kind]
    attrs = {
        "tool": f"virnucpro-trt {__version__}",
        "model": settings.model,
        "weights": settings.weights or str(settings.engines),
        "weights_sha256": encoder.origin.weights_sha256,
        "precision": models.precision,
        "backend": models.backend,
        "pooling": model.pooling,
        "input_sha256": summary.sha256,
    }
    if kind == "dnabert-s":  # before anything is written or removed: every record within the limit
        limit = max(encoder.max_batch_tokens, DNABERT_RECORD_TOKENS)
        for record in read_records(path, alphabet):
            fewest = -(-len(record.sequence) // encoder.tokenizer.longest_token)
            _refuse_long_dna(record.id, record.sequence, limit, display, fewest, exact=False)
            if len(record.sequence) + 2 > limit:  # at most one token a letter, plus [CLS] and [SEP]
                (ids,) = encoder.tokenizer.encode_batch([record.sequence.upper()])
                _refuse_long_dna(record.id, record.sequence, limit, display, len(ids))
    with contextlib.suppress(FileNotFoundError):
        settings.output.unlink()
    records = read_records(path, alphabet)
    with EmbeddingsWriter(settings.output, encoder.dim, attrs, on_create) as writer:
        while block := list(islice(records, _BLOCK_RECORDS)):
            ids = [r.id for r in block]
            # Upper-cased: both vocabularies are upper case, so a soft-masked (lower-case) read or
            # protein would tokenize letter by letter as <unk> and embed as nonsense, silently.
            seqs = [r.sequence.upper() for r in block]
            nonempty = [i for i, s in enumerate(seqs) if s]
            emb = np.full((len(block), encoder.dim), np.nan, dtype=np.float32)
            if nonempty:
                tokens = encoder.tokenizer.encode_batch([seqs[i] for i in nonempty])
                emb[nonempty] = encoder.embed(tokens, [ids[i] for i in nonempty])
            writer.append(ids, emb, ["ok" if s else "empty" for s in seqs])
        writer.commit()
    watch.check("embed", [settings.output])
    record_written([settings.output], on_create, made)
    return EmbedSummary(summary.records, summary.empty_records, encoder.dim, computed=True)


def _made(settings: EmbedSettings, input_sha256: str, previous: object) -> tuple[RunWeights, dict[str, Any]]:
    """The model as checked (for loading it without hashing again), and what the output is made from, as
    its record entry keeps it (``files/ownership.py``: ``made``).

    ``key`` decides whether a finished output is this run's: the tool's version, the input's SHA-256,
    the settings fingerprint (:meth:`EmbedSettings.fingerprint`) and the model's content identity: the
    checkpoint's hash, or the engine set's identity after its checks (a set that needs building is built
    first, or refused, exactly as loading it would), with the releases of the libraries that compute and
    that no manifest pins (``computing_releases``).
    ``weights`` keeps the checkpoint's file stamps, so a rerun onto unchanged files hashes nothing (~6 GB
    for ESM-2 3B); a recorded value of another shape is ignored. The record is anyone's to edit (stamps
    copied beside a made-up hash), so embeddings computed after all are recorded with a hash taken now
    (``previous`` None).
    """
    kind = ENCODERS[settings.model].name
    device_type = resolve_device(settings.encoders.device).type
    key: dict[str, Any] = {
        "command": "embed",
        "version": __version__,
        "input_sha256": input_sha256,
        "settings_fingerprint": settings.fingerprint(device_type),
    }
    checked = engine_dir_for_run(
        settings.encoders, {kind: settings.weights}, settings.engines, settings.rebuild, None
    )
    if checked is not None:
        key["model"] = {"engines": checked.identity, **computing_releases(checked.backend)}
        return RunWeights(engines=checked), {"key": key}
    assert settings.weights is not None  # the CLI asks for --weights without --engines
    recorded = previous.get("weights") if isinstance(previous, dict) else None
    path = resolve_model(settings.weights, MODELS[kind].short)
    weights = identify_checkpoint(kind, path, WeightsIdentity.from_json(recorded))
    key["model"] = {"weights_sha256": weights.sha256, **computing_releases()}
    return RunWeights(weights={kind: weights}), {"key": key, "weights": weights.to_json()}


def _refuse_long_dna(rid: str, seq: str, limit: int, name: str, tokens: int, exact: bool = True) -> None:
    """Refuse (one line) a record that DNABERT-S would take in more than ``limit`` tokens.

    ``embed --model dnabert-s`` gives DNABERT-S each record whole (``predict`` gives it frames of at most
    C+1 bases), and attention memory grows with the square of a sequence's tokens: the limit is the
    larger of one batch's budget and :data:`DNABERT_RECORD_TOKENS` (a phage genome of ~50 kbp passes
    with the defaults); raising ``--max-batch-tokens`` lets a longer record through on purpose. Before
    anything is written or removed the whole input is screened: a lower bound on each record's tokens
    (letters over the longest vocabulary token: tokenizing 100 Mbp took 24 GB), then an ``exact`` count
    for a record long enough to pass the limit (no token is shorter than a letter).
    """
    if tokens > limit:
        raise InputFormatError(
            f"{name}: {rid!r} is {len(seq):,} bases, {'' if exact else 'at least '}{tokens:,} DNABERT-S "
            f"tokens, more than the {limit:,} one record may take (the larger of --max-batch-tokens and "
            f"{DNABERT_RECORD_TOKENS:,}); raise --max-batch-tokens to embed it whole (attention memory "
            "grows with the square of its tokens) or cut it"
        )
