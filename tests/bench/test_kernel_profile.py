"""Kernel classification and the per-forward summary of ``benchmarks/profile_esm2.py``, on kernel names as
an H200 forward produces them (eager, torch.compile, AOTInductor bf16 and fp8) and on CPU operators."""

from __future__ import annotations

import pytest

from virnucpro_trt.bench.kernel_profile import (
    CLASS_NAMES,
    GemmCall,
    KernelRecord,
    LayerGemm,
    classify,
    gemm_shape,
    summarize,
)

CUTLASS_FP8 = (
    "void cutlass::device_kernel<at::cuda::detail::enable_3x_kernel_for_sm9x<cutlass::gemm::kernel::"
    "GemmUniversal<cute::tuple<int, int, int>, cutlass::gemm::collective::CollectiveMma<"
    "cutlass::float_e4m3_t>>>>"
)


@pytest.mark.parametrize(
    ("name", "expected", "also"),
    [
        ("nvjet_tst_256x128_64x4_2x1_v_bz_coopA_TNT", "GEMM", ()),
        # cuBLASLt's GEMM with bias + GELU in its epilogue (the bf16 engines' fc1 since build recipe 7)
        ("nvjet_sm90_tst_256x152_64x4_1x2_h_bz_coopA_gelubias_TNT", "GEMM", ("activation",)),
        ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64_warpgroupsize2x1x1_kernel__5x_cublas",
         "GEMM", ()),
        (CUTLASS_FP8, "GEMM", ("quantisation",)),  # the fp8 GEMM is a GEMM, not a quantisation kernel
        ("splitKreduce_kernel", "GEMM", ()),
        ("triton_tem_fused_addmm_gelu_0", "GEMM", ("activation",)),
        ("triton_poi_fused_addmm_gelu_3", "activation", ()),  # an epilogue named after the addmm it follows
        ("fmha_cutlassF_bf16_aligned_64x64_rf_sm80(PyTorchMemEffAttention::AttentionKernel<bf16>::Params)",
         "attention", ("GEMM",)),
        ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x64x64_4x1x1_kernel0_0",
         "attention", ("GEMM",)),
        ("triton_per_fused__to_copy_abs_amax_clamp_div_native_layer_norm_5", "quantisation",
         ("normalisation",)),
        ("triton_red_fused__to_copy_abs_amax_clamp_div_reciprocal_7", "quantisation", ()),
        ("triton_per_fused__to_copy_add_native_layer_norm_2", "normalisation", ("elementwise+copies",)),
        ("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<float, float>(int, float)",
         "normalisation", ()),
        ("void at::native::vectorized_elementwise_kernel<4, at::native::GeluCUDAKernelImpl(...)>",
         "activation", ("elementwise+copies",)),
        ("triton_poi_fused_cat_cos_mul_neg_sin_1", "elementwise+copies", ()),
        ("Memcpy HtoD (Pageable -> Device)", "elementwise+copies", ()),
        ("triton_red_fused_sum_4", "other", ()),
        ("aten::addmm", "GEMM", ()),
        ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention", ()),
        ("aten::native_layer_norm", "normalisation", ()),
        ("aten::gelu", "activation", ()),
        ("aten::sum", "other", ()),
    ],
)  # fmt: skip
def test_kernel_names_fall_into_their_class(name: str, expected: str, also: tuple[str, ...]) -> None:
    cls, matched = classify(name)
    assert cls == expected, (name, matched)
    assert (matched[0] if matched else "other") == expected and all(a in matched for a in also)
    assert set(matched) <= set(CLASS_NAMES)


def test_gemm_shapes_come_from_the_operators_inputs() -> None:
    assert gemm_shape("aten::mm", [[32760, 2560], [2560, 7680]]) == (32760, 7680, 2560)
    assert gemm_shape("aten::addmm", [[2560], [32760, 2560], [2560, 2560]]) == (32760, 2560, 2560)
    assert gemm_shape("aten::_scaled_mm", [[32760, 10240], [10240, 2560], [32760, 1], [1, 2560], []]) == (
        32760, 2560, 10240,
    )  # fmt: skip
    assert gemm_shape("aten::mm", [[4, 5], [6, 7]]) is None  # inner sizes disagree
    assert gemm_shape("aten::mm", None) is None


LAYER = [
    LayerGemm("qkv", 96, 32),
    LayerGemm("out_proj", 32, 32),
    LayerGemm("fc1", 128, 32),
    LayerGemm("fc2", 32, 128),
]


