"""Each encoder's padded-token fraction per read-length mix and run size, for a token budget and an
engine's length multiple.

Padding is decided before any device runs: the token-budget batcher pads each batch to its longest
item, and an AOTInductor engine rounds that length up to its ``sequence_multiple`` (1 by default;
8 was the CUDA default until the fifth session, for the attention bias's alignment:
:mod:`virnucpro_trt.engines.inductor_backend`). So the fraction that a
GPU run pays can be computed here, on the CPU, from the generated reads (``bench``'s workloads: same
seed, same mixes), ``predict``'s chunking and translation, the tokenizers and the batcher. DNABERT-S's
tokenizer is a BPE of the real vocabulary size trained on random DNA, as the full-size random models
have (``models.random_checkpoints``): its token counts per read are close to, not equal to, the real
tokenizer's. Issue 11 asks for packing or tighter buckets where padding passes 5% of the computed
tokens; the fraction falls as a run grows (more items per length, so each batch spans fewer lengths),
so several ``--reads`` sizes say what a ``bench`` run of a few thousand reads overstates. ``predict``
batches each shard on its own, so each row also gives the fraction in the default shards of an input of
that many reads (``runtime.shards.default_shard_records``: 4,096-16,384 reads since the sixteenth session).

    python3 benchmarks/diagnostics/padding_by_mix.py --reads 3000,20000 --json padding.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from virnucpro_trt.bench.hardware import script_environment
from virnucpro_trt.bench.report import write_json
from virnucpro_trt.bench.workload import Workload, generated_workload
from virnucpro_trt.engines.inductor_shapes import round_up
from virnucpro_trt.engines.spec import default_shape_range
from virnucpro_trt.models.dnabert import DNABERT_S_CONFIG
from virnucpro_trt.models.random_checkpoints import train_dna_tokenizer
from virnucpro_trt.models.tokenization import DnaTokenizer, ProteinTokenizer
from virnucpro_trt.runtime.batching import token_budget_batches
from virnucpro_trt.runtime.shards import default_shard_records
from virnucpro_trt.sequences.synthetic import LENGTH_MIXES
from virnucpro_trt.settings import PaddingCap


def padding(
    groups: list[np.ndarray], budget: int, max_batch: int, multiple: int, cap: PaddingCap | None = None
) -> dict[str, Any]:
    """Real and computed tokens of the batches the runtime makes of each group of lengths (a group is
    batched on its own: the whole run in ``bench``, one shard in ``predict``), optionally under a padding
    cap."""
    real = computed = batches = 0
    for lengths in groups:
        for batch in token_budget_batches(lengths, budget, max_batch, cap):
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


def token_lengths(workload: Workload, tokenizers: dict[str, Any]) -> dict[str, np.ndarray]:
    """Token count of every kept frame per encoder, in frame order."""
    dna, proteins = workload.frame_texts()
    texts = {"dnabert-s": dna, "esm2": proteins}
    return {
        encoder: np.array([len(t) for t in tokenizer.encode_batch(texts[encoder])], dtype=np.int64)
        for encoder, tokenizer in tokenizers.items()
    }


def predict_shards(workload: Workload, lengths: np.ndarray) -> list[np.ndarray]:
    """``lengths`` cut where ``predict``'s default shards of this input cut its reads (a read's frames
    are consecutive); ``runtime.shards`` sizes them by record count alone below its bases cap."""
    per_shard = default_shard_records(workload.reads)
    ends = np.cumsum(workload.frames_per_record)[per_shard - 1 :: per_shard]
    return [piece for piece in np.split(lengths, ends) if len(piece)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", default="20000", help="run sizes, comma-separated (default 20000)")
    parser.add_argument("--mixes", default=",".join(LENGTH_MIXES))
    parser.add_argument("--encoders", default="dnabert-s,esm2")
    parser.add_argument("--max-batch-tokens", type=int, default=32768, help="the CUDA default")
    parser.add_argument("--multiples", default="1,8", help="the default and the former CUDA default")
    parser.add_argument(
        "--padding-caps",
        default="",
        metavar="SHARE:FLOOR,...",
        help="also the padding of predict's shards under these batching caps (settings.PaddingCap; "
        "length multiple 1), e.g. 0.05:8192,0.05:4096",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        caps = [PaddingCap.parse(text) for text in args.padding_caps.split(",") if text]
    except ValueError as exc:
        parser.error(str(exc))
    known = {
        "dnabert-s": lambda: DnaTokenizer(train_dna_tokenizer(DNABERT_S_CONFIG.vocab_size)),
        "esm2": ProteinTokenizer,
    }
    encoders = args.encoders.split(",")
    if unknown := sorted(set(encoders) - set(known)):
        parser.error(f"unknown encoder(s) {', '.join(unknown)} (choose from {', '.join(known)})")
    tokenizers = {encoder: known[encoder]() for encoder in encoders}
    multiples = [int(m) for m in args.multiples.split(",")]
    rows = []
    for mix in args.mixes.split(","):
        for reads in (int(n) for n in args.reads.split(",")):
            workload = generated_workload(reads, length_mix=mix)
            for encoder, lengths in token_lengths(workload, tokenizers).items():
                max_batch = default_shape_range(encoder, args.max_batch_tokens).max_batch
                shards = predict_shards(workload, lengths)
                row = {
                    "encoder": encoder,
                    "length_mix": mix,
                    "reads": reads,
                    "frames": len(lengths),
                    "mean_tokens": round(float(lengths.mean()), 1),
                    # the run batched as one (bench), then as predict's shards of this input
                    "by_multiple": [
                        padding([lengths], args.max_batch_tokens, max_batch, m) for m in multiples
                    ],
                    "predict_shard_records": default_shard_records(reads),
                    "predict_shards": len(shards),
                    "predict_by_multiple": [
                        padding(shards, args.max_batch_tokens, max_batch, m) for m in multiples
                    ],
                    "predict_by_cap": [
                        {**dataclasses.asdict(c), **padding(shards, args.max_batch_tokens, max_batch, 1, c)}
                        for c in caps
                    ],
                }
                rows.append(row)
                shares = ", ".join(
                    f"multiple {p['sequence_multiple']}: {100 * p['padded_fraction']:.2f}% "
                    f"({100 * q['padded_fraction']:.2f}% in predict's shards)"
                    for p, q in zip(row["by_multiple"], row["predict_by_multiple"], strict=True)
                )
                capped = "".join(
                    f"; cap {c['max_share']:g}/{c['floor_tokens']}: {100 * c['padded_fraction']:.2f}% "
                    f"in {c['batches']} batches (plain: {row['predict_by_multiple'][0]['batches']})"
                    for c in row["predict_by_cap"]
                )
                print(
                    f"{encoder:9s} {mix:9s} {reads:7d} reads {len(lengths):7d} frames, "
                    f"{row['mean_tokens']:6.1f} tokens each, shards of {row['predict_shard_records']} reads; "
                    f"padded {shares}{capped}"
                )
    report = {
        "benchmark": "padding_by_mix",
        "command": " ".join(["python3", "benchmarks/diagnostics/padding_by_mix.py", *(argv or sys.argv[1:])]),
        "environment": script_environment(None, with_onnxruntime=False),
        "workload": {"max_batch_tokens": args.max_batch_tokens},
        "results": rows,
    }
    if args.json:
        write_json(report, args.json)
        print(json.dumps({"written": str(args.json)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
