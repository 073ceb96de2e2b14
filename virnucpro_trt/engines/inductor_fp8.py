"""fp8 (e4m3) linears with row-wise scales, written so that torch.export and AOTInductor compile them.

ESM-2 3B spends ~97% of its FLOPs in the four linears of each layer and Hopper runs e4m3 GEMMs at twice
the bf16 rate: fp8 linears are the largest lever there is (figures: docs/measurements.md).

* Weights are quantised once, at build time, per output channel (scale = row amax / 448): one outlier
  channel cannot flatten the others, and the scale vector is a static [1, N] constant.
* Activations are quantised per row (token) at run time: amax over the channel dimension, in fp32,
  feeding ``torch._scaled_mm`` (cuBLASLt row-wise fp8 GEMM) with scale_a [M, 1] and scale_b [1, N] and a
  bf16 output. In ESM-2 (:class:`Fp8Esm2Layer`) the quantisation is written together with the LayerNorm
  or GELU that produces the input (:mod:`~virnucpro_trt.engines.fp8_quantize`), so that one kernel does
  both, as Triton kernels (the attention's residual add and out_proj's bias go into the second
  LayerNorm's): Inductor's own fusions re-read and recompute each row (measurement log).
* Fast accumulation (``use_fast_accum``, what torchao's float8 inference uses) is the engines' default:
  it is measurably faster on Hopper at the same pooled cosine (measurement log).
* The bias is added after the GEMM in bf16 instead of being passed to ``_scaled_mm``: bias support for
  row-wise scaling has varied across torch versions, and Inductor fuses the add into the next kernel
  (out_proj's and fc1's go into our row kernels). ``gemm_bias`` puts qkv's and fc2's into the GEMM
  epilogue instead, as torchao does (it runs on torch 2.11, CPU and H200): a candidate against the
  engines' dynamic-shape penalty, where the add after fc2 broadcasts the bias over dynamic rows
  (DEVELOPERS.md, open problems); off until measured.

Only linears whose in/out features are multiples of 16 are converted (a ``_scaled_mm`` requirement); all
ESM-2 and DNABERT-S linears qualify. Embeddings, LayerNorm, attention and pooling stay bf16/fp32.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from virnucpro_trt.engines.fp8_quantize import (
    BIAS_GELU,
    FP8_DTYPE,
    IDENTITY,
    LAYERNORM,
    TRITON_MODES,
    add_layernorm_rows,
    quantize_rows,
    register_kernels,
    residual_sum,
    scale_rows_to_e4m3,
)
from virnucpro_trt.models.esm2 import AttentionKernel, Esm2Layer, self_attention
from virnucpro_trt.models.layers import Fp32LayerNorm

MIN_CAPABILITY = (8, 9)  # Ada / Hopper: first GPUs with fp8 tensor cores


def fp8_unavailable_reason(device: torch.device) -> str | None:
    """Why fp8 engines cannot be built on ``device`` (None when they can)."""
    if FP8_DTYPE is None or not hasattr(torch, "_scaled_mm"):
        return f"fp8 needs torch with float8_e4m3fn and _scaled_mm; torch {torch.__version__} has not"
    if device.type != "cuda":
        return f"fp8 needs a CUDA GPU with compute capability >= 8.9 (Ada/Hopper); {device.type} has none"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < MIN_CAPABILITY:
        return f"fp8 needs compute capability >= 8.9 (Ada/Hopper); {device} is sm{major}{minor}"
    return None


class Fp8RowwiseLinear(nn.Module):
    """``y = x W^T + b`` with W stored as e4m3 plus per-output-channel scales, x quantised per row."""

    weight: torch.Tensor
    weight_scale: torch.Tensor

    def __init__(
        self,
        weight: torch.Tensor,
        weight_scale: torch.Tensor,
        bias: torch.Tensor | None,
        fast_accum: bool = False,
    ):
        super().__init__()
        self.register_buffer("weight", weight)  # [N, K] e4m3, row-major -> column-major operand via .t()
        self.register_buffer("weight_scale", weight_scale)  # [1, N] fp32
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.fast_accum = fast_accum  # cuBLASLt's fast fp8 accumulation (no periodic fp32 promotion)

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, out_dtype: torch.dtype = torch.bfloat16, fast_accum: bool = False
    ) -> Fp8RowwiseLinear:
        quantised, scale = scale_rows_to_e4m3(linear.weight.detach().float())
        bias = None if linear.bias is None else linear.bias.detach().to(out_dtype)
        return cls(quantised.contiguous(), scale.t().contiguous(), bias, fast_accum)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> Fp8RowwiseLinear:
        # ``model.to(bf16)`` would turn the e4m3 weight (a floating dtype) and the fp32 scales into bf16;
        # follow device moves only, like ESM-2's rotary frequencies.
        before = {"weight": self.weight, "weight_scale": self.weight_scale}
        super()._apply(fn, recurse)
        for name, tensor in before.items():
            setattr(self, name, tensor.to(device=getattr(self, name).device))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        quantised, scale = scale_rows_to_e4m3(x.reshape(-1, x.shape[-1]).float())
        out = self.matmul(quantised, scale, x.dtype)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], out.shape[-1])

    def matmul(
        self,
        quantised: torch.Tensor,
        scale: torch.Tensor,
        out_dtype: torch.dtype,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(quantised * scale) W^T [+ bias]`` for rows already in e4m3 with their scales [rows, 1]; a
        ``bias`` is added in the GEMM's epilogue, before the rounding to ``out_dtype``."""
        return torch._scaled_mm(
            quantised,
            self.weight.t(),
            scale_a=scale,
            scale_b=self.weight_scale,
            bias=bias,
            out_dtype=out_dtype,
            use_fast_accum=self.fast_accum,
        )

    def extra_repr(self) -> str:
        out_features, in_features = self.weight.shape
        accum = ", fast accumulation" if self.fast_accum else ""
        return f"in_features={in_features}, out_features={out_features}, e4m3 row-wise{accum}"


