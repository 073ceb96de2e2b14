"""Reproduction of the open AOTInductor load crash on CUDA (see DEVELOPERS.md, "Open problems").

On the H200 (torch 2.11.0+cu130) ``aoti_load_package`` segfaulted right after building a bf16 engine of
the TINY DNABERT-S in every variant tried (random or checkpoint-loaded weights, model on CPU or CUDA,
deep copy, device "cuda" or "cuda:0", with or without ``device_index``, a fresh inductor cache), and
the CLI build of the FULL-SIZE DNABERT-S crashed the same way, while the full-size encoders built and
loaded fine inside ``benchmarks/engines_throughput.py``. Each variant runs in its own process so one
crash does not hide the others:

    PYTHONPATH=$PWD python3 benchmarks/diagnostics/aoti_load_crash.py [VARIANT ...]
"""

from __future__ import annotations

import copy
import subprocess
import sys
import time
from pathlib import Path

import torch

VARIANTS = ("random", "loaded", "cpu_model", "deepcopy", "plain_cuda_device", "load_without_index")


def variant(name: str) -> None:
    from virnucpro_trt.engines import inductor_backend
    from virnucpro_trt.engines.spec import BuildOptions, default_shape_range
    from virnucpro_trt.models.dnabert_checkpoint import load_dnabert
    from virnucpro_trt.models.random_checkpoints import random_dnabert, write_dnabert_checkpoint
    from virnucpro_trt.models.tokenization import pad_batch

    backend = inductor_backend.INDUCTOR_BACKEND
    device = torch.device("cuda") if name == "plain_cuda_device" else torch.device("cuda:0")
    folder = Path(f"/tmp/aoti-diag/{name}")
    write_dnabert_checkpoint(folder / "ckpt", seed=1)
    if name in ("random", "plain_cuda_device", "load_without_index"):
        model = random_dnabert(device=device, seed=1)
    else:
        model, _, _ = load_dnabert(folder / "ckpt")
        if name == "deepcopy":
            model = copy.deepcopy(model).to(device)
        elif name == "loaded":
            model = model.to(device)
    if name == "load_without_index":
        inductor_backend.load_package = lambda path, device: torch._inductor.aoti_load_package(str(path))
    shapes = default_shape_range("dnabert-s", 32768)
    ids, mask = pad_batch([torch.randint(5, 200, (n,)).numpy() for n in (40, 33, 20)], 3)
    start = time.time()
    example = (torch.from_numpy(ids), torch.from_numpy(mask))
    built = backend.build(
        model, "dnabert-s", example, shapes, "bf16", device, folder / "m.pt2", BuildOptions()
    )
    print(name, "built in", round(time.time() - start, 1), "s", flush=True)
    runner = backend.load(built.path, "dnabert-s", device, "bf16", 64, 3, shapes)
    print(name, "loaded OK:", runner.embed_padded(ids, mask).shape, flush=True)


def main() -> None:
    names = sys.argv[1:] or list(VARIANTS)
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-X", "faulthandler", __file__, "--variant", name],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in names
    }
    for name, proc in procs.items():
        out, _ = proc.communicate()
        lines = [line for line in out.splitlines() if "Warning" not in line and "cls.__new__" not in line]
        print(f"=== {name}: exit {proc.returncode}")
        if proc.returncode == 0:
            print("\n".join(lines[-3:]))
        else:
            print("\n".join([line for line in lines if 'File "/work' in line or "Fatal" in line][:8]))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--variant":
        variant(sys.argv[2])
    else:
        main()
