"""``benchmarks/*.py`` still run on the shared bench code and still write their committed format."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

from tests.engines.test_inductor_parts import needs_cpu_fp8
from virnucpro_trt.engines.fp8_quantize import scale_rows_to_e4m3
from virnucpro_trt.engines.inductor_fp8 import Fp8Esm2Layer, convert_to_fp8
from virnucpro_trt.engines.inductor_model import device_copy
from virnucpro_trt.models.esm2 import RotaryEmbedding
from virnucpro_trt.models.random_checkpoints import random_esm2

ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")
RESULTS = ROOT / "benchmarks" / "results"


def _script(name: str) -> ModuleType:
    module_name = "bench_script_" + name.replace("/", "_")
    spec = importlib.util.spec_from_file_location(module_name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # as an import would: dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def _committed(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def test_engines_throughput_tiny_eager(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "engines.json"
    scratch = _scratch_temp(tmp_path, monkeypatch)  # its work folder goes when it ends (it stayed)
    code = _script("engines_throughput").main(
        [
            "--models", "dnabert-s", "--configs", "eager-fp32,eager-bf16", "--size", "tiny", "--items", "24",
            "--fp32-items", "16", "--parity-items", "8", "--repeats", "1", "--device", "cpu",
            "--max-batch-tokens", "2048", "--json", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    committed = _committed("h200_engines_dnabert.json")
    assert set(report) == set(committed)
    cpu_keys = {k for k in committed["environment"] if k not in ("gpu", "compute_capability", "driver")}
    assert set(report["environment"]) == cpu_keys
    rows = {r["config"]: r for r in report["results"]}
    committed_row = next(r for r in committed["results"] if r["config"] == "eager-bf16")
    assert set(rows["eager-bf16"]) == set(committed_row) | {"batching"}  # newer than that file
    batching = rows["eager-bf16"]["batching"]
    assert batching["padding_cap"] is None and batching["items"] == 24
    assert rows["eager-fp32"]["items_timed"] == 16 and rows["eager-bf16"]["items_timed"] == 24
    assert rows["eager-fp32"]["parity"]["passed_gate"] and rows["eager-bf16"]["parity"]["min_cosine"] > 0.999
    assert "eager-bf16" in capsys.readouterr().out
    assert _work_folders_left(scratch) == []


def test_engines_throughput_times_each_batching_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Items batched in predict-like groups, once with the plain budget and once with a padding cap: the
    cap pads less, in more batches, and both give the reference's embeddings."""
    out = tmp_path / "engines.json"
    code = _script("engines_throughput").main(
        [
            "--models", "esm2", "--configs", "eager-fp32", "--size", "tiny", "--items", "120",
            "--fp32-items", "120", "--parity-items", "120", "--repeats", "1", "--device", "cpu",
            "--max-batch-tokens", "4096", "--length-mix", "mixed", "--group-items", "60",
            "--padding-caps", "none,0.05:256", "--json", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    plain, capped = json.loads(out.read_text())["results"]
    assert plain["batching"]["padding_cap"] is None
    assert capped["batching"]["padding_cap"] == {"max_share": 0.05, "floor_tokens": 256}
    assert plain["batching"]["group_items"] == capped["batching"]["group_items"] == 60
    assert plain["batching"]["items"] == capped["batching"]["items"] == 120  # one pass's batches
    assert capped["batching"]["padded_fraction"] < plain["batching"]["padded_fraction"]
    assert capped["batching"]["batches"] > plain["batching"]["batches"] >= 2  # two groups at least
    assert plain["parity"]["min_cosine"] > 0.99999 and capped["parity"]["min_cosine"] > 0.99999
    printed = capsys.readouterr().out
    assert "cap 0.05/256" in printed and "budget" in printed
    with pytest.raises(SystemExit):
        _script("engines_throughput").main(["--padding-caps", "none,2"])


def test_engines_throughput_takes_build_extras_as_json() -> None:
    script = _script("engines_throughput")
    assert script.build_setting("sequence_multiple=1") == ("sequence_multiple", 1)
    assert script.build_setting('inductor_configs={"assume_32bit_indexing": true}') == (
        "inductor_configs", {"assume_32bit_indexing": True},
    )  # fmt: skip
    for bad in ("sequence_multiple", "=1", "x=notjson"):
        with pytest.raises(argparse.ArgumentTypeError):
            script.build_setting(bad)


def _scratch_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh temporary folder for this process's ``tempfile``: where a script without --workdir works."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    return scratch


def _work_folders_left(scratch: Path) -> list[str]:
    prefixes = ("vt-engines-", "vt-bench-", "vt-scaling-")  # the three scripts' work folders
    return [p.name for p in scratch.iterdir() if p.name.startswith(prefixes)]


def test_predict_full_size_tiny(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs ``predict`` in a subprocess, as a user would: the slowest test of this folder (~10 s). Without
    --workdir: its work folder goes when it ends (it stayed)."""
    out = tmp_path / "predict.json"
    scratch = _scratch_temp(tmp_path, monkeypatch)
    code = _script("predict_full_size").main(
        ["--size", "tiny", "--reads", "40", "--device", "cpu", "--precision", "fp32", "--json", str(out)]
    )
    assert code == 0
    assert _work_folders_left(scratch) == []
    report = json.loads(out.read_text())
    committed = _committed("h200_predict_full_size_torch.json")
    assert set(report) == set(committed)
    # the committed file predates the backend/engines fields: every field it has is still written
    assert set(committed["results"][0]) <= set(report["results"][0])
    assert report["results"][0]["reads"] == 40 and report["results"][0]["frames"] > 0
    assert report["workload"]["models"].startswith("random weights, tiny")
    assert "wrote tiny-size random checkpoints" in capsys.readouterr().out


def test_runtime_scaling_tiny_cpu_workers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scaling benchmark end to end on CPU workers (the H200 runs use --gpus): two predict runs
    through the CLI, the encoders alone, and the ratios the issue's goals are judged by. Without
    --workdir: its work folder goes when it ends (it stayed)."""
    out = tmp_path / "scaling.json"
    scratch = _scratch_temp(tmp_path, monkeypatch)
    code = _script("runtime_scaling").main(
        [
            "--models", "tiny", "--device", "cpu", "--backend", "torch", "--precision", "fp32",
            "--reads", "120", "--workers", "1", "--workers", "2", "--max-batch-tokens", "2048",
            "--shard-records", "32", "--json", str(out), "--length-mix", "mixed",
        ]
    )  # fmt: skip
    assert code == 0
    assert _work_folders_left(scratch) == []
    report = json.loads(out.read_text())
    assert report["workload"]["length_mix"] == "mixed" and report["workload"]["read_length"] != 500
    one, two = report["predict"]
    assert (one["gpus"], one["workers"], two["gpus"], two["workers"]) == ("cpu x1", 1, "cpu x2", 2)
    assert one["frames"] == two["frames"] == report["esm_engine_alone"]["frames"] > 0
    assert report["dnabert_engine_alone"]["frames"] == one["frames"]
    assert one["shards"] == two["shards"] == 4  # 120 reads / 32 per shard
    for row in (one, two):
        assert 0 < row["steady_s"] < row["workers_s"]
        assert row["frames_per_s_steady"] == pytest.approx(row["frames"] / row["steady_s"], rel=0.01)
        assert row["frames_per_s_shard_work"] > 0 and row["shard_work_vs_esm_alone"] > 0
        assert set(row["stage_s"]) == {"embed_dnabert", "embed_esm", "classify"}
    assert one["speedup_vs_1_gpu_total"] == 1.0
    assert two["speedup_vs_1_gpu_steady"] == pytest.approx(
        two["frames_per_s_steady"] / one["frames_per_s_steady"], abs=0.01
    )
    assert report["workload"]["models"] == "random weights, test sizes"
    assert "encoders alone" in capsys.readouterr().out


def test_runtime_scaling_split_over_calls(tmp_path: Path) -> None:
    """One call per worker count, encoders alone skipped, the second call's speedups against the first
    call's 1-worker row (what a capped device session does for large inputs); a baseline of another
    input size is refused."""
    script = _script("runtime_scaling")
    common = [
        "--models", "tiny", "--device", "cpu", "--backend", "torch", "--precision", "fp32", "--reads", "64",
        "--max-batch-tokens", "2048", "--shard-records", "32", "--workdir", str(tmp_path / "work"),
        "--skip-alone",
    ]  # fmt: skip
    one_json, two_json = tmp_path / "one.json", tmp_path / "two.json"
    assert script.main([*common, "--workers", "1", "--json", str(one_json)]) == 0
    assert script.main([*common, "--workers", "2", "--baseline", str(one_json), "--json", str(two_json)]) == 0
    one, two = json.loads(one_json.read_text()), json.loads(two_json.read_text())
    assert one["esm_engine_alone"] is None and "steady_vs_esm_alone" not in one["predict"][0]
    (row,) = two["predict"]
    assert row["workers"] == 2 and two["baseline"] == str(one_json)
    base = one["predict"][0]
    assert row["speedup_vs_1_gpu_steady"] == pytest.approx(
        row["frames_per_s_steady"] / base["frames_per_s_steady"], abs=0.01
    )
    assert row["speedup_vs_1_gpu_total"] == pytest.approx(
        row["frames_per_s_total"] / base["frames_per_s_total"], abs=0.01
    )
    wrong = [a if a != "64" else "96" for a in common]
    with pytest.raises(SystemExit, match="measured 64 reads, not 96"):
        script.main([*wrong, "--workers", "2", "--baseline", str(one_json)])


def test_profile_esm2_tiny_on_cpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The profile script end to end on the CPU: eager, torch.compile and an AOTInductor engine built by
    the real build code, CPU operator events classified, GEMM shapes with achieved and peak TFLOP/s,
    fp8 rows unavailable with their reason, one JSON with the environment."""
    out = tmp_path / "profile.json"
    code = _script("profile_esm2").main(
        [
            "--tiny", "--precisions", "fp32,fp8", "--variants", "eager,compile,engine,fp8-linears",
            "--build", "--workdir", str(tmp_path / "work"), "--tokens", "40", "--max-batch-tokens", "512",
            "--warmup", "1", "--forwards", "1", "--profiled", "1", "--json", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    assert {"torch", "cpu_count", "torchao"} <= set(report["environment"])
    assert report["workload"]["batch"] == [512 // 40, 40]  # the project's batcher at this budget
    classes = [c["class"] for c in report["kernel_classes"]]
    assert classes == ["attention", "GEMM", "quantisation", "normalisation", "activation",
                       "elementwise+copies", "other"]  # fmt: skip
    rows = {f"{r['variant']}-{r['precision']}": r for r in report["variants"]}
    assert list(rows) == [
        "eager-fp32", "compile-fp32", "engine-fp32", "fp8-linears-fp32",
        "eager-fp8", "compile-fp8", "engine-fp8", "fp8-linears-fp8",
    ]  # fmt: skip
    tokens = 12 * 40
    for name in ("eager-fp32", "compile-fp32"):
        row = rows[name]
        assert row["status"] == "ok" and row["forward_ms"] > 0 and row["proteins_per_s"] > 0
        assert sum(c["ms"] for c in row["classes"].values()) == pytest.approx(row["kernel_ms"], abs=1e-3)
        assert row["classes"]["GEMM"]["ms"] > 0 and row["classes"]["attention"]["ms"] > 0
        assert row["shape_source"] == "profiler operators (input shapes)"
        shapes = {g["linear"]: g for g in row["gemm_shapes"]}
        assert set(shapes) == {"qkv", "out_proj", "fc1", "fc2"}
        assert (shapes["fc1"]["m"], shapes["fc1"]["n"], shapes["fc1"]["k"]) == (tokens, 256, 64)
        assert all(g["tflops"] > 0 and g["peak_tflops"] > 0 and g["calls"] == 2 for g in shapes.values())
    assert rows["compile-fp32"]["facts"]["mode"] == "default" and rows["compile-fp32"]["facts"]["graphs"] >= 1
    engine = rows["engine-fp32"]
    assert engine["status"] == "ok" and engine["facts"]["source"] == "built"
    assert engine["facts"]["backend"] == "inductor" and engine["facts"]["build_parity"]["passed"]
    assert rows["fp8-linears-fp32"]["status"] == "unavailable"
    for name in ("eager-fp8", "compile-fp8", "fp8-linears-fp8", "engine-fp8"):
        assert rows[name]["status"] == "unavailable" and "compute capability" in rows[name]["reason"]
    peaks = {(p["kind"], p["m"], p["n"], p["k"]): p["tflops"] for p in report["peaks"]["measured"]}
    assert peaks[("fp32", tokens, 256, 64)] > 0
    printed = capsys.readouterr().out
    assert "eager-fp32" in printed and "TFLOP/s" in printed


def test_esm2_variants_names_known_precisions() -> None:
    variants = _script("diagnostics/esm2_variants")
    precisions = {variant.precision for variant in variants.VARIANTS.values()}
    assert precisions <= {"bf16", "fp8", "fp8-fused", "torchao-fp8"}
    assert variants.VARIANTS["fp8-fused-lnbf16"].layernorm_bf16
    assert not variants.VARIANTS["fp8-fused"].layernorm_bf16


def _bf16_and_variant(name: str, seed: int) -> tuple[ModuleType, nn.Module, nn.Module]:
    """esm2_variants, its ``bf16`` model and its ``name`` model of one tiny random ESM-2, on the CPU."""
    variants = _script("diagnostics/esm2_variants")
    reference = random_esm2(seed=seed)
    plain = variants.build_variant(reference, variants.VARIANTS["bf16"], CPU, False, 4096)
    return variants, plain, variants.build_variant(reference, variants.VARIANTS[name], CPU, False, 4096)


def test_esm2_variants_kernel_layers_hand_attention_to_the_engines_kernel() -> None:
    """``bf16-kernel`` / ``fp8-fused-fold-kernel`` give the model the engines' own attention kernel
    (off CUDA it runs the SDPA path, so the embeddings are the ``bf16`` variant's)."""
    from virnucpro_trt.engines.rotary_attention import rotary_attention

    variants, plain, kernel = _bf16_and_variant("bf16-kernel", seed=5)
    assert (plain.attention_kernel, kernel.attention_kernel) == (None, rotary_attention)
    assert variants.VARIANTS["fp8-fused-fold-kernel"].attention_kernel
    ids, mask = torch.randint(4, 24, (3, 17)), torch.ones(3, 17, dtype=torch.bool)
    mask[1, 9:] = False
    with torch.no_grad():
        torch.testing.assert_close(kernel(ids, mask), plain(ids, mask))


def test_attention_kernels_times_the_model_attention_against_its_own_reference(tmp_path: Path) -> None:
    """The ``rotary-*`` kernels take the fused projection and compare with the model's attention in fp32;
    a launch spec is parsed, and off CUDA the kernel row says why instead of failing the run."""
    attention = _script("diagnostics/attention_kernels")
    assert attention.preparer("rotary-triton:128x32x4x1") is not None
    assert attention.preparer("rotary-nonsense") is None
    out = tmp_path / "attention.json"
    kernels = "default-mask,rotary-efficient,rotary-triton:32x32x4x1"
    code = attention.main(["--device", "cpu", "--reads", "40", "--mixes", "illumina", "--kernels", kernels,
                           "--warmup", "1", "--iters", "1", "--json", str(out)])  # fmt: skip
    assert code == 0
    rows = {r["kernel"]: r for r in json.loads(out.read_text())["results"][0]["kernels"]}
    assert rows["rotary-efficient"]["status"] == "ok" and rows["rotary-efficient"]["max_abs_vs_math"] < 0.05
    assert rows["default-mask"]["status"] == "ok"
    triton_row = rows["rotary-triton:32x32x4x1"]  # the kernel is CUDA-only, with or without triton here
    assert triton_row["status"] == "unavailable" and "CUDA" in triton_row["reason"]


def test_esm2_variants_on_padded_batches_of_a_length_mix(tmp_path: Path) -> None:
    """``--length-mix mixed`` times the variants on padded batches and records the mix; each variant is
    compared with fp32 on those batches."""
    out = tmp_path / "variants.json"
    code = _script("diagnostics/esm2_variants").main(
        [
            "--variants", "bf16,bf16-kernel", "--tiny", "--no-compile", "--device", "cpu", "--items", "48",
            "--parity-items", "24", "--repeats", "1", "--length-mix", "mixed", "--json", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    assert report["workload"]["length_mix"] == "mixed" and report["workload"]["proteins"] == 48
    rows = {r["variant"]: r for r in report["results"]}
    assert rows["bf16-kernel"]["attention_kernel"] and not rows["bf16"]["attention_kernel"]
    for row in rows.values():
        assert row["status"] == "ok" and row["parity"]["passed"] and row["parity"]["min_cosine"] > 0.9995


def test_esm2_variants_row_launch_specs_and_the_engines_read_only_table() -> None:
    """``--row-launch layernorm=512,2`` is the LayerNorm kernel at chunk 512 with 2 warps (the GELU
    kernel keeps its erf unless a third number says otherwise); the engines' table cannot be changed
    in place (a variant's launches are put in effect while it is traced)."""
    from virnucpro_trt.engines import fp8_quantize as fq

    variants = _script("diagnostics/esm2_variants")
    mode, launch = variants.parse_row_launch("layernorm=512,2")
    assert (mode, launch) == (fq.LAYERNORM, fq.RowLaunch(512, 2))
    gelu = variants.parse_row_launch("bias_gelu=1024,8")[1]
    assert gelu == fq.RowLaunch(1024, 8, erf=fq.ROW_LAUNCH[fq.BIAS_GELU].erf)
    resident = variants.parse_row_launch("bias_gelu=resident,16")[1]
    assert resident == fq.RowLaunch(0, 16, erf=fq.ROW_LAUNCH[fq.BIAS_GELU].erf, resident=True)
    assert variants.parse_row_launch("bias_gelu=2048,4,2")[1] == fq.RowLaunch(2048, 4, erf=fq.GELU_TANH)
    bad_specs = ("layernorm=512", "gelu=512,4", "layernorm=a,b", "identity=512,4,4,1", "identity=resident")
    for bad in (*bad_specs, "bias_gelu=2048,4,3"):
        with pytest.raises(argparse.ArgumentTypeError, match="MODE=CHUNK,WARPS"):
            variants.parse_row_launch(bad)
    with pytest.raises(TypeError):  # the engines' launches are a read-only table (overrides:
        fq.ROW_LAUNCH[fq.LAYERNORM] = launch  # type: ignore[index]  # fp8_quantize.launches_in_effect)
    with pytest.raises(SystemExit):  # the launch variant without a launch to try
        variants.main(["--variants", "fp8-fused-fold-launch", "--tiny", "--device", "cpu"])


@needs_cpu_fp8
def test_esm2_variants_bf16_layernorm_candidate_quantises_the_norms_output() -> None:
    """The script's fp8 variants run on a GPU only; what its candidate layer computes is checked here."""
    variants = _script("diagnostics/esm2_variants")
    fused = device_copy(random_esm2(seed=5), CPU, torch.bfloat16)
    candidate = device_copy(random_esm2(seed=5), CPU, torch.bfloat16)
    convert_to_fp8(fused, fast_accum=False)
    convert_to_fp8(candidate, fast_accum=False)
    for layer in candidate.layers:
        layer.__class__ = variants.Bf16LayerNormFp8Layer
    layer = candidate.layers[0]
    assert isinstance(layer, Fp8Esm2Layer)
    x = torch.randn(2, 9, layer.qkv.weight.shape[1]) * 3
    norm = layer.self_attn_layer_norm
    q, scale = layer._normalised(x, norm)
    rounded = norm(x)
    assert rounded.dtype == torch.bfloat16  # the module's own output, rounded before quantising
    want_q, want_scale = scale_rows_to_e4m3(rounded.reshape(-1, x.shape[-1]).float())
    assert torch.equal(q.float(), want_q.float()) and torch.equal(scale, want_scale)

    ids, mask = torch.randint(4, 24, (3, 30)), torch.ones(3, 30, dtype=torch.bool)
    mask[1, 20:] = False
    with torch.no_grad():
        a, b = fused(ids, mask), candidate(ids, mask)
    assert nn.functional.cosine_similarity(a.float(), b.float()).min() > 0.999
    assert not torch.equal(a, b)  # the rounding before quantising is a different computation


def test_esm2_variants_gelu_variant_sets_every_layers_epilogue() -> None:
    """``bf16-kernel-gelu`` turns on every layer's GELU epilogue (the other variants leave it off); on the
    CPU ``_addmm_activation`` is addmm then the exact GELU, so the embeddings are the ``bf16`` variant's
    up to bf16 rounding of one fused op."""
    _, plain, gelu = _bf16_and_variant("bf16-kernel-gelu", seed=6)
    assert all(layer.gelu_epilogue for layer in gelu.layers)
    assert not any(layer.gelu_epilogue for layer in plain.layers)
    ids, mask = torch.randint(4, 24, (3, 17)), torch.ones(3, 17, dtype=torch.bool)
    mask[2, 5:] = False
    with torch.no_grad():
        a, b = gelu(ids, mask), plain(ids, mask)
    assert torch.nn.functional.cosine_similarity(a, b, dim=-1).min() > 0.9999


def test_residual_stream_parity_tiny(tmp_path: Path) -> None:
    """Both residual streams on every mix asked for, judged by the bf16 rule, in the committed format."""
    script = _script("diagnostics/residual_stream_parity")
    out = tmp_path / "residual.json"
    assert script.main(["--tiny", "--mixes", "illumina:6,fixed:3", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report) == set(_committed("cpu_residual_stream_parity_esm2_3b_outliers.json"))
    rows = {(r["length_mix"], r["residual_fp32"]): r for r in report["results"]}
    assert set(rows) == {(m, f) for m in ("illumina", "fixed") for f in (True, False)}
    assert rows["fixed", True]["mean_tokens"] == 168.0 and rows["illumina", True]["proteins"] == 6
    for row in rows.values():
        assert 0.99 < row["min_cosine"] <= 1.0 and row["passed"] == (row["min_cosine"] >= 0.9995)
    assert len(report["model"]["outlier_channels"]["channels"]) == 2  # the tiny model's width: 2
    with pytest.raises(argparse.ArgumentTypeError):
        script.parse_mixes("illumina:0")
    with pytest.raises(argparse.ArgumentTypeError):
        script.parse_mixes("long:5")


def test_padding_by_mix_counts_the_engine_rounding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The padded fraction per encoder, length mix and run size: nothing for ESM-2 on 500 bp reads (168
    tokens each), rounding lengths up to the engine's multiple never pads less than the batcher alone,
    and a larger run of the same mix pads no more than a smaller one (its batches span fewer lengths).
    predict's shards: the default rule with its floor scaled down to 256 reads (the real 4,096 would
    make these inputs one shard each)."""
    import virnucpro_trt.runtime.shards as shards_module

    monkeypatch.setattr(shards_module, "MIN_SHARD_RECORDS", 256)
    out = tmp_path / "padding.json"
    code = _script("diagnostics/padding_by_mix").main(
        [
            "--reads", "300,1200", "--mixes", "fixed,mixed", "--multiples", "1,8",
            "--padding-caps", "0.05:1024", "--json", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    assert set(report) == set(_committed("cpu_padding_by_mix.json"))
    rows = {(r["encoder"], r["length_mix"], r["reads"]): r for r in report["results"]}
    encoders, mixes = ("dnabert-s", "esm2"), ("fixed", "mixed")
    assert set(rows) == {(e, m, n) for e in encoders for m in mixes for n in (300, 1200)}
    assert [p["padded_fraction"] for p in rows["esm2", "fixed", 300]["by_multiple"]] == [0.0, 0.0]
    assert rows["esm2", "fixed", 300]["mean_tokens"] == 168.0
    for (encoder, mix, _), row in rows.items():
        alone, rounded = (p["padded_fraction"] for p in row["by_multiple"])
        assert 0 <= alone <= rounded and all(p["batches"] >= 1 for p in row["by_multiple"])
        if mix == "mixed":  # varied lengths: rounding each batch's length up to 8 pads more
            assert alone < rounded
        assert row["mean_tokens"] > 2
        assert rows[encoder, mix, 1200]["frames"] > rows[encoder, mix, 300]["frames"]
    assert rows["esm2", "mixed", 300]["mean_tokens"] < rows["esm2", "fixed", 300]["mean_tokens"]
    small, large = (rows["esm2", "mixed", n]["by_multiple"][0]["padded_fraction"] for n in (300, 1200))
    assert 0 < large < small
    for (_, _, reads), row in rows.items():  # predict's (scaled) default shards of 256 reads, one by one
        whole, sharded = row["by_multiple"][0], row["predict_by_multiple"][0]
        assert row["predict_shard_records"] == 256 and row["predict_shards"] == -(-reads // 256)
        assert sharded["tokens"] == whole["tokens"] and sharded["batches"] >= whole["batches"]
    mixed = rows["esm2", "mixed", 1200]
    assert mixed["predict_by_multiple"][0]["padded_fraction"] > mixed["by_multiple"][0]["padded_fraction"]
    (capped,) = mixed["predict_by_cap"]  # the cap's batches of the same shards pad less, in more batches
    plain = mixed["predict_by_multiple"][0]
    assert (capped["max_share"], capped["floor_tokens"]) == (0.05, 1024)
    assert capped["tokens"] == plain["tokens"]
    assert capped["padded_fraction"] < plain["padded_fraction"] and capped["batches"] > plain["batches"]
    with pytest.raises(SystemExit):
        _script("diagnostics/padding_by_mix").main(["--padding-caps", "0.05:x"])
    with pytest.raises(SystemExit):
        _script("diagnostics/padding_by_mix").main(["--encoders", "esm3"])


def test_attention_kernels_times_candidates_on_the_runs_batches(tmp_path: Path) -> None:
    """Each kernel is checked against the math kernel on the real positions; the unmasked lower bound gets
    no parity figure where the batch has padding; a kernel this torch or device lacks is reported."""
    out = tmp_path / "attention.json"
    code = _script("diagnostics/attention_kernels").main(
        [
            "--device", "cpu", "--reads", "120", "--heads", "2", "--warmup", "0", "--iters", "1",
            "--mixes", "illumina",
            "--kernels", "default-mask,flash-dense,flex-mask,flex-score,efficient-mask",
            "--json", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    (entry,) = json.loads(out.read_text())["results"]
    assert entry["length_mix"] == "illumina" and entry["longest"] <= 52 and entry["batch"] >= 1
    rows = {r["kernel"]: r for r in entry["kernels"]}
    for name in ("default-mask", "flex-mask", "flex-score"):
        assert rows[name]["status"] == "ok" and rows[name]["max_abs_vs_math"] < 0.02 and rows[name]["ms"] > 0
    padded = entry["shortest"] < entry["longest"]
    assert (rows["flash-dense"]["max_abs_vs_math"] is None) == padded
    assert rows["efficient-mask"]["status"] == "unavailable" and rows["efficient-mask"]["reason"]


def test_esm2_variants_engine_shapes_compile_one_dynamic_graph_for_every_batch() -> None:
    """``engine_shapes`` variants compile the layers once, for bounded dynamic batch and length (the
    engines' kernels); the others compile the first shape statically, then again dynamically."""
    from torch._dynamo.utils import counters

    variants = _script("diagnostics/esm2_variants")
    reference = random_esm2(seed=3)
    graphs = {}
    for name in ("bf16", "bf16-dynamic-i32"):
        torch._dynamo.reset()
        counters.clear()
        model = variants.build_variant(reference, variants.VARIANTS[name], CPU, True, 4096)
        assert all(isinstance(layer, variants.EngineShapes) for layer in model.layers) == (name != "bf16")
        with torch.no_grad(), torch._inductor.config.patch(dict(variants.VARIANTS[name].inductor)):
            outputs = [
                model(torch.randint(4, 24, (batch, length)), torch.ones(batch, length, dtype=torch.bool))
                for batch, length in ((3, 17), (5, 25), (4, 33))
            ]
        assert [tuple(out.shape) for out in outputs] == [(3, 64), (5, 64), (4, 64)]
        graphs[name] = counters["stats"]["unique_graphs"]
    torch._dynamo.reset()
    assert graphs == {"bf16": 2, "bf16-dynamic-i32": 1}


def test_dynamic_shapes_times_every_case_of_both_ops(tmp_path: Path) -> None:
    """Every (op, case) compiles and runs; the rotary cases compute the same rotation whether the tables
    are built in the graph or passed in, and the checked add is the plain add."""
    script = _script("diagnostics/dynamic_shapes")
    rotary_embedding = RotaryEmbedding(8)
    q, k = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 5, 8)
    cos, sin = rotary_embedding.tables(5, CPU)
    inline, given = script.rotary(True, rotary_embedding), script.rotary(False, rotary_embedding)
    assert torch.equal(inline(q, k), given(q, k, cos, sin))
    x, delta = torch.randn(2, 5, 8), torch.randn(2, 5, 8).bfloat16()
    assert torch.equal(script.residual_add(10)(x, delta), script.residual_add(None)(x, delta))
    with pytest.raises(RuntimeError):
        script.residual_add(9)(x, delta)  # the batcher's promise, checked
    out = tmp_path / "dynamic.json"
    code = script.main(
        [
            "--device",
            "cpu",
            "--batch",
            "3",
            "--length",
            "12",
            "--iters",
            "1",
            "--modes",
            "jit",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    rows = json.loads(out.read_text())["results"]
    cases = {(r["op"], r["case"]) for r in rows}
    assert cases == {("residual_add", c) for c in script.CASES} | {
        (op, c) for op in script.ROTARY for c in ("static", "dynamic", "dynamic-i32")
    }
    assert all(r["ms"] > 0 and r["int64_indexing"] is None for r in rows)  # CPU: not judged


def test_row_kernels_grid_reasons_and_comparison(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every case's launches, the engines' first; without CUDA each is reported with the reason; with a
    kernel standing in (the torch reference here), each launch is timed, checked against the reference
    and set against the copy bound, and the fastest is marked once per case."""
    from virnucpro_trt.engines import fp8_quantize as fq

    script = _script("diagnostics/row_kernels")
    out = tmp_path / "rows.json"
    assert script.main(["--device", "cpu", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert {r["case"] for r in rows} == {c.name for c in script.CASES}
    assert all(r["status"] == "unavailable" and r["reason"] for r in rows)
    only = tmp_path / "only.json"
    assert script.main(["--device", "cpu", "--cases", "identity,layernorm", "--json", str(only)]) == 0
    picked = [r["case"] for r in json.loads(only.read_text())["results"]]
    assert picked[0] == "identity" and picked[-1] == "layernorm" and set(picked) == {"identity", "layernorm"}
    with pytest.raises(SystemExit):
        script.main(["--device", "cpu", "--cases", "gelu"])
    gelu = [r for r in rows if r["case"] == "bias_gelu"]
    assert (gelu[0]["chunk"], gelu[0]["num_warps"], gelu[0]["erf"]) == (2048, 4, fq.GELU_TANH)
    assert {r["erf"] for r in gelu} == {fq.ERF_LIBDEVICE, fq.ERF_POLYNOMIAL, fq.GELU_TANH}
    assert {r["erf"] for r in gelu if r["resident"]} == {fq.ERF_POLYNOMIAL, fq.GELU_TANH}
    assert {r["erf"] for r in rows if r["case"] != "bias_gelu"} == {fq.ERF_LIBDEVICE}
    assert gelu[0]["bytes"] == 32760 * (10240 * 3 + 4)
    added = next(r for r in rows if r["case"] == "add_layernorm")
    assert added["bytes"] == 32760 * (2560 * (4 + 1 + 2 + 4) + 4)

    monkeypatch.setattr(script, "unavailable_reason", lambda device: None)
    monkeypatch.setattr(script, "kernel_call", lambda case, t, launch: lambda: script.reference(case, t))
    case = next(c for c in script.CASES if c.name == "add_layernorm")
    measured = script.measure(case, argparse.Namespace(rows=16, warmup=0, iters=2), CPU)
    assert [r["status"] for r in measured] == ["ok"] * len(script.launches(case))
    assert all(r["codes_differ"] == 0 and r["max_diff_in_scales"] == 0 and r["ms"] > 0 for r in measured)
    assert measured[0]["default"] and not any(r["default"] for r in measured[1:])
    assert sum(bool(r.get("fastest")) for r in measured) == 1


def test_gpu_targets_script_runs_only_options_the_tools_have(tmp_path: Path) -> None:
    """``benchmarks/gpu_targets.sh`` (the issue's targets on one GPU, step by step) prints its commands
    under DRY_RUN=1; every option it passes must be one its tool lists in ``--help``, so the script cannot
    drift from the scripts and CLI it drives. An unknown step is a usage error."""
    import os
    import re
    import subprocess

    def run(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(args), capture_output=True, text=True, **kwargs)

    script = ROOT / "benchmarks" / "gpu_targets.sh"
    env = {**os.environ, "DRY_RUN": "1", "WORKDIR": str(tmp_path / "w"), "OUT": str(tmp_path / "out")}
    commands: list[list[str]] = []
    for precision in ("fp8", "bf16"):
        done = run("bash", str(script), "all", precision, env=env)
        assert done.returncode == 0, done.stderr
        commands += [line[2:].split() for line in done.stdout.splitlines() if line.startswith("+ ")]
    assert len(commands) == 26 and not (tmp_path / "out").exists()  # printed, not run
    helps: dict[str, str] = {}
    for command in commands:
        tool = command[1:4] if command[1] == "-m" else command[1:2]
        key = " ".join(tool)
        if key not in helps:
            shown = run(sys.executable, *tool, "--help", cwd=ROOT)
            assert shown.returncode == 0, (key, shown.stderr[-500:])
            helps[key] = shown.stdout
        unknown = [a for a in command if a.startswith("--") and not re.search(rf"{a}\b", helps[key])]
        assert not unknown, (key, unknown)
    bad = run("bash", str(script), "nope", env=env)
    assert bad.returncode == 2 and "unknown step" in bad.stderr


def test_fp8_gemm_autotune_ways_reasons_and_comparison(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every shape is reported three ways (eager cuBLAS, Inductor's autotuning with and without the TMA
    templates); without CUDA each row says why; with a GEMM standing in, each way is timed, checked
    against the eager output and set against it; an unknown linear is a usage error."""
    script = _script("diagnostics/fp8_gemm_autotune")
    out = tmp_path / "gemm.json"
    assert script.main(["--device", "cpu", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert [(r["linear"], r["way"]) for r in rows] == [
        (s.linear, w.name) for s in script.SHAPES for w in script.WAYS
    ]
    assert all(r["status"] == "unavailable" and "fp8" in r["reason"] and r["m"] == 195 * 168 for r in rows)
    assert {(r["linear"], r["n"], r["k"]) for r in rows} >= {("fc2", 2560, 10240), ("qkv", 7680, 2560)}
    with pytest.raises(SystemExit):
        script.main(["--device", "cpu", "--linears", "fc3"])
    assert "--linears: unknown fc3; choose from qkv, out_proj, fc1, fc2" in capsys.readouterr().err

    def gemm(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor) -> torch.Tensor:
        return (a * scale_a) @ (b * scale_b)

    def float_inputs(shape: object, m: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        return (
            torch.randn(m, shape.k),
            torch.randn(shape.k, shape.n),
            torch.ones(m, 1),
            torch.ones(1, shape.n),
        )

    monkeypatch.setattr(script, "fp8_unavailable_reason", lambda device: None)
    monkeypatch.setattr(script, "scaled_mm", gemm)
    monkeypatch.setattr(script, "inputs", float_inputs)
    monkeypatch.setattr(script, "way_call", lambda way, args: lambda: gemm(*args))
    monkeypatch.setattr(script, "kernel_names", lambda call: ["stand-in"])
    shape = script.SHAPES[1]
    measured = script.measure(shape, argparse.Namespace(m=8, warmup=0, iters=2), CPU)
    assert [r["way"] for r in measured] == [w.name for w in script.WAYS]
    assert all(r["status"] == "ok" and r["max_diff_of_max"] == 0 and r["ms"] > 0 for r in measured)
    assert all(r["vs_cublas"] > 0 and r["kernels"] == ["stand-in"] for r in measured)
    assert next(r for r in measured if r["way"] == "cublas")["vs_cublas"] == 1.0


def test_attention_kernel_variants_compute_the_kernels_function_in_the_interpreter() -> None:
    """``diagnostics/attention_kernel_variants.py`` on the CPU, under Triton's interpreter: every variant
    that claims the kernel's function (the split dot, the keys rotated once) agrees with the committed
    kernel and with fp32; the ones that leave a step out (``-nobias``, ``-norotk``) do not, so their
    timings say what that step costs."""
    import ast
    import os
    import subprocess

    pytest.importorskip("triton")
    script = ROOT / "benchmarks" / "diagnostics" / "attention_kernel_variants.py"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [
        ast.literal_eval(line.split(" ", 1)[1])
        for line in done.stdout.splitlines()
        if line.startswith("fixed")
    ]
    names = {row["variant"] for row in rows}
    assert {"committed", "committed-nobias", "split-norotk:64x32x4x1"} <= names
    assert any(n.startswith("once:") for n in names) and any(n.startswith("split:") for n in names)
    for row in rows:
        if "no" in row["variant"].split(":")[0]:
            assert row["max_vs_committed"] is None and row["max_vs_fp32"] > 0.1, row
        else:
            assert row["max_vs_committed"] < 4e-3 and row["max_vs_fp32"] < 4e-3, row
