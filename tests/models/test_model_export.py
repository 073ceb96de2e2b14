"""torch.export with dynamic batch and sequence dims: proof of no data-dependent control flow."""

from __future__ import annotations

import pytest
import torch
from torch.export import Dim, export

from virnucpro_trt.models.random_checkpoints import random_dnabert, random_esm2


def _inputs(batch: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 25, (batch, length), generator=gen)
    lengths = torch.randint(3, length + 1, (batch,), generator=gen)
    lengths[0] = length
    mask = (torch.arange(length)[None, :] < lengths[:, None]).to(torch.int64)
    return ids, mask


@pytest.mark.parametrize("build", [random_dnabert, random_esm2], ids=["dnabert", "esm2"])
def test_export_with_dynamic_batch_and_sequence(build) -> None:
    model = build(seed=1)
    batch, seq = Dim("batch", min=1, max=4096), Dim("seq", min=3, max=2048)
    shapes = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
    program = export(model, _inputs(3, 9, seed=0), dynamic_shapes=shapes)
    exported = program.module()
    for b, t in ((1, 5), (6, 23)):
        ids, mask = _inputs(b, t, seed=b)
        with torch.no_grad():
            torch.testing.assert_close(exported(ids, mask), model(ids, mask), atol=1e-6, rtol=0)
