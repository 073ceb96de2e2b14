"""Tiny random checkpoints in the real file formats, written once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from virnucpro_trt.models.random_checkpoints import (
    write_dnabert_checkpoint,
    write_esm_fairesm_checkpoint,
    write_esm_hf_checkpoint,
)
from virnucpro_trt.models.tokenization import pad_batch

ESM_SEED = 11
DNABERT_SEED = 7


@pytest.fixture(scope="session")
def checkpoint_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("checkpoints")


@pytest.fixture(scope="session")
def esm_hf_dir(checkpoint_root: Path) -> Path:
    return write_esm_hf_checkpoint(checkpoint_root / "esm_hf", seed=ESM_SEED)


@pytest.fixture(scope="session")
def esm_fairesm_file(checkpoint_root: Path) -> Path:
    return write_esm_fairesm_checkpoint(checkpoint_root / "esm2_tiny.pt", seed=ESM_SEED)


@pytest.fixture(scope="session")
def dnabert_dir(checkpoint_root: Path) -> Path:
    return write_dnabert_checkpoint(checkpoint_root / "dnabert_s", seed=DNABERT_SEED)


def _as_tensors(sequences: list, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = pad_batch(sequences, pad_id)
    return torch.from_numpy(ids), torch.from_numpy(mask)


@pytest.fixture(scope="session")
def as_tensors():
    """pad_batch -> (input_ids, attention_mask) torch tensors, the form the encoders take."""
    return _as_tensors
