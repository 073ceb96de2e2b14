"""Reduced precision: finite, close to fp32, fp32 where it must be; NaN is never hidden."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.nn import functional as F

from virnucpro_trt.models.checkpoints import load_dnabert, load_esm2
from virnucpro_trt.models.random_checkpoints import random_dna, random_proteins


def _pooled_cosine(model, ids, mask) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        reference = model(ids, mask)
        half = model.to(torch.bfloat16)(ids, mask)
    model.float()
    return half, F.cosine_similarity(half.double(), reference.double(), dim=-1)


def test_dnabert_bf16_forward(dnabert_dir: Path, as_tensors) -> None:
    model, tokenizer, _ = load_dnabert(dnabert_dir)
    ids, mask = as_tensors(tokenizer.encode_batch(random_dna(6, 150, seed=1)), tokenizer.pad_id)
    pooled, cosine = _pooled_cosine(model, ids, mask)
    assert pooled.dtype == torch.float32 and torch.isfinite(pooled).all()
    assert cosine.min() >= 0.999


def test_esm2_bf16_forward(esm_hf_dir: Path, as_tensors) -> None:
    model, tokenizer, _ = load_esm2(esm_hf_dir)
    ids, mask = as_tensors(tokenizer.encode_batch(random_proteins(6, 5, 80, seed=1)), tokenizer.pad_id)
    pooled, cosine = _pooled_cosine(model, ids, mask)
    assert pooled.dtype == torch.float32 and torch.isfinite(pooled).all()
    assert cosine.min() >= 0.999


def test_fp32_islands_survive_a_dtype_cast(esm_hf_dir: Path, as_tensors) -> None:
    model, tokenizer, _ = load_esm2(esm_hf_dir)
    inv_freq = model.rotary.inv_freq.clone()
    model.to(torch.bfloat16)
    assert model.layers[0].qkv.weight.dtype == torch.bfloat16
    assert model.rotary.inv_freq.dtype == torch.float32 and torch.equal(model.rotary.inv_freq, inv_freq)
    ids, mask = as_tensors(tokenizer.encode_batch(["MKVLA"]), tokenizer.pad_id)
    with torch.no_grad():
        assert model.last_hidden_state(ids, mask).dtype == torch.float32  # final LayerNorm output
        x = torch.randn(2, 3, model.config.embed_dim, dtype=torch.bfloat16)
        assert model.layers[0].self_attn_layer_norm(x).dtype == torch.bfloat16  # feeds a bf16 matmul


def test_nan_is_never_hidden(dnabert_dir: Path, esm_hf_dir: Path, as_tensors) -> None:
    model, tokenizer, _ = load_esm2(esm_hf_dir)
    ids, mask = as_tensors(tokenizer.encode_batch(["MKVLA", "GGG", ""]), tokenizer.pad_id)
    with torch.no_grad():
        pooled = model(ids, mask)
        assert torch.isfinite(pooled[:2]).all() and torch.isnan(pooled[2]).all()  # no residues: NaN, not 0
        model.embed_tokens.weight[tokenizer.token_to_id["K"]] = float("nan")
        pooled = model(ids, mask)
    assert torch.isnan(pooled[0]).all() and torch.isfinite(pooled[1]).all()
    dnabert, dna_tokenizer, _ = load_dnabert(dnabert_dir)
    ids, mask = as_tensors(dna_tokenizer.encode_batch(["ACGTAC", "TTTT"]), dna_tokenizer.pad_id)
    with torch.no_grad():
        dnabert.encoder.layer[0].mlp.wo.bias[0] = float("inf")
        assert not torch.isfinite(dnabert(ids, mask)).any()


def test_linear_gelu_is_the_layers_fc1_and_gelu() -> None:
    """``linear_gelu`` (one ``_addmm_activation``, an engine's fc1 + GELU) computes what the layer's
    ``fc1`` then the exact GELU compute, on [B, T, D] input (on the CPU it is addmm then the exact GELU;
    on CUDA cuBLASLt's tanh form, checked by the GPU build test)."""
    from virnucpro_trt.models.esm2 import linear_gelu

    torch.manual_seed(3)
    linear = torch.nn.Linear(24, 40)
    x = torch.randn(3, 7, 24)
    out = linear_gelu(linear, x)
    assert out.shape == (3, 7, 40)
    torch.testing.assert_close(out, F.gelu(linear(x)), rtol=1e-6, atol=1e-6)


def test_a_layer_with_the_gelu_epilogue_computes_the_same(esm_hf_dir: Path, as_tensors) -> None:
    """Every layer's ``gelu_epilogue`` on changes nothing on the CPU (where it is addmm then the exact
    GELU), and the native model has it off."""
    model, tokenizer, _ = load_esm2(esm_hf_dir)
    assert not any(layer.gelu_epilogue for layer in model.layers)
    ids, mask = as_tensors(tokenizer.encode_batch(random_proteins(6, 5, 80, seed=9)), tokenizer.pad_id)
    with torch.inference_mode():
        plain = model(ids, mask)
        for layer in model.layers:
            layer.gelu_epilogue = True
        fused = model(ids, mask)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
