"""On a CUDA GPU (the H200 host): the compile peer through torchao at fp8, and the profile script on real
CUDA kernels, both on the tiny models (a few minutes), before the full-size runs spend device time.

torchao must be staged on the host first (benchmarks/stage_torchao.sh): compile-fp8 is the peer's point.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from tests.bench.test_benchmark_scripts import _script
from tests.cli.helpers import run_cli

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the H200 host)"),
]


def _torchao_staged() -> None:
    assert importlib.util.find_spec("torchao") is not None, (
        "torchao is not importable: bash benchmarks/stage_torchao.sh here, `install` on the host"
    )


def test_compile_rows_at_bf16_and_fp8_run_on_the_gpu(tmp_path: Path) -> None:
    _torchao_staged()
    out = tmp_path / "peer.json"
    result = run_cli(
        "bench", "--random-weights", "tiny", "--device", "cuda", "--reads", "200", "--repeats", "1",
        "--backends", "torch,compile", "--precision", "bf16,fp8", "--reference-frames", "60",
        "--workdir", str(tmp_path / "work"), "--json", str(out),
    )  # fmt: skip
    assert result.code == 0, result.stderr
    rows = {r["config"]: r for r in json.loads(out.read_text())["results"]}
    for name in ("compile-bf16", "compile-fp8"):
        assert rows[name]["status"] == "ok", rows[name]["reason"]
        assert rows[name]["parity"]["passed"], rows[name]["parity"]
    facts = rows["compile-fp8"]["compile"]
    assert facts["quantization"].startswith("torchao") and facts["torchao"] and facts["graphs"] >= 1
    assert rows["compile-fp8"]["speedup_vs_compile"] == 1.0
    assert rows["torch-bf16"]["compile_baseline"] == "compile-bf16"


def test_profile_script_classifies_real_cuda_kernels(tmp_path: Path) -> None:
    _torchao_staged()
    out = tmp_path / "profile.json"
    code = _script("profile_esm2").main(
        [
            "--tiny", "--device", "cuda", "--precisions", "bf16,fp8", "--variants",
            "engine,compile,fp8-linears", "--build", "--workdir", str(tmp_path / "work"), "--json", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    assert report["environment"]["gpu"] and report["environment"]["driver"]
    rows = {f"{r['variant']}-{r['precision']}": r for r in report["variants"]}
    for name in ("engine-bf16", "compile-bf16", "engine-fp8", "compile-fp8", "fp8-linears-fp8"):
        row = rows[name]
        assert row["status"] == "ok", (name, row["reason"])
        assert row["classes"]["GEMM"]["ms"] > 0 and row["classes"]["attention"]["ms"] > 0, name
        assert row["gemm_shapes"], (name, row["shape_source"], row["top_kernels"][:10])
        assert all(g["tflops"] > 0 and g["peak_tflops"] for g in row["gemm_shapes"]), name
    assert rows["engine-bf16"]["shape_source"].startswith("layer order")
    assert rows["compile-bf16"]["shape_source"].startswith("profiler operators")
    for name in ("engine-fp8", "compile-fp8", "fp8-linears-fp8"):
        assert rows[name]["classes"]["quantisation"]["ms"] > 0, (name, rows[name]["class_sets_ms"])
    kinds = {p["kind"] for p in report["peaks"]["measured"]}
    assert {"bf16", "fp8", "fp8-fast-accum"} <= kinds
