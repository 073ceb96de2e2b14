"""ESM-2 encoder (fair-esm's ``ESM2``), written for batching, reduced precision and export.

Same function as fair-esm and ``transformers.EsmModel`` (see ``docs/models.md``), with changes
that do not alter the fp32 result:

* q, k and v are one fused Linear (rows q | k | v), built at load time from the checkpoint's separate
  projections: one GEMM instead of three.
* Rotary tables are computed once per forward in fp32 from positions 0..T-1 and shared by all layers.
  ``inv_freq`` is a buffer loaded from the checkpoint (stored fp16-rounded there; recomputing it changes
  results) and it stays fp32 when the module is cast to bf16/fp16.
* Attention is ``scaled_dot_product_attention`` with a boolean key-padding mask; q is scaled by
  head_dim^-0.5 before rotary, as fair-esm does. An engine may set ``attention_kernel`` to compute it
  instead (its own Triton kernel on CUDA in half precision, ``engines.rotary_attention``).
* LayerNorm statistics, rotary and pooling are fp32; the residual stream can be kept in fp32 while the
  matmuls run in half precision (``residual_fp32``, on by default: it measurably improves bf16 parity).
* An engine may set a layer's ``gelu_epilogue``: fc1, its bias and GELU as one
  ``torch._addmm_activation`` call (:func:`linear_gelu`), which on CUDA is one cuBLASLt GEMM with GELU in
  its epilogue, GELU's tanh form (an approximation of the exact erf GELU: off in the native model).

No data-dependent Python control flow and no host synchronisation in ``forward``: the module exports
with dynamic batch and sequence dimensions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

import torch
from torch import nn
from torch.nn import functional as F

from virnucpro_trt.models.config_checks import check_encoder_sizes, checked_layer_norm_eps
from virnucpro_trt.models.layers import Fp32LayerNorm, masked_mean

MASK_RATIO_TRAIN = 0.15 * 0.8
"""Fraction of tokens ESM-2 saw as <mask> (zeroed) in training; inference rescales by it."""

ROTARY_BASE = 10000.0

AttentionKernel: TypeAlias = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float, torch.Tensor | None], torch.Tensor
]
"""``(qkv [B, T, 3, H, d], cos, sin, key_mask [B, 1, 1, T] bool, scaling, bias) -> [B, T, H * d]``:
ESM-2's attention as :func:`sdpa_rotary_attention` computes it, by another kernel (an engine's); ``bias``
[3 * H * d] is the projection's bias when the caller left it out of ``qkv`` (None: already in it)."""


