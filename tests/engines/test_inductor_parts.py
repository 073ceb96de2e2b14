"""Pieces of the AOTInductor backend that need no compile: graph shape box, padding, model copy, fp8."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from virnucpro_trt.engines.fp8_quantize import BIAS_GELU, IDENTITY, LAYERNORM, quantize_rows_reference
from virnucpro_trt.engines.inductor_backend import _export
from virnucpro_trt.engines.inductor_configs import inductor_configs
from virnucpro_trt.engines.inductor_fp8 import (
    Fp8Esm2Layer,
    Fp8RowwiseLinear,
    PendingSumLayerNorm,
    convert_linears_to_fp8,
    convert_to_fp8,
)
from virnucpro_trt.engines.inductor_model import device_copy
from virnucpro_trt.engines.inductor_shapes import GraphShapes, exported_bounds, tile_example
from virnucpro_trt.engines.spec import BuildOptions, ShapeRange, default_shape_range
from virnucpro_trt.errors import BuildError
from virnucpro_trt.models.random_checkpoints import add_outlier_channels, random_esm2

CPU = torch.device("cpu")


def _cpu_scaled_mm_works() -> bool:
    try:
        a = torch.ones(16, 16).to(torch.float8_e4m3fn)
        torch._scaled_mm(
            a, a.t(), scale_a=torch.ones(16, 1), scale_b=torch.ones(1, 16), out_dtype=torch.bfloat16
        )
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    return True


needs_cpu_fp8 = pytest.mark.skipif(
    not _cpu_scaled_mm_works(), reason="this torch has no CPU row-wise _scaled_mm"
)


# ----------------------------------------------------------------------------- graph shapes
def test_plan_rounds_lengths_to_the_multiple() -> None:
    esm = default_shape_range("esm2", 32768)
    graph = GraphShapes.plan(esm, 8)
    assert (graph.min_batch, graph.max_batch) == (1, esm.max_batch)
    assert (graph.min_length, graph.max_length) == (8, 1032)  # 1026 tokens round up to 1032
    assert graph.hint(esm) == (esm.opt_batch, 176)  # the batcher's typical batch: 192 x 170 -> 176
    assert GraphShapes.plan(esm, 1).hint(esm) == (esm.opt_batch, 170)
    assert GraphShapes.plan(esm, 8, min_batch=2).min_batch == 2


def test_hint_avoids_sizes_that_specialise() -> None:
    """An example size of 1 would make the exporter specialise a dimension that should stay dynamic."""
    shapes = ShapeRange(1, 1, 4, 2, 2, 64)
    assert GraphShapes.plan(shapes, 1).hint(shapes) == (2, 2)
    assert GraphShapes.plan(shapes, 8).hint(shapes) == (2, 16)  # 2 blocks of 8
    static = ShapeRange(1, 1, 1, 2, 8, 8)
    graph = GraphShapes.plan(static, 8)
    assert graph.hint(static) == (1, 8)
    assert graph.dynamic_shapes() == {"input_ids": {}, "attention_mask": {}}


def test_pad_right_pads_length_and_copies_row_zero() -> None:
    graph = GraphShapes(min_batch=2, max_batch=8, min_length=16, max_length=40, sequence_multiple=8)
    ids = np.array([[7, 8, 9, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5]], dtype=np.int64)
    mask = (ids != 5).astype(np.int64)
    padded_ids, padded_mask = graph.pad(ids, mask, pad_id=5)
    assert padded_ids.shape == padded_mask.shape == (2, 24)
    np.testing.assert_array_equal(padded_ids[0, :17], ids[0])
    assert (padded_ids[0, 17:] == 5).all() and (padded_mask[0, 17:] == 0).all()
    np.testing.assert_array_equal(padded_ids[1], padded_ids[0])
    np.testing.assert_array_equal(padded_mask[1], padded_mask[0])
    short = graph.pad(ids[:, :3].repeat(3, 0), mask[:, :3].repeat(3, 0), pad_id=5)
    assert short[0].shape == (3, 16)  # up to the graph's minimum length
    fits = np.ones((2, 24), dtype=np.int64)
    assert graph.pad(fits, fits, pad_id=5)[0] is fits


def test_metadata_round_trip() -> None:
    graph = GraphShapes(1, 190, 16, 1032, 8)
    assert GraphShapes.from_metadata(graph.to_metadata()) == graph
    with pytest.raises(KeyError):
        GraphShapes.from_metadata({})


def test_tile_example_and_exported_bounds() -> None:
    example = tile_example((torch.arange(6).view(2, 3), torch.ones(2, 3, dtype=torch.int32)), 5, 7)
    assert [tuple(t.shape) for t in example] == [(5, 7), (5, 7)] and example[1].dtype == torch.int64
    shapes = ShapeRange(1, 4, 8, 2, 20, 40)
    graph = GraphShapes.plan(shapes, 8)
    model = random_esm2(seed=5)
    program = torch.export.export(
        model, tile_example(example, *graph.hint(shapes)), dynamic_shapes=graph.dynamic_shapes(), strict=False
    )
    kept = exported_bounds(program, graph)
    assert (kept.min_batch, kept.max_batch, kept.max_length) == (1, 8, 40)
    assert kept.min_length in (8, 16)  # torch 2.13 raises the derived dim's root minimum to 2 blocks


def test_inductor_configs_per_device() -> None:
    meta = {"virnucpro.kind": "esm2"}
    # both devices: the weights beside the package (engines/package_weights.py), unless extra says inside
    assert inductor_configs(CPU, BuildOptions(), meta) == {
        "aot_inductor.package_constants_in_so": False,
        "aot_inductor.metadata": meta,
    }
    inside = BuildOptions(extra={"inductor_configs": {"aot_inductor.package_constants_in_so": True}})
    assert inductor_configs(CPU, inside, meta)["aot_inductor.package_constants_in_so"] is True
    cuda = inductor_configs(torch.device("cuda"), BuildOptions(max_autotune=False), meta)
    assert cuda["max_autotune"] is False and cuda["coordinate_descent_tuning"] is True
    override = BuildOptions(
        extra={"inductor_configs": {"freezing": True, "coordinate_descent_tuning": False}}
    )
    configs = inductor_configs(torch.device("cuda"), override, meta)
    assert configs["freezing"] is True and configs["coordinate_descent_tuning"] is False


# ----------------------------------------------------------------------------- model copy
def test_device_copy_casts_a_copy_and_keeps_rotary_fp32() -> None:
    model = random_esm2(seed=6)
    copy = device_copy(model, CPU, torch.bfloat16)
    assert copy.layers[0].qkv.weight.dtype == torch.bfloat16 and not copy.training
    assert copy.rotary.inv_freq.dtype == torch.float32
    assert model.layers[0].qkv.weight.dtype == torch.float32
    assert copy.layers[0].qkv.weight.data_ptr() != model.layers[0].qkv.weight.data_ptr()
    torch.testing.assert_close(copy.rotary.inv_freq, model.rotary.inv_freq, rtol=0, atol=0)


# ----------------------------------------------------------------------------- fp8 linears
@needs_cpu_fp8
def test_fp8_linear_is_close_to_bf16() -> None:
    gen = torch.Generator().manual_seed(0)
    linear = nn.Linear(64, 48).to(torch.bfloat16)
    x = torch.randn(3, 5, 64, generator=gen).to(torch.bfloat16)
    fp8 = Fp8RowwiseLinear.from_linear(linear)
    assert fp8.weight.dtype == torch.float8_e4m3fn and fp8.weight_scale.shape == (1, 48)
    with torch.no_grad():
        want, got = linear(x).float(), fp8(x).float()
    assert got.shape == want.shape
    assert (got - want).norm() / want.norm() < 0.05  # e4m3 has a 3-bit mantissa: ~2-3% relative error


@needs_cpu_fp8
def test_fp8_model_survives_casts_and_exports() -> None:
    model = device_copy(random_esm2(seed=7), CPU, torch.bfloat16)
    assert convert_linears_to_fp8(model) == 8  # qkv, out_proj, fc1, fc2 in each of 2 layers
    model.to(torch.bfloat16)
    layer = model.layers[0].fc1
    assert layer.weight.dtype == torch.float8_e4m3fn and layer.weight_scale.dtype == torch.float32
    shapes = ShapeRange(1, 4, 8, 2, 20, 40)
    graph = GraphShapes.plan(shapes, 8)
    example = tile_example((torch.randint(4, 24, (2, 9)), torch.ones(2, 9, dtype=torch.int64)), 4, 24)
    program = torch.export.export(model, example, dynamic_shapes=graph.dynamic_shapes(), strict=False)
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert "aten._scaled_mm.default" in targets
    reference = random_esm2(seed=7)
    ids, mask = tile_example((torch.randint(4, 24, (3, 30)), torch.ones(3, 30, dtype=torch.int64)), 3, 30)
    with torch.no_grad():
        cosine = nn.functional.cosine_similarity(program.module()(ids, mask), reference(ids, mask))
    assert cosine.min() > 0.999


@pytest.mark.parametrize("mode", [IDENTITY, LAYERNORM, BIAS_GELU])
def test_fused_quantisation_reference_is_the_op_then_rowwise_e4m3(mode: int) -> None:
    gen = torch.Generator().manual_seed(mode)
    x = torch.randn(3, 7, 96, generator=gen) * 3
    weight, bias = 1 + 0.1 * torch.randn(96, generator=gen), 0.1 * torch.randn(96, generator=gen)
    q, scale = quantize_rows_reference(x, mode, weight, bias, 1e-5)
    rows = x.reshape(-1, 96)
    op = {
        IDENTITY: lambda r: r,
        LAYERNORM: lambda r: nn.functional.layer_norm(r, (96,), weight, bias, 1e-5),
        BIAS_GELU: lambda r: nn.functional.gelu(r + bias),
    }[mode](rows)
    assert q.dtype == torch.float8_e4m3fn and q.shape == (21, 96) and scale.shape == (21, 1)
    assert torch.allclose(scale, op.abs().amax(-1, keepdim=True) / 448)
    assert (q.float().abs().amax(-1) == 448).all()  # every row uses the full e4m3 range
    assert ((q.float() * scale - op).norm() / op.norm()) < 0.04


def test_residual_layernorm_reference_sums_once_then_normalises_the_sum() -> None:
    """The second LayerNorm's op: x + delta + bias rounded once to the residual stream's dtype, and the
    quantised LayerNorm of exactly that sum (what the next sublayer adds to)."""
    from virnucpro_trt.engines.fp8_quantize import add_layernorm_rows_reference

    gen = torch.Generator().manual_seed(5)
    x = (torch.randn(2, 9, 64, generator=gen) * 4).to(torch.bfloat16)
    delta = torch.randn(2, 9, 64, generator=gen).to(torch.bfloat16)
    delta_bias = torch.randn(64, generator=gen).to(torch.bfloat16)
    weight, bias = 1 + 0.1 * torch.randn(64, generator=gen), 0.1 * torch.randn(64, generator=gen)
    total, q, scale = add_layernorm_rows_reference(x, delta, delta_bias, weight, bias, 1e-5)
    assert total.dtype == torch.bfloat16 and total.shape == x.shape
    assert torch.equal(total, (x.float() + delta.float() + delta_bias.float()).to(torch.bfloat16))
    want_q, want_scale = quantize_rows_reference(total, LAYERNORM, weight, bias, 1e-5)
    assert torch.equal(q.float(), want_q.float()) and torch.equal(scale, want_scale)


@needs_cpu_fp8
def test_fused_fp8_esm2_layers_compute_what_fp8_linears_do() -> None:
    """The engine's ESM-2 layers (input quantisation fused with LayerNorm/GELU) against the plain fp8
    linears and the fp32 model: the fusion changes only where the bf16 rounding before quantising was."""
    plain = device_copy(random_esm2(seed=7), CPU, torch.bfloat16)
    fused = device_copy(random_esm2(seed=7), CPU, torch.bfloat16)
    assert convert_linears_to_fp8(plain) == 8 and convert_to_fp8(fused, fast_accum=False) == 8
    assert all(isinstance(layer, Fp8Esm2Layer) for layer in fused.layers)
    ids, mask = torch.randint(4, 24, (3, 30)), torch.ones(3, 30, dtype=torch.bool)
    mask[1, 20:] = False
    with torch.no_grad():
        reference, a, b = random_esm2(seed=7)(ids, mask), plain(ids, mask), fused(ids, mask)
    cosine = nn.functional.cosine_similarity
    assert cosine(a, b).min() > 0.9999
    assert cosine(b, reference).min() > 0.999
    in_epilogue = device_copy(random_esm2(seed=7), CPU, torch.bfloat16)
    convert_to_fp8(in_epilogue, fast_accum=False, gemm_bias=True)
    with torch.no_grad():
        c = in_epilogue(ids, mask)
    assert cosine(b, c).min() > 0.9999 and not torch.equal(b, c)  # the bias added before the rounding
    shapes = ShapeRange(1, 4, 8, 2, 20, 40)
    example = tile_example((torch.randint(4, 24, (2, 9)), torch.ones(2, 9, dtype=torch.int64)), 4, 24)
    dynamic = GraphShapes.plan(shapes, 8).dynamic_shapes()
    program = torch.export.export(fused, example, dynamic_shapes=dynamic, strict=False)
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert "aten._scaled_mm.default" in targets


def test_the_launchers_take_the_launches_in_effect(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside :func:`launches_in_effect` the launchers launch :data:`ROW_LAUNCH`'s kernels; inside, the
    overrides' (read while an op is traced), and the defaults come back after it, even on an error.
    The Triton launch is recorded here."""
    import torch.library

    from virnucpro_trt.engines import fp8_quantize as fq

    launched: list[tuple[str, dict]] = []

    class Recorder:
        def __init__(self, kernel):
            self.name = getattr(kernel, "__name__", None) or kernel.fn.__name__  # a JITFunction's .fn

        def __getitem__(self, grid):
            return lambda *args, **meta: launched.append((self.name, meta))

    monkeypatch.setattr(torch.library, "wrap_triton", Recorder)
    for name in (  # stand-ins where triton is missing (CPU torch); the names are what is recorded
        "_bias_gelu_rows_kernel",
        "_bias_gelu_resident_kernel",
        "_quantize_normalised_rows_kernel",
        "_quantize_resident_rows_kernel",
    ):
        monkeypatch.setattr(fq, name, type(name, (), {"__name__": name}), raising=False)
    x, wide = torch.randn(3, 2560).to(torch.bfloat16), torch.randn(3, 10240).to(torch.bfloat16)
    bias = torch.zeros(10240)
    fq._launch_bias_gelu_rows(wide, bias)
    fq._launch_quantize_normalised_rows(x, None, None, None, None, 0.0)
    overrides = {
        fq.BIAS_GELU: fq.RowLaunch(0, 16, fq.ERF_POLYNOMIAL, resident=True),
        fq.IDENTITY: fq.RowLaunch(256, 2),
    }
    with pytest.raises(RuntimeError, match="a failing variant"), fq.launches_in_effect(overrides):
        assert fq.current_launches()[fq.LAYERNORM] == fq.ROW_LAUNCH[fq.LAYERNORM]
        assert fq.row_launch_facts()["bias_gelu"]["resident"] is True
        fq._launch_bias_gelu_rows(wide, bias)
        fq._launch_quantize_normalised_rows(x, None, None, None, None, 0.0)
        raise RuntimeError("a failing variant")
    assert fq.current_launches() is fq.ROW_LAUNCH
    default_gelu, default_plain, gelu, plain = launched
    assert default_gelu == ("_bias_gelu_rows_kernel", {"CHUNK": 2048, "ERF": fq.GELU_TANH, "num_warps": 4})
    assert default_plain[1]["CHUNK"] == 512 and default_plain[1]["num_warps"] == 4
    want = {"HEAD": 8192, "TAIL": 2048, "ERF": fq.ERF_POLYNOMIAL, "num_warps": 16}
    assert gelu == ("_bias_gelu_resident_kernel", want)
    assert plain[1]["CHUNK"] == 256 and plain[1]["num_warps"] == 2
    with (
        pytest.raises(ValueError, match="unknown row kernel mode"),
        fq.launches_in_effect({7: fq.RowLaunch(512)}),
    ):
        pass