class PendingResidual(NamedTuple):
    """A layer's output left unsummed (``x + delta + delta_bias``) for the next kernel to add."""

    x: torch.Tensor
    delta: torch.Tensor
    delta_bias: torch.Tensor


class Fp8Esm2Layer(nn.Module):
    """An ESM-2 layer whose four linears run in fp8, each input quantised together with the op that
    produces it (:mod:`~virnucpro_trt.engines.fp8_quantize`): LayerNorm + quantise before qkv, the
    attention's residual add (with out_proj's bias) + LayerNorm + quantise before fc1, quantise the
    attention output before out_proj, fc1's bias + GELU + quantise before fc2; ``kernel_modes`` of these
    run as Triton kernels on CUDA (default: the ones measured faster).

    Same function as :class:`~virnucpro_trt.models.esm2.Esm2Layer` with fp8 linears, except that the
    LayerNorm and GELU outputs are quantised from fp32 instead of after a bf16 rounding, and the
    attention's residual sum is rounded once (not after the bias add too).

    ``fold_residual``: the layer returns its output as a :class:`PendingResidual` (fc2's output and bias
    not yet added), and a layer given one adds it inside its first LayerNorm's row kernel, as the second
    LayerNorm already does with the attention's output. That saves the separate add over the fp32
    residual stream (a read and a write of [tokens, 2560] per layer). The model's final LayerNorm then
    takes the pending sum (:class:`PendingSumLayerNorm`). The sum is rounded once, in fp32.

    ``qkv_bias_in_attention``: given an attention kernel (the engines' own, ``engines.rotary_attention``),
    qkv's GEMM leaves its bias out and the kernel adds it as it loads q, k and v (the same sum and
    rounding). With SDPA, Inductor fuses that add into the rotary/layout kernels; a user Triton kernel
    cannot take it, so without this the add is a pass of its own over [tokens, 7680].
    """

    def __init__(
        self,
        layer: Esm2Layer,
        fast_accum: bool,
        kernel_modes: frozenset[int] = TRITON_MODES,
        gemm_bias: bool = False,
        fold_residual: bool = False,
        qkv_bias_in_attention: bool = False,
    ):
        super().__init__()
        register_kernels()  # before any compiler traces this layer
        self.fold_residual = fold_residual  # return a PendingResidual for the next kernel to add
        # with an attention kernel, qkv's bias goes to it (added as q, k, v are loaded), not after the GEMM
        self.qkv_bias_in_attention = qkv_bias_in_attention
        self.kernel_modes = kernel_modes  # quantisation modes run by the Triton kernels (others: Inductor)
        self.gemm_bias = gemm_bias  # qkv's and fc2's biases in the GEMM epilogue (else an add after it)
        self.num_heads, self.head_dim, self.scaling = layer.num_heads, layer.head_dim, layer.scaling
        self.self_attn_layer_norm = layer.self_attn_layer_norm
        self.final_layer_norm = layer.final_layer_norm
        self.qkv = Fp8RowwiseLinear.from_linear(layer.qkv, layer.qkv.weight.dtype, fast_accum)
        self.out_proj = Fp8RowwiseLinear.from_linear(layer.out_proj, layer.out_proj.weight.dtype, fast_accum)
        self.fc1 = Fp8RowwiseLinear.from_linear(layer.fc1, layer.fc1.weight.dtype, fast_accum)
        self.fc2 = Fp8RowwiseLinear.from_linear(layer.fc2, layer.fc2.weight.dtype, fast_accum)

    def _normalised(self, x: torch.Tensor, norm: Fp32LayerNorm) -> tuple[torch.Tensor, torch.Tensor]:
        return quantize_rows(x, LAYERNORM, norm.weight, norm.bias, norm.eps, kernels=self.kernel_modes)

    def _project(
        self, linear: Fp8RowwiseLinear, rows: tuple[torch.Tensor, torch.Tensor], compute: torch.dtype
    ) -> torch.Tensor:
        if self.gemm_bias:
            return linear.matmul(*rows, compute, linear.bias)
        out = linear.matmul(*rows, compute)
        return out if linear.bias is None else out + linear.bias

    def _added_normalised(
        self, norm: Fp32LayerNorm, x: torch.Tensor, delta: torch.Tensor, delta_bias: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return add_layernorm_rows(x, delta, delta_bias, norm.weight, norm.bias, norm.eps, self.kernel_modes)

    def forward(
        self,
        x: torch.Tensor | PendingResidual,
        cos: torch.Tensor,
        sin: torch.Tensor,
        key_mask: torch.Tensor,
        kernel: AttentionKernel | None = None,
    ) -> torch.Tensor | PendingResidual:
        if isinstance(x, PendingResidual):  # the previous layer's output, added in the LayerNorm kernel
            x, *normalised = self._added_normalised(self.self_attn_layer_norm, *x)
        else:
            normalised = list(self._normalised(x, self.self_attn_layer_norm))
        batch, length, dim = x.shape
        compute = self.qkv.bias.dtype if self.qkv.bias is not None else torch.bfloat16
        bias_later = kernel is not None and self.qkv_bias_in_attention and not self.gemm_bias
        qkv_bias = self.qkv.bias if bias_later else None
        qkv = (
            self.qkv.matmul(*normalised, compute)
            if bias_later
            else self._project(self.qkv, normalised, compute)
        )
        qkv = qkv.view(batch, length, 3, self.num_heads, self.head_dim)
        attn = self_attention(qkv, cos, sin, key_mask, self.scaling, kernel, qkv_bias)
        attn_out = self.out_proj.matmul(*quantize_rows(attn, IDENTITY, kernels=self.kernel_modes), compute)
        out_bias = self.out_proj.bias if self.out_proj.bias is not None else attn_out.new_zeros(dim)
        x, *normalised = self._added_normalised(
            self.final_layer_norm, x, attn_out.view(batch, length, dim), out_bias
        )
        hidden = self.fc1.matmul(*normalised, compute)
        bias = self.fc1.bias if self.fc1.bias is not None else hidden.new_zeros(hidden.shape[-1])
        activated = quantize_rows(hidden, BIAS_GELU, bias=bias, kernels=self.kernel_modes)
        if self.fold_residual:
            out = self.fc2.matmul(*activated, compute).view(batch, length, dim)
            fc2_bias = self.fc2.bias if self.fc2.bias is not None else out.new_zeros(dim)
            return PendingResidual(x, out, fc2_bias)
        out = self._project(self.fc2, activated, compute)
        return x + out.view(batch, length, dim).to(x.dtype)


class PendingSumLayerNorm(nn.Module):
    """The model's final LayerNorm, first adding a :class:`PendingResidual` (the last folded layer's)."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor | PendingResidual) -> torch.Tensor:
        return self.norm(residual_sum(*x) if isinstance(x, PendingResidual) else x)


def convert_to_fp8(
    model: nn.Module,
    fast_accum: bool = True,
    kernel_modes: frozenset[int] = TRITON_MODES,
    gemm_bias: bool = False,
    fold_residual: bool = False,
    qkv_bias_in_attention: bool = False,
) -> int:
    """Make ``model`` (bf16, in place) an fp8 engine model; returns the number of fp8 linears.

    ESM-2 layers become :class:`Fp8Esm2Layer` (fused input quantisation, ``kernel_modes`` by the Triton
    kernels, ``gemm_bias``, ``fold_residual`` and ``qkv_bias_in_attention`` as there; folding also
    wraps the model's final LayerNorm in :class:`PendingSumLayerNorm`); any other eligible ``nn.Linear``
    (DNABERT-S) becomes an :class:`Fp8RowwiseLinear`.
    """
    converted = 0
    layers = getattr(model, "layers", None)
    if isinstance(layers, nn.ModuleList) and all(isinstance(layer, Esm2Layer) for layer in layers):
        for index, layer in enumerate(layers):
            layers[index] = Fp8Esm2Layer(
                layer, fast_accum, kernel_modes, gemm_bias, fold_residual, qkv_bias_in_attention
            )
            converted += 4
        if fold_residual:
            model.emb_layer_norm_after = PendingSumLayerNorm(model.emb_layer_norm_after)
    return converted + convert_linears_to_fp8(model, fast_accum)


def convert_linears_to_fp8(model: nn.Module, fast_accum: bool = False) -> int:
    """Replace (in place) every eligible ``nn.Linear`` of a bf16 model; returns how many were replaced."""
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, nn.Linear) and child.in_features % 16 == 0 and child.out_features % 16 == 0
    ]
    for parent, name, child in targets:
        setattr(parent, name, Fp8RowwiseLinear.from_linear(child, child.weight.dtype, fast_accum))
    return len(targets)
