"""An interrupt reaches the inline worker between DNABERT-S batches, not only between ESM-2 batches.

The inline worker learns it must stop from its progress callback (``WorkerStopped``), which only ESM-2's
batches called: a Ctrl-C during a shard's DNABERT-S stage waited for the whole stage (a minute and more
on a CPU), past the coordinator's patience, and the process then aborted (exit 134).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from virnucpro_trt.runtime.frame_path import score_frames


class _Encoder:
    """Embeds in batches of two, calling ``progress`` with each batch's size as the real encoders do."""

    def __init__(self, name: str, calls: list[str]):
        self.name, self.calls = name, calls

    def embed(self, tokens, labels=None, progress=None, stats=None) -> np.ndarray:
        for start in range(0, len(tokens), 2):
            self.calls.append(self.name)
            if progress is not None:
                progress(len(tokens[start : start + 2]))
        return np.zeros((len(tokens), 4), np.float32)


class _Stop(Exception):
    pass


def _frames(n: int) -> SimpleNamespace:
    tokens = [np.arange(5)] * n
    return SimpleNamespace(frame_ids=[f"f{i}" for i in range(n)], dna_tokens=tokens, protein_tokens=tokens)


def test_each_dnabert_batch_gives_the_worker_a_chance_to_stop_and_counts_no_frame() -> None:
    calls: list[str] = []
    models = SimpleNamespace(dnabert=_Encoder("dnabert", calls), esm=_Encoder("esm", calls))
    counted: list[int] = []

    def progress(n: int) -> None:
        counted.append(n)
        if len(counted) == 2:  # asked to stop during DNABERT-S's second batch
            raise _Stop

    with pytest.raises(_Stop):
        score_frames(models, _frames(6), progress=progress)  # type: ignore[arg-type]
    assert calls == ["dnabert", "dnabert"] and counted == [0, 0]  # ESM-2 never started