def test_without_the_kernels_gelu_takes_the_form_of_the_launch_in_effect() -> None:
    """Off CUDA the row ops are their torch references, GELU in the form the launch in effect computes
    (the engines': the tanh form), so an engine's numerics follow its launch on every device."""
    from virnucpro_trt.engines import fp8_quantize as fq

    x, bias = torch.randn(4, 96) * 3, torch.randn(96) * 0.1
    assert fq.ROW_LAUNCH[fq.BIAS_GELU].erf == fq.GELU_TANH
    got = fq.quantize_rows(x, fq.BIAS_GELU, bias=bias)
    want = fq.scale_rows_to_e4m3(nn.functional.gelu(x + bias, approximate="tanh"))
    assert torch.equal(got[0].float(), want[0].float()) and torch.equal(got[1], want[1])
    with fq.launches_in_effect({fq.BIAS_GELU: fq.RowLaunch(2048, 4, fq.ERF_POLYNOMIAL)}):
        got = fq.quantize_rows(x, fq.BIAS_GELU, bias=bias)
    assert torch.equal(got[1], fq.quantize_rows_reference(x, fq.BIAS_GELU, bias=bias)[1])


def _folded_and_plain(device: torch.device, outliers: bool = False) -> tuple[nn.Module, nn.Module]:
    """The same tiny ESM-2 converted to the fp8 engine layers twice: residual adds folded, and not
    (``outliers``: with the outlier LayerNorm channels of the ``-outliers`` random weights)."""
    models = [random_esm2(seed=7) for _ in range(2)]
    if outliers:
        for model in models:
            add_outlier_channels(model, seed=3)
    plain, folded = (device_copy(model, device, torch.bfloat16) for model in models)
    assert convert_to_fp8(plain) == 8 and convert_to_fp8(folded, fold_residual=True) == 8
    return plain, folded


