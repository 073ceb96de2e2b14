"""How far a configuration's answers are from the reference's, on the frames both computed.

A speedup only counts if the answers survive it (docs/performance.md's parity goals: bf16 pooled embeddings
min cosine >= 0.9995 and >= 99.9% label agreement; fp8 0.995 and 99.5%). Embeddings are held to the
build-time gate's thresholds (:mod:`virnucpro_trt.engines.parity`); scores and labels are compared
after the classifier, which is what a user sees.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from virnucpro_trt.bench.path import PathResult
from virnucpro_trt.engines.parity import FP32_BOUNDS, MIN_COSINE, cosines, fp32_row_errors, fp32_rows_within

# docs/performance.md's label-agreement goals; fp32 is held to the half-precision figure (it only differs
# from the reference in summation order).
MIN_LABEL_AGREEMENT = {"fp32": 0.999, "fp16": 0.999, "bf16": 0.999, "fp8": 0.995}
# A frame whose reference P(virus) is within this of 0.5 is "on the boundary": any rounding can flip its
# label, so it does not count against the label rule (it still counts in ``label_agreement``). Why: with
# random weights (every speed run here) many frames sit near 0.5, and one bf16 flip among 300 frames
# failed the 99.9% rule while scores moved by 0.002; real classifiers rarely score that close to 0.5.
BOUNDARY_MARGIN = 0.01
# Failing frames named in a row's parity, worst first: enough to look up the reads, bounded for the JSON.
LISTED_FRAMES = 20


def _aligned(reference: PathResult, got: PathResult) -> tuple[np.ndarray, np.ndarray]:
    """Row indices into ``reference`` and ``got`` of the frames both computed, in reference order."""
    position = {frame_id: i for i, frame_id in enumerate(got.frame_ids)}
    ref_rows = [i for i, frame_id in enumerate(reference.frame_ids) if frame_id in position]
    got_rows = [position[reference.frame_ids[i]] for i in ref_rows]
    return np.asarray(ref_rows, dtype=np.int64), np.asarray(got_rows, dtype=np.int64)


def _per_frame(reference: np.ndarray, got: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each frame's (cosine, max |diff|, relative L2 difference: the build gate's
    :func:`~virnucpro_trt.engines.parity.fp32_row_errors`), NaN where ``got``'s row holds NaN or Inf."""
    finite = np.isfinite(got).all(axis=1)
    cos = np.where(finite, cosines(reference, np.where(finite[:, None], got, 0.0)), np.nan)
    return (cos, *fp32_row_errors(reference, got))


def _summary(cos: np.ndarray, diff: np.ndarray) -> tuple[float, float, bool]:
    """(min cosine, max |diff|, finite) over the frames; NaN/NaN/False when any row is not finite."""
    if np.isnan(cos).any():
        return float("nan"), float("nan"), False
    return float(cos.min()), float(diff.max()), True


def _frames_off(
    frame_ids: list[str], cos: dict[str, np.ndarray], off: np.ndarray, flipped: np.ndarray
) -> list[dict[str, Any]]:
    """The ``off`` frames (an embedding outside the rule, or a decisive label flipped), worst first,
    :data:`LISTED_FRAMES` at most: which reads to look at, and whether another row misses on the same."""
    listed = np.flatnonzero(off)
    worst = np.minimum(cos["dnabert"], cos["esm"])[listed]  # NaN (a row not finite) stays NaN
    order = listed[np.argsort(np.where(np.isnan(worst), -np.inf, worst), kind="stable")]  # NaN first
    return [
        {
            "frame": frame_ids[i],
            "dnabert_cos": float(cos["dnabert"][i]),
            "esm_cos": float(cos["esm"][i]),
            "label_flipped": bool(flipped[i]),
        }
        for i in order[:LISTED_FRAMES]
    ]


def path_parity(reference: PathResult, got: PathResult, precision: str) -> dict[str, Any]:
    """``dnabert_min_cos``, ``esm_min_cos``, ``label_agreement``, ``max_abs_score_diff`` and context.

    The rule is the build-time gate's (fp32: each frame's embeddings within ``FP32_BOUNDS``; reduced
    precisions: min cosine) plus docs/performance.md's label agreement.
    """
    ref_rows, got_rows = _aligned(reference, got)
    if len(ref_rows) == 0:
        raise ValueError("the configuration and the reference have no frame in common")
    per_frame = {
        "dnabert": _per_frame(reference.dnabert[ref_rows], got.dnabert[got_rows]),
        "esm": _per_frame(reference.esm[ref_rows], got.esm[got_rows]),
    }
    dna_cos, dna_abs, dna_finite = _summary(*per_frame["dnabert"][:2])
    esm_cos, esm_abs, esm_finite = _summary(*per_frame["esm"][:2])
    ref_probs, got_probs = reference.probabilities[ref_rows], got.probabilities[got_rows]
    same = reference.labels[ref_rows] == got.labels[got_rows]
    agreement = float(np.mean(same))
    decisive = np.abs(ref_probs[:, -1].astype(np.float64) - 0.5) > BOUNDARY_MARGIN
    decisive_agreement = float(np.mean(same[decisive])) if decisive.any() else 1.0
    finite = dna_finite and esm_finite and bool(np.isfinite(got_probs).all())
    score_diff = (
        float(np.abs(got_probs.astype(np.float64) - ref_probs.astype(np.float64)).max())
        if finite
        else float("nan")
    )
    min_agreement = MIN_LABEL_AGREEMENT.get(precision, 0.999)
    if precision == "fp32":
        bad = {
            k: ~fp32_rows_within(diff, relative) for k, (_, diff, relative) in per_frame.items()
        }  # NaN: bad
        rule = f"embeddings: each frame {FP32_BOUNDS}"
    else:
        min_cos = MIN_COSINE.get(precision, 0.9995)
        bad = {k: ~(cos >= min_cos) for k, (cos, _, _) in per_frame.items()}
        rule = f"embeddings min cosine >= {min_cos}"
    embeddings_ok = not (bad["dnabert"].any() or bad["esm"].any())
    flipped = decisive & ~same
    off = bad["dnabert"] | bad["esm"] | flipped
    ids = [reference.frame_ids[i] for i in ref_rows]
    listed = _frames_off(ids, {k: frames[0] for k, frames in per_frame.items()}, off, flipped)
    rule += (
        f", label agreement >= {min_agreement} on frames with reference |P(virus) - 0.5| > "
        f"{BOUNDARY_MARGIN:g}, all values finite"
    )
    return {
        "frames": len(ref_rows),
        "dnabert_min_cos": dna_cos,
        "esm_min_cos": esm_cos,
        "label_agreement": agreement,
        "decisive_frames": int(decisive.sum()),
        "decisive_label_agreement": decisive_agreement,
        "max_abs_score_diff": score_diff,
        "dnabert_max_abs": dna_abs,
        "esm_max_abs": esm_abs,
        "finite": finite,
        "passed": bool(finite and embeddings_ok and decisive_agreement >= min_agreement),
        "rule": rule,
        "frames_off_count": int(off.sum()),
        "frames_off": listed,
    }
