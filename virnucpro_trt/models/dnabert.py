"""DNABERT-S / DNABERT-2 ("MosaicBERT") encoder, written for batching and export.

The upstream model ships as remote code whose Triton kernel no longer works and which runs one sequence
at a time through an unpadding path. This is the same function (see ``docs/models.md``) as a plain
padded-batch module:

* attribute names equal the checkpoint keys (``embeddings.word_embeddings``,
  ``encoder.layer.N.attention.self.Wqkv``, ``encoder.layer.N.mlp.gated_layers``...), so a DNABERT-S state
  dict loads with ``load_state_dict`` directly;
* attention is ``scaled_dot_product_attention`` with one additive float bias = ALiBi + padding, built from
  tensor ops on the input shape (no data-dependent Python control flow, no ``.item()``), so the module
  exports with dynamic batch and sequence dimensions;
* LayerNorm statistics and pooling are fp32 whatever the weight dtype.

Padding uses -10000 on padded keys exactly like upstream's ``extended_attention_mask``; after the softmax
those keys weigh exp(-10000) = 0, so a sequence gives the same result alone or inside a padded batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from virnucpro_trt.models.config_checks import check_encoder_sizes, checked_layer_norm_eps, config_int
from virnucpro_trt.models.layers import Fp32LayerNorm, masked_mean

PADDING_BIAS = -10000.0


@dataclass(frozen=True)
class DnabertConfig:
    """The config.json fields the forward pass depends on (everything else there is training-only).

    Every size is checked on construction (:func:`~virnucpro_trt.models.config_checks.check_encoder_sizes`:
    positive, heads dividing the width, at most ``MAX_ENCODER_LAYERS`` layers) and so is the LayerNorm
    epsilon: a config is read from a file, and 0 heads or a negative epsilon must be refused as such, not
    surface as a ZeroDivisionError or as NaN embeddings.
    """

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    vocab_size: int = 4096
    layer_norm_eps: float = 1e-12
    type_vocab_size: int = 2

    def __post_init__(self) -> None:
        sizes = {name: getattr(self, name) for name in _SIZE_FIELDS}
        check_encoder_sizes(
            sizes, width="hidden_size", heads="num_attention_heads", layers="num_hidden_layers"
        )
        checked_layer_norm_eps(self.layer_norm_eps, "layer_norm_eps")

    @classmethod
    def from_hf_config(cls, config: dict[str, Any]) -> DnabertConfig:
        """Read a DNABERT-S / DNABERT-2 ``config.json`` dict (missing optional fields take the defaults).

        Sizes must be integers (``true``, ``"12"`` or 12.5 are refused, not coerced); ValueError or
        KeyError says which field is wrong.
        """
        names = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
        missing = [name for name in names if name not in config]
        if missing:
            raise KeyError(f"config.json lacks {', '.join(missing)}")
        sizes = {name: config_int(config[name], name) for name in names}
        return cls(
            **sizes,
            layer_norm_eps=checked_layer_norm_eps(config.get("layer_norm_eps", 1e-12), "layer_norm_eps"),
            type_vocab_size=config_int(config.get("type_vocab_size", 2), "type_vocab_size"),
        )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


_SIZE_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "vocab_size",
    "type_vocab_size",
)


DNABERT_S_CONFIG = DnabertConfig()
"""zhihan1996/DNABERT-S (same shapes as DNABERT-2-117M)."""


def dnabert_state_shapes(config: DnabertConfig) -> dict[str, tuple[int, ...]]:
    """Names and shapes of :class:`DnabertEncoder`'s state dict for ``config``, without building it.

    A loader compares a checkpoint with this before converting a single tensor or constructing the
    module (a hostile config or key set must cost nothing to refuse); a test keeps it equal to the
    module's own ``state_dict()``.
    """
    hidden, inner = config.hidden_size, config.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.word_embeddings.weight": (config.vocab_size, hidden),
        "embeddings.token_type_embeddings.weight": (config.type_vocab_size, hidden),
        "embeddings.LayerNorm.weight": (hidden,),
        "embeddings.LayerNorm.bias": (hidden,),
    }
    layer = {
        "attention.self.Wqkv.weight": (3 * hidden, hidden),
        "attention.self.Wqkv.bias": (3 * hidden,),
        "attention.output.dense.weight": (hidden, hidden),
        "attention.output.dense.bias": (hidden,),
        "attention.output.LayerNorm.weight": (hidden,),
        "attention.output.LayerNorm.bias": (hidden,),
        "mlp.gated_layers.weight": (2 * inner, hidden),
        "mlp.wo.weight": (hidden, inner),
        "mlp.wo.bias": (hidden,),
        "mlp.layernorm.weight": (hidden,),
        "mlp.layernorm.bias": (hidden,),
    }
    for index in range(config.num_hidden_layers):
        shapes.update({f"encoder.layer.{index}.{name}": shape for name, shape in layer.items()})
    return shapes


def alibi_slopes(num_heads: int) -> list[float]:
    """ALiBi head slopes, MosaicBERT's rule.

    For a power of two n the slopes are the geometric series 2^(-8/n), 2^(-16/n), ... . Otherwise take
    the series of the nearest lower power of two and top it up with every other slope of the series for
    twice that many heads (12 heads: 2^-1..2^-8, then 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5).
    """
    if num_heads < 1:
        raise ValueError(f"num_heads must be positive, got {num_heads}")

    def power_of_two_series(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    lower = 2 ** math.floor(math.log2(num_heads))
    if lower == num_heads:
        return power_of_two_series(num_heads)
    extra = alibi_slopes(2 * lower)[0::2][: num_heads - lower]
    return power_of_two_series(lower) + extra


class DnabertEmbeddings(nn.Module):
    """word embedding + token type 0 embedding, then LayerNorm (no position embeddings: ALiBi)."""

    def __init__(self, config: DnabertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = Fp32LayerNorm(config.hidden_size, config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # Upstream always passes token_type_ids = 0, so only row 0 of the table is ever used.
        return self.LayerNorm(self.word_embeddings(input_ids) + self.token_type_embeddings.weight[0])


class DnabertSelfAttention(nn.Module):
    """Holds the fused ``Wqkv`` projection (rows q | k | v, each heads x head_dim)."""

    def __init__(self, config: DnabertConfig):
        super().__init__()
        self.Wqkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)


class DnabertAttentionOutput(nn.Module):
    def __init__(self, config: DnabertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = Fp32LayerNorm(config.hidden_size, config.layer_norm_eps)


class DnabertAttention(nn.Module):
    """Post-LN self-attention block: x = LN(dense(attention(x)) + x)."""

    def __init__(self, config: DnabertConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.self = DnabertSelfAttention(config)
        self.output = DnabertAttentionOutput(config)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        batch, length, hidden = x.shape
        qkv = self.self.Wqkv(x).view(batch, length, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, T, d]
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # scale 1/sqrt(d), as upstream
        ctx = ctx.transpose(1, 2).reshape(batch, length, hidden)
        return self.output.LayerNorm(self.output.dense(ctx) + x)


class DnabertGatedMlp(nn.Module):
    """Gated-linear-unit MLP: LN(wo(GELU(h[:, :I]) * h[:, I:]) + x) with h = gated_layers(x), no bias."""

    def __init__(self, config: DnabertConfig):
        super().__init__()
        self.intermediate_size = config.intermediate_size
        self.gated_layers = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.wo = nn.Linear(config.intermediate_size, config.hidden_size)
        self.layernorm = Fp32LayerNorm(config.hidden_size, config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gated, linear = self.gated_layers(x).split(self.intermediate_size, dim=-1)
        return self.layernorm(self.wo(F.gelu(gated, approximate="none") * linear) + x)


class DnabertLayer(nn.Module):
    def __init__(self, config: DnabertConfig):
        super().__init__()
        self.attention = DnabertAttention(config)
        self.mlp = DnabertGatedMlp(config)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.attention(x, bias))


class DnabertStack(nn.Module):
    def __init__(self, config: DnabertConfig):
        super().__init__()
        self.layer = nn.ModuleList(DnabertLayer(config) for _ in range(config.num_hidden_layers))


class DnabertEncoder(nn.Module):
    """DNABERT-S encoder: ``forward(input_ids, attention_mask)`` -> pooled [B, H] fp32.

    The pooled vector is the mean of the last hidden layer over ALL real tokens, [CLS] and [SEP] included
    (what upstream computes on its unpadded single sequences). Inputs are right- or left-padded token ids
    [B, T] int64 and a [B, T] mask (1/True = real token).
    """

    frozen_slopes: torch.Tensor | None

    def __init__(self, config: DnabertConfig):
        super().__init__()
        if config.hidden_size % config.num_attention_heads:
            raise ValueError(
                f"hidden_size {config.hidden_size} is not a multiple of {config.num_attention_heads} heads"
            )
        self.config = config
        # A Python constant, not a buffer: ``.to(bf16)`` cannot round it, and meta-device construction
        # followed by ``load_state_dict(assign=True)`` needs no extra initialisation step.
        self.slopes = alibi_slopes(config.num_attention_heads)
        self.register_buffer("frozen_slopes", None, persistent=False)  # set by freeze_slopes (engines)
        self.embeddings = DnabertEmbeddings(config)
        self.encoder = DnabertStack(config)

    def freeze_slopes(self) -> None:
        """Hold the slopes in a non-persistent fp32 buffer on the model's device, for
        :meth:`attention_bias` to read. Engines do this before export: the tensor the native model makes
        in forward is a constant AOTInductor renames (``lifted_tensor_0`` became ``_tensor_constant0``),
        which a weights file beside the package cannot name; a buffer keeps its name (``frozen_slopes``).
        The state dict and the checkpoint formats stay as they are."""
        device = self.embeddings.word_embeddings.weight.device
        self.frozen_slopes = torch.tensor(self.slopes, dtype=torch.float32, device=device)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> DnabertEncoder:
        # ``model.to(torch.bfloat16)`` would round frozen slopes; they follow device moves only
        frozen = self.frozen_slopes
        super()._apply(fn, recurse)
        if frozen is not None and self.frozen_slopes is not None:
            self.frozen_slopes = frozen.to(device=self.frozen_slopes.device)
        return self

    def attention_bias(self, attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """[B, H, T, T] additive bias: -slope_h * |i - j| (fp32 math) plus -10000 on padded keys."""
        device = attention_mask.device
        positions = torch.arange(attention_mask.shape[1], device=device)
        distance = (positions[None, :] - positions[:, None]).abs().to(torch.float32)
        slopes = self.frozen_slopes
        if slopes is None:
            slopes = torch.tensor(self.slopes, dtype=torch.float32, device=device)
        alibi = -slopes[:, None, None] * distance  # [H, T, T]
        padding = (1.0 - attention_mask.to(torch.float32)) * PADDING_BIAS  # [B, T]
        return (alibi[None] + padding[:, None, None, :]).to(dtype)

    def last_hidden_state(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, T, H] output of the last layer, in the weight dtype (padded rows are meaningless)."""
        x = self.embeddings(input_ids)
        bias = self.attention_bias(attention_mask, x.dtype)
        for layer in self.encoder.layer:
            x = layer(x, bias)
        return x

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.last_hidden_state(input_ids, attention_mask)
        return masked_mean(hidden, attention_mask.to(torch.bool))