@needs_cpu_fp8
def test_folded_residual_adds_compute_the_same_layers() -> None:
    """``fold_residual``: each layer hands fc2's output and bias on unsummed, the next layer's first
    LayerNorm adds them, the model's final LayerNorm adds the last one. Same model up to rounding (the
    sum is rounded once, in fp32, instead of fc2's bias add in bf16 first); it exports with dynamic
    shapes, and the exported graph computes what the eager one does."""
    from virnucpro_trt.engines.inductor_fp8 import PendingResidual, PendingSumLayerNorm

    plain, folded = _folded_and_plain(CPU)
    assert isinstance(folded.emb_layer_norm_after, PendingSumLayerNorm)
    assert not isinstance(plain.emb_layer_norm_after, PendingSumLayerNorm)
    generator = torch.Generator().manual_seed(30)  # seeded: min cosine 0.999994-0.999998 over 60 seeds
    ids, mask = torch.randint(4, 24, (3, 30), generator=generator), torch.ones(3, 30, dtype=torch.bool)
    mask[1, 20:] = False
    with torch.no_grad():
        a, b = plain(ids, mask), folded(ids, mask)
        x = folded.embed(ids, mask)
        cos, sin = folded.rotary.tables(30, CPU)
        pending = folded.layers[0](x, cos, sin, mask[:, None, None, :])
    assert isinstance(pending, PendingResidual) and pending.x.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.99999
    shapes = ShapeRange(1, 4, 8, 2, 20, 40)
    example = tile_example((torch.randint(4, 24, (2, 9)), torch.ones(2, 9, dtype=torch.int64)), 4, 24)
    dynamic = GraphShapes.plan(shapes, 8).dynamic_shapes()
    program = torch.export.export(folded, example, dynamic_shapes=dynamic, strict=False)
    with torch.no_grad():
        assert torch.equal(program.module()(ids, mask.long()), b)