def _forward(layers: int) -> list[KernelRecord]:
    """One engine forward as the profiler lists it: per layer LN+quant, GEMM, attention, GEMM (+ a split-K
    reduction), LN, GEMM, GELU, GEMM; times in us."""
    kernels = [KernelRecord("triton_poi_fused_embedding_0", 5.0)]
    for _ in range(layers):
        kernels += [
            KernelRecord("triton_per_fused_abs_amax_native_layer_norm_1", 10.0),
            KernelRecord("nvjet_qkv", 30.0),
            KernelRecord("fmha_cutlassF_bf16", 20.0),
            KernelRecord("nvjet_out", 10.0),
            KernelRecord("splitKreduce_kernel", 2.0),
            KernelRecord("triton_per_fused_native_layer_norm_2", 8.0),
            KernelRecord("nvjet_fc1", 40.0),
            KernelRecord("triton_poi_fused_gelu_3", 6.0),
            KernelRecord("nvjet_fc2", 40.0),
        ]
    return [*kernels, KernelRecord("triton_red_fused_sum_4", 3.0)]


def test_engine_gemms_are_matched_to_the_layers_by_order() -> None:
    layers, forwards, tokens = 3, 2, 1000
    peaks = {(tokens, 96, 32): 10.0, (tokens, 32, 128): 1.0}
    summary = summarize(_forward(layers) * forwards, forwards, (), LAYER, layers, tokens, peaks)
    data = summary.to_json()
    per_layer = 10 + 30 + 20 + 10 + 2 + 8 + 40 + 6 + 40
    assert data["kernel_ms"] == pytest.approx((5 + 3 + layers * per_layer) / 1000)
    assert data["classes"]["GEMM"]["ms"] == pytest.approx(layers * 122 / 1000)
    assert data["classes"]["GEMM"]["kernels"] == layers * 5  # the split-K reduction counts as GEMM time
    assert data["classes"]["quantisation"]["ms"] == pytest.approx(layers * 10 / 1000)
    assert data["classes"]["normalisation"]["ms"] == pytest.approx(layers * 8 / 1000)
    assert data["classes"]["attention"]["ms"] == pytest.approx(layers * 20 / 1000)
    assert data["classes"]["other"]["ms"] == pytest.approx(3 / 1000)
    assert sum(c["share"] for c in data["classes"].values()) == pytest.approx(1.0, abs=1e-3)
    assert data["class_sets_ms"]["quantisation+normalisation"] == pytest.approx(layers * 10 / 1000)
    share = layers * 122 / (8 + layers * per_layer)
    assert data["gemm_vs_rest"]["gemm_share"] == pytest.approx(share, abs=1e-4)
    assert data["shape_source"].startswith("layer order")
    shapes = {g["linear"]: g for g in data["gemm_shapes"]}
    assert set(shapes) == {"qkv", "out_proj", "fc1", "fc2"}
    qkv = shapes["qkv"]
    assert (qkv["m"], qkv["n"], qkv["k"]) == (tokens, 96, 32) and qkv["calls"] == layers
    assert qkv["us_per_call"] == 30.0
    assert qkv["tflops"] == pytest.approx(2 * tokens * 96 * 32 / 30e-6 / 1e12, rel=1e-3)
    assert qkv["of_peak"] == pytest.approx(qkv["tflops"] / 10.0, rel=1e-3)
    assert shapes["out_proj"]["peak_tflops"] is None and shapes["out_proj"]["of_peak"] is None


def test_gemm_shapes_stay_unknown_when_the_kernel_count_does_not_fit_the_layers() -> None:
    kernels = [*_forward(3), KernelRecord("nvjet_extra", 1.0)]
    data = summarize(kernels, 1, (), LAYER, 3, 1000).to_json()
    assert data["shape_source"] is None and data["gemm_shapes"] == []


def test_operator_shapes_win_over_the_layer_order() -> None:
    calls = [GemmCall(500, 96, 32, 12.0, "aten::mm"), GemmCall(500, 96, 32, 14.0, "aten::mm"),
             GemmCall(500, 7, 5, 1.0, "aten::mm")]  # fmt: skip
    data = summarize(_forward(2), 1, calls, LAYER, 2, 1000).to_json()
    assert data["shape_source"] == "profiler operators (input shapes)"
    table = {(g["m"], g["n"], g["k"]): g for g in data["gemm_shapes"]}
    assert table[(500, 96, 32)]["linear"] == "qkv" and table[(500, 96, 32)]["us_per_call"] == 13.0
    assert table[(500, 7, 5)]["linear"] is None
