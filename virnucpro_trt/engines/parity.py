"""The parity gate: every engine must reproduce the fp32 PyTorch model on a fixed synthetic batch.

Run at build time (and recorded in the manifest) so that an engine that compiles but computes something
else never reaches a user. The batch is deterministic, has varied lengths (so padding and masking are
exercised; batches without padding are added, :func:`run_parity`) and stays inside the engine's shape
range. The reference is the fp32 native model run one sequence at a time without padding — upstream's
own way of computing an embedding. The result, a
:class:`~virnucpro_trt.models.parity_result.ParityResult`, is what the manifest records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from virnucpro_trt.models.parity_result import ParityResult
from virnucpro_trt.models.random_checkpoints import random_dna, random_proteins
from virnucpro_trt.runtime.embedding import EmbeddingBackend, embed_sequences

# Thresholds from the design: fp32 agrees to 1e-4 max abs; half precisions by pooled cosine.
FP32_MAX_ABS = 1e-4
MIN_COSINE = {"fp16": 0.9995, "bf16": 0.9995, "fp8": 0.995}
UNPADDED_COPIES = 3  # rows of each batch without padding that the gate adds (run_parity)


def synthetic_sequences(kind: str, count: int = 12, seed: int = 20260101) -> list[str]:
    """Deterministic DNA (frame-DNA-like lengths) or proteins (500 bp workload lengths)."""
    rng = np.random.default_rng(seed)
    if kind == "dnabert-s":
        lengths = rng.integers(31, 502, size=count)
        pool = random_dna(count, 501, seed=seed)
        return [seq[:n] for seq, n in zip(pool, lengths.tolist(), strict=True)]
    return random_proteins(count, 8, 166, seed=seed)


def synthetic_tokens(kind: str, tokenizer: Any, max_length: int, count: int = 12) -> list[np.ndarray]:
    """Tokenized synthetic batch, every item within ``max_length`` tokens."""
    tokens = tokenizer.encode_batch(synthetic_sequences(kind, count))
    return [t if len(t) <= max_length else np.concatenate([t[: max_length - 1], t[-1:]]) for t in tokens]


@torch.inference_mode()
def reference_embeddings(
    model: torch.nn.Module, tokens: Sequence[np.ndarray], device: torch.device
) -> np.ndarray:
    """fp32, one sequence per forward (no padding): the upstream way."""
    out = []
    for ids in tokens:
        t = torch.from_numpy(np.asarray(ids, dtype=np.int64))[None].to(device)
        out.append(model(t, torch.ones_like(t)).float().cpu().numpy()[0])
    return np.stack(out)


def cosines(reference: np.ndarray, got: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity in float64, clipped to [-1, 1]; identical rows give exactly 1.

    Float64 rounding can put the cosine of a vector with itself a hair off 1 either way, which would make
    the reference's own "trivially perfect" parity read 0.9999999999999998. The build's gate and bench's
    rows judge by this one function.
    """
    ref64, got64 = reference.astype(np.float64), got.astype(np.float64)
    norms = np.linalg.norm(ref64, axis=1) * np.linalg.norm(got64, axis=1)
    cos = np.clip((ref64 * got64).sum(axis=1) / np.maximum(norms, 1e-30), -1.0, 1.0)
    return np.where((reference == got).all(axis=1), 1.0, cos)


def compare(reference: np.ndarray, got: np.ndarray, precision: str) -> ParityResult:
    finite = bool(np.isfinite(got).all())
    diff = np.abs(got.astype(np.float64) - reference.astype(np.float64))
    max_abs = float(diff.max()) if finite else float("inf")
    min_cos = float(cosines(reference, got).min()) if finite else float("nan")
    if precision == "fp32":
        passed = finite and max_abs <= FP32_MAX_ABS
        rule = f"fp32: max abs <= {FP32_MAX_ABS:g}"
    else:
        passed = finite and min_cos >= MIN_COSINE[precision]
        rule = f"{precision}: min cosine >= {MIN_COSINE[precision]}"
    return ParityResult(precision, len(reference), max_abs, min_cos, finite, passed, rule)


def run_parity(
    runner: EmbeddingBackend,
    reference: np.ndarray,
    tokens: Sequence[np.ndarray],
    precision: str,
    max_batch_tokens: int,
) -> ParityResult:
    """Embed the synthetic batch through the engine (padded, batched as at run time) and compare.

    The batches a run makes from varied lengths are padded, and a batch without padding can take other
    kernels (an SDPA backend that needs no mask; an engine's kernel skipping no key), so the shortest, a
    middle and the longest item are also embedded as batches of :data:`UNPADDED_COPIES` copies each,
    compared with the same reference rows. The result keeps the min cosine of each kind of batch.
    """
    padded = embed_sequences_unchecked(runner, tokens, max_batch_tokens)
    got, expected = [], []
    order = np.argsort([len(t) for t in tokens], kind="stable")
    for index in sorted({int(order[0]), int(order[len(order) // 2]), int(order[-1])}):
        got.append(embed_sequences_unchecked(runner, [tokens[index]] * UNPADDED_COPIES, max_batch_tokens))
        expected.append(np.repeat(reference[index : index + 1], UNPADDED_COPIES, axis=0))
    unpadded = compare(np.concatenate(expected), np.concatenate(got), precision)
    overall = compare(np.concatenate([reference, *expected]), np.concatenate([padded, *got]), precision)
    by_batches = (
        ("mixed lengths", compare(reference, padded, precision).min_cosine),
        ("equal lengths", unpadded.min_cosine),
    )
    return replace(overall, min_cosine_by_batches=by_batches)


def embed_sequences_unchecked(
    runner: EmbeddingBackend, tokens: Sequence[np.ndarray], budget: int
) -> np.ndarray:
    """Like :func:`embed_sequences` but NaN/Inf are returned (the gate reports them) instead of raised."""
    from virnucpro_trt.errors import NonFiniteError

    try:
        return embed_sequences(runner, tokens, budget)
    except NonFiniteError:
        return np.full((len(tokens), runner.dim), np.nan, dtype=np.float32)
