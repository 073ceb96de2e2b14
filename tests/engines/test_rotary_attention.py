"""ESM-2's own attention kernel (engines/rotary_attention.py): routing and the build's use of it on the
CPU; the Triton kernel itself against fp32 and SDPA, compiled, and in CUDA engines on the GPU host."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.engines.test_inductor_parts import needs_cpu_fp8
from virnucpro_trt.engines import rotary_attention as ra
from virnucpro_trt.engines.inductor_backend import INDUCTOR_BACKEND, _own_attention_kernel, attention_fact
from virnucpro_trt.engines.inductor_fp8 import convert_to_fp8
from virnucpro_trt.engines.inductor_model import device_copy
from virnucpro_trt.engines.spec import BuildOptions, BuildRequest, ShapeRange
from virnucpro_trt.models.esm2 import RotaryEmbedding, sdpa_rotary_attention
from virnucpro_trt.models.random_checkpoints import random_esm2

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)
needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the H200 host)"
)


def _inputs(
    lengths: list[int], heads: int, head_dim: int, device: torch.device, dtype: torch.dtype, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    longest = max(lengths)
    qkv = torch.randn(len(lengths), longest, 3, heads, head_dim, generator=gen).to(device, dtype)
    cos, sin = RotaryEmbedding(head_dim).tables(longest, device)
    real = torch.arange(longest, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]
    return qkv, cos, sin, real[:, None, None, :]


def assert_as_close_as_sdpa(
    out: torch.Tensor, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor,
    slack: float = 1e-3,
) -> None:  # fmt: skip
    """``out`` (the kernel's attention of ``qkv``, bias already in it) against the model's SDPA attention
    in fp32 on the real query rows: at most twice as far as SDPA in ``qkv``'s own precision, plus
    ``slack`` (the padded query rows are not compared: nothing reads them)."""
    scaling = qkv.shape[-1] ** -0.5
    reference = sdpa_rotary_attention(qkv.float(), cos, sin, mask, scaling)
    same_precision = sdpa_rotary_attention(qkv, cos, sin, mask, scaling).float()
    assert out.shape == reference.shape and out.dtype == qkv.dtype
    rows = mask[:, 0, 0, :, None].expand_as(out)
    kernel_error = (out.float() - reference).abs()[rows].max().item()
    sdpa_error = (same_precision - reference).abs()[rows].max().item()
    assert kernel_error <= 2 * sdpa_error + slack, (kernel_error, sdpa_error)


def _tiny_esm2_batch(seed: int = 3) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    model = random_esm2(seed=seed).eval()
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 24, (3, 11), generator=gen)
    mask = torch.ones(3, 11, dtype=torch.int64)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    return model, ids, mask


# ----------------------------------------------------------------------------- CPU: routing and the build


def test_off_cuda_the_kernel_function_is_the_sdpa_attention() -> None:
    qkv, cos, sin, mask = _inputs([9, 4, 1], 2, 16, CPU, torch.float32)
    assert not ra.kernel_applies_to(CPU, torch.bfloat16, 64)
    torch.testing.assert_close(
        ra.rotary_attention(qkv, cos, sin, mask, 0.25), sdpa_rotary_attention(qkv, cos, sin, mask, 0.25)
    )
    bias = torch.randn(3 * 2 * 16, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(  # a bias not yet in the projection is added before SDPA
        ra.rotary_attention(qkv, cos, sin, mask, 0.25, bias),
        sdpa_rotary_attention(qkv + bias.view(3, 2, 16), cos, sin, mask, 0.25),
    )


@pytest.mark.parametrize(
    ("dtype", "head_dim", "applies"),
    [(torch.bfloat16, 64, True), (torch.float16, 16, True), (torch.float32, 64, False),
     (torch.bfloat16, 48, False), (torch.bfloat16, 8, False), (torch.bfloat16, 512, False)],
)  # fmt: skip
def test_the_kernel_applies_to_half_precision_power_of_two_heads_on_cuda(
    dtype: torch.dtype, head_dim: int, applies: bool
) -> None:
    """One rule with its reason: the build's choice and the diagnostics' messages both come from it."""
    assert ra.kernel_applies_to(CUDA, dtype, head_dim) == (applies and ra.triton is not None)
    assert not ra.kernel_applies_to(CPU, dtype, head_dim)
    reason = ra.kernel_unavailable_reason(CUDA, dtype, head_dim)
    if ra.triton is None:
        assert "triton" in reason
    elif applies:
        assert reason is None
    else:
        assert (f"heads of {head_dim}" in reason) != (dtype == torch.float32 and "float32" in reason)
    assert "CUDA" in (ra.kernel_unavailable_reason(CPU, dtype, head_dim) or "") or ra.triton is None


def test_every_layer_hands_its_attention_to_the_models_kernel() -> None:
    """The encoder passes each layer's fused projection and the boolean mask to ``attention_kernel``,
    whose output is what the layer uses."""
    model, ids, mask = _tiny_esm2_batch()
    with torch.no_grad():
        expected = model(ids, mask)
        calls: list[tuple[torch.Size, torch.dtype, torch.Size]] = []

        def recording(qkv, cos, sin, key_mask, scaling, bias):  # type: ignore[no-untyped-def]
            assert bias is None  # the bf16 model's projection adds its own bias
            calls.append((qkv.shape, key_mask.dtype, key_mask.shape))
            return sdpa_rotary_attention(qkv, cos, sin, key_mask, scaling)

        model.attention_kernel = recording
        torch.testing.assert_close(model(ids, mask), expected)
        assert calls == [(torch.Size([3, 11, 3, 4, 16]), torch.bool, torch.Size([3, 1, 1, 11]))] * 2
        model.attention_kernel = lambda qkv, *_: torch.zeros_like(qkv[:, :, 0].flatten(2))
        assert not torch.allclose(model(ids, mask), expected)


@needs_cpu_fp8
def test_fp8_layers_can_leave_the_qkv_bias_to_the_kernel() -> None:
    """With ``qkv_bias_in_attention`` the fp8 layers hand qkv's bias to the attention kernel instead of
    adding it after the GEMM; the embeddings are the same (the sum is rounded the same way)."""
    model, ids, mask = _tiny_esm2_batch(seed=8)
    outputs, biases = [], []

    def recording(qkv, cos, sin, key_mask, scaling, bias):  # type: ignore[no-untyped-def]
        biases.append(bias)
        return ra.rotary_attention(qkv, cos, sin, key_mask, scaling, bias)

    for later in (False, True):
        fp8 = device_copy(model, CPU, torch.bfloat16)
        convert_to_fp8(fp8, fold_residual=True, qkv_bias_in_attention=later)
        fp8.attention_kernel = recording
        with torch.no_grad():
            outputs.append(fp8(ids, mask))
        if later:
            assert all(b is layer.qkv.bias for b, layer in zip(biases[-2:], fp8.layers, strict=True))
        else:
            assert biases == [None, None]
    torch.testing.assert_close(outputs[1], outputs[0], atol=0, rtol=0)


def test_a_cpu_build_asked_for_the_kernel_keeps_sdpa_and_says_so(tmp_path: Path) -> None:
    model, ids, mask = _tiny_esm2_batch()
    model.attention_kernel = ra.rotary_attention  # arriving with one changes nothing: the options decide
    options = BuildOptions(extra={"rotary_attention_kernel": True})
    assert not _own_attention_kernel(model, options, CPU, "fp32")
    assert model.attention_kernel is None
    request = BuildRequest(model, "esm2", (ids, mask), ShapeRange(1, 4, 16, 2, 12, 16), "fp32", CPU,
                           tmp_path / "esm2.pt2", options)  # fmt: skip
    built = INDUCTOR_BACKEND.build(request)
    assert built.facts["rotary_attention_kernel"] is False
    assert "rotary_attention_launch" not in built.facts
    assert built.facts["attention"] == "cpu"


def test_an_engine_with_the_kernel_says_so_where_it_names_its_attention() -> None:
    """Not the SDPA kernel ``--attention`` asked for, which such an engine never calls."""
    options = BuildOptions(attention="cudnn")
    assert attention_fact(options, torch.device("cuda"), own_kernel=True) == "rotary-triton"
    assert attention_fact(options, torch.device("cuda"), own_kernel=False) == "cudnn"
    assert attention_fact(options, CPU, own_kernel=False) == "cpu"


# ----------------------------------------------------------------------------- GPU: the kernel itself


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    ("lengths", "heads", "head_dim"),
    [
        ([168] * 5, 4, 64),
        ([168, 100, 3, 1], 3, 64),
        ([51, 49, 50], 2, 64),
        ([300, 7], 2, 32),
        ([17, 16], 4, 16),
    ],
)
@pytest.mark.parametrize(
    "launch", [ra.ATTENTION_LAUNCH, ra.AttentionLaunch(128, 32, 8, 3), ra.AttentionLaunch(16, 16, 2, 1)]
)
def test_the_kernel_computes_the_models_attention(
    dtype: torch.dtype, lengths: list[int], heads: int, head_dim: int, launch: ra.AttentionLaunch
) -> None:
    """Against the model's SDPA attention in fp32 on the real query rows: as close as SDPA in the same
    half precision is (the padded query rows are not compared: nothing reads them)."""
    qkv, cos, sin, mask = _inputs(lengths, heads, head_dim, CUDA, dtype)
    with ra.launch_in_effect(launch):
        out = ra.rotary_attention(qkv, cos, sin, mask, head_dim**-0.5)
    assert_as_close_as_sdpa(out, qkv, cos, sin, mask)


@pytest.mark.gpu
@needs_cuda
def test_the_kernel_adds_the_projection_bias_as_the_model_does() -> None:
    """The bias handed to the kernel gives what the kernel gives on the projection with the bias already
    added (summed in fp32, rounded once to bf16, as the add after the GEMM): as close to the model's fp32
    attention as SDPA in bf16, and within two bf16 steps of the largest output of the other, not bit for
    bit: the two are separately compiled kernels whose instruction order differs on the H200, where an
    output near zero differed (measurement log, thirteenth session); in Triton's interpreter they agree."""
    qkv, cos, sin, mask = _inputs([168, 90, 3], 4, 64, CUDA, torch.bfloat16)
    bias = torch.randn(3 * 4 * 64, generator=torch.Generator().manual_seed(2)).to(CUDA, torch.bfloat16)
    summed = qkv + bias.view(3, 4, 64)
    with_bias = ra.rotary_attention(qkv, cos, sin, mask, 0.125, bias)
    pre_summed = ra.rotary_attention(summed, cos, sin, mask, 0.125)
    assert_as_close_as_sdpa(with_bias, summed, cos, sin, mask)
    step = 2**-8 * pre_summed.abs().max().item()  # one bf16 step at the largest output
    torch.testing.assert_close(with_bias, pre_summed, rtol=2**-7, atol=2 * step)


@pytest.mark.gpu
@needs_cuda
def test_the_kernel_compiles_into_one_graph() -> None:
    qkv, cos, sin, mask = _inputs([40, 33, 5], 4, 64, CUDA, torch.bfloat16)
    ra.register_kernel()
    compiled = torch.compile(ra.rotary_attention, fullgraph=True, dynamic=True)
    torch.testing.assert_close(
        compiled(qkv, cos, sin, mask, 0.125), ra.rotary_attention(qkv, cos, sin, mask, 0.125)
    )


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize(
    ("precision", "bias_later"),
    [("bf16", False), ("fp8", False), ("fp8", True)],
    ids=["bf16", "fp8", "fp8-bias"],
)
def test_cuda_engines_built_with_the_kernel_match_fp32(
    precision: str, bias_later: bool, tmp_path: Path
) -> None:
    """A tiny ESM-2 (heads of 16) built with ``rotary_attention_kernel`` (and fp8 with qkv's bias left
    to it): no SDPA call in the engine, the facts say so, and padded batches of several shapes agree
    with the fp32 model."""
    if (reason := INDUCTOR_BACKEND.availability(CUDA, precision)) is not None:
        pytest.skip(reason)
    model, ids, mask = _tiny_esm2_batch(seed=37)
    shapes = ShapeRange(1, 16, 64, 2, 40, 130)
    options = BuildOptions(extra={"rotary_attention_kernel": True, "fp8_qkv_bias_in_attention": bias_later})
    request = BuildRequest(model, "esm2", (ids, mask), shapes, precision, CUDA, tmp_path / "e.pt2", options)
    built = INDUCTOR_BACKEND.build(request)
    assert built.facts["rotary_attention_kernel"] is True
    assert built.facts["rotary_attention_launch"] == ra.launch_facts()
    assert built.facts["attention"] == "rotary-triton"
    assert not [k for k in built.facts["extern_kernels"] if "attention" in k]
    if precision == "fp8":
        assert built.facts["fp8"]["qkv_bias_in_attention"] is bias_later
    runner = INDUCTOR_BACKEND.load(request.load_request(built.path, 64, 1))
    rng = np.random.default_rng(5)
    floor = 0.9995 if precision == "bf16" else 0.99
    for batch, length in ((1, 3), (7, 41), (16, 130), (16, 17)):
        lengths = rng.integers(3, length + 1, batch)
        lengths[0] = length
        tokens = torch.from_numpy(rng.integers(4, 24, (batch, length)))
        real = torch.arange(length)[None, :] < torch.from_numpy(lengths)[:, None]
        tokens = torch.where(real, tokens, 1)
        out = torch.from_numpy(runner.embed_padded(tokens.numpy(), real.to(torch.int64).numpy()))
        with torch.no_grad():
            expected = model(tokens, real.to(torch.int64))
        cosine = torch.nn.functional.cosine_similarity(out.float(), expected, dim=-1)
        assert torch.isfinite(out).all() and cosine.min() >= floor, (batch, length, cosine.min())