@dataclass(frozen=True)
class Esm2Config:
    """Shape and alphabet of an ESM-2 model; ``ffn_dim`` defaults to 4 * ``embed_dim`` like fair-esm."""

    num_layers: int
    embed_dim: int
    attention_heads: int
    ffn_dim: int = 0
    vocab_size: int = 33
    layer_norm_eps: float = 1e-5
    token_dropout: bool = True
    cls_id: int = 0
    pad_id: int = 1
    eos_id: int = 2
    mask_id: int = 32

    def __post_init__(self) -> None:
        """Check every size and the epsilon (ValueError): configs are read from files, and 0 heads,
        negative sizes, 20 million layers or a negative epsilon must be refused here, not surface as a
        ZeroDivisionError, a module that never finishes being built, or NaN embeddings."""
        if self.ffn_dim == 0:
            object.__setattr__(self, "ffn_dim", 4 * self.embed_dim)
        sizes = {
            "embed_dim": self.embed_dim,
            "num_layers": self.num_layers,
            "attention_heads": self.attention_heads,
            "ffn_dim": self.ffn_dim,
            "vocab_size": self.vocab_size,
        }
        check_encoder_sizes(sizes, width="embed_dim", heads="attention_heads", layers="num_layers")
        if (self.embed_dim // self.attention_heads) % 2:
            raise ValueError(
                f"embed_dim {self.embed_dim} must split into {self.attention_heads} heads of even size"
            )
        checked_layer_norm_eps(self.layer_norm_eps, "layer_norm_eps")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.attention_heads

    @classmethod
    def named(cls, name: str) -> Esm2Config:
        """A published size by name: ``t36_3B``, ``esm2_t36_3B_UR50D`` or ``facebook/esm2_t36_3B_UR50D``."""
        key = name.rsplit("/", 1)[-1].removeprefix("esm2_").removesuffix("_UR50D")
        if key not in ESM2_CONFIGS:
            raise KeyError(f"unknown ESM-2 size {name!r}; known: {', '.join(ESM2_CONFIGS)}")
        return ESM2_CONFIGS[key]


ESM2_CONFIGS: dict[str, Esm2Config] = {
    "t6_8M": Esm2Config(num_layers=6, embed_dim=320, attention_heads=20),
    "t12_35M": Esm2Config(num_layers=12, embed_dim=480, attention_heads=20),
    "t30_150M": Esm2Config(num_layers=30, embed_dim=640, attention_heads=20),
    "t33_650M": Esm2Config(num_layers=33, embed_dim=1280, attention_heads=20),
    "t36_3B": Esm2Config(num_layers=36, embed_dim=2560, attention_heads=40),
    "t48_15B": Esm2Config(num_layers=48, embed_dim=5120, attention_heads=40),
}
ESM2_T36_3B_CONFIG = ESM2_CONFIGS["t36_3B"]
"""The ESM-2 model VirNucPro uses (esm2_t36_3B_UR50D)."""


def default_inv_freq(head_dim: int) -> torch.Tensor:
    """fp32 rotary frequencies 1 / 10000^(2i/d), used only when a checkpoint does not carry its own."""
    return 1.0 / (ROTARY_BASE ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))


