"""Small building blocks shared by the DNABERT-S and ESM-2 encoders.

Both encoders must run in fp32 (the reference) and in bf16/fp16 (the fast engines) from the same code,
and must export cleanly (torch.export / ONNX / TensorRT). The pieces here carry the precision rules so
the model files stay readable:

* :class:`Fp32LayerNorm` computes LayerNorm statistics in fp32 whatever the parameter dtype. A half
  precision variance over 2560 channels loses digits, and ONNX Runtime refuses a LayerNormalization whose
  inputs mix fp32 and fp16 (what exporting a half model with ``nn.LayerNorm`` autocast-style produces); the
  explicit casts around an all-fp32 LayerNorm export as plain ``Cast`` nodes.
* :func:`masked_mean` pools in fp32 so that a long sum of half-precision rows does not drift.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class Fp32LayerNorm(nn.Module):
    """LayerNorm with fp32 statistics; keeps the checkpoint's ``weight``/``bias`` parameter names.

    The output is cast back to the parameter dtype (the compute dtype of the following matmul) unless
    ``fp32_output`` is set, which the final norm of an encoder uses so that pooling sees full precision.
    """

    def __init__(self, dim: int, eps: float, fp32_output: bool = False):
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.fp32_output = fp32_output
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.float(), (self.dim,), self.weight.float(), self.bias.float(), self.eps)
        return y if self.fp32_output else y.to(self.weight.dtype)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, fp32_output={self.fp32_output}"


def masked_mean(hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` [B,T,D] over the positions where ``keep`` [B,T] is true, accumulated in fp32.

    A row with nothing to keep yields NaN on purpose (0/0): an empty input must surface as a non-finite
    result that the caller rejects, never as a silent zero vector.
    """
    weights = keep.to(torch.float32).unsqueeze(-1)
    return (hidden.float() * weights).sum(dim=1) / weights.sum(dim=1)


RANDOM_WEIGHT_GAIN = 0.5
"""Linear weights get std gain/sqrt(fan_in). At gain 1 a random 12-layer post-LN DNABERT is chaotic:
rounding its weights to bf16 alone drops the pooled cosine to 0.9993, which says nothing about the code
(trained models are not that sensitive). At 0.5 activations stay O(1) and the bf16 error is ~3e-5."""


def init_random_(module: nn.Module, generator: torch.Generator, gain: float = RANDOM_WEIGHT_GAIN) -> None:
    """Fill every parameter of ``module`` with seeded random values that keep activations O(1).

    Linear weights get std gain/sqrt(fan_in) (attention logits and activations keep the same scale at any
    width, so tiny test models are as non-trivial as full-size ones), embeddings std 1, norm weights
    1 +- 0.1 and biases small noise. Values are drawn in fp32 on the parameter's device and then copied,
    so the same seed gives the same weights (up to rounding) in every dtype on a given device type.
    """

    def draw(param: torch.Tensor, std: float, mean: float = 0.0) -> None:
        values = torch.randn(param.shape, generator=generator, device=param.device, dtype=torch.float32)
        param.copy_(values.mul_(std).add_(mean))

    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, nn.Linear):
                draw(sub.weight, gain * sub.in_features**-0.5)
                if sub.bias is not None:
                    draw(sub.bias, 0.02)
            elif isinstance(sub, nn.Embedding):
                draw(sub.weight, 1.0)
            elif isinstance(sub, (Fp32LayerNorm, nn.LayerNorm)):
                draw(sub.weight, 0.1, mean=1.0)
                draw(sub.bias, 0.1)
