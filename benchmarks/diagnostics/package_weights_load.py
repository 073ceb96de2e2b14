"""Loading an ESM-2 3B AOTInductor package with its weights beside it (recipe 9) against inside its
library (before): the worker-ready lever of DEVELOPERS.md, "Open problems", side by side on one GPU.

Builds one random full-size ESM-2 package twice from the same model (``build`` without its parity gate):
``beside`` (the default: ``package_constants_in_so=False``, weights in ``*.weights.safetensors``) and
``inside`` (``extra["inductor_configs"]``: the weights linked into the library, as before recipe 9).
The second compile reuses the first's kernels from Inductor's cache. Then each package is loaded in a
fresh interpreter (``engines.inductor_runner.load_package``: unpacking, and for ``beside`` the weights
read to the device), twice in a row: the first with the package just written (the page cache warm, as
on a worker start after a build), the second as a repeat, and one batch is run to check both engines
agree. Reports seconds per load, the device memory each load took, file sizes, and the build's
compile seconds.

    PYTHONPATH=$PWD python3 benchmarks/diagnostics/package_weights_load.py --workdir W --json OUT
    (--size tiny --device cpu: the same on the test models, for a check of the script; --size t33_650M
    --device cpu --precision fp32: the mechanism on a CPU)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]
VARIANTS = {"beside": {}, "inside": {"inductor_configs": {"aot_inductor.package_constants_in_so": True}}}

_LOAD = """
import json, sys, time
from pathlib import Path
import torch
from virnucpro_trt.engines.inductor_runner import load_package
path, device_name, out = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
device = torch.device(device_name)
if device.type == "cuda":
    torch.zeros(1, device=device)  # the CUDA context outside the timing
times, used = [], []
for _ in range(2):
    free_before = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 0
    started = time.perf_counter()
    loaded = load_package(path, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    times.append(round(time.perf_counter() - started, 2))
    if device.type == "cuda":
        used.append(round((free_before - torch.cuda.mem_get_info(device)[0]) / 1e9, 2))
    if len(times) == 1:
        ids = torch.randint(4, 24, (4, 100), generator=torch.Generator().manual_seed(0)).to(device)
        with torch.inference_mode():
            pooled = loaded.model(ids, torch.ones_like(ids))
        torch.save(pooled.float().cpu(), out)
    del loaded
print(json.dumps({"load_s": times, "device_gb_taken_by_load": used}))
"""


def build(model: torch.nn.Module, folder: Path, variant: str, device: torch.device, precision: str) -> dict:
    from virnucpro_trt.engines.inductor_backend import INDUCTOR_BACKEND
    from virnucpro_trt.engines.spec import BuildOptions, BuildRequest, default_shape_range

    shapes = default_shape_range("esm2", 32768 if device.type == "cuda" else 2048)
    example = (torch.randint(4, 24, (3, 11)), torch.ones(3, 11, dtype=torch.int64))
    out = folder / variant / f"esm2.{device.type}.{precision}.pt2"
    request = BuildRequest(
        model, "esm2", example, shapes, precision, device, out, BuildOptions(extra=dict(VARIANTS[variant]))
    )
    started = time.perf_counter()
    built = INDUCTOR_BACKEND.build(request)
    return {
        "build_s": round(time.perf_counter() - started, 1),
        "compile_s": built.facts["compile_seconds"],
        "files_gb": {p.name: round(p.stat().st_size / 1e9, 3) for p in built.files},
        "path": str(built.path),
    }


def load_in_fresh_process(path: Path, device: str, out: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _LOAD, str(path), device, str(out)], capture_output=True, text=True, env=env
    )
    if done.returncode != 0:
        raise SystemExit(f"loading {path} failed: {done.stderr.strip()[-1500:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    row["process_s"] = round(time.perf_counter() - started, 2)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument(
        "--size", default="t36_3B", help="an ESM-2 size (t36_3B, t33_650M, ...: models/esm2.py) or tiny"
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    from virnucpro_trt.bench.hardware import script_environment
    from virnucpro_trt.environment import cpu_model
    from virnucpro_trt.models.esm2 import ESM2_CONFIGS
    from virnucpro_trt.models.random_checkpoints import TINY_ESM2_CONFIG, random_esm2

    device = torch.device(args.device)
    config = TINY_ESM2_CONFIG if args.size == "tiny" else ESM2_CONFIGS[args.size]
    model = random_esm2(config, device=device, seed=7)
    report: dict[str, Any] = {
        "environment": {**script_environment(device, with_onnxruntime=False), "cpu": cpu_model()},
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": str(device),
        "size": args.size,
        "precision": args.precision,
        "variants": {},
    }
    for variant in VARIANTS:
        report["variants"][variant] = build(model, args.workdir, variant, device, args.precision)
        print(variant, json.dumps(report["variants"][variant]), flush=True)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    outputs = {}
    for variant, row in report["variants"].items():
        out = args.workdir / f"{variant}.pooled.pt"
        row.update(load_in_fresh_process(Path(row["path"]), args.device, out))
        outputs[variant] = torch.load(out)
        print(variant, json.dumps(row), flush=True)
    report["max_abs_difference"] = float((outputs["beside"] - outputs["inside"]).abs().max())
    print("max |beside - inside|", report["max_abs_difference"], flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
