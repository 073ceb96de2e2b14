"""Encoder throughput at the 500 bp workload: eager fp32, eager bf16 and compiled engines, side by side.

One process builds full-size (or, for a CPU smoke run, tiny) random-weight encoders, makes a realistic
workload (500 bp reads with coding regions -> kept frames -> DNABERT-S tokens and ESM-2 proteins), and
for every configuration embeds the same items through the same token-budget batcher the CLI uses,
reporting items/s (median of repetitions after a warm-up), the batch shape, and parity against the fp32
eager model (min cosine, max |diff|). Engines are built through the real backends (the same code as
``virnucpro-trt build``); their build time is reported too. The workload, timing and environment come
from :mod:`virnucpro_trt.bench` (shared with ``virnucpro-trt bench``, which times the whole path).

    python3 benchmarks/engines_throughput.py --models esm2 --configs eager-fp32,eager-bf16,inductor-bf16 \\
        --items 2048 --json benchmarks/results/h200_engines.json
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

from virnucpro_trt.bench.hardware import script_environment
from virnucpro_trt.bench.report import write_json
from virnucpro_trt.bench.timing import time_embedding
from virnucpro_trt.bench.workload import frame_sequences
from virnucpro_trt.engines.parity import compare
from virnucpro_trt.engines.registry import get_backend
from virnucpro_trt.engines.spec import (
    BuildOptions,
    BuildRequest,
    arch_tag,
    artifact_name,
    default_shape_range,
)
from virnucpro_trt.files.swept_folders import work_folder
from virnucpro_trt.models.dnabert import DNABERT_S_CONFIG
from virnucpro_trt.models.esm2 import ESM2_T36_3B_CONFIG
from virnucpro_trt.models.random_checkpoints import (
    TINY_DNABERT_CONFIG,
    TINY_ESM2_CONFIG,
    random_dnabert,
    random_esm2,
    train_dna_tokenizer,
)
from virnucpro_trt.models.tokenization import DnaTokenizer, ProteinTokenizer, pad_batch
from virnucpro_trt.runtime.device import PRECISIONS as DTYPES
from virnucpro_trt.runtime.device import configure_fp32_reference
from virnucpro_trt.runtime.embedding import BatchStats, TorchBackend, embed_sequences
from virnucpro_trt.sequences.synthetic import LENGTH_MIXES
from virnucpro_trt.settings import PaddingCap


def bench_model(
    kind: str,
    args: argparse.Namespace,
    device: torch.device,
    workdir: Path,
    rows: list[dict[str, Any]],
    save: Any,
) -> None:
    full = args.size == "full"
    dna, proteins = frame_sequences(args.items, length_mix=args.length_mix)
    if kind == "esm2":
        config = ESM2_T36_3B_CONFIG if full else TINY_ESM2_CONFIG
        reference_model = random_esm2(config, device=device, dtype=torch.float32, seed=2)
        tokenizer: Any = ProteinTokenizer()
        tokens = tokenizer.encode_batch(proteins)
        dim = config.embed_dim
    else:
        config = DNABERT_S_CONFIG if full else TINY_DNABERT_CONFIG
        reference_model = random_dnabert(config, device=device, dtype=torch.float32, seed=1)
        tokenizer = DnaTokenizer(train_dna_tokenizer(config.vocab_size, seed=1))
        tokens = tokenizer.encode_batch(dna)
        dim = config.hidden_size
    lengths = np.array([len(t) for t in tokens])
    print(f"{kind}: {len(tokens)} items, tokens mean {lengths.mean():.1f} max {lengths.max()}", flush=True)
    budget = args.max_batch_tokens
    shapes = default_shape_range(kind, budget)
    ref_n = min(len(tokens), args.parity_items)
    configure_fp32_reference()
    reference = embed_sequences(
        TorchBackend(reference_model, dim, tokenizer.pad_id, device, torch.float32), tokens[:ref_n], budget
    )
    for name in args.configs.split(","):
        backend_name, precision = name.rsplit("-", 1)
        row: dict[str, Any] = {
            "model": kind,
            "config": name,
            "backend": backend_name,
            "precision": precision,
            "items": len(tokens),
            "mean_tokens": round(float(lengths.mean()), 1),
            "max_batch_tokens": budget,
            **({"build_extra": args.build_extra} if args.build_extra else {}),
        }
        try:
            build_s = 0.0
            items = (
                tokens if not (backend_name == "eager" and precision == "fp32") else tokens[: args.fp32_items]
            )
            if backend_name == "eager":
                model = reference_model if precision == "fp32" else copy.deepcopy(reference_model)
                runner: Any = TorchBackend(model, dim, tokenizer.pad_id, device, DTYPES[precision])
            else:
                backend = get_backend(backend_name)
                reason = backend.availability(device, precision)
                if reason:
                    raise RuntimeError(reason)
                ids, mask = pad_batch(tokens[:4], tokenizer.pad_id)
                out = workdir / artifact_name(kind, arch_tag(device), precision, backend.extension)
                start = time.perf_counter()
                request = BuildRequest(
                    copy.deepcopy(reference_model),
                    kind,
                    (torch.from_numpy(ids), torch.from_numpy(mask)),
                    shapes,
                    precision,
                    device,
                    out,
                    BuildOptions(
                        workdir=workdir,
                        max_autotune=args.max_autotune,
                        extra=dict(args.build_extra),
                    ),
                )
                built = backend.build(request)
                build_s = time.perf_counter() - start
                runner = backend.load(request.load_request(built.path, dim, tokenizer.pad_id))
                row["build_facts"] = {
                    k: v for k, v in built.facts.items() if isinstance(v, str | int | float)
                }
            row["build_s"] = round(build_s, 1)
            for cap in args.padding_caps:  # the same engine under each batching rule
                timed = timed_row(row, runner, items, lengths, budget, cap, reference[:ref_n], args, device)
                rows.append(timed)
                print(json.dumps(rows[-1]), flush=True)
                save()
            del runner
        except Exception as exc:  # a failing configuration is reported, the others still run
            row.update(status="failed", error=f"{type(exc).__name__}: {str(exc)[:800]}")
            traceback.print_exception(exc, file=sys.stderr)  # the whole chain (a compiler's output)
            print(json.dumps(row), flush=True)
            rows.append(row)
            save()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def timed_row(
    row: dict[str, Any],
    runner: Any,
    items: list[np.ndarray],
    lengths: np.ndarray,
    budget: int,
    cap: PaddingCap | None,
    reference: np.ndarray,
    args: argparse.Namespace,
    device: torch.device,
) -> dict[str, Any]:
    """One configuration's row under one batching rule: speed, the padding its batches computed, parity."""
    stats = BatchStats()
    seconds, emb = time_embedding(runner, items, budget, args.repeats, device, args.group_items, cap, stats)
    check = compare(reference[: len(items)], emb[: len(reference)], row["precision"])
    return {
        **row,
        "batching": {
            "group_items": args.group_items,
            "padding_cap": None if cap is None else dataclasses.asdict(cap),
            **stats.to_json(),
        },
        "status": "ok",
        "items_timed": len(items),
        "seconds": round(seconds, 4),
        "items_per_s": round(len(items) / seconds, 1),
        "tokens_per_s": round(float(lengths[: len(items)].sum()) / seconds, 1),
        "parity": {
            "min_cosine": check.min_cosine,
            "max_abs": check.max_abs,
            "finite": check.finite,
            "passed_gate": check.passed,
        },
    }


