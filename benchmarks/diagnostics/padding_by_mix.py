"""ESM-2's padded-token fraction per read-length mix, for a token budget and an engine's length multiple.

Padding is decided before any device runs: the token-budget batcher pads each batch to its longest
protein, and an AOTInductor engine rounds that length up to its ``sequence_multiple`` (1 by default;
8 was the CUDA default until the fifth session, for the attention bias's alignment:
:mod:`virnucpro_trt.engines.inductor_backend`). So the fraction that a
GPU run pays can be computed here, on the CPU, from the generated reads (``bench``'s workloads: same
seed, same mixes), ``predict``'s chunking and translation, the ESM-2 tokenizer and the batcher. Issue 11
asks for packing or tighter buckets where it passes 5% of the computed tokens.

    python3 benchmarks/diagnostics/padding_by_mix.py --reads 20000 --json padding.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from virnucpro_trt.bench.hardware import script_environment
from virnucpro_trt.bench.report import write_json
from virnucpro_trt.bench.workload import generated_workload
from virnucpro_trt.engines.inductor_shapes import round_up
from virnucpro_trt.engines.spec import default_shape_range
from virnucpro_trt.models.tokenization import ProteinTokenizer
from virnucpro_trt.runtime.batching import token_budget_batches
from virnucpro_trt.sequences.synthetic import LENGTH_MIXES


def padding(lengths: np.ndarray, budget: int, max_batch: int, multiple: int) -> dict[str, Any]:
    """Real and computed tokens of the batches the runtime makes of ``lengths``."""
    real = computed = batches = 0
    for batch in token_budget_batches(lengths, budget, max_batch):
        real += int(lengths[batch].sum())
        computed += len(batch) * round_up(int(lengths[batch].max()), multiple)
        batches += 1
    return {
        "sequence_multiple": multiple,
        "batches": batches,
        "tokens": real,
        "computed_tokens": computed,
        "padded_fraction": round((computed - real) / computed, 6) if computed else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=20000)
    parser.add_argument("--mixes", default=",".join(LENGTH_MIXES))
    parser.add_argument("--max-batch-tokens", type=int, default=32768, help="the CUDA default")
    parser.add_argument("--multiples", default="1,8", help="the default and the former CUDA default")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    tokenizer = ProteinTokenizer()
    max_batch = default_shape_range("esm2", args.max_batch_tokens).max_batch
    multiples = [int(m) for m in args.multiples.split(",")]
    rows = []
    for mix in args.mixes.split(","):
        workload = generated_workload(args.reads, length_mix=mix)
        _, proteins = workload.frame_texts()
        lengths = np.array([len(t) for t in tokenizer.encode_batch(proteins)], dtype=np.int64)
        row = {
            "length_mix": mix,
            "reads": args.reads,
            "frames": len(lengths),
            "mean_tokens": round(float(lengths.mean()), 1),
            "by_multiple": [padding(lengths, args.max_batch_tokens, max_batch, m) for m in multiples],
        }
        rows.append(row)
        shares = ", ".join(
            f"multiple {p['sequence_multiple']}: {100 * p['padded_fraction']:.2f}%"
            for p in row["by_multiple"]
        )
        print(f"{mix:9s} {len(lengths):7d} frames, {row['mean_tokens']:6.1f} tokens each; padded {shares}")
    report = {
        "benchmark": "padding_by_mix",
        "command": " ".join(["python3", "benchmarks/diagnostics/padding_by_mix.py", *(argv or sys.argv[1:])]),
        "environment": script_environment(None, with_onnxruntime=False),
        "workload": {"encoder": "esm2", "max_batch_tokens": args.max_batch_tokens, "max_batch": max_batch},
        "results": rows,
    }
    if args.json:
        write_json(report, args.json)
        print(json.dumps({"written": str(args.json)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
