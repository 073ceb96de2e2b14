"""``virnucpro-trt embed``: pooled DNABERT-S or ESM-2 embeddings of every input record, as HDF5.

Pooling is the classifier's (docs/upstream.md §3): DNABERT-S averages every token including
[CLS]/[SEP]; ESM-2 averages residues 1..min(1024, len). Records are embedded in token-budget batches and
written in input order. An empty record has nothing to embed: its row is NaN with status ``empty``, so
every input id is present and nobody mistakes a placeholder for an embedding.

The output replaces only a file an earlier command wrote there, unchanged since; anything else at that
path is refused unless ``--force`` (``files/ownership.py``: the rule every command follows).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from virnucpro_trt import __version__
from virnucpro_trt.errors import InputFormatError
from virnucpro_trt.files.folders import made_folder
from virnucpro_trt.files.ownership import check_replaceable, record_path, record_written
from virnucpro_trt.files.run_lock import output_lock, output_lock_name
from virnucpro_trt.models.kinds import ENCODERS
from virnucpro_trt.outputs.embeddings_h5 import EmbeddingsWriter
from virnucpro_trt.pipeline.encoders import open_models
from virnucpro_trt.pipeline.inputs import readable_input, validate_input
from virnucpro_trt.pipeline.run_paths import check_input_file, check_run_paths
from virnucpro_trt.sequences.reader import read_records
from virnucpro_trt.settings import EmbedSettings

log = logging.getLogger(__name__)

_BLOCK_RECORDS = 65536
# Tokens one DNABERT-S record may take in embed whatever the batch budget: a 16,384-token sequence's
# attention scores are 12 heads x 16,384^2 x 4 bytes = 13 GB per layer in fp32 on a CPU.
DNABERT_RECORD_TOKENS = 16384


def run_embed(settings: EmbedSettings) -> dict[str, Any]:
    """Check the paths, make the output's folder (before the model loads: a place where none can be
    made fails first), then embed; a failed run leaves no folder it made. The output's lock is held
    throughout (one run per output file; it notes the stdin copy and the temporary file, so the rerun
    after a SIGKILL removes them)."""
    check_input_file(settings.input)
    folder = settings.output.parent
    outputs = [settings.output, record_path(folder), folder / output_lock_name(settings.output)]
    check_run_paths([settings.input, settings.weights], outputs)
    check_replaceable([settings.output], settings.force)
    with made_folder(folder), output_lock(settings.output) as lock:
        noted = functools.partial(lock.note, growing=True) if lock is not None else None
        with readable_input(settings.input, folder, noted, settings.output) as (path, display):
            return _embed(settings, path, display, noted)


def _embed(
    settings: EmbedSettings, path: Path, display: str, on_create: Callable[[Path], None] | None
) -> dict[str, Any]:
    """Validate the input, load the encoder, embed block by block; the file appears only when complete
    (its temporary file told to ``on_create`` as soon as it exists)."""
    model = ENCODERS[settings.model]
    alphabet = model.alphabet
    refuse = settings.model == "esm2" and not settings.allow_nucleotide_letters
    summary = validate_input(path, display, alphabet, refuse_nucleotides=refuse)
    kind = model.name
    models = open_models(
        settings.encoders, {kind: settings.weights}, (kind,), False, settings.engines, settings.rebuild
    )
    encoder = models.encoders[kind]
    attrs = {
        "tool": f"virnucpro-trt {__version__}",
        "model": settings.model,
        "weights": settings.weights or str(settings.engines),
        "weights_sha256": str(encoder.info.get("weights_sha256")),
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
    record_written([settings.output], on_create)
    return {"records": summary.records, "dim": encoder.dim, "empty": summary.empty_records}


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
