"""ESM-2 in bf16 with an fp32 or a bf16 residual stream: pooled cosine against fp32, per read-length mix.

A bf16 residual stream (``Esm2Encoder.residual_fp32 = False``, ``build --build-extra residual_fp32=false``
in the benchmarks) halves the row kernels' traffic and made the bf16 engine 1.7% faster on the H200,
but rounds every sublayer sum to bf16; what that costs in parity is a property of the model and the
numbers, not of the GPU, so it is measured here on the CPU (full size: ~12 GB of fp32 weights, a few
minutes on two cores with bf16 matrix units). Outlier channels (``--outliers``, the ``full-outliers``
weights' LayerNorm gains) are where rounding the residual matters most; short (Illumina-like) proteins
pool fewer residues, so one rounding error weighs more.

    python3 benchmarks/diagnostics/residual_stream_parity.py --json residual.json
    python3 benchmarks/diagnostics/residual_stream_parity.py --tiny --mixes illumina:8   # smoke run
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from virnucpro_trt.bench.hardware import script_environment
from virnucpro_trt.bench.report import write_json
from virnucpro_trt.bench.workload import frame_sequences
from virnucpro_trt.engines.parity import MIN_COSINE, compare
from virnucpro_trt.models.esm2 import ESM2_T36_3B_CONFIG
from virnucpro_trt.models.random_checkpoints import TINY_ESM2_CONFIG, add_outlier_channels, random_esm2
from virnucpro_trt.models.tokenization import ProteinTokenizer
from virnucpro_trt.runtime.embedding import TorchBackend, embed_sequences
from virnucpro_trt.sequences.synthetic import LENGTH_MIXES

SCRIPT = "benchmarks/diagnostics/residual_stream_parity.py"


def parse_mixes(text: str) -> list[tuple[str, int]]:
    """``MIX:ITEMS,...`` (MIX one of the bench's length mixes) as (mix, items) pairs."""
    pairs = []
    for part in text.split(","):
        mix, _, items = part.partition(":")
        if mix not in LENGTH_MIXES or not items.isdigit() or int(items) < 1:
            raise argparse.ArgumentTypeError(
                f"{part!r}: expected MIX:ITEMS with MIX in {', '.join(LENGTH_MIXES)}"
            )
        pairs.append((mix, int(items)))
    return pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mixes", type=parse_mixes, default=parse_mixes("illumina:48,mixed:16,fixed:16"))
    parser.add_argument("--outliers", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--tiny", action="store_true", help="tiny random model (smoke run)")
    parser.add_argument("--max-batch-tokens", type=int, default=4096)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    device = torch.device("cpu")
    config = TINY_ESM2_CONFIG if args.tiny else ESM2_T36_3B_CONFIG
    tokenizer = ProteinTokenizer()
    tokens = {}
    for mix, items in args.mixes:
        _, proteins = frame_sequences(items, length_mix=mix)
        tokens[mix] = tokenizer.encode_batch(proteins[:items])
    model = random_esm2(config, device=device, seed=2)
    outliers = add_outlier_channels(model, seed=3) if args.outliers else None
    rows: list[dict[str, Any]] = []
    report = {
        "benchmark": "residual_stream_parity",
        "command": " ".join(
            ["python3", "benchmarks/diagnostics/residual_stream_parity.py", *(argv or sys.argv[1:])]
        ),
        "environment": script_environment(device, with_onnxruntime=False),
        "model": {"size": "tiny" if args.tiny else "esm2_t36_3B (random)", "outlier_channels": outliers},
        "rule": f"bf16: min cosine >= {MIN_COSINE['bf16']}",
        "results": rows,
    }

    def embed(dtype: torch.dtype, items: list[np.ndarray]) -> np.ndarray:
        backend = TorchBackend(model, config.embed_dim, tokenizer.pad_id, device, dtype)
        return embed_sequences(backend, items, args.max_batch_tokens)

    expected = {mix: embed(torch.float32, items) for mix, items in tokens.items()}
    model.to(torch.bfloat16)  # the fp32 islands (LayerNorm statistics, rotary) stay fp32
    for residual_fp32 in (True, False):
        model.residual_fp32 = residual_fp32
        for mix, items in tokens.items():
            started = time.perf_counter()
            parity = compare(expected[mix], embed(torch.bfloat16, items), "bf16")
            rows.append({
                "length_mix": mix,
                "residual_fp32": residual_fp32,
                "proteins": len(items),
                "mean_tokens": round(float(np.mean([len(t) for t in items])), 1),
                "min_cosine": parity.min_cosine,
                "max_abs": parity.max_abs,
                "passed": parity.passed,
                "seconds": round(time.perf_counter() - started, 1),
            })  # fmt: skip
            print(rows[-1], flush=True)
            if args.json:
                write_json(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
