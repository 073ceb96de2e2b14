"""TensorRT optimization profiles from the token budget, and the profile (and chunks) each batch gets.

Pure logic: no TensorRT, no GPU. The full-size encoders' dimensions come from the real modules built on
the meta device, so the profiles checked here are the ones a real build of ESM-2 3B / DNABERT-S asks for.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from virnucpro_trt.engines.spec import ShapeRange, default_shape_range
from virnucpro_trt.engines.tensorrt_backend import encoder_dims
from virnucpro_trt.engines.tensorrt_profiles import (
    MAX_ELEMENTS,
    EncoderDims,
    Profile,
    batch_chunks,
    check_coverage,
    choose_profile,
    derive_profiles,
)
from virnucpro_trt.errors import BuildError, EngineMismatchError, ShapeRangeError
from virnucpro_trt.models.dnabert import DNABERT_S_CONFIG, DnabertEncoder
from virnucpro_trt.models.esm2 import ESM2_T36_3B_CONFIG, Esm2Encoder
from virnucpro_trt.models.random_checkpoints import random_dnabert
from virnucpro_trt.runtime.batching import token_budget_batches


@pytest.fixture(scope="module")
def full_size_dims() -> dict[str, EncoderDims]:
    with torch.device("meta"):  # the real modules, no memory
        return {
            "esm2": encoder_dims(Esm2Encoder(ESM2_T36_3B_CONFIG)),
            "dnabert-s": encoder_dims(DnabertEncoder(DNABERT_S_CONFIG)),
        }


def test_encoder_dims_read_heads_and_widest_layer(full_size_dims) -> None:
    esm2 = EncoderDims(ESM2_T36_3B_CONFIG.attention_heads, ESM2_T36_3B_CONFIG.ffn_dim)
    assert full_size_dims["esm2"] == esm2
    # DNABERT-S's gated MLP projects to 2 x intermediate (gate | linear), its widest layer.
    dnabert = EncoderDims(DNABERT_S_CONFIG.num_attention_heads, 2 * DNABERT_S_CONFIG.intermediate_size)
    assert full_size_dims["dnabert-s"] == dnabert
    assert encoder_dims(random_dnabert(seed=1)) == EncoderDims(4, 256)
    with pytest.raises(BuildError, match="attention heads"):
        encoder_dims(torch.nn.Linear(4, 4))


def test_the_old_single_profile_was_past_the_limit(full_size_dims) -> None:
    """Why profiles are derived at all: the one-profile max corner of the default shape range."""
    for kind, dims in full_size_dims.items():
        shapes = default_shape_range(kind, 32768)
        assert dims.largest_elements(shapes.max_batch, shapes.max_length) > MAX_ELEMENTS


def test_hand_computed_profiles() -> None:
    """heads=1, widest=1: the largest tensor is batch x length^2; limit 1000, budget 200 tokens."""
    shapes = ShapeRange(1, 10, 100, 2, 10, 30)
    got = derive_profiles(shapes, EncoderDims(1, 1), 200, max_elements=1000)
    assert got == [
        Profile((1, 2), (66, 3), (100, 3)),  # budget allows 100 at length 2; 100 x 3^2 = 900
        Profile((1, 4), (20, 7), (20, 7)),  # at least double: 4..7; 1000 // 7^2 = 20 (< the budget's 50)
        Profile((1, 8), (4, 10), (4, 15)),  # opt length 10 falls here
        Profile((1, 16), (1, 16), (1, 30)),  # one sequence of 30 tokens: 900
    ]


@pytest.mark.parametrize("budget", [4096, 32768, 262144])
@pytest.mark.parametrize("kind", ["esm2", "dnabert-s"])
def test_profiles_cover_the_range_within_the_limit(full_size_dims, kind: str, budget: int) -> None:
    dims = full_size_dims[kind]
    shapes = default_shape_range(kind, budget)
    profiles = derive_profiles(shapes, dims, budget)
    assert 1 <= len(profiles) <= 6
    assert profiles[0].min[1] == shapes.min_length and profiles[-1].max[1] == shapes.max_length
    for before, after in itertools.pairwise(profiles):
        assert after.min[1] == before.max[1] + 1  # contiguous, no overlap
    for profile in profiles:
        assert dims.largest_elements(*profile.max) <= MAX_ELEMENTS
        assert profile.min[0] <= profile.opt[0] <= profile.max[0] <= shapes.max_batch
        assert profile.min[1] <= profile.opt[1] <= profile.max[1]
    check_coverage(profiles, shapes)


@pytest.mark.parametrize("kind", ["esm2", "dnabert-s"])
def test_every_batch_of_the_default_budget_fits_one_profile_unsplit(full_size_dims, kind: str) -> None:
    """What the runtime actually sends (token_budget_batches) at the build's budget never needs chunks."""
    budget = 32768
    shapes = default_shape_range(kind, budget)
    profiles = derive_profiles(shapes, full_size_dims[kind], budget)
    lengths = np.arange(shapes.min_length, shapes.max_length + 1).repeat(3000 // shapes.max_length + 8)
    for batch in token_budget_batches(lengths, budget, shapes.max_batch):
        size, longest = len(batch), int(lengths[batch].max())
        chunks = batch_chunks(profiles, size, longest)
        assert chunks == [(choose_profile(profiles, size, longest), 0, size)]


def test_esm2_default_profiles_keep_the_workload_length_in_one_profile(full_size_dims) -> None:
    shapes = default_shape_range("esm2", 32768)
    profiles = derive_profiles(shapes, full_size_dims["esm2"], 32768)
    (holding,) = [p for p in profiles if p.covers_length(shapes.opt_length)]
    assert holding.opt == (32768 // shapes.opt_length, shapes.opt_length)  # a full batch of 500 bp reads


def test_choice_takes_the_widest_covering_profile_and_chunks_the_rest() -> None:
    profiles = [
        Profile((1, 2), (8, 10), (16, 20)),
        Profile((1, 21), (4, 30), (6, 40)),
        Profile((1, 21), (2, 30), (3, 60)),  # overlaps the previous one on 21..40 with fewer rows
    ]
    assert choose_profile(profiles, 5, 2) == 0 and choose_profile(profiles, 5, 20) == 0
    assert choose_profile(profiles, 5, 25) == 1  # 6 rows beat 3
    assert choose_profile(profiles, 1, 50) == 2
    assert batch_chunks(profiles, 6, 30) == [(1, 0, 6)]
    assert batch_chunks(profiles, 14, 30) == [(1, 0, 6), (1, 6, 12), (1, 12, 14)]
    assert batch_chunks(profiles, 7, 41) == [(2, 0, 3), (2, 3, 6), (2, 6, 7)]
    with pytest.raises(ShapeRangeError, match="no TensorRT profile covers length 61"):
        choose_profile(profiles, 1, 61)


def test_one_sequence_past_the_limit_cannot_be_built() -> None:
    dims = EncoderDims(40, 10240)
    assert dims.largest_elements(1, 7327) <= MAX_ELEMENTS < dims.largest_elements(1, 7328)
    assert derive_profiles(ShapeRange(1, 1, 8, 2, 16, 7327), dims, 32768)[-1].max == (1, 7327)
    with pytest.raises(BuildError, match=r"7328 tokens .* lower --max-length"):
        derive_profiles(ShapeRange(1, 1, 8, 2, 16, 7328), dims, 32768)


def test_no_budget_means_the_whole_batch_at_every_length() -> None:
    shapes = ShapeRange(1, 4, 8, 2, 24, 48)
    (profile,) = derive_profiles(shapes, EncoderDims(4, 256), None)
    assert profile == Profile((1, 2), (8, 24), (8, 48))


def test_coverage_check_refuses_gaps_and_short_profiles() -> None:
    shapes = ShapeRange(1, 4, 8, 2, 24, 48)
    check_coverage([Profile((1, 2), (1, 2), (8, 30)), Profile((1, 31), (1, 31), (4, 48))], shapes)
    with pytest.raises(EngineMismatchError, match="up to 30"):
        check_coverage([Profile((1, 2), (1, 2), (8, 30)), Profile((1, 32), (1, 32), (4, 48))], shapes)
    with pytest.raises(EngineMismatchError, match="up to 40"):
        check_coverage([Profile((1, 2), (1, 2), (8, 40))], shapes)
    with pytest.raises(EngineMismatchError):
        check_coverage([], shapes)


def test_profile_json_round_trip() -> None:
    profile = Profile((1, 2), (66, 3), (100, 3))
    assert Profile.from_json(profile.to_json()) == profile
    assert profile.to_json() == {"min": [1, 2], "opt": [66, 3], "max": [100, 3]}
