"""The project's Triton kernels run by Triton's interpreter on the CPU (numpy instead of a GPU).

Not collected by the main test session: ``test_kernels_in_the_interpreter.py`` runs this file in a child
pytest with ``TRITON_INTERPRET=1``, which Triton reads when a kernel is defined, so the session's own
imports must not see it. The interpreter computes with numpy, so these check the kernels' arithmetic and
indexing (rotary by halves, padding, the online softmax, the bias, the row statistics), not their speed
or GPU code generation; it has no bf16 stores and no inline assembly, so inputs are fp16/fp32 and GELU's
hardware-tanh form is left to the GPU tests.
"""

from __future__ import annotations

import os

import pytest
import torch

from tests.engines.test_rotary_attention import CPU, _inputs, assert_as_close_as_sdpa
from virnucpro_trt.engines import fp8_quantize as fq
from virnucpro_trt.engines import rotary_attention as ra

assert os.environ.get("TRITON_INTERPRET") == "1", "run by test_kernels_in_the_interpreter.py"


def _bias(heads: int, head_dim: int, dtype: torch.dtype, seed: int = 1) -> torch.Tensor:
    return torch.randn(3 * heads * head_dim, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize(
    ("lengths", "heads", "head_dim"), [([40, 33, 5], 2, 64), ([70, 12, 1], 2, 16), ([20, 19], 3, 32)]
)
@pytest.mark.parametrize("launch", [ra.ATTENTION_LAUNCH, ra.AttentionLaunch(16, 16, 2, 1)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_the_attention_kernel_computes_the_models_attention(
    dtype: torch.dtype, lengths: list[int], heads: int, head_dim: int, launch: ra.AttentionLaunch,
    with_bias: bool,
) -> None:  # fmt: skip
    """Against the model's SDPA attention in fp32 on the real query rows (the bias, when handed to the
    kernel, added to the projection first): as close as the same SDPA in the input's precision is."""
    qkv, cos, sin, mask = _inputs(lengths, heads, head_dim, CPU, dtype)
    bias = _bias(heads, head_dim, dtype) if with_bias else None
    real = mask[:, 0, 0, :]
    out = ra.launch_rotary_attention(qkv, cos, sin, real, head_dim**-0.5, launch, bias)
    summed = qkv + bias.view(3, heads, head_dim) if with_bias else qkv
    assert_as_close_as_sdpa(out, summed, cos, sin, mask, slack=1e-3 if dtype == torch.float16 else 1e-5)


def test_the_bias_in_the_attention_kernel_is_the_bias_added_before_it() -> None:
    """Bit for bit here (on the H200 the two compiled kernels may round one output step apart)."""
    qkv, cos, sin, mask = _inputs([33, 20, 7], 2, 64, CPU, torch.float16, seed=4)
    bias, real = _bias(2, 64, torch.float16, seed=4), mask[:, 0, 0, :]
    summed = qkv + bias.view(3, 2, 64)
    given = ra.launch_rotary_attention(qkv, cos, sin, real, 0.125, bias=bias)
    before = ra.launch_rotary_attention(summed, cos, sin, real, 0.125)
    torch.testing.assert_close(given, before, atol=0, rtol=0)


def _rows(cols: int, seed: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(5, cols, generator=gen) * 3
    x[1, 7] = 90.0  # an outlier channel
    x[2] = 0.0  # an all-zero row
    return x, torch.randn(5, cols, generator=gen), torch.randn(cols, generator=gen)


def _same_codes(codes: torch.Tensor, expected: torch.Tensor) -> None:
    """e4m3 codes as torch's cast of the reference gives them, within what the interpreter's own
    fp32 -> e4m3 conversion (numpy emulation, not the GPU's ``cvt``, which the GPU tests hold to the
    reference) and libm allow: one rounding step either way (codes are monotone in the magnitude), a
    value rounded up to a power of two that lost the carry into the exponent (read as the power of two
    below it: code + 8 is then the power of two, within a step of the expected code), and anything below
    2^-5 (|code| < 16, under 1/14000 of the row's amax), where the emulation truncates. A wrong scale, a
    wrong row or a misplaced value is none of these."""
    got, want = codes.view(torch.uint8).int(), expected.view(torch.uint8).int()
    same_sign = (got & 0x80) == (want & 0x80)
    one_step = same_sign & ((got - want).abs() <= 1)
    dropped_carry = same_sign & ((got & 7) == 0) & ((got + 8 - want).abs() <= 1)
    tiny = ((got & 0x7F) < 16) & ((want & 0x7F) < 16)
    wrong = ~(one_step | dropped_carry | tiny)
    assert not wrong.any(), list(zip(got[wrong][:5].tolist(), want[wrong][:5].tolist(), strict=True))
    assert (got == want).float().mean().item() >= 0.9


@pytest.mark.parametrize("launch", [fq.RowLaunch(chunk=512), fq.RowLaunch(chunk=2048, resident=True)])
def test_the_row_kernels_quantise_layernorm_and_the_residual_sum(launch: fq.RowLaunch) -> None:
    x, delta, weight = _rows(2560, seed=1)
    norm = (weight, weight * 0.5, 1e-5)  # LayerNorm's weight, bias and eps
    delta_bias = weight.flip(0)
    total, codes, scale = fq._launch_quantize_normalised_rows(x, delta, delta_bias, *norm, launch)
    ref_total, ref_codes, ref_scale = fq.add_layernorm_rows_reference(x, delta, delta_bias, *norm)
    torch.testing.assert_close(total, ref_total, atol=0, rtol=0)
    torch.testing.assert_close(scale, ref_scale, atol=0, rtol=1e-5)
    _same_codes(codes, ref_codes)
    _, codes, scale = fq._launch_quantize_normalised_rows(x, None, None, None, None, 0.0, launch)
    ref_codes, ref_scale = fq.quantize_rows_reference(x, fq.IDENTITY)
    torch.testing.assert_close(scale, ref_scale, atol=0, rtol=1e-6)
    _same_codes(codes, ref_codes)


@pytest.mark.parametrize("erf", [fq.ERF_LIBDEVICE, fq.ERF_POLYNOMIAL])
def test_the_gelu_row_kernel_quantises_bias_and_gelu(erf: int) -> None:
    x, _, bias = _rows(10240, seed=2)
    x[3] = -torch.rand(10240) * 4  # a row whose GELU is all in the negative lobe: the exact amax pass
    codes, scale = fq._launch_bias_gelu_rows(x, bias, fq.RowLaunch(chunk=2048, erf=erf))
    ref_codes, ref_scale = fq.quantize_rows_reference(x, fq.BIAS_GELU, bias=bias)
    torch.testing.assert_close(scale, ref_scale, atol=0, rtol=1e-5)
    _same_codes(codes, ref_codes)
