"""Batch invariance: a sequence alone gives what it gives inside a padded batch (both encoders)."""

from __future__ import annotations

from pathlib import Path

import torch

from virnucpro_trt.models.checkpoints import load_dnabert, load_esm2
from virnucpro_trt.models.random_checkpoints import random_dna, random_proteins

ATOL = 1e-5


def _check(model, tokenized: list, pad_id: int, as_tensors) -> None:
    ids, mask = as_tensors(tokenized, pad_id)
    assert not mask.all()
    with torch.no_grad():
        batched_pooled = model(ids, mask)
        batched_hidden = model.last_hidden_state(ids, mask)
        for row, seq in enumerate(tokenized):
            alone_ids, alone_mask = as_tensors([seq], pad_id)
            torch.testing.assert_close(
                batched_pooled[row], model(alone_ids, alone_mask)[0], atol=ATOL, rtol=0
            )
            alone_hidden = model.last_hidden_state(alone_ids, alone_mask)[0]
            torch.testing.assert_close(batched_hidden[row, : len(seq)], alone_hidden, atol=ATOL, rtol=0)


def test_dnabert_batch_invariance(dnabert_dir: Path, as_tensors) -> None:
    model, tokenizer, _ = load_dnabert(dnabert_dir)
    dna = [s[:n] for s, n in zip(random_dna(4, 200, seed=3), (200, 13, 90, 41), strict=True)]
    _check(model, tokenizer.encode_batch(dna), tokenizer.pad_id, as_tensors)


def test_esm2_batch_invariance(esm_hf_dir: Path, as_tensors) -> None:
    model, tokenizer, _ = load_esm2(esm_hf_dir)
    proteins = random_proteins(4, 1, 60, seed=8)
    _check(model, tokenizer.encode_batch(proteins), tokenizer.pad_id, as_tensors)