@needs_cpu_fp8
def test_folded_residual_adds_keep_parity_on_outlier_channels() -> None:
    """Outlier channels (20-50x LayerNorm gains, as trained models have) make the residual stream's
    values large; folding changes only where fc2's bias is added, so the two stay as close as on
    plain weights."""
    plain, folded = _folded_and_plain(CPU, outliers=True)
    # seeded inputs (0.99998 here with 1 or 2 threads): unseeded draws, whatever the tests before had
    # left in torch's generator, once fell to 0.9999 in CI
    generator = torch.Generator().manual_seed(26)
    ids, mask = torch.randint(4, 24, (4, 26), generator=generator), torch.ones(4, 26, dtype=torch.bool)
    mask[2, 15:] = False
    with torch.no_grad():
        a, b = plain(ids, mask), folded(ids, mask)
    assert torch.isfinite(b).all()
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.9999


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the H200 host)")
def test_folded_residual_adds_on_the_triton_kernels() -> None:
    """The folded layers on CUDA, where the first LayerNorm's kernel takes the pending sum."""
    cuda = torch.device("cuda", 0)
    plain, folded = _folded_and_plain(cuda)
    ids = torch.randint(4, 24, (5, 40), device=cuda)
    mask = torch.ones(5, 40, dtype=torch.bool, device=cuda)
    mask[2, 25:] = False
    with torch.no_grad():
        a, b = plain(ids, mask), folded(ids, mask)
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.9999


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the H200 host)")
def test_compiled_fp8_layers_trace_the_row_kernels_without_graph_breaks() -> None:
    """The row ops are registered when a layer is built, so Dynamo traces them as ops: no graph break
    (one at each row op would recompile the pieces per shape and distort every per-layer measurement)."""
    cuda = torch.device("cuda", 0)
    _, folded = _folded_and_plain(cuda)
    x = torch.randn(3, 24, folded.config.embed_dim, device=cuda)
    cos, sin = folded.rotary.tables(24, cuda)
    key_mask = torch.ones(3, 1, 1, 24, dtype=torch.bool, device=cuda)
    explained = torch._dynamo.explain(folded.layers[1])(
        folded.layers[0](x, cos, sin, key_mask), cos, sin, key_mask
    )
    assert explained.graph_break_count == 0, explained.break_reasons


