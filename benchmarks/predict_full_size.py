"""End-to-end ``virnucpro-trt predict`` on FULL-SIZE random-weight models (DNABERT-S + ESM-2 3B).

Weights cannot be downloaded here, so this writes random checkpoints in the real formats and shapes
(DNABERT-S folder with a 4096-token BPE tokenizer, ESM-2 3B Hugging Face folder in fp16 safetensors,
an upstream-style pickled 3328->512->2 classifier), generates 500 bp reads with coding regions (random
DNA almost never keeps a 500 bp frame), and times the real CLI as a user runs it. Throughput comes from
the run.json the CLI writes (frames / encoder wall time, and reads / total wall time). The checkpoints
come from :func:`virnucpro_trt.bench.models.random_models_in` (the same folder ``virnucpro-trt bench
--random-weights full`` runs) and are reused from ``--workdir`` when a finished set is there.

Run on a GPU host, e.g. (the package setup there: DEVELOPERS.md, "Running on the H200 hosts"):

    python3 benchmarks/predict_full_size.py --reads 20000 --precision bf16 --json results.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from virnucpro_trt.bench.cli_run import run_cli
from virnucpro_trt.bench.hardware import script_environment
from virnucpro_trt.bench.models import random_models_in
from virnucpro_trt.bench.report import write_json
from virnucpro_trt.files.swept_folders import work_folder
from virnucpro_trt.sequences.synthetic import generate_reads, write_fasta


def build_models(root: Path, device: str, size: str = "full") -> dict[str, Path]:
    """Random checkpoints in the real file formats (full size unless ``size`` is ``tiny``)."""
    t0 = time.perf_counter()
    models = random_models_in(root, size, device)  # type: ignore[arg-type]
    print(f"wrote {size}-size random checkpoints in {time.perf_counter() - t0:.1f}s", flush=True)
    return {"dnabert": models.dnabert, "esm": models.esm, "classifier": models.classifier}


def run_predict(
    reads: Path, out: Path, models: dict[str, Path], device: str, precision: str, extra: list[str]
) -> dict:
    cmd = [
        "predict", str(reads), "-o", str(out),
        "--dnabert", str(models["dnabert"]), "--esm", str(models["esm"]),
        "--classifier", str(models["classifier"]), "--device", device, "--precision", precision, *extra,
    ]  # fmt: skip
    wall = run_cli(*cmd)
    run = json.loads((out / "run.json").read_text())
    frames = run["counts"]["frames"]
    timings = run["timings_s"]
    encoder_s = timings["embed_dnabert"] + timings["embed_esm"]
    return {
        "backend": run["backend"],
        "engines": run.get("engines"),
        "precision": precision,
        "reads": run["counts"]["records"],
        "frames": frames,
        "dnabert_tokens": run["counts"]["dnabert_tokens"],
        "esm_tokens": run["counts"]["esm_tokens"],
        "wall_s_process": round(wall, 2),
        "timings_s": timings,
        "frames_per_s_encoders": round(frames / encoder_s, 1),
        "frames_per_s_end_to_end": round(frames / timings["total"], 1),
        "frames_per_s_excluding_load": round(frames / (timings["total"] - timings["load_models"]), 1),
        "esm_proteins_per_s": round(frames / timings["embed_esm"], 1),
        "dnabert_frames_per_s": round(frames / timings["embed_dnabert"], 1),
        "reads_per_s_end_to_end": round(run["counts"]["records"] / timings["total"], 1),
        "max_batch_tokens": run["models"]["esm"]["max_batch_tokens"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=20000)
    parser.add_argument("--read-length", type=int, default=500)
    parser.add_argument("--coding-fraction", type=float, default=0.7)
    parser.add_argument("--precision", default="bf16", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--backend", default="torch", help="torch, or an engine backend (built into OUTDIR/engines)"
    )
    parser.add_argument("--max-batch-tokens", type=int, default=None)
    parser.add_argument(
        "--fp32-reads",
        type=int,
        default=0,
        help="also run fp32 (TF32 off, upstream's arithmetic) on this many reads",
    )
    parser.add_argument(
        "--size",
        choices=("full", "tiny"),
        default="full",
        help="tiny: test-suite models, for a CPU smoke run",
    )
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    with work_folder(args.workdir, "vt-bench-") as root:  # without --workdir: removed at the end
        models = build_models(root, args.device, args.size)
        reads = generate_reads(args.reads, args.read_length, seed=42, coding_fraction=args.coding_fraction)
        fasta = root / "reads.fa"
        write_fasta(reads, str(fasta))
        extra = ["--max-batch-tokens", str(args.max_batch_tokens)] if args.max_batch_tokens else []
        extra += ["--backend", args.backend]
        results = [
            run_predict(fasta, root / f"out_{args.precision}", models, args.device, args.precision, extra)
        ]
        if args.fp32_reads:
            subset = root / "reads_fp32.fa"
            write_fasta(reads[: args.fp32_reads], str(subset))
            results.append(run_predict(subset, root / "out_fp32", models, args.device, "fp32", extra))
        report = {
            "benchmark": "predict_full_size",
            "command": " ".join(["python3", "benchmarks/predict_full_size.py", *(argv or sys.argv[1:])]),
            "environment": script_environment(None, with_onnxruntime=False),
            "workload": {
                "read_length": args.read_length,
                "coding_fraction": args.coding_fraction,
                "models": "random weights, full size: DNABERT-S 12x768, ESM-2 t36_3B"
                if args.size == "full"
                else "random weights, tiny (test-suite sizes)",
            },
            "results": results,
        }
        if args.json:
            write_json(report, args.json)
        print(json.dumps(report, indent=2))
        print("\nprecision  reads   frames  frames/s(encoders)  frames/s(end-to-end)  ESM proteins/s")
        for r in results:
            print(
                f"{r['precision']:9s} {r['reads']:6d} {r['frames']:7d} {r['frames_per_s_encoders']:18.1f} "
                f"{r['frames_per_s_end_to_end']:21.1f} {r['esm_proteins_per_s']:15.1f}"
            )
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
