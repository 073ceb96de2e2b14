"""DNABERT-S: native batched encoder vs a plain, unbatched reference written here from docs/models.md."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from virnucpro_trt.models.checkpoints import load_dnabert
from virnucpro_trt.models.dnabert import DnabertConfig, alibi_slopes
from virnucpro_trt.models.random_checkpoints import random_dna, random_dnabert, write_dnabert_checkpoint
from virnucpro_trt.models.tokenization import DnaTokenizer

ATOL = 1e-5

# Literal slopes from the rule in docs/models.md (never computed by the code under test).
LITERAL_SLOPES = {
    4: [2**-2, 2**-4, 2**-6, 2**-8],
    6: [2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3],
    8: [2**-1, 2**-2, 2**-3, 2**-4, 2**-5, 2**-6, 2**-7, 2**-8],
    12: [2**-1, 2**-2, 2**-3, 2**-4, 2**-5, 2**-6, 2**-7, 2**-8, 2**-0.5, 2**-1.5, 2**-2.5, 2**-3.5],
}


@pytest.mark.parametrize("heads", [12, 8, 6])
def test_alibi_slopes_match_the_literal_values(heads: int) -> None:
    assert alibi_slopes(heads) == pytest.approx(LITERAL_SLOPES[heads], rel=1e-12)


def test_frozen_slopes_are_the_literal_values_and_stay_fp32_through_casts() -> None:
    """Engines hold the slopes in a buffer before export (the weights file beside an AOTInductor package
    names only buffers and parameters); a cast after that must not round them (2^-0.5 is not a bf16)."""
    config = DnabertConfig(hidden_size=96, num_hidden_layers=1, num_attention_heads=12, intermediate_size=128)
    model = random_dnabert(config)
    mask = torch.tensor([[1, 1, 1, 0]])
    computed = model.attention_bias(mask, torch.float32)
    assert model.frozen_slopes is None and "frozen_slopes" not in model.state_dict()
    model.freeze_slopes()
    assert "frozen_slopes" not in model.state_dict()  # the checkpoint formats stay as they are
    torch.testing.assert_close(model.attention_bias(mask, torch.float32), computed, rtol=0, atol=0)
    model.to(torch.bfloat16)
    assert model.frozen_slopes is not None and model.frozen_slopes.dtype == torch.float32
    assert model.frozen_slopes.tolist() == pytest.approx(LITERAL_SLOPES[12], rel=1e-7)


def _layer_norm(x: torch.Tensor, state: dict, name: str, eps: float) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * state[f"{name}.weight"] + state[f"{name}.bias"]


def plain_dnabert(state: dict, config: DnabertConfig, ids: list[int]) -> torch.Tensor:
    """One sequence, no padding, float64, following docs/models.md step by step: returns [T, hidden]."""
    state = {k: v.double() for k, v in state.items()}
    hidden, heads, inter = config.hidden_size, config.num_attention_heads, config.intermediate_size
    d = hidden // heads
    slopes = LITERAL_SLOPES[heads]
    length = len(ids)
    alibi = torch.tensor(
        [[[-slopes[h] * abs(i - j) for j in range(length)] for i in range(length)] for h in range(heads)]
    )

    x = state["embeddings.word_embeddings.weight"][ids] + state["embeddings.token_type_embeddings.weight"][0]
    x = _layer_norm(x, state, "embeddings.LayerNorm", config.layer_norm_eps)
    for n in range(config.num_hidden_layers):
        p = f"encoder.layer.{n}."
        qkv = x @ state[p + "attention.self.Wqkv.weight"].T + state[p + "attention.self.Wqkv.bias"]
        q, k, v = qkv[:, :hidden], qkv[:, hidden : 2 * hidden], qkv[:, 2 * hidden :]
        ctx = torch.zeros(length, hidden, dtype=torch.float64)
        for h in range(heads):
            cols = slice(h * d, (h + 1) * d)
            scores = torch.einsum("id,jd->ij", q[:, cols], k[:, cols]) / math.sqrt(d) + alibi[h]
            ctx[:, cols] = torch.softmax(scores, dim=-1) @ v[:, cols]
        attn = ctx @ state[p + "attention.output.dense.weight"].T + state[p + "attention.output.dense.bias"]
        x = _layer_norm(attn + x, state, p + "attention.output.LayerNorm", config.layer_norm_eps)
        gated = x @ state[p + "mlp.gated_layers.weight"].T
        a, b = gated[:, :inter], gated[:, inter:]
        mlp = (0.5 * a * (1 + torch.erf(a / math.sqrt(2)))) * b
        mlp = mlp @ state[p + "mlp.wo.weight"].T + state[p + "mlp.wo.bias"]
        x = _layer_norm(mlp + x, state, p + "mlp.layernorm", config.layer_norm_eps)
    return x


def _sequences(tokenizer: DnaTokenizer, seed: int) -> list[torch.Tensor]:
    dna = random_dna(4, 60, seed=seed)
    dna = [dna[0][:7], dna[1][:25], dna[2], dna[3][:40]]
    return [torch.from_numpy(ids) for ids in tokenizer.encode_batch(dna)]


def assert_matches_plain(model, tokenizer: DnaTokenizer, as_tensors, seed: int = 0) -> None:
    sequences = _sequences(tokenizer, seed)
    ids, mask = as_tensors([s.numpy() for s in sequences], tokenizer.pad_id)
    assert not mask.all()
    with torch.no_grad():
        hidden = model.last_hidden_state(ids, mask)
        pooled = model(ids, mask)
    state = model.state_dict()
    for row, seq in enumerate(sequences):
        reference = plain_dnabert(state, model.config, seq.tolist())
        torch.testing.assert_close(hidden[row, : len(seq)].double(), reference, atol=ATOL, rtol=0)
        torch.testing.assert_close(pooled[row].double(), reference.mean(0), atol=ATOL, rtol=0)


def test_loaded_checkpoint_matches_plain_reference(dnabert_dir: Path, as_tensors) -> None:
    model, tokenizer, info = load_dnabert(dnabert_dir)
    assert info["layout"] == "dnabert-s"
    assert info["ignored_keys"] == ["pooler.dense.bias", "pooler.dense.weight"]
    assert_matches_plain(model, tokenizer, as_tensors)


@pytest.mark.parametrize("heads", [4, 6, 12])
def test_head_counts_match_plain_reference(heads: int, dnabert_dir: Path, as_tensors) -> None:
    config = DnabertConfig(
        hidden_size=96, num_hidden_layers=2, num_attention_heads=heads, intermediate_size=160, vocab_size=256
    )
    tokenizer = DnaTokenizer.from_file(dnabert_dir / "tokenizer.json")
    assert_matches_plain(random_dnabert(config, seed=heads), tokenizer, as_tensors, seed=heads)


def test_both_layouts_load_to_identical_outputs(tmp_path: Path, as_tensors) -> None:
    plain = write_dnabert_checkpoint(tmp_path / "s", seed=9, layout="dnabert-s", weights_format="bin")
    mlm = write_dnabert_checkpoint(
        tmp_path / "mlm", seed=9, layout="dnabert2-mlm", weights_format="safetensors"
    )
    model_s, tokenizer, info_s = load_dnabert(plain)
    model_mlm, _, info_mlm = load_dnabert(mlm)
    assert (info_s["layout"], info_mlm["layout"]) == ("dnabert-s", "dnabert2-mlm")
    assert all(k.startswith("cls.") for k in info_mlm["ignored_keys"])
    ids, mask = as_tensors(tokenizer.encode_batch(random_dna(3, 80, seed=1)), tokenizer.pad_id)
    with torch.no_grad():
        assert torch.equal(model_s(ids, mask), model_mlm(ids, mask))


def test_pytorch_model_bin_is_a_pickled_ordered_dict(dnabert_dir: Path) -> None:
    from collections import OrderedDict

    state = torch.load(dnabert_dir / "pytorch_model.bin", map_location="cpu", weights_only=True)
    assert isinstance(state, OrderedDict)
    assert "encoder.layer.0.attention.self.Wqkv.weight" in state and "pooler.dense.weight" in state
