"""Random weights with outlier channels: which gains are scaled, deterministically, and that they make fp8
(row-wise e4m3, the engines' scheme) lose what it loses on trained models and not on plain random ones."""

from __future__ import annotations

import json

import numpy as np
import torch

from virnucpro_trt.bench.models import write_random_models
from virnucpro_trt.engines.inductor_fp8 import convert_linears_to_fp8
from virnucpro_trt.engines.inductor_model import device_copy
from virnucpro_trt.models.checkpoints import load_encoder
from virnucpro_trt.models.layers import Fp32LayerNorm
from virnucpro_trt.models.random_checkpoints import (
    OUTLIER_GAINS,
    add_outlier_channels,
    outlier_channel_count,
    random_dnabert,
    random_esm2,
    random_proteins,
)
from virnucpro_trt.models.tokenization import ProteinTokenizer, pad_batch


def _norm_gains(model: torch.nn.Module) -> list[torch.Tensor]:
    return [m.weight.detach().clone() for m in model.modules() if isinstance(m, Fp32LayerNorm)]


def test_a_few_channels_of_every_layer_norm_but_the_pooled_one_are_scaled_20_to_50x() -> None:
    for model in (random_esm2(seed=2), random_dnabert(seed=1)):
        before = _norm_gains(model)
        facts = add_outlier_channels(model, seed=4)
        after = _norm_gains(model)
        channels = facts["channels"]
        assert len(channels) == outlier_channel_count(before[0].numel()) == 2
        assert facts["layer_norms_scaled"] == len(before) - 1
        assert torch.equal(after[-1], before[-1])  # the last norm is pooled, not fed to a linear layer
        for old, new in zip(before[:-1], after[:-1], strict=True):
            ratio = (new / old).numpy()
            assert np.allclose(ratio[channels], facts["gain_factors"], rtol=1e-5)
            assert all(OUTLIER_GAINS[0] <= f <= OUTLIER_GAINS[1] for f in facts["gain_factors"])
            others = np.setdiff1d(np.arange(len(ratio)), channels)
            assert np.array_equal(ratio[others], np.ones(len(others), dtype=np.float32))
    twice = [add_outlier_channels(random_esm2(seed=2), seed=4) for _ in range(2)]
    assert twice[0] == twice[1]  # deterministic from the seed
    assert outlier_channel_count(2560) == 4 and outlier_channel_count(768) == 2


def test_the_outlier_set_is_written_in_the_real_formats(tmp_path) -> None:
    models = write_random_models(tmp_path / "set", "tiny-outliers")
    marker = json.loads((tmp_path / "set" / "random-weights.json").read_text())
    channels = marker["outliers"]["esm"]["channels"]
    esm, _, _, _ = load_encoder("esm2", models.esm)
    gains = esm.layers[0].self_attn_layer_norm.weight.detach()
    plain = write_random_models(tmp_path / "plain", "tiny")
    plain_gains = load_encoder("esm2", plain.esm)[0].layers[0].self_attn_layer_norm.weight.detach()
    factors = torch.tensor(marker["outliers"]["esm"]["gain_factors"])
    assert torch.allclose(gains[channels] / plain_gains[channels], factors, rtol=1e-5)
    dna_channels = marker["outliers"]["dnabert"]["channels"]
    dna_gains = load_encoder("dnabert-s", models.dnabert)[0].embeddings.LayerNorm.weight.detach()
    plain_dna = load_encoder("dnabert-s", plain.dnabert)[0].embeddings.LayerNorm.weight.detach()
    factors = torch.tensor(marker["outliers"]["dnabert"]["gain_factors"])
    assert torch.allclose(dna_gains[dna_channels] / plain_dna[dna_channels], factors, rtol=1e-5)


def _fp8_min_cosine(model: torch.nn.Module) -> float:
    """Pooled min cosine of the model with the engines' fp8 linears against its fp32 self, on CPU."""
    tokenizer = ProteinTokenizer()
    ids, mask = pad_batch(tokenizer.encode_batch(random_proteins(48, 30, 166, seed=3)), tokenizer.pad_id)
    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
    with torch.inference_mode():
        reference = model(ids_t, mask_t).double()
        fp8 = device_copy(model, torch.device("cpu"), torch.bfloat16)
        convert_linears_to_fp8(fp8)
        got = fp8(ids_t, mask_t).double()
    return float(torch.nn.functional.cosine_similarity(reference, got, dim=1).min())


def test_outlier_channels_make_fp8_lose_parity_as_trained_models_do() -> None:
    plain = _fp8_min_cosine(random_esm2(seed=2))
    model = random_esm2(seed=2)
    add_outlier_channels(model, seed=4)
    outliers = _fp8_min_cosine(model)
    assert plain > 0.999  # plain random weights flatter fp8
    assert 1 - outliers > 5 * (1 - plain)  # per-row scales follow the outlier: the other channels lose bits