class RotaryEmbedding(nn.Module):
    """Holds ``inv_freq`` (fp32, pinned against dtype casts) and builds fp32 cos/sin tables."""

    inv_freq: torch.Tensor

    def __init__(self, head_dim: int):
        super().__init__()
        self.register_buffer("inv_freq", default_inv_freq(head_dim))
        self.register_buffer("frozen_cos", None, persistent=False)
        self.register_buffer("frozen_sin", None, persistent=False)

    @property
    def frozen(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(cos, sin) after :meth:`freeze`, else None."""
        if self.frozen_cos is None or self.frozen_sin is None:
            return None
        return self.frozen_cos, self.frozen_sin

    def freeze(self, max_length: int) -> None:
        """Compute the tables once for positions up to ``max_length`` (on ``inv_freq``'s device), for
        :meth:`tables` to slice. Engines do this before export; the native model computes per call.
        Non-persistent buffers: the state dict and the checkpoint formats stay as they are, and an
        exported program names them (``rotary.frozen_cos``), so an engine's weights file can hold them
        under the names its package asks for (a plain tensor attribute became ``_tensor_constant0``)."""
        self.frozen_cos = self.frozen_sin = None
        cos, sin = self.tables(max_length, self.inv_freq.device)
        self.frozen_cos, self.frozen_sin = cos.contiguous(), sin.contiguous()

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> RotaryEmbedding:
        # ``module.to(torch.bfloat16)`` would round the checkpoint's frequencies; follow device moves only.
        before, frozen = self.inv_freq, self.frozen
        super()._apply(fn, recurse)
        after = self.inv_freq
        self.inv_freq = after.float() if before.is_meta else before.to(device=after.device)
        if frozen is not None:  # frozen tables follow device moves too, and stay fp32
            device = self.inv_freq.device
            self.frozen_cos, self.frozen_sin = (t.to(device=device) for t in frozen)
        return self

    def tables(self, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [T, head_dim] for positions 0..T-1, fp32 (positions > 2048 are not exact in fp16).

        After :meth:`freeze`, slices of the stored tables: an exported graph then reads them instead of
        computing cos/sin from ``arange(T)``, which Inductor would fuse into (and repeat in) every
        layer's rotary kernel.
        """
        if self.frozen is not None:
            cos, sin = self.frozen
            torch._check(length <= cos.shape[0])
            return cos[:length], sin[:length]
        positions = torch.arange(length, device=device, dtype=torch.float32)
        freqs = positions[:, None] * self.inv_freq.to(device=device, dtype=torch.float32)[None, :]
        angles = torch.cat((freqs, freqs), dim=-1)
        return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half rotary on [B, H, T, d] in fp32, returned in the input dtype."""
    xf = x.float()
    half = xf.shape[-1] // 2
    rotated = torch.cat((-xf[..., half:], xf[..., :half]), dim=-1)
    return (xf * cos + rotated * sin).to(x.dtype)


def sdpa_rotary_attention(
    qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, key_mask: torch.Tensor | None, scaling: float
) -> torch.Tensor:
    """ESM-2's attention by ``scaled_dot_product_attention``: q scaled, rotary on q and k, [B, T, H * d] out;
    ``key_mask`` a boolean [B, 1, 1, T] mask (True: a key to attend to), or None for no padding."""
    batch, length, _, heads, head_dim = qkv.shape
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, T, d]
    q = apply_rotary(q * scaling, cos, sin)
    k = apply_rotary(k, cos, sin)
    attn = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, scale=1.0)
    return attn.transpose(1, 2).reshape(batch, length, heads * head_dim)


def self_attention(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    key_mask: torch.Tensor,
    scaling: float,
    kernel: AttentionKernel | None = None,
    qkv_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """ESM-2's attention from the fused projection ``qkv`` [B, T, 3, H, d] over the keys ``key_mask``
    [B, 1, 1, T] keeps: ``kernel`` (an engine's :data:`AttentionKernel`) when given, else SDPA
    (:func:`sdpa_rotary_attention`); returns [B, T, H * d]. ``qkv_bias``: the projection's bias, not yet
    in ``qkv`` (a kernel adds it as it loads q, k and v; otherwise it is added here first)."""
    if kernel is not None:
        return kernel(qkv, cos, sin, key_mask, scaling, qkv_bias)
    if qkv_bias is not None:
        qkv = qkv + qkv_bias.view(qkv.shape[2:])
    return sdpa_rotary_attention(qkv, cos, sin, key_mask, scaling)


def linear_gelu(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``GELU(linear(x))`` as one ``torch._addmm_activation``: on CUDA in half precision cuBLASLt's GEMM
    with bias and GELU in its epilogue (GELU's tanh form), so the [tokens, ffn] activation is written
    once instead of written, read and written again by a separate GELU pass; on the CPU addmm then the
    exact GELU. AOTInductor calls it as an extern kernel (it has a C shim)."""
    rows = x.reshape(-1, x.shape[-1])
    hidden = torch._addmm_activation(linear.bias, rows, linear.weight.t(), use_gelu=True)
    return hidden.view(*x.shape[:-1], linear.out_features)


class Esm2Layer(nn.Module):
    """Pre-LN transformer layer: x += out_proj(attn(LN(x))); x += fc2(GELU(fc1(LN(x))))."""

    gelu_epilogue = False  # fc1 + GELU by linear_gelu (engines' choice; module docstring)

    def __init__(self, config: Esm2Config):
        super().__init__()
        self.num_heads = config.attention_heads
        self.head_dim = config.head_dim
        self.scaling = config.head_dim**-0.5
        self.self_attn_layer_norm = Fp32LayerNorm(config.embed_dim, config.layer_norm_eps)
        self.qkv = nn.Linear(config.embed_dim, 3 * config.embed_dim)
        self.out_proj = nn.Linear(config.embed_dim, config.embed_dim)
        self.final_layer_norm = Fp32LayerNorm(config.embed_dim, config.layer_norm_eps)
        self.fc1 = nn.Linear(config.embed_dim, config.ffn_dim)
        self.fc2 = nn.Linear(config.ffn_dim, config.embed_dim)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        key_mask: torch.Tensor,
        kernel: AttentionKernel | None = None,
    ) -> torch.Tensor:
        batch, length, _ = x.shape
        qkv = self.qkv(self.self_attn_layer_norm(x)).view(batch, length, 3, self.num_heads, self.head_dim)
        attn = self_attention(qkv, cos, sin, key_mask, self.scaling, kernel)
        x = x + self.out_proj(attn).to(x.dtype)
        normed = self.final_layer_norm(x)
        if self.gelu_epilogue:
            hidden = linear_gelu(self.fc1, normed)
        else:
            hidden = F.gelu(self.fc1(normed), approximate="none")
        return x + self.fc2(hidden).to(x.dtype)


class Esm2Encoder(nn.Module):
    """ESM-2: ``forward(input_ids, attention_mask)`` -> pooled [B, D] fp32.

    Pooling is the mean of the final-LayerNorm output over residue positions 1..len-2 (no BOS, no EOS, no
    pads), with len the number of real tokens; inputs must be right-padded (:func:`pad_batch` does this).

    ``residual_fp32`` keeps the residual stream (embeddings and every sublayer sum) in fp32 when the
    weights are half precision; in fp32 it changes nothing. It measurably improves the bf16 pooled cosine
    against fp32 (docs/measurements.md; the model tests check it on CPU).

    ``attention_kernel`` (an :data:`AttentionKernel`, None by default: SDPA) computes every layer's
    attention from the fused projection and the boolean mask: an engine's own kernel
    (``engines.rotary_attention``), set by the build.
    """

    def __init__(
        self,
        config: Esm2Config,
        residual_fp32: bool = True,
    ):
        super().__init__()
        self.config = config
        self.residual_fp32 = residual_fp32
        self.attention_kernel: AttentionKernel | None = None
        self.embed_tokens = nn.Embedding(config.vocab_size, config.embed_dim)
        self.rotary = RotaryEmbedding(config.head_dim)
        self.layers = nn.ModuleList(Esm2Layer(config) for _ in range(config.num_layers))
        self.emb_layer_norm_after = Fp32LayerNorm(config.embed_dim, config.layer_norm_eps, fp32_output=True)

    def embed(self, input_ids: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """Token embeddings with fair-esm's inference-time token-dropout rescaling; padded rows zeroed."""
        x = self.embed_tokens(input_ids).float()
        if self.config.token_dropout:
            is_mask = input_ids == self.config.mask_id
            x = x.masked_fill(is_mask.unsqueeze(-1), 0.0)
            observed = (is_mask & real).to(torch.float32).sum(-1) / real.to(torch.float32).sum(-1)
            x = x * ((1.0 - MASK_RATIO_TRAIN) / (1.0 - observed))[:, None, None]
        x = x.masked_fill(~real.unsqueeze(-1), 0.0)
        return x if self.residual_fp32 else x.to(self.embed_tokens.weight.dtype)

    def last_hidden_state(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, T, D] fp32 output of ``emb_layer_norm_after`` ("layer 36" for the 3B model)."""
        real = attention_mask.to(torch.bool)
        x = self.embed(input_ids, real)
        cos, sin = self.rotary.tables(input_ids.shape[1], input_ids.device)
        key_mask = real[:, None, None, :]
        for layer in self.layers:
            x = layer(x, cos, sin, key_mask, self.attention_kernel)
        return self.emb_layer_norm_after(x)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.last_hidden_state(input_ids, attention_mask)
        length = attention_mask.to(torch.int64).sum(-1, keepdim=True)  # real tokens incl. BOS/EOS
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :]
        residues = (positions >= 1) & (positions <= length - 2)
        return masked_mean(hidden, residues)
