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
   frames per second of the whole run (including worker start-up and model loading) and in steady
   state (the workers' wall time from the moment the slowest worker was ready);
4. the ESM-2 engine alone, in this process: the kept frames' proteins of the same reads, token-budget
   batches, a warm-up batch then one timed pass.

    python3 benchmarks/runtime_scaling.py --reads 20000 --backend inductor --precision bf16 \\
        --gpus 0 --gpus 0,1,2,3 --workdir /tmp/vtr --json results.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from virnucpro_trt.bench.hardware import script_environment
from virnucpro_trt.bench.models import write_random_models
from virnucpro_trt.sequences.prepare import prepare_blocks
from virnucpro_trt.sequences.reader import read_records
from virnucpro_trt.sequences.synthetic import generate_reads, write_fasta


def cli(*args: str) -> float:
    """Run ``virnucpro-trt ARGS``; its wall time (fails loudly with the tail of its log)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "virnucpro_trt", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"virnucpro-trt {args[0]} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return time.perf_counter() - started


def predict_row(fasta: Path, out: Path, model_args: list[str], gpus: str, extra: list[str]) -> dict[str, Any]:
    wall = cli("predict", str(fasta), "-o", str(out), *model_args, "--gpus", gpus, "--force", *extra)
    run = json.loads((out / "run.json").read_text())
    frames = run["counts"]["frames"]
    workers = run["workers"]
    workers_s = run["timings_s"]["workers"]
    return {
        "gpus": gpus,
        "workers": len(workers),
        "reads": run["counts"]["records"],
        "frames": frames,
        "shards": run["shards"]["total"],
        "wall_s_process": round(wall, 2),
        "total_s": run["timings_s"]["total"],
        "workers_s": workers_s,
        "slowest_ready_s": max(w["ready_s"] for w in workers),
        "frames_per_s_total": round(frames / run["timings_s"]["total"], 1),
        "frames_per_s_steady": run["throughput"]["frames_per_s_steady"],
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


def esm_alone(
    fasta: Path, engines: Path | None, models: Any, precision: str, budget: int, device: torch.device
) -> dict[str, Any]:
    """proteins/s of the ESM-2 encoder alone on the kept frames of ``fasta``."""
    from virnucpro_trt.runtime.embedding import embed_sequences

    proteins = [p for block in prepare_blocks(read_records(fasta), 500) for p in block.frames.protein]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if engines is not None:
        from virnucpro_trt.engines.engine_set import open_engine_set

        encoder = open_engine_set(engines, device, models.specs()).esm
        backend, tokenizer = encoder.backend, encoder.tokenizer
    else:
        from virnucpro_trt.models.checkpoints import load_encoder
        from virnucpro_trt.runtime.device import resolve_dtype
        from virnucpro_trt.runtime.embedding import TorchBackend

        model, tokenizer, _, dim = load_encoder("esm2", models.esm)
        dtype = resolve_dtype(precision, device)
        backend = TorchBackend(model, dim, tokenizer.pad_id, device, dtype)
    tokens = tokenizer.encode_batch(proteins)
    embed_sequences(backend, tokens[:200], budget)  # warm-up
    sync()
    started = time.perf_counter()
    embed_sequences(backend, tokens, budget)
    sync()
    seconds = time.perf_counter() - started
    return {
        "proteins": len(tokens),
        "tokens": int(sum(len(t) for t in tokens)),
        "seconds": round(seconds, 3),
        "proteins_per_s": round(len(tokens) / seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=20000)
    parser.add_argument("--backend", default="inductor", help="torch, onnxruntime, inductor or tensorrt")
    parser.add_argument("--precision", default="bf16", choices=("fp32", "fp16", "bf16", "fp8"))
    parser.add_argument("--gpus", action="append", help="a --gpus setting to run (repeatable)")
    parser.add_argument("--max-batch-tokens", type=int, default=32768)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    settings = args.gpus or ["0"]

    root = args.workdir or Path(tempfile.mkdtemp(prefix="vt-scaling-"))
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    models = write_random_models(root / "models", "full", "cuda")
    models_s = time.perf_counter() - started
    fasta = root / "reads.fa"
    write_fasta(generate_reads(args.reads, 500, seed=42, coding_fraction=0.7), str(fasta))
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
                cli(
                    "build",
                    *model_args,
                    "--backend",
                    args.backend,
                    "--precision",
                    args.precision,
                    "--device",
                    "cuda:0",
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

    rows = []
    for gpus in settings:
        row = predict_row(fasta, root / f"out-gpus-{gpus.replace(',', '_')}", run_args, gpus, budget)
        print(json.dumps(row), flush=True)
        rows.append(row)
    alone = esm_alone(fasta, engines, models, args.precision, args.max_batch_tokens, torch.device("cuda:0"))
    print("ESM-2 alone:", json.dumps(alone), flush=True)

    one = next((r for r in rows if r["workers"] == 1), None)
    for row in rows:
        row["steady_vs_esm_alone"] = round(
            row["frames_per_s_steady"] / (alone["proteins_per_s"] * row["workers"]), 3
        )
        if one is not None:
            row["speedup_vs_1_gpu_total"] = round(row["frames_per_s_total"] / one["frames_per_s_total"], 2)
            row["speedup_vs_1_gpu_steady"] = round(row["frames_per_s_steady"] / one["frames_per_s_steady"], 2)
    report = {
        "benchmark": "runtime_scaling",
        "command": " ".join(["python3", "benchmarks/runtime_scaling.py", *(argv or sys.argv[1:])]),
        "environment": {
            **script_environment(None, with_onnxruntime=False),
            "gpus": torch.cuda.device_count(),
        },
        "workload": {
            "reads": args.reads,
            "read_length": 500,
            "coding_fraction": 0.7,
            "models": "random weights, full size: DNABERT-S 12x768, ESM-2 t36_3B",
            "max_batch_tokens": args.max_batch_tokens,
        },
        "backend": args.backend,
        "precision": args.precision,
        "write_models_s": round(models_s, 1),
        "build_s": build_s,
        "esm_engine_alone": alone,
        "predict": rows,
    }
    text = json.dumps(report, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
