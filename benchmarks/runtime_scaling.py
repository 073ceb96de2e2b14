"""The multi-GPU runtime against the engine it drives: end-to-end ``predict`` frames/s per GPU count,
beside the ESM-2 engine alone on the same proteins.

Why this comparison: ESM-2 3B is ~95% of the model time, so the ESM-2 engine alone is the ceiling of
what a run on one GPU can reach; the runtime's job (sharding, CPU work overlapped, DNABERT-S, the
classifier, the result files) is to lose as little of it as possible (goal: >= 90%), and to scale with
the GPUs (goal: 4 GPUs >= 3.6x one GPU).

Steps, all through the real CLI where a user would use it:

1. random full-size checkpoints in the real formats (reused from ``--workdir``);
2. ``virnucpro-trt build --backend B --precision P`` once (skipped for ``--backend torch``);
3. ``virnucpro-trt predict --engines ... --gpus G`` for each ``--gpus`` setting, figures from run.json:
   frames per second of the whole run (including worker start-up and model loading), in steady state
   (from the moment every worker was ready to the last shard done) and in the workers' shard work;
4. each encoder alone, in this process: the kept frames' proteins (ESM-2) and DNA (DNABERT-S) of the
   same reads, all length-sorted together in token-budget batches, a warm-up batch then one timed pass.

    python3 benchmarks/runtime_scaling.py --reads 20000 --backend inductor --precision bf16 \\
        --gpus 0 --gpus 0,1,2,3 --workdir /tmp/vtr --json results.json

Large inputs on a device session whose calls are capped (600 s): one call per GPU count, the encoders
alone left out (``--skip-alone``), the 4-GPU call reading its 1-GPU row from the first call's JSON
(``--baseline``). The reads are generated from a fixed seed, so every call sees the same input:

    ... --reads 300000 --gpus 0 --skip-alone --json one.json
    ... --reads 300000 --gpus 0,1,2,3 --skip-alone --baseline one.json --json four.json

Why large: a run has fixed costs (worker start-up with engine loading, ~12 s on the H200; input
validation; shutdown) that are the same on 1 and 4 GPUs, so the whole-run speedup approaches the steady one
only when the shard work dwarfs them (300,000 reads: ~7 minutes on one H200).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from virnucpro_trt.bench.cli_run import run_cli
from virnucpro_trt.bench.config_names import RANDOM_SIZES
from virnucpro_trt.bench.hardware import script_environment
from virnucpro_trt.bench.models import random_models_in
from virnucpro_trt.bench.report import write_json
from virnucpro_trt.bench.workload import generated_workload
from virnucpro_trt.files.swept_folders import work_folder
from virnucpro_trt.sequences.prepare import prepare_blocks
from virnucpro_trt.sequences.reader import read_records
from virnucpro_trt.sequences.synthetic import LENGTH_MIXES, write_fasta
from virnucpro_trt.settings import PRECISIONS


def placements(gpus: list[str] | None, workers: list[int] | None, device: str) -> list[tuple[str, list[str]]]:
    """(label, predict arguments) per setting: ``--gpus`` settings on CUDA, ``--workers`` counts on the
    CPU (the same runtime with CPU worker processes: what the CPU test of this script runs)."""
    if device == "cpu":
        if gpus:
            raise SystemExit("--gpus needs --device cuda:N; on the CPU give --workers N")
        return [(f"cpu x{n}", ["--device", "cpu", "--workers", str(n)]) for n in workers or [1]]
    if workers:
        raise SystemExit("--workers is for --device cpu; on CUDA give --gpus I,J,...")
    return [(g, ["--gpus", g]) for g in gpus or ["0"]]


def predict_row(
    fasta: Path, out: Path, model_args: list[str], label: str, placement: list[str], extra: list[str]
) -> dict[str, Any]:
    wall = run_cli("predict", str(fasta), "-o", str(out), *model_args, *placement, "--force", *extra)
    run = json.loads((out / "run.json").read_text())
    frames = run["counts"]["frames"]
    workers = run["workers"]
    workers_s = run["timings_s"]["workers"]
    return {
        "gpus": label,
        "workers": len(workers),
        "devices": len({w.get("device") for w in workers}),
        "reads": run["counts"]["records"],
        "frames": frames,
        "shards": run["shards"]["total"],
        "wall_s_process": round(wall, 2),
        "total_s": run["timings_s"]["total"],
        "workers_s": workers_s,
        "slowest_ready_s": max(w["ready_s"] for w in workers),
        "frames_per_s_total": round(frames / run["timings_s"]["total"], 1),
        "frames_per_s_steady": run["throughput"]["frames_per_s_steady"],
        "steady_s": run["throughput"].get("steady_s"),
        # the workers' own figure: frames over the time spent processing shards, mean over workers
        "frames_per_s_shard_work": round(sum(w["frames_per_s"] or 0 for w in workers) / len(workers), 1),
        # the share of each encoder's computed tokens that were padding (the shards' batches)
        "padded_fraction": {
            encoder: round(1 - run["counts"][f"{encoder}_tokens"] / computed, 4) if computed else None
            for encoder in ("dnabert", "esm")
            for computed in [run["counts"].get(f"{encoder}_computed_tokens", 0)]
        },
        "stage_s": {k: run["timings_s"].get(k) for k in ("embed_dnabert", "embed_esm", "classify")},
        "per_worker": [
            {
                k: w.get(k)
                for k in (
                    "device",
                    "device_name",
                    "shards",
                    "frames",
                    "frames_per_s",
                    "load_models_s",
                    "ready_s",
                )
            }
            for w in workers
        ],
    }


def encoders_alone(
    fasta: Path, engines: Path | None, models: Any, precision: str, budget: int, device: torch.device
) -> dict[str, dict[str, Any]]:
    """Frames/s of each encoder alone on the kept frames of ``fasta`` (ESM-2: their proteins; DNABERT-S:
    their DNA), all frames length-sorted together: the ceiling of what the per-shard batches inside a
    run can reach."""
    from virnucpro_trt.runtime.embedding import embed_sequences

    blocks = list(prepare_blocks(read_records(fasta), 500))
    inputs = {
        "esm2": [p for block in blocks for p in block.frames.protein],
        "dnabert-s": [d for block in blocks for d in block.frames.dna],
    }
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if engines is not None:
        from virnucpro_trt.engines.engine_set import open_engine_set

        engine_set = open_engine_set(engines, device, models.specs())
        encoders = {
            kind: (enc.backend, enc.tokenizer)
            for kind, enc in (("esm2", engine_set.esm), ("dnabert-s", engine_set.dnabert))
        }
    else:
        from virnucpro_trt.models.checkpoints import load_encoder
        from virnucpro_trt.runtime.device import resolve_dtype
        from virnucpro_trt.runtime.embedding import TorchBackend

        dtype = resolve_dtype(precision, device)
        encoders = {}
        for kind, path in (("esm2", models.esm), ("dnabert-s", models.dnabert)):
            model, tokenizer, _, dim = load_encoder(kind, path)
            encoders[kind] = (TorchBackend(model, dim, tokenizer.pad_id, device, dtype), tokenizer)
    results = {}
    for kind, (backend, tokenizer) in encoders.items():
        tokens = tokenizer.encode_batch(inputs[kind])
        embed_sequences(backend, tokens[:200], budget)  # warm-up
        sync()
        started = time.perf_counter()
        embed_sequences(backend, tokens, budget)
        sync()
        seconds = time.perf_counter() - started
        results[kind] = {
            "frames": len(tokens),
            "tokens": int(sum(len(t) for t in tokens)),
            "seconds": round(seconds, 3),
            "frames_per_s": round(len(tokens) / seconds, 1),
        }
    return results


def _baseline_row(path: Path, reads: int) -> dict[str, Any]:
    """The 1-worker predict row of an earlier report of this script, on the same number of reads."""
    earlier = json.loads(path.read_text())
    if earlier.get("workload", {}).get("reads") != reads:
        raise SystemExit(f"{path} measured {earlier.get('workload', {}).get('reads')} reads, not {reads}")
    row = next((r for r in earlier.get("predict", []) if r.get("workers") == 1), None)
    if row is None:
        raise SystemExit(f"{path} has no 1-worker predict row to compare with")
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=20000)
    parser.add_argument(
        "--length-mix",
        choices=list(LENGTH_MIXES),
        default="fixed",
        help="read lengths, as bench's: fixed 500 bp (default), mixed 100-1000 bp or illumina 150 bp; "
        "predict batches each shard on its own, so mixed lengths show its padding against the encoders "
        "alone (all frames batched together)",
    )
    parser.add_argument("--backend", default="inductor", help="torch, onnxruntime, inductor or tensorrt")
    parser.add_argument("--precision", default="bf16", choices=PRECISIONS)
    parser.add_argument("--gpus", action="append", help="a --gpus setting to run (repeatable)")
    parser.add_argument(
        "--workers", type=int, action="append", help="with --device cpu: a CPU worker count (repeatable)"
    )
    parser.add_argument("--device", default="cuda:0", help="cuda:0 (the measurement) or cpu (the test)")
    parser.add_argument(
        "--models", choices=RANDOM_SIZES, default="full", help="random weights: real or test sizes, -outliers"
    )
    parser.add_argument("--max-batch-tokens", type=int, default=32768)
    parser.add_argument(
        "--workers-per-gpu", type=int, default=1, help="passed to predict: worker processes per GPU"
    )
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--shard-records", type=int, default=None, help="passed to predict (default: its own rule)"
    )
    parser.add_argument(
        "--max-padding",
        default=None,
        help="passed to predict: its batcher's padding cap, SHARE[:FLOOR] or none (default: its own)",
    )
    parser.add_argument(
        "--skip-alone", action="store_true", help="do not time the encoders alone (no *_vs_esm_alone)"
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="a JSON of this script whose 1-worker row the speedups are computed against",
    )
    parser.add_argument(
        "--build-only",
        action="store_true",
        help="write the models and build the engines into --workdir, then stop (lets a device session "
        "split the build and the runs over two calls)",
    )
    args = parser.parse_args(argv)
    settings = placements(args.gpus, args.workers, args.device)
    baseline = _baseline_row(args.baseline, args.reads) if args.baseline else None  # fail before running
    device = torch.device(args.device)

    with work_folder(args.workdir, "vt-scaling-") as root:  # without --workdir: removed at the end
        started = time.perf_counter()
        models = random_models_in(root, args.models, device)
        models_s = time.perf_counter() - started
        fasta = root / "reads.fa"
        workload = generated_workload(
            args.reads, 500, seed=42, coding_fraction=0.7, length_mix=args.length_mix
        )
        write_fasta([(r.id, r.sequence) for r in workload.records], str(fasta))
        model_args = [
            "--dnabert",
            str(models.dnabert),
            "--esm",
            str(models.esm),
            "--classifier",
            str(models.classifier),
        ]
        budget = ["--max-batch-tokens", str(args.max_batch_tokens)]

        engines: Path | None = None
        build_s = None
        if args.backend != "torch":
            engines = root / f"engines-{args.backend}-{args.precision}"
            if not (engines / "manifest.json").is_file():
                build_s = round(
                    run_cli(
                        "build",
                        *model_args,
                        "--backend",
                        args.backend,
                        "--precision",
                        args.precision,
                        "--device",
                        args.device,
                        "-o",
                        str(engines),
                        *budget,
                    ),
                    1,
                )
                print(f"built {engines} in {build_s} s", flush=True)
            run_args = [*model_args, "--engines", str(engines)]
        else:
            run_args = [*model_args, "--backend", "torch", "--precision", args.precision]

        if args.build_only:
            return 0
        rows = []
        for label, placement in settings:
            shards = ["--shard-records", str(args.shard_records)] if args.shard_records else []
            shards += ["--workers-per-gpu", str(args.workers_per_gpu)] if args.workers_per_gpu > 1 else []
            shards += ["--max-padding", args.max_padding] if args.max_padding else []
            out = root / f"out-{label.replace(',', '_').replace(' ', '_')}"
            row = predict_row(fasta, out, run_args, label, placement, [*budget, *shards])
            print(json.dumps(row), flush=True)
            rows.append(row)
        alone_all: dict[str, Any] = {"esm2": None, "dnabert-s": None}
        if not args.skip_alone:
            alone_all = encoders_alone(fasta, engines, models, args.precision, args.max_batch_tokens, device)
            print("encoders alone:", json.dumps(alone_all), flush=True)
        alone = alone_all["esm2"]

        one = baseline or next((r for r in rows if r["workers"] == 1), None)
        for row in rows:
            if alone is not None:
                ceiling = alone["frames_per_s"] * row["devices"]
                row["steady_vs_esm_alone"] = round((row["frames_per_s_steady"] or 0) / ceiling, 3)
                per_device = row["frames_per_s_shard_work"] * row["workers"] / row["devices"]
                row["shard_work_vs_esm_alone"] = round(per_device / alone["frames_per_s"], 3)
            if one is not None:
                row["speedup_vs_1_gpu_total"] = round(
                    row["frames_per_s_total"] / one["frames_per_s_total"], 2
                )
                row["speedup_vs_1_gpu_steady"] = round(
                    (row["frames_per_s_steady"] or 0) / (one["frames_per_s_steady"] or 1e-9), 2
                )
        report = {
            "benchmark": "runtime_scaling",
            "command": " ".join(["python3", "benchmarks/runtime_scaling.py", *(argv or sys.argv[1:])]),
            "environment": {
                **script_environment(None, with_onnxruntime=False),
                "gpus": torch.cuda.device_count(),
            },
            "workload": {
                "reads": args.reads,
                "read_length": workload.describe()["read_length"],
                "length_mix": args.length_mix,
                "coding_fraction": 0.7,
                "models": (
                    "random weights, full size: DNABERT-S 12x768, ESM-2 t36_3B"
                    if args.models.startswith("full")
                    else "random weights, test sizes"
                )
                + (", outlier channels" if args.models.endswith("-outliers") else ""),
                "max_batch_tokens": args.max_batch_tokens,
                "shard_records": args.shard_records,  # None: predict's own rule
                "max_padding": args.max_padding,  # None: predict's default
            },
            "backend": args.backend,
            "precision": args.precision,
            "write_models_s": round(models_s, 1),
            "build_s": build_s,
            "esm_engine_alone": alone,
            "dnabert_engine_alone": alone_all["dnabert-s"],
            "predict": rows,
            "baseline": str(args.baseline) if args.baseline else None,
        }
        if args.json:
            write_json(report, args.json)
        print(json.dumps(report, indent=2))
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
