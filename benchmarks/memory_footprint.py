"""What each encoder needs to run: weights on disk and in memory, and the peak memory of one full batch.

For the README's requirements table. Full-size random weights in the real shapes; one batch at the
token budget the CLI uses on the device (32768 tokens on CUDA, 4096 on CPU) of the 500 bp workload's
lengths (168-token proteins, ~110-token DNABERT-S frames), timed too. On CUDA the peak is
``torch.cuda.max_memory_allocated`` (the caching allocator's high-water mark); on CPU the process's peak
resident set (``ru_maxrss``), measured in a fresh process per configuration.

    python3 benchmarks/memory_footprint.py --device cuda --json out.json
    python3 benchmarks/memory_footprint.py --device cpu --configs esm2-fp32,dnabert-s-fp32 --json out.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from virnucpro_trt.bench.hardware import script_environment
from virnucpro_trt.bench.report import write_json
from virnucpro_trt.models.dnabert import DNABERT_S_CONFIG
from virnucpro_trt.models.esm2 import ESM2_T36_3B_CONFIG
from virnucpro_trt.models.random_checkpoints import random_dnabert, random_esm2
from virnucpro_trt.runtime.embedding import TorchBackend
from virnucpro_trt.settings import DEFAULT_CPU_BATCH_TOKENS, DEFAULT_CUDA_BATCH_TOKENS

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
LENGTHS = {"esm2": 168, "dnabert-s": 110}


def measure(config: str, device: torch.device) -> dict[str, Any]:
    """One configuration ``<model>-<precision>``: weights bytes, peak memory, seconds for one batch."""
    kind, precision = config.rsplit("-", 1)
    dtype = DTYPES[precision]
    started = time.perf_counter()
    if kind == "esm2":
        model, dim, pad = random_esm2(ESM2_T36_3B_CONFIG, device=device, dtype=torch.float32), 2560, 1
    else:
        model, dim, pad = random_dnabert(DNABERT_S_CONFIG, device=device, dtype=torch.float32), 768, 3
    runner = TorchBackend(model, dim, pad, device, dtype)
    weights = sum(p.numel() * p.element_size() for p in runner.model.parameters())
    budget = DEFAULT_CUDA_BATCH_TOKENS if device.type == "cuda" else DEFAULT_CPU_BATCH_TOKENS
    length = LENGTHS[kind]
    batch = max(1, budget // length)
    ids = np.random.default_rng(0).integers(4, 24, size=(batch, length)).astype(np.int64)
    mask = np.ones_like(ids, dtype=bool)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    load_s = time.perf_counter() - started
    runner.embed_padded(ids, mask)  # warm-up (and the peak)
    start = time.perf_counter()
    runner.embed_padded(ids, mask)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    batch_s = time.perf_counter() - start
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "config": config,
        "device": str(device),
        "weights_gib": round(weights / 2**30, 2),
        "peak_gib": round(peak / 2**30, 2),
        "peak_kind": "cuda max_memory_allocated" if device.type == "cuda" else "process peak RSS",
        "batch": [batch, length],
        "batch_s": round(batch_s, 3),
        "items_per_s": round(batch / batch_s, 3),
        "load_s": round(load_s, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="esm2-bf16,esm2-fp32,dnabert-s-bf16,dnabert-s-fp32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a single configuration, in this process
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.one:
        print(json.dumps(measure(args.one, device)))
        return 0
    rows = []
    for config in args.configs.split(","):
        # A fresh process per configuration: peaks do not carry over.
        done = subprocess.run([sys.executable, __file__, "--device", args.device, "--one", config],
                              capture_output=True, text=True)  # fmt: skip
        if done.returncode == 0:
            row = json.loads(done.stdout.strip().splitlines()[-1])
        else:
            row = {"config": config, "error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
        print(json.dumps(row), flush=True)
        rows.append(row)
    report = {
        "benchmark": "memory_footprint",
        "command": " ".join(["python3", "benchmarks/memory_footprint.py", *(argv or sys.argv[1:])]),
        "environment": script_environment(device, with_onnxruntime=False),
        "results": rows,
    }
    if args.json:
        write_json(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