def test_export_falls_back_to_a_batch_floor_of_two(monkeypatch: pytest.MonkeyPatch) -> None:
    """An exporter that refuses a dynamic batch starting at 1 gets batch >= 2 (the runner pads batch 1)."""
    real_export = torch.export.export

    def picky_export(model: nn.Module, args: tuple, dynamic_shapes: dict, **kwargs: Any) -> Any:
        if dynamic_shapes["input_ids"][0].min == 1:
            raise RuntimeError("Constraints violated (batch)! batch was specialized to 1")
        return real_export(model, args, dynamic_shapes=dynamic_shapes, **kwargs)

    monkeypatch.setattr(torch.export, "export", picky_export)
    shapes = ShapeRange(1, 4, 8, 2, 20, 40)
    graph = GraphShapes.plan(shapes, 1)
    example = tile_example((torch.randint(4, 24, (2, 9)), torch.ones(2, 9, dtype=torch.int64)), 4, 20)
    program = _export(random_esm2(seed=8), example, graph, "esm2 (fp32)")
    assert exported_bounds(program, graph).min_batch == 2


def _exported_model(
    monkeypatch: pytest.MonkeyPatch, precision: str, extra: dict, model: nn.Module | None = None
) -> nn.Module:
    """The model ``INDUCTOR_BACKEND.build`` hands to ``torch.export`` (captured; nothing is compiled).
    fp8 is let through on the CPU: what is checked is how the options shape the model, not its kernels."""
    from virnucpro_trt.engines import inductor_fp8
    from virnucpro_trt.engines.inductor_backend import INDUCTOR_BACKEND
    from virnucpro_trt.engines.spec import BuildRequest

    seen: list[nn.Module] = []

    def capture(model: nn.Module, *args: Any, **kwargs: Any) -> Any:
        seen.append(model)
        raise RuntimeError("captured")

    monkeypatch.setattr(torch.export, "export", capture)
    monkeypatch.setattr(inductor_fp8, "fp8_unavailable_reason", lambda device: None)
    example = (torch.randint(4, 24, (4, 20)), torch.ones(4, 20, dtype=torch.int64))
    request = BuildRequest(
        model if model is not None else random_esm2(seed=8), "esm2", example,
        ShapeRange(1, 4, 8, 2, 20, 40), precision, CPU,
        Path("unused.pt2"), BuildOptions(extra=extra),
    )  # fmt: skip
    with pytest.raises(BuildError, match="captured"):
        INDUCTOR_BACKEND.build(request)
    (model,) = seen
    return model


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"residual_fp32": False, "frozen_rotary": False},
    ],
)
def test_build_options_reach_the_exported_model(monkeypatch: pytest.MonkeyPatch, extra: dict) -> None:
    """``residual_fp32`` and ``frozen_rotary`` from ``BuildOptions.extra`` are what the exporter sees."""
    model = _exported_model(monkeypatch, "fp32", extra)
    assert model.residual_fp32 == extra.get("residual_fp32", True)
    assert (model.rotary.frozen is not None) == extra.get("frozen_rotary", True)
    if model.rotary.frozen is not None:
        assert model.rotary.frozen[0].shape == (40, model.config.head_dim)