def padding_caps(text: str) -> list[PaddingCap | None]:
    """``none,0.05:8192,...`` -> the batching rules to time (``none``: the plain token budget)."""
    try:
        return [None if part == "none" else PaddingCap.parse(part) for part in text.split(",")]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_setting(text: str) -> tuple[str, Any]:
    """``NAME=JSON`` -> (NAME, value): an entry of the builds' ``BuildOptions.extra``."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=JSON, got {text!r}")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"{name}: the value is not JSON ({exc})") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="esm2,dnabert-s")
    parser.add_argument("--configs", default="eager-fp32,eager-bf16,inductor-bf16,onnxruntime-bf16")
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--items", type=int, default=2048)
    parser.add_argument("--fp32-items", type=int, default=512, help="eager fp32 is slow: time fewer items")
    parser.add_argument("--parity-items", type=int, default=256)
    parser.add_argument("--max-batch-tokens", type=int, default=32768)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-autotune", action="store_true")
    parser.add_argument(
        "--build-extra",
        type=build_setting,
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="a BuildOptions.extra entry for the engine builds (repeatable), e.g. sequence_multiple=1 or "
        "inductor_configs='{\"assume_32bit_indexing\": true}'",
    )
    parser.add_argument(
        "--length-mix", choices=list(LENGTH_MIXES), default="fixed", help="read lengths of the frames"
    )
    parser.add_argument(
        "--group-items",
        type=int,
        default=None,
        help="batch the items in consecutive groups of this many, each on its own, as predict batches each "
        "shard (~290 frames for a 256-read shard of mixed reads); default: all at once",
    )
    parser.add_argument(
        "--padding-caps",
        type=padding_caps,
        default=[None],
        metavar="none,SHARE:FLOOR,...",
        help="batching rules to time each engine under: none (the plain token budget, the default) or a "
        "padding cap (settings.PaddingCap), e.g. none,0.05:8192,0.05:4096",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.group_items is not None and args.group_items < 1:
        parser.error("--group-items must be >= 1")
    args.build_extra = dict(args.build_extra)
    device = torch.device(args.device)
    rows: list[dict[str, Any]] = []
    report = {
        "benchmark": "engines_throughput",
        "command": " ".join(["python3", "benchmarks/engines_throughput.py", *(argv or sys.argv[1:])]),
        "environment": script_environment(device, with_onnxruntime=True),
        "workload": {
            "reads": "500 bp, 70% coding (synthetic)"
            if args.length_mix == "fixed"
            else f"{LENGTH_MIXES[args.length_mix].description}; 70% coding (synthetic)",
            "length_mix": args.length_mix,
            "size": args.size,
            "device": str(device),
        },
        "results": rows,
    }

    def save() -> None:  # after every row, so a run cut short still leaves its figures
        if args.json:
            write_json(report, args.json)

    with work_folder(None, "vt-engines-") as workdir:  # the engines built here: removed at the end
        for kind in args.models.split(","):
            bench_model(kind, args, device, workdir, rows, save)
    print(
        f"\n{'model':10s} {'config':18s} {'batching':>14s} {'padded':>7s} {'items/s':>10s} {'build s':>8s} "
        f"{'min cos':>10s} {'max|d|':>9s}"
    )
    for r in rows:
        if r["status"] == "ok":
            p, b = r["parity"], r["batching"]
            cap = b["padding_cap"]
            rule = "budget" if cap is None else f"cap {cap['max_share']:g}/{cap['floor_tokens']}"
            print(
                f"{r['model']:10s} {r['config']:18s} {rule:>14s} {100 * b['padded_fraction']:6.1f}% "
                f"{r['items_per_s']:10.1f} {r['build_s']:8.1f} {p['min_cosine']:10.6f} {p['max_abs']:9.2e}"
            )
        else:
            print(f"{r['model']:10s} {r['config']:18s} FAILED: {r['error'][:150]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
