"""Inductor options for AOTInductor builds, per device, each with the reason it is (or is not) set.

CUDA (the engines that matter; nothing here was measurable on the CPU-only development machine):

* ``max_autotune`` (from ``BuildOptions.max_autotune``): benchmark Triton GEMM templates against cuBLAS
  at the export hint (the opt batch) and keep the faster per GEMM; it also lets Inductor fuse
  elementwise epilogues (bias, GELU, residual add, casts) into a Triton GEMM when that wins. Costs build
  time (a few minutes for ESM-2 3B, whose 36 layers share four GEMM shapes), not run time.
* ``coordinate_descent_tuning``: after the heuristic block sizes, tune each fused pointwise/reduction
  kernel (fp32 LayerNorm with casts, rotary, GELU, fp8 quantisation). Those kernels are where
  torch.compile beats eager bf16, so their quality is worth build time.
* not ``freezing``: it would constant-fold weight transposes/casts, which cuBLAS does for free, and it
  makes Inductor hold folded copies of 6 GB of weights during the build; fp8 weights are quantised
  eagerly instead (:mod:`inductor_fp8`).
* ``aot_inductor.package_constants_in_so=False`` (both devices): the package holds code only and the
  build writes the weights beside it (:mod:`~virnucpro_trt.engines.package_weights`: why, and how they
  are checked). ``extra`` may set it True again (weights inside the library, as before recipe 9).
* not ``triton.cudagraphs``: a torch.compile runtime feature, not available to AOTInductor packages; at
  ~32k tokens per batch the kernel launches are a negligible part of a batch.

CPU (tests, small machines): defaults. ``freezing`` (constant-folding plus mkldnn weight prepacking)
made no measurable difference on the tiny models, so it is left off; the CPP GEMM autotuner is slow to
build and not worth it for test engines.

``BuildOptions.extra["inductor_configs"]`` is merged last, so the lead can try other settings (e.g.
``{"max_autotune_gemm_search_space": "EXHAUSTIVE"}`` or ``{"freezing": True}``) without code changes.
"""

from __future__ import annotations

from typing import Any

import torch

from virnucpro_trt.engines.spec import BuildOptions


def inductor_configs(device: torch.device, options: BuildOptions, metadata: dict[str, str]) -> dict[str, Any]:
    """The ``inductor_configs`` for ``aoti_compile_and_package``; ``metadata`` is stored in the package."""
    configs: dict[str, Any] = {"aot_inductor.package_constants_in_so": False}
    if device.type == "cuda":
        configs["max_autotune"] = bool(options.max_autotune)
        configs["coordinate_descent_tuning"] = True
    configs.update(options.extra.get("inductor_configs", {}))
    configs["aot_inductor.metadata"] = {**configs.get("aot_inductor.metadata", {}), **metadata}
    return configs