@pytest.mark.parametrize("extra", [{}, {"fp8_fold_residual": False}])
def test_fp8_builds_fold_the_residual_adds_unless_told_not_to(
    monkeypatch: pytest.MonkeyPatch, extra: dict
) -> None:
    """fp8 ESM-2 engines fold fc2's residual add into the next LayerNorm kernel by default (measured
    faster on the H200); ``fp8_fold_residual=false`` builds the unfolded layers."""
    model = _exported_model(monkeypatch, "fp8", extra)
    fold = extra.get("fp8_fold_residual", True)
    layers = list(model.layers)
    assert all(isinstance(layer, Fp8Esm2Layer) for layer in layers)
    assert [layer.fold_residual for layer in layers] == [fold] * len(layers)
    assert isinstance(model.emb_layer_norm_after, PendingSumLayerNorm) == fold


def test_export_errors_become_one_line_build_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_export(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("data-dependent branch\nlong traceback text")

    monkeypatch.setattr(torch.export, "export", broken_export)
    shapes = ShapeRange(1, 4, 8, 2, 20, 40)
    example = (torch.randint(4, 24, (4, 20)), torch.ones(4, 20, dtype=torch.int64))
    with pytest.raises(
        BuildError, match=r"^torch.export failed for esm2 \(fp32\): RuntimeError: data-dependent branch$"
    ):
        _export(random_esm2(seed=8), example, GraphShapes.plan(shapes, 1), "esm2 (fp32)")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the H200 host)")
