"""Where a `predict` worker's time before "ready" goes, on an engine set (DEVELOPERS.md, "Open problems":
the worker-ready goal, <= 8 s in docs/performance.md).

A worker is a spawned interpreter that imports the runtime, loads its engines and runs one warm-up
batch through each encoder before it reports ready (`runtime/worker.py`, `pipeline/shard_predictor.py`).
This script checks the engine folder once (as the coordinator does), then spawns fresh processes the
same way, which time each step: the interpreter's start (spawn to the child's first line), the imports,
the CUDA context, each package's code (`inductor_runner._load_code`: unpacking, the library, the
container) and weights (`package_weights.load_weights`: the safetensors file to the device), the rest
of `open_engine_set`, and the warm-up batches (run twice: the first loads kernels). A sampler thread
records the main thread's Python stack every 0.1 s, so time spent inside C++ still shows under the
Python frame that called it. Two processes in a row: the second tells a once-per-machine cost (the page
cache) from a per-process one.

    PYTHONPATH=$PWD python3 benchmarks/diagnostics/worker_ready_profile.py --engines DIR [--json OUT]
    (--device cpu: the same on CPU engines, for a check of the script)
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing
import pickle
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

SAMPLE_S = 0.1
WEIGHTS = {"dnabert-s": None, "esm2": None, "classifier": None}  # the engine directory's own copies


def _sampler(stacks: collections.Counter[str], halt: threading.Event) -> None:
    main = threading.main_thread().ident
    while not halt.wait(SAMPLE_S):
        frame = sys._current_frames().get(main)
        if frame is not None:
            top = [f for f in traceback.extract_stack(frame) if "<frozen" not in f.filename][-5:]
            where = (f"{f.name}@{f.filename.split('site-packages/')[-1]}:{f.lineno}" for f in reversed(top))
            stacks[" <- ".join(where)] += 1


def _child(folder: str, device_name: str, checked: bytes, spawned: float, results: Any) -> None:
    started = time.time()
    steps: dict[str, float] = {"spawn to first line": started - spawned}
    stacks: collections.Counter[str] = collections.Counter()
    halt = threading.Event()
    threading.Thread(target=_sampler, args=(stacks, halt), daemon=True).start()

    def timed(name: str, fn: Any) -> Any:
        t = time.perf_counter()
        out = fn()
        steps[name] = steps.get(name, 0.0) + time.perf_counter() - t
        return out

    torch = timed("import torch", lambda: __import__("torch"))
    timed("import the worker's modules", lambda: __import__("virnucpro_trt.pipeline.shard_predictor"))
    device = torch.device(device_name)
    if device.type == "cuda":
        timed("CUDA context", lambda: torch.zeros(1, device=device))
    from virnucpro_trt.engines import inductor_runner
    from virnucpro_trt.engines.engine_set import open_engine_set

    load_code, load_weights = inductor_runner._load_code, inductor_runner.load_weights

    def code(path: Path, *args: Any) -> Any:
        return timed(f"package code: {Path(path).name}", lambda: load_code(path, *args))

    def weights(compiled: Any, metadata: Any, path: Path, *args: Any) -> Any:
        name = f"package weights: {Path(path).name}"
        return timed(name, lambda: load_weights(compiled, metadata, path, *args))

    inductor_runner._load_code, inductor_runner.load_weights = code, weights
    known = pickle.loads(checked)  # the coordinator's check, unpickled after the imports are timed
    engines = timed("open_engine_set (all)", lambda: open_engine_set(Path(folder), device, WEIGHTS, known))
    for round_ in ("warm-up", "second batch"):
        for kind, encoder in (("dnabert-s", engines.dnabert), ("esm2", engines.esm)):
            ids = torch.randint(5, 20, (2, 60), generator=torch.Generator().manual_seed(0)).numpy()

            def run(encoder: Any = encoder, ids: Any = ids) -> None:
                encoder.backend.embed_padded(ids, (ids > 0).astype(ids.dtype))
                if device.type == "cuda":
                    torch.cuda.synchronize(device)

            timed(f"{round_}: {kind}", run)
        if round_ == "warm-up":  # where a worker reports ready
            steps["spawn to ready"] = time.time() - spawned
    halt.set()
    heavy = ("torch._dynamo", "torch._inductor", "torch.export.pt2_archive", "sympy", "triton")
    results.put({
        "steps_s": {k: round(v, 3) for k, v in steps.items()},
        "modules": len(sys.modules),
        "heavy_modules_imported": [m for m in heavy if m in sys.modules],
        "top_stacks": [[round(c * SAMPLE_S, 1), s] for s, c in stacks.most_common(15)],
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", type=Path, required=True)
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    import torch

    from virnucpro_trt.bench.hardware import script_environment
    from virnucpro_trt.engines.engine_set import check_engine_set

    device = torch.device(args.device)
    checked = check_engine_set(args.engines, device, WEIGHTS)  # the coordinator's check, once
    context = multiprocessing.get_context("spawn")  # as the runtime starts its workers
    runs = []
    for _ in range(args.processes):
        results = context.Queue()
        what = (str(args.engines), args.device, pickle.dumps(checked), time.time(), results)
        child = context.Process(target=_child, args=what)
        child.start()
        runs.append(results.get(timeout=600))
        child.join()
        print(json.dumps(runs[-1], indent=1), flush=True)
    report = {
        "benchmark": "worker_ready_profile",
        "command": " ".join(["python3", *sys.argv]),
        "environment": script_environment(device, with_onnxruntime=False),
        "engines": str(args.engines),
        "runs": runs,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
