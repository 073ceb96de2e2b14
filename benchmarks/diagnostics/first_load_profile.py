"""Where a process's FIRST ``aoti_load_package`` spends its time (DEVELOPERS.md, "Open problems").

benchmarks/diagnostics/engine_load_time.py showed, on the H200, the full-size ESM-2 bf16 package taking
56 s to load the first time in a process and 4 s the second time (another fresh extraction of the same
5.7 GB), with no file I/O during the first ~50 s. So the cost is per process, not per package. This
script builds a TINY ESM-2 CUDA package (in a child process), then loads it in fresh child processes
with a sampler thread that records the main thread's Python stack every 0.25 s, and prints the time of
each import step and the most frequent stacks: the Python frame the time is spent under, even when the
work itself is C++ or a subprocess.

    PYTHONPATH=$PWD python3 benchmarks/diagnostics/first_load_profile.py [--json OUT]

Outcome on the H200 (torch 2.11, 2026-11-29; benchmarks/results/h200_first_load_profile.json): first
load 41.8 s and 45.2 s in two fresh processes, the second load 0.01 s, 44.5 s of the samples inside
``subprocess.check_call`` — the CPU instruction-set probe that ``aoti_load_package`` reaches through
``load_pt2``'s device-information check. ``load_package`` (used below) now skips that path, so this
script shows the fixed behaviour; to see the old one, call ``torch._inductor.aoti_load_package``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

BUILD = r"""
import sys, torch
from pathlib import Path
from virnucpro_trt.engines.inductor_backend import INDUCTOR_BACKEND
from virnucpro_trt.engines.spec import BuildRequest, ShapeRange
from virnucpro_trt.models.random_checkpoints import random_esm2
cuda = torch.device("cuda", 0)
model, shapes = random_esm2(seed=1), ShapeRange(1, 16, 64, 2, 40, 130)
example = (torch.randint(4, 24, (4, 12)), torch.ones(4, 12, dtype=torch.int64))
INDUCTOR_BACKEND.build(BuildRequest(model, "esm2", example, shapes, "bf16", cuda, Path(sys.argv[1])))
"""

LOAD = r"""
import collections, json, sys, threading, time, traceback
t0 = time.perf_counter()
steps = {}
stacks = collections.Counter()
main = threading.main_thread().ident
halt = threading.Event()

def sample():
    while not halt.wait(0.25):
        frame = sys._current_frames().get(main)
        if frame is not None:
            top = [f for f in traceback.extract_stack(frame) if "<frozen" not in f.filename][-5:]
            stacks[" <- ".join(f"{f.name}@{f.filename.split('site-packages/')[-1]}:{f.lineno}"
                               for f in reversed(top))] += 1

threading.Thread(target=sample, daemon=True).start()
import torch
steps["import torch"] = time.perf_counter() - t0
device = torch.device(sys.argv[2])

def timed(name, fn):
    t = time.perf_counter()
    fn()
    steps[name] = time.perf_counter() - t

timed("cuda context", lambda: torch.zeros(1, device=device))
timed("import torch._inductor", lambda: __import__("torch._inductor"))
timed("import torch._inductor.package", lambda: __import__("torch._inductor.package"))
from virnucpro_trt.engines.inductor_runner import load_package
for n in (1, 2):
    timed(f"load {n}", lambda: load_package(sys.argv[1], device))
halt.set()
print(json.dumps({"steps_s": {k: round(v, 2) for k, v in steps.items()},
                  "stacks": [[c * 0.25, s] for s, c in stacks.most_common(12)]}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--package", type=Path, default=None, help="load this .pt2 instead of building one")
    parser.add_argument("--device", default="cuda:0")
    args = parser.parse_args()
    package = args.package
    if package is None:
        package = Path(tempfile.mkdtemp(prefix="vt-firstload-")) / "esm2.tiny.bf16.pt2"
        subprocess.run([sys.executable, "-c", BUILD, str(package)], check=True)
    runs = []
    for _ in range(2):  # the second fresh process tells a once-per-machine cost from a per-process one
        done = subprocess.run(
            [sys.executable, "-c", LOAD, str(package), args.device],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(done.stderr[-3000:])
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(runs[-1], indent=1), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"package": str(package), "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