@pytest.mark.parametrize("cols", [64, 96, 2560, 3000, 10240])
def test_the_triton_kernel_quantises_like_the_reference(cols: int) -> None:
    """The default launch against the reference of the GELU form it evaluates: the tanh form by the
    hardware's tanh.approx (relative error 2^-11) since that became the engines' default, with the
    tolerances of :func:`test_every_row_launch_quantises_like_the_reference`."""
    from virnucpro_trt.engines.fp8_quantize import GELU_TANH, ROW_LAUNCH, TRITON_MODES, quantize_rows

    assert BIAS_GELU in TRITON_MODES
    tanh = ROW_LAUNCH[BIAS_GELU].erf == GELU_TANH
    cuda = torch.device("cuda", 0)
    gen = torch.Generator(device=cuda).manual_seed(cols)
    x = torch.randn(333, cols, generator=gen, device=cuda) * 2
    x[3] = -x[3].abs() - 0.3  # every value in the negative lobe: the exact amax pass
    x[4] *= 0.01  # GELU of the row's maximum below 0.17: the exact amax pass again
    x[5] = 0  # all zero: the amax floor
    x = x.to(torch.bfloat16)
    bias = (0.1 * torch.randn(cols, generator=gen, device=cuda)).to(torch.bfloat16)
    q, scale = quantize_rows(x, BIAS_GELU, bias=bias)
    want_q, want_scale = quantize_rows_reference(x, BIAS_GELU, bias=bias, gelu_tanh=tanh)
    torch.testing.assert_close(scale, want_scale, rtol=1e-3 if tanh else 1e-5, atol=0)
    differ = (q.float() != want_q.float()).float().mean().item()
    assert differ < (2e-2 if tanh else 1e-3)  # e4m3 ties and tanh.approx / erf ulps only
    assert (q.float() * scale - want_q.float() * want_scale).abs().max() <= 2 * want_scale.max() * 32


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the H200 host)")
@pytest.mark.parametrize("cols", [64, 96, 2560, 3000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_layernorm_and_plain_kernels_quantise_like_the_reference(cols: int, dtype: torch.dtype) -> None:
    """LayerNorm (with and without the residual add) and plain row quantisation kernels against torch,
    on rows with a large mean and an outlier channel (the residual stream's)."""
    from virnucpro_trt.engines.fp8_quantize import (
        add_layernorm_rows,
        add_layernorm_rows_reference,
        quantize_rows,
    )

    cuda, every = torch.device("cuda", 0), frozenset({IDENTITY, LAYERNORM, BIAS_GELU})
    gen = torch.Generator(device=cuda).manual_seed(cols)
    x = torch.randn(333, cols, generator=gen, device=cuda) * 2 + 3
    x[:, 5] *= 40  # an outlier channel
    x[7] = 0  # all zero: the amax floor (LayerNorm: its bias alone)
    x = x.to(dtype)
    weight = 1 + 0.1 * torch.randn(cols, generator=gen, device=cuda)
    weight[11] = 30.0  # an outlier gain
    bias = 0.1 * torch.randn(cols, generator=gen, device=cuda)
    delta = torch.randn(333, cols, generator=gen, device=cuda).to(torch.bfloat16)
    delta_bias = (0.1 * torch.randn(cols, generator=gen, device=cuda)).to(torch.bfloat16)

    def same(got: tuple[torch.Tensor, torch.Tensor], want: tuple[torch.Tensor, torch.Tensor]) -> None:
        (q, scale), (want_q, want_scale) = got, want
        torch.testing.assert_close(scale, want_scale, rtol=2e-5, atol=0)
        assert (q.float() != want_q.float()).float().mean().item() < 1e-3  # e4m3 ties and rsqrt ulps
        assert (q.float() * scale - want_q.float() * want_scale).abs().max() <= 2 * want_scale.max() * 32

    same(quantize_rows(x, IDENTITY, kernels=every), quantize_rows_reference(x, IDENTITY))
    same(
        quantize_rows(x, LAYERNORM, weight, bias, 1e-5, kernels=every),
        quantize_rows_reference(x, LAYERNORM, weight, bias, 1e-5),
    )
    total, *got = add_layernorm_rows(x, delta, delta_bias, weight, bias, 1e-5, every)
    want_total, *want = add_layernorm_rows_reference(x, delta, delta_bias, weight, bias, 1e-5)
    assert total.dtype == dtype and torch.equal(total, want_total)
    same(tuple(got), tuple(want))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the H200 host)")
@pytest.mark.parametrize("cols", [96, 2560, 10240])
@pytest.mark.parametrize(
    ("chunk", "num_warps", "erf", "resident"),
    [
        (2048, 4, 1, False),
        (1024, 8, 0, False),
        (4096, 16, 1, False),
        (512, 2, 0, False),
        (0, 4, 0, True),
        (0, 8, 1, True),
        (0, 16, 1, True),
        (2048, 4, 2, False),
        (0, 16, 2, True),
    ],
)
def test_every_row_launch_quantises_like_the_reference(
    cols: int, chunk: int, num_warps: int, erf: int, resident: bool
) -> None:
    """The launches ``row_kernels.py`` times (chunk, warps, erf by libdevice or by the polynomial, the
    resident row) compute what the defaults do: the same checks as the kernels' own tests."""
    from virnucpro_trt.engines.fp8_quantize import (
        GELU_TANH,
        RowLaunch,
        _launch_bias_gelu_rows,
        _launch_quantize_normalised_rows,
        add_layernorm_rows_reference,
        scale_rows_to_e4m3,
    )

    launch, cuda = RowLaunch(chunk, num_warps, erf, resident), torch.device("cuda", 0)
    gen = torch.Generator(device=cuda).manual_seed(cols + chunk)
    x = torch.randn(257, cols, generator=gen, device=cuda) * 2
    x[3] = -x[3].abs() - 0.3  # the exact amax pass of the GELU kernel
    x = x.to(torch.bfloat16)
    bias = (0.1 * torch.randn(cols, generator=gen, device=cuda)).to(torch.bfloat16)
    weight = 1 + 0.1 * torch.randn(cols, generator=gen, device=cuda)
    checks = [
        (
            _launch_quantize_normalised_rows(x, None, None, weight, bias, 1e-5, launch)[1:],
            quantize_rows_reference(x, LAYERNORM, weight, bias, 1e-5),
        ),
        (
            _launch_quantize_normalised_rows(x, None, None, None, None, 0.0, launch)[1:],
            quantize_rows_reference(x, IDENTITY),
        ),
        (
            _launch_quantize_normalised_rows(x.float(), x, bias, weight, bias, 1e-5, launch)[1:],
            add_layernorm_rows_reference(x.float(), x, bias, weight, bias, 1e-5)[1:],
        ),
    ]
    if erf == GELU_TANH:  # the tanh form, by the hardware's tanh.approx (relative error 2^-11)
        gelu = scale_rows_to_e4m3(nn.functional.gelu(x.float() + bias.float(), approximate="tanh"))
    else:
        gelu = quantize_rows_reference(x, BIAS_GELU, bias=bias)
    checks.append((_launch_bias_gelu_rows(x, bias, launch), gelu))
    for index, ((q, scale), (want_q, want_scale)) in enumerate(checks):
        approximate = erf == GELU_TANH and index == len(checks) - 1
        torch.testing.assert_close(scale, want_scale, rtol=1e-3 if approximate else 2e-5, atol=0)
        assert (q.float() != want_q.float()).float().mean().item() < (2e-2 if approximate else 1e-3)
        assert (q.float() * scale - want_q.float() * want_scale).abs().max() <= 2 * want_scale.max() * 32


def test_the_polynomial_erf_is_within_its_bound() -> None:
    """Abramowitz & Stegun 7.1.26, as the ``ERF_POLYNOMIAL`` GELU kernel evaluates it: |error| <= 1.5e-7
    everywhere (odd, saturating), far below the bf16 rounding of the values it is applied to."""
    from virnucpro_trt.engines.fp8_quantize import erf_polynomial

    z = torch.linspace(-12, 12, 2_400_001, dtype=torch.float64)
    assert (erf_polynomial(z) - torch.erf(z)).abs().max().item() <= 1.5e-7
    assert torch.equal(erf_polynomial(-z), -erf_polynomial(z))
    assert erf_polynomial(torch.tensor([0.0], dtype=torch.float64)).abs().item() <= 1.5e-7


def test_a_resident_row_is_two_power_of_two_pieces_covering_it() -> None:
    """The resident kernels hold a row as a head (the largest power of two that fits) and a tail (the
    rest, rounded up to a power of two): ESM-2's rows without an idle lane, any row covered."""
    from virnucpro_trt.engines.fp8_quantize import resident_pieces

    assert [resident_pieces(cols) for cols in (10240, 2560, 96, 64, 3000, 1)] == [
        (8192, 2048), (2048, 512), (64, 32), (64, 0), (2048, 1024), (1, 0),
    ]  # fmt: skip
    for cols in range(1, 5000):
        head, tail = resident_pieces(cols)
        assert head <= cols <= head + tail and tail < 2 * (cols - head) + 1  # covered, < half the tail idle
        assert (head & (head - 1)) == 0 and (tail & (tail - 1)) == 0 and tail <= head


def test_chunks_divide_the_row_where_they_can() -> None:
    from virnucpro_trt.engines.fp8_quantize import chunk_size

    assert [chunk_size(cols, 2048) for cols in (10240, 2560, 3072, 768, 96, 64, 1)] == [
        2048, 512, 1024, 1024, 128, 64, 1,
    ]  # fmt: skip
    assert chunk_size(3000, 1024) == 64  # nothing larger divides it: the last chunk is masked
    assert chunk_size(2560, 1024) == 512


def test_gelu_of_the_row_maximum_is_the_amax_above_the_negative_lobe() -> None:
    """The rule the BIAS_GELU kernel's amax rests on: below 0, |GELU| never reaches 0.17."""
    from virnucpro_trt.engines.fp8_quantize import GELU_NEGATIVE_BOUND

    z = torch.linspace(-30, 0, 3_000_001, dtype=torch.float64)
    lobe = nn.functional.gelu(z).abs().max().item()
    assert 0.1699 < lobe < GELU_NEGATIVE_BOUND
    spread = torch.linspace(0.01, 5, 64, dtype=torch.float64)[:, None]
    rows = torch.randn(64, 512, dtype=torch.float64) * spread
    top = nn.functional.gelu(rows.max(-1).values)
    exact = nn.functional.gelu(rows).abs().max(-1).values
    shortcut = top >= GELU_NEGATIVE_BOUND
    assert shortcut.any() and (~shortcut).any()
    assert torch.equal(top[shortcut], exact[shortcut])


def test_row_launch_facts_name_every_mode_and_the_engines_gelu() -> None:
    """What an fp8 build records of its row kernels: every mode by name, GELU in its tanh form."""
    from virnucpro_trt.engines.fp8_quantize import ERF_LIBDEVICE, GELU_TANH, ROW_LAUNCH, row_launch_facts

    facts = row_launch_facts()
    assert set(facts) == {"identity", "layernorm", "bias_gelu"} and len(ROW_LAUNCH) == 3
    assert facts["bias_gelu"] == {"chunk": 2048, "num_warps": 4, "erf": GELU_TANH, "resident": False}
    assert all(
        not f["resident"] and f["erf"] == ERF_LIBDEVICE for name, f in facts.items() if name != "bias_gelu"
    )


def test_the_manifests_vocabulary_must_be_the_packages_own() -> None:
    """The tokenizers are held to the manifest's ``vocab_size``; the package records its own
    (``virnucpro.vocab_size``). A manifest claiming more rows than the package has (with a tokenizer
    emitting ids up to it) aborted predict and embed inside the compiled embedding kernel (SIGABRT,
    "index out of bounds: 0 <= tmp7 < 33"); one recording none for a package that records its size
    skipped the tokenizer check. The C++ host refused both; now the Python loader does too."""
    from virnucpro_trt.engines.inductor_runner import check_metadata
    from virnucpro_trt.engines.inductor_shapes import META_PREFIX
    from virnucpro_trt.errors import EngineMismatchError

    shapes = ShapeRange(1, 4, 8, 2, 20, 40)
    graph = GraphShapes(1, 8, 2, 40, 2)
    metadata = {
        **graph.to_metadata(),
        f"{META_PREFIX}kind": "esm2",
        f"{META_PREFIX}precision": "fp32",
        f"{META_PREFIX}dim": "64",
        f"{META_PREFIX}vocab_size": "33",
    }
    path = Path("esm2.cpu.fp32.pt2")
    assert check_metadata(metadata, path, "esm2", "fp32", 64, shapes, 33) == graph
    assert check_metadata(metadata, path, "esm2", "fp32", 64, shapes) == graph  # a fresh build's check
    for manifest_says, needle in ((76, "embeds '33' tokens but the manifest says 76"), (0, "says none")):
        with pytest.raises(EngineMismatchError, match=needle):
            check_metadata(metadata, path, "esm2", "fp32", 64, shapes, manifest_says)
    older = {k: v for k, v in metadata.items() if not k.endswith("vocab_size")}  # before build recipe 8
    assert check_metadata(older, path, "esm2", "fp32", 64, shapes, 0) == graph
    with pytest.raises(EngineMismatchError, match="embeds an unrecorded number of tokens"):
        check_metadata(older, path, "esm2", "fp32", 64, shapes, 33)
