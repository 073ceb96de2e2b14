"""Reproduction and bisection of the AOTInductor load crash on CUDA (DEVELOPERS.md, "Open problems").

On the H200 (torch 2.11.0+cu130) ``aoti_load_package`` segfaulted right after building a bf16 engine of
the TINY DNABERT-S in every variant tried in the first session (random or checkpoint-loaded weights,
model on CPU or CUDA, deep copy, device "cuda" or "cuda:0", with or without ``device_index``, a fresh
inductor cache), and the CLI build of the FULL-SIZE DNABERT-S crashed the same way, while the full-size
encoders built and loaded fine inside ``benchmarks/engines_throughput.py``. Each variant below changes
one thing against ``baseline`` and runs in its own process, so one crash does not hide the others.

Outcome on the H200 (2026-11-29): every variant crashed except ``onnxruntime_first``; preloading either
of onnxruntime's shared libraries with RTLD_GLOBAL was enough, i.e. the package's ``.so`` needs the C++
runtime in the global symbol scope. Fixed in ``virnucpro_trt/engines/cxx_runtime.py`` (the variants
below predate the fix and now pass through it, so to reproduce the crash, revert that call):

    PYTHONPATH=$PWD python3 benchmarks/diagnostics/aoti_load_crash.py [VARIANT ...]

* ``baseline``       build + load in one process (the CLI's build-time parity check does this);
* ``fresh_load``     build here, load in a fresh process (what ``predict`` workers do);
* ``warm_cuda``      run cuBLAS GEMMs and SDPA on the device before loading;
* ``fp32``           fp32 instead of bf16;
* ``no_cd_tuning``   without ``coordinate_descent_tuning``;
* ``no_configs``     no inductor options at all except the metadata;
* ``run_eager_first`` run the eager model forward on CUDA before building (as the benchmark did);
* ``no_metadata``    without the ``virnucpro.*`` package metadata;
* ``onnxruntime_first`` import onnxruntime before anything else (the benchmark process did);
* ``manual_runner``  unzip the package and load its ``.so`` with ``AOTIModelContainerRunnerCuda``
  (skips the package loader; tells a bad package from a bad loader).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import torch

VARIANTS = (
    "baseline",
    "fresh_load",
    "warm_cuda",
    "fp32",
    "no_cd_tuning",
    "no_configs",
    "run_eager_first",
    "no_metadata",
    "onnxruntime_first",
    "manual_runner",
)
ROOT = Path("/tmp/aoti-diag")


def _example() -> tuple[torch.Tensor, torch.Tensor]:
    from virnucpro_trt.models.tokenization import pad_batch

    ids, mask = pad_batch([torch.randint(5, 200, (n,)).numpy() for n in (40, 33, 20)], 3)
    return torch.from_numpy(ids), torch.from_numpy(mask)


def _load_and_run(path: Path, precision: str, label: str) -> None:
    from virnucpro_trt.engines import inductor_backend
    from virnucpro_trt.engines.spec import LoadRequest, default_shape_range

    shapes = default_shape_range("dnabert-s", 32768)
    ids, mask = _example()
    runner = inductor_backend.INDUCTOR_BACKEND.load(
        LoadRequest(path, "dnabert-s", torch.device("cuda:0"), precision, 64, 3, shapes)
    )
    out = runner.embed_padded(ids.numpy(), mask.numpy())
    print(label, "loaded and ran OK:", out.shape, flush=True)


def _manual_runner(path: Path) -> None:
    import zipfile

    target = path.parent / "unzipped"
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        print("package files:", [n for n in names if not n.endswith((".cubin", ".json"))][:20], flush=True)
        archive.extractall(target)
    so = next(target.rglob("*.so"))
    subprocess.run(["ldd", str(so)], check=False)
    cubins = {p.parent for p in target.rglob("*.cubin")}
    print("so:", so, "cubin dirs:", cubins, flush=True)
    runner = torch._C._aoti.AOTIModelContainerRunnerCuda(str(so), 1, "cuda:0", str(next(iter(cubins), "")))
    print("manual runner created", flush=True)
    ids, mask = _example()
    out = runner.run([ids.cuda(), mask.cuda()])
    print("manual_runner ran OK:", [o.shape for o in out], flush=True)


def variant(name: str) -> None:
    if name == "onnxruntime_first":
        import onnxruntime  # noqa: F401

    from virnucpro_trt.engines import inductor_backend
    from virnucpro_trt.engines.spec import BuildOptions, BuildRequest, default_shape_range
    from virnucpro_trt.models.random_checkpoints import random_dnabert

    device = torch.device("cuda:0")
    folder = ROOT / name
    folder.mkdir(parents=True, exist_ok=True)
    precision = "fp32" if name == "fp32" else "bf16"
    extra: dict[str, object] = {}
    if name == "no_cd_tuning":
        extra["inductor_configs"] = {"coordinate_descent_tuning": False}
    model = random_dnabert(device=device, seed=1)
    example = _example()
    if name == "run_eager_first":
        with torch.inference_mode():
            model(*(t.to(device) for t in example))
        torch.cuda.synchronize()
    options = BuildOptions(extra=extra)
    if name == "no_metadata":
        inductor_backend.inductor_configs = lambda device, options, metadata: {}
    if name == "no_configs":
        inductor_backend.inductor_configs = lambda device, options, metadata: {
            "aot_inductor.metadata": metadata
        }
    start = time.time()
    built = inductor_backend.INDUCTOR_BACKEND.build(
        BuildRequest(
            model,
            "dnabert-s",
            example,
            default_shape_range("dnabert-s", 32768),
            precision,
            device,
            folder / "m.pt2",
            options,
        )
    )
    print(name, "built in", round(time.time() - start, 1), "s", flush=True)
    if name == "warm_cuda":
        a = torch.randn(512, 512, device=device, dtype=torch.bfloat16)
        (a @ a).sum().item()
        q = torch.randn(2, 4, 64, 32, device=device, dtype=torch.bfloat16)
        torch.nn.functional.scaled_dot_product_attention(q, q, q).sum().item()
    if name == "fresh_load":
        code = (
            "import sys; sys.argv=['x']; from pathlib import Path; "
            "import benchmarks.diagnostics.aoti_load_crash as d; "
            f"d._load_and_run(Path({str(built.path)!r}), {precision!r}, 'fresh_load(child)')"
        )
        result = subprocess.run([sys.executable, "-X", "faulthandler", "-c", code], check=False)
        print(name, "child exit", result.returncode, flush=True)
        sys.exit(result.returncode)
    if name == "manual_runner":
        _manual_runner(built.path)
        return
    if name == "no_metadata":
        compiled = torch._inductor.aoti_load_package(str(built.path), device_index=0)
        ids, mask = _example()
        print(name, "loaded and ran OK:", compiled(ids.cuda(), mask.cuda()).shape, flush=True)
        return
    _load_and_run(built.path, precision, name)


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
            keep = [line for line in lines if 'File "/' in line or "Fatal" in line or "Error" in line]
            print("\n".join(keep[:10]))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--variant":
        variant(sys.argv[2])
    else:
        main()
