"""Which batches an ESM-2 engine with the unmasked attention path computes wrong, next to the plain engine.

Why: the full-size fp8 ESM-2 engine built with a ``torch.cond`` per layer (unmasked attention for batches
without padding, ``extra["unmasked_full_batches"]``) failed the build's parity gate on the H200 (torch
2.11: min cosine -0.06), while on 500 bp batches, which have no padding, it had matched fp32. This builds
a few layers of the real width (minutes less than 36 layers) with and without the path, from the same
weights, and compares every batch with the fp32 model: batches of mixed lengths (the masked branch) and
of equal lengths (the unmasked branch), at lengths that are and are not multiples of 8.

    PYTHONPATH=$PWD python3 benchmarks/diagnostics/conditional_attention.py --precision fp8 --json OUT
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from virnucpro_trt.bench.hardware import script_environment
from virnucpro_trt.engines.inductor_backend import INDUCTOR_BACKEND
from virnucpro_trt.engines.spec import BuildOptions, BuildRequest, ShapeRange
from virnucpro_trt.models.esm2 import ESM2_T36_3B_CONFIG, Esm2Config, Esm2Encoder
from virnucpro_trt.models.random_checkpoints import TINY_ESM2_CONFIG, random_esm2
from virnucpro_trt.models.tokenization import pad_batch

WIDTHS = {"3b": ESM2_T36_3B_CONFIG, "tiny": TINY_ESM2_CONFIG}
PAD_ID = 1
MIXED_ROWS, EQUAL_ROWS = 6, 3  # rows of each batch of mixed / equal lengths


@dataclass(frozen=True)
class BatchCase:
    """One batch: ``kind`` "mixed" (padded: the masked branch) or "equal" (no padding: unmasked)."""

    kind: str
    rows: int
    length: int  # the longest row


@dataclass(frozen=True)
class BatchResult:
    kind: str
    rows: int
    length: int
    min_cosine: float
    max_abs: float


def batch_cases(lengths: list[int]) -> list[BatchCase]:
    return [
        BatchCase(kind, rows, n)
        for n in lengths
        for kind, rows in (("mixed", MIXED_ROWS), ("equal", EQUAL_ROWS))
    ]


def batch_tokens(case: BatchCase, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded ids and mask; a mixed batch's first row has ``case.length`` tokens, the others fewer."""
    if case.kind == "equal":
        sizes = [case.length] * case.rows
    else:
        sizes = [case.length, *rng.integers(3, case.length, size=case.rows - 1).tolist()]  # pooling needs 3
    return pad_batch([rng.integers(4, 24, size=n) for n in sizes], PAD_ID)


def compare_rows(got: np.ndarray, want: np.ndarray) -> tuple[float, float]:
    """(min cosine, max |diff|) over the rows; NaN/Inf give NaN and inf."""
    if not np.isfinite(got).all():
        return float("nan"), float("inf")
    got64, want64 = got.astype(np.float64), want.astype(np.float64)
    cos = (got64 * want64).sum(1) / np.maximum(
        np.linalg.norm(got64, axis=1) * np.linalg.norm(want64, axis=1), 1e-30
    )
    return float(cos.min()), float(np.abs(got64 - want64).max())


def run_engine(
    model: Esm2Encoder,
    precision: str,
    device: torch.device,
    unmasked: bool,
    cases: list[BatchCase],
    workdir: Path,
    seed: int,
) -> dict[str, Any]:
    """Build one engine from ``model`` and compare each case with the fp32 model (same padded batch)."""
    max_length = max(c.length for c in cases)
    shapes = ShapeRange(1, 4, max(MIXED_ROWS, EQUAL_ROWS), 2, max_length // 2, max_length)
    example = (torch.randint(4, 24, (3, 11)), torch.ones(3, 11, dtype=torch.int64))
    out = workdir / f"esm2.{'unmasked' if unmasked else 'plain'}.{precision}.pt2"
    options = BuildOptions(extra={"unmasked_full_batches": unmasked})
    request = BuildRequest(model, "esm2", example, shapes, precision, device, out, options)
    row: dict[str, Any] = {"unmasked_full_batches_requested": unmasked}
    started = time.perf_counter()
    try:
        built = INDUCTOR_BACKEND.build(request)
    except Exception as exc:  # a diagnostic reports a failed build instead of stopping
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return row
    row["build_s"] = round(time.perf_counter() - started, 1)
    row["facts"] = {
        k: built.facts.get(k)
        for k in (
            "unmasked_full_batches",
            "unmasked_full_batches_failed",
            "compile_attempts",
            "extern_kernels",
        )
    }
    runner = INDUCTOR_BACKEND.load(request.load_request(built.path, model.config.embed_dim, PAD_ID))
    rng = np.random.default_rng(seed)
    results = []
    for case in cases:
        ids, mask = batch_tokens(case, rng)
        got = runner.embed_padded(ids, mask)
        with torch.inference_mode():
            want = model(torch.from_numpy(ids), torch.from_numpy(mask)).float().numpy()
        results.append(BatchResult(case.kind, case.rows, case.length, *compare_rows(got, want)))
    row["batches"] = [asdict(r) for r in results]
    return row


def print_table(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        label = "unmasked path" if row["unmasked_full_batches_requested"] else "plain"
        if "error" in row:
            print(f"{label}: build failed: {row['error']}")
            continue
        print(f"{label}: built in {row['build_s']} s, facts {json.dumps(row['facts'])[:300]}")
        for b in row["batches"]:
            print(
                f"  {b['kind']:5} {b['rows']} x {b['length']:4}: "
                f"min cos {b['min_cosine']:.6f}  max|diff| {b['max_abs']:.3g}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="fp8", help="fp32, bf16 or fp8")
    parser.add_argument(
        "--width", default="3b", choices=sorted(WIDTHS), help="ESM-2 3B's width or the tiny test model's"
    )
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--lengths", default="17,41,130,168", help="longest row of each case (tokens)")
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    width = WIDTHS[args.width]
    config = Esm2Config(args.layers, width.embed_dim, width.attention_heads)
    model = random_esm2(config, seed=args.seed)
    cases = batch_cases([int(n) for n in args.lengths.split(",")])
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vt-conditional-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rows = [
        run_engine(model, args.precision, device, unmasked, cases, workdir, args.seed)
        for unmasked in (False, True)
    ]
    print_table(rows)
    if args.json:
        report = {
            "benchmark": "conditional_attention",
            "command": " ".join(
                ["python3", "benchmarks/diagnostics/conditional_attention.py", *(argv or sys.argv[1:])]
            ),
            "environment": script_environment(device, with_onnxruntime=False),
            "model": {
                "width": args.width,
                "layers": args.layers,
                "embed_dim": config.embed_dim,
                "heads": config.attention_heads,
            },
            "precision": args.precision,
            "engines": rows,
        }
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
