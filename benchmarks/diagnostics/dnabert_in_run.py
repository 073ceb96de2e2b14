"""Why DNABERT-S is ~3x slower per frame inside a ``predict`` run than alone (DEVELOPERS.md, "Open
problems": 177 µs/frame inside the run on the H200 against ~60 in the engines benchmark, while ESM-2
inside the run is as fast as alone).

The frames of a run are nearly uniform in length (500 bp reads: DNABERT-S 97-116 tokens, proteins 168),
so padding is not it: per-shard batching makes 117 DNABERT-S calls instead of 69 for 30,000 reads,
with 5% more padded tokens. This script separates the remaining suspects on the real engines, with the
frames of the same reads, three ways in one process:

* ``global``       — all frames length-sorted together (what the engines benchmark does);
* ``per_shard``    — the run's batches: each shard's frames on their own, DNABERT-S only;
* ``interleaved``  — the run's order: each shard's DNABERT-S batches, then its ESM-2 batches.

For each it reports wall seconds, calls, and the GPU time of the DNABERT-S calls (CUDA events), so
"more calls" (per_shard vs global), "ESM-2 in between" (interleaved vs per_shard) and "host time
between kernels" (wall vs GPU) each get a number.

    PYTHONPATH=$PWD python3 benchmarks/diagnostics/dnabert_in_run.py ENGINE_DIR READS.fa \\
        [--shard-records 512] [--device cuda:0] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from virnucpro_trt.engines.engine_set import open_engine_set
from virnucpro_trt.runtime.embedding import embed_sequences
from virnucpro_trt.sequences.prepare import prepare_blocks
from virnucpro_trt.sequences.reader import read_records


class TimedBackend:
    """Wraps an embedding backend: counts calls and sums their GPU time between CUDA events."""

    def __init__(self, inner: Any, device: torch.device):
        self.inner = inner
        self.name, self.dim, self.pad_id = inner.name, inner.dim, inner.pad_id
        self.max_length = getattr(inner, "max_length", None)
        self.max_batch_size = getattr(inner, "max_batch_size", None)
        self.cuda = device.type == "cuda"
        self.calls = 0
        self.events: list[tuple[Any, Any]] = []

    def embed_padded(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        self.calls += 1
        if not self.cuda:
            return self.inner.embed_padded(input_ids, attention_mask)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = self.inner.embed_padded(input_ids, attention_mask)
        end.record()
        self.events.append((start, end))
        return out

    def take(self) -> dict[str, Any]:
        if self.cuda:
            torch.cuda.synchronize()
        gpu_ms = sum(s.elapsed_time(e) for s, e in self.events)
        result = {"calls": self.calls, "gpu_s": round(gpu_ms / 1000, 3) if self.cuda else None}
        self.calls, self.events = 0, []
        return result


def shard_frames(fasta: Path, shard_records: int) -> list[tuple[list[str], list[str]]]:
    """(DNA, proteins) of the kept frames of each shard of ``shard_records`` records, in input order."""
    records = list(read_records(fasta))
    shards = []
    for start in range(0, len(records), shard_records):
        blocks = list(prepare_blocks(iter(records[start : start + shard_records]), 500))
        shards.append(
            ([d for b in blocks for d in b.frames.dna], [p for b in blocks for p in b.frames.protein])
        )
    return shards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("engines", type=Path)
    parser.add_argument("reads", type=Path)
    parser.add_argument("--shard-records", type=int, default=512)
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    engines = open_engine_set(args.engines, device, {})
    dna = TimedBackend(engines.dnabert.backend, device)
    esm = TimedBackend(engines.esm.backend, device)
    budget = int(engines.manifest.build.max_batch_tokens or 32768)
    shards = shard_frames(args.reads, args.shard_records)
    dna_tokens = [engines.dnabert.tokenizer.encode_batch(d) for d, _ in shards]
    esm_tokens = [engines.esm.tokenizer.encode_batch(p) for _, p in shards]
    everything = [t for tokens in dna_tokens for t in tokens]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def timed(run: Any) -> float:
        sync()
        started = time.perf_counter()
        run()
        sync()
        return time.perf_counter() - started

    embed_sequences(dna, everything[:400], budget)  # warm-up of both engines
    embed_sequences(esm, esm_tokens[0][:50], budget)
    dna.take(), esm.take()
    rows: dict[str, Any] = {}
    wall = timed(lambda: embed_sequences(dna, everything, budget))
    rows["global"] = {"wall_s": round(wall, 3), **dna.take()}
    wall = timed(lambda: [embed_sequences(dna, tokens, budget) for tokens in dna_tokens])
    rows["per_shard"] = {"wall_s": round(wall, 3), **dna.take()}
    dna_wall = 0.0
    for tokens, proteins in zip(dna_tokens, esm_tokens, strict=True):
        dna_wall += timed(lambda tokens=tokens: embed_sequences(dna, tokens, budget))
        embed_sequences(esm, proteins, budget)
    rows["interleaved"] = {"wall_s": round(dna_wall, 3), **dna.take(), "esm": esm.take()}
    frames = len(everything)
    for row in rows.values():
        row["us_per_frame"] = round(row["wall_s"] / frames * 1e6, 1)
    report = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "engines": str(args.engines),
        "frames": frames,
        "shards": len(shards),
        "max_batch_tokens": budget,
        "dnabert": rows,
    }
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
