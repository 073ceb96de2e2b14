"""The C++ host runtime against the Python runtime on the same engine directory: same answers, same speed.

What a production host that embeds ``runtime/`` gets (issue 11 item 6): embeddings equal to the Python
runtime's within the build's parity gate, and throughput within 5% of it. Both sides run the same
frames with the same token budget and padding cap (``--max-padding``, default none), batched by the same
rule, each timed the same way (a full warm-up
pass, then one pass with device-synchronised clock reads around each stage, host-to-device copies
included, tokenisation and engine loading excluded):

1. build ``virnucpro-host`` with CMake against this interpreter's torch (reused when ``--build-dir`` is
   already configured for it): :mod:`virnucpro_trt.bench.host_build`;
2. the workload: ``--reads N`` generated 500 bp reads (70% coding, seed 42:
   :mod:`virnucpro_trt.bench.workload`) or ``--fasta``; their kept frames, chunked, translated and
   tokenized by ``predict``'s own path (:func:`virnucpro_trt.runtime.frame_path.prepare_frames`) with the
   engine set's tokenizers;
3. the Python runtime: the engine directory opened as ``predict --engines --max-padding`` opens it, every
   frame through :func:`~virnucpro_trt.runtime.frame_path.score_frames`;
4. ``virnucpro-host --warmup --timing --max-padding`` on the same token ids;
5. parity by :func:`virnucpro_trt.bench.parity.path_parity` (the build gate's embedding rule for the
   engines' precision, plus label agreement), the batches of both sides, and host/python throughput.

    python3 benchmarks/cxx_host_cuda.py --engines /tmp/vtw/engines-inductor-bf16 --reads 4000 \\
        --json benchmarks/results/h200_cxx_host_cuda.json

Exit status 1 when the answers fail parity or the two sides ran different batches (the JSON is written
first); the throughput goal is reported, not enforced.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from virnucpro_trt.bench.hardware import script_environment
from virnucpro_trt.bench.host_build import REPO, build_host
from virnucpro_trt.bench.parity import path_parity
from virnucpro_trt.bench.path import PathResult
from virnucpro_trt.bench.report import write_json
from virnucpro_trt.bench.timing import StageClock, synchronize
from virnucpro_trt.bench.workload import Workload, fasta_workload, generated_workload
from virnucpro_trt.models.kinds import ENCODER_NAMES
from virnucpro_trt.models.tokenization import pad_batch
from virnucpro_trt.pipeline.encoders import open_models
from virnucpro_trt.runtime.frame_path import PreparedFrames, prepare_frames, score_frames
from virnucpro_trt.settings import EncoderSettings, PaddingCap, padding_cap_text, parse_padding_cap

CHUNK_LENGTH = 500
THROUGHPUT_GOAL = 0.95  # host frames/s >= 95% of the Python runtime's
# host timing JSON key, Python stage name, report key
STAGES = (
    ("dnabert-s", "dnabert", "dnabert-s"),
    ("esm2", "esm", "esm2"),
    ("classifier", "classify", "classifier"),
)
BATCH_FIELDS = ("batches", "items", "tokens", "computed_tokens")


def python_runtime(
    engines: Path,
    device: torch.device,
    budget: int | None,
    workload: Workload,
    padding_cap: PaddingCap | None = None,
) -> tuple[PreparedFrames, PathResult, dict[str, Any]]:
    """Open the engines as ``predict`` does, prepare every frame, then a warm-up pass and a timed pass."""
    started = time.perf_counter()
    run = open_models(
        EncoderSettings(None, str(device), None, budget, padding_cap=padding_cap), {}, ENCODER_NAMES, True,
        engines=engines,
    )  # fmt: skip
    models = run.frame_models()
    caps = {"dnabert-s": models.dnabert.padding_cap, "esm2": models.esm.padding_cap}
    if any(cap != padding_cap for cap in caps.values()):
        raise SystemExit(f"the encoders were opened with padding caps {caps}, not {padding_cap}")
    load_s = time.perf_counter() - started
    prepared = prepare_frames(models, workload.records, workload.chunk_length, block_records=workload.reads)
    started = time.perf_counter()
    score_frames(models, prepared)  # warm-up: every shape once, kernels loaded, allocator grown
    synchronize(device)
    warmup_s = time.perf_counter() - started
    clock = StageClock(device)
    scored = score_frames(models, prepared, clock.stage)
    result = PathResult(
        prepared.frame_ids, scored.dnabert, scored.esm, scored.probabilities, workload.reads,
        prepared.dnabert_tokens, prepared.esm_tokens, clock.seconds,
        {encoder: stats.to_json() for encoder, stats in scored.padding.items()},
    )  # fmt: skip
    facts = {
        "load_s": round(load_s, 2),
        "warmup_s": round(warmup_s, 3),
        "max_batch_tokens": {kind: run.encoders[kind].max_batch_tokens for kind in ENCODER_NAMES},
        "backend": run.backend,
        "precision": run.precision,
        "pad_id": {"dnabert-s": models.dnabert.backend.pad_id, "esm2": models.esm.backend.pad_id},
    }
    del run, models, scored
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()  # leave the GPU to the host process
    return prepared, result, facts


def save_inputs(prepared: PreparedFrames, pad_ids: dict[str, int], path: Path) -> None:
    """Right-padded token ids and masks in the layout ``virnucpro-host`` reads."""
    dna = pad_batch(prepared.dna_tokens, pad_ids["dnabert-s"])
    protein = pad_batch(prepared.protein_tokens, pad_ids["esm2"])
    torch.save(tuple(torch.from_numpy(a) for a in (*dna, *protein)), path)


def run_host(
    tool: Path,
    engines: Path,
    device: torch.device,
    budget: int,
    inputs: Path,
    work: Path,
    cpu_threads: int | None = None,
    padding_cap: PaddingCap | None = None,
) -> tuple[tuple[np.ndarray, ...], dict[str, Any], dict[str, Any]]:
    """(dnabert, esm, probabilities), the host's timing JSON, and how the run went (wall seconds with
    loading, whether the host hashed the engine files).

    A host built without OpenSSL (no headers on the machine) refuses to trust unhashed files; it is then
    rerun with ``--no-verify``, which is sound here because this process's engine set has just checked
    every file's SHA-256 against the manifest.
    """
    outputs, timing = work / "host_outputs.pt", work / "host_timing.json"
    command = [
        str(tool), str(engines), str(inputs), str(outputs), "--device", str(device),
        "--max-batch-tokens", str(budget), "--warmup", "--timing", str(timing),
    ]  # fmt: skip
    if cpu_threads is not None:
        command += ["--cpu-threads", str(cpu_threads)]
    command += ["--max-padding", padding_cap_text(padding_cap)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    verified = not (done.returncode == 2 and "built without OpenSSL" in done.stderr)
    if not verified:
        started = time.perf_counter()
        done = subprocess.run([*command, "--no-verify"], capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"virnucpro-host failed ({done.returncode}): {done.stderr.strip()[-3000:]}")
    arrays = tuple(t.numpy() for t in torch.load(outputs))
    return arrays, json.loads(timing.read_text()), {"wall_s": round(wall, 2), "verified_files": verified}


def padding_cap_json(cap: PaddingCap | None) -> dict[str, Any] | None:
    """As ``virnucpro-host --timing`` records it."""
    return None if cap is None else dataclasses.asdict(cap)


def compare(python: PathResult, host_timing: dict[str, Any], frames: int) -> dict[str, Any]:
    """Seconds, frames/s and host/python ratios per stage and in total; batches of both sides."""
    seconds = {"python": {}, "host": {}}
    for host_key, python_key, key in STAGES:
        seconds["python"][key] = python.stages_s[python_key]
        seconds["host"][key] = host_timing[host_key]["seconds"]
    for side in seconds.values():
        side["total"] = sum(side.values())
    ratio = {k: seconds["python"][k] / seconds["host"][k] for k in seconds["host"]}
    batches = {
        kind: {
            "python": {f: python.padding[encoder][f] for f in BATCH_FIELDS},
            "host": {f: host_timing[kind][f] for f in BATCH_FIELDS},
        }
        for kind, encoder in (("dnabert-s", "dnabert"), ("esm2", "esm"))
    }
    return {
        "seconds": {side: {k: round(v, 4) for k, v in values.items()} for side, values in seconds.items()},
        "frames_per_s": {
            side: {k: round(frames / v, 1) for k, v in values.items()} for side, values in seconds.items()
        },
        "throughput_ratio_host_vs_python": {k: round(v, 3) for k, v in ratio.items()},
        "batches": batches,
        "batching_matches": all(b["python"] == b["host"] for b in batches.values()),
    }


def print_table(report: dict[str, Any]) -> None:
    seconds, ratio = report["seconds"], report["throughput_ratio_host_vs_python"]
    print(f"{'stage':<12}{'python s':>12}{'host s':>12}{'host/python':>14}{'host in engine s':>18}")
    for key in ("dnabert-s", "esm2", "classifier", "total"):
        inside = report["host"]["embed_s"].get(key)
        print(
            f"{key:<12}{seconds['python'][key]:>12.3f}{seconds['host'][key]:>12.3f}{ratio[key]:>14.3f}"
            f"{'' if inside is None else f'{inside:>18.3f}'}"
        )
    work = "; ".join(
        f"{kind} " + ", ".join(f"{part} {s:.3f}" for part, s in parts.items())
        for kind, parts in report["host"]["host_work_s"].items()
    )
    print(f"host: {report['host']['cpu_threads']} CPU thread(s); its own work per stage, s: {work}")
    parity, goals = report["parity"], report["goals"]
    verdict = "PASSED" if parity["passed"] else "FAILED"
    print(
        f"parity {verdict}: dnabert min cos {parity['dnabert_min_cos']:.6f}, esm min cos "
        f"{parity['esm_min_cos']:.6f}, labels {parity['label_agreement']:.4f} ({parity['rule']})"
    )
    cap = report["max_padding"]
    cap_text = "none" if cap is None else f"{cap['max_share']:g}:{cap['floor_tokens']}"
    print(
        f"batches {'identical' if report['batching_matches'] else 'DIFFER'} (padding cap {cap_text}); "
        "throughput goal "
        f"(>= {THROUGHPUT_GOAL:g}x) {'met' if goals['throughput_met'] else 'NOT met'}"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", type=Path, required=True, help="an inductor engine directory")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--reads", type=int, default=4000, help="generated 500 bp reads (default 4000)")
    source.add_argument("--fasta", type=Path, default=None, help="or the reads of this FASTA/FASTQ")
    parser.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--max-batch-tokens", type=int, default=None, help="both sides' budget (default: the engines' own)"
    )
    parser.add_argument(
        "--max-padding",
        type=parse_padding_cap,
        default=None,
        metavar="SHARE[:FLOOR]|none",
        help="both sides' padding cap, as predict --max-padding (default: none)",
    )
    parser.add_argument(
        "--host-cpu-threads",
        type=int,
        default=None,
        help="the host's libtorch intra-op threads for its CPU tensor work (default: libtorch's)",
    )
    parser.add_argument("--build-dir", type=Path, default=REPO / "build" / "cxx-host", help="CMake folder")
    parser.add_argument("--jobs", type=int, default=None, help="parallel compile jobs (default: all CPUs)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the inputs/outputs here")
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    build = build_host(args.build_dir, args.jobs)
    done = "configured and built" if build.configured else "built"
    print(f"virnucpro-host: {build.tool} ({done} in {build.configure_s + build.build_s:.0f} s)", flush=True)
    if args.fasta:
        workload = fasta_workload(args.fasta, CHUNK_LENGTH)
    else:
        workload = generated_workload(args.reads, 500, 42, 0.7, CHUNK_LENGTH)
    prepared, python, facts = python_runtime(
        args.engines, device, args.max_batch_tokens, workload, args.max_padding
    )
    budgets = set(facts["max_batch_tokens"].values())
    if len(budgets) != 1:
        raise SystemExit(f"the encoders have different budgets {facts['max_batch_tokens']}: not comparable")
    budget = budgets.pop()
    print(f"python runtime: {python.frames} frames, stages {python.stages_s}", flush=True)
    with tempfile.TemporaryDirectory(prefix="vt-cxx-host-") as scratch:
        work = args.workdir or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        inputs = work / "host_inputs.pt"
        save_inputs(prepared, facts["pad_id"], inputs)
        arrays, timing, host_run = run_host(
            build.tool, args.engines, device, budget, inputs, work, args.host_cpu_threads, args.max_padding
        )
    if timing.get("max_padding") != padding_cap_json(args.max_padding):
        ran = timing.get("max_padding")
        raise SystemExit(f"virnucpro-host ran with padding cap {ran}, not {args.max_padding}")
    host = PathResult(python.frame_ids, *arrays, python.reads, python.dnabert_tokens, python.esm_tokens, {})
    figures = compare(python, timing, python.frames)
    parity = path_parity(python, host, facts["precision"])
    met = figures["throughput_ratio_host_vs_python"]["total"] >= THROUGHPUT_GOAL
    report = {
        "benchmark": "cxx_host_cuda",
        "command": " ".join(
            ["python3", "benchmarks/cxx_host_cuda.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "environment": script_environment(device, with_onnxruntime=False),
        "device": str(device),
        "engines": {"dir": str(args.engines), "backend": facts["backend"], "precision": facts["precision"]},
        "workload": workload.describe(),
        "frames": python.frames,
        "tokens": {"dnabert-s": python.dnabert_tokens, "esm2": python.esm_tokens},
        "max_batch_tokens": budget,
        "max_padding": padding_cap_json(args.max_padding),
        "host_build": build.to_json(),
        "python": {"load_s": facts["load_s"], "warmup_s": facts["warmup_s"]},
        "host": {
            **host_run,
            "load_s": timing["load_s"],
            "warmup_s": timing["warmup_s"],
            "torch": timing["torch"],
            "cpu_threads": timing["cpu_threads"],
            # seconds inside the engine calls (padding, copies, the run), the rest of each encoder's
            # stage being the host's batching work
            "embed_s": {kind: round(timing[kind]["embed_s"], 4) for kind in ("dnabert-s", "esm2")},
            # the rest of each stage by part (rows selected, finiteness check, output placed)
            "host_work_s": {
                kind: {part: round(s, 4) for part, s in timing[kind]["host_work_s"].items()}
                for kind in ("dnabert-s", "esm2")
            },
            "timing_rule": timing["rule"],
        },
        **figures,
        "parity": parity,
        "goals": {
            "parity_passed": parity["passed"],
            "batching_matches": figures["batching_matches"],
            "throughput_met": met,
            "throughput_rule": f"host/python total frames/s >= {THROUGHPUT_GOAL:g} (python s / host s over "
            "DNABERT-S + ESM-2 + classifier, warm, device-synchronised)",
        },
    }
    if args.json:
        write_json(report, args.json)
    print_table(report)
    return 0 if parity["passed"] and figures["batching_matches"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
