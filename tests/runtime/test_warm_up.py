"""The worker's engine warm-up: it runs real batches through both encoders and changes no result."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from virnucpro_trt.pipeline.encoders import RunWeights
from virnucpro_trt.pipeline.shard_predictor import PredictShardJob, PredictShardProcessor
from virnucpro_trt.runtime.embedding import embed_sequences
from virnucpro_trt.runtime.worker import WorkerSlot
from virnucpro_trt.settings import EncoderSettings, PredictSettings


def test_warm_up_embeds_through_both_encoders_without_changing_results(tiny_set, tmp_path: Path) -> None:
    settings = PredictSettings(
        input="unused.fa",
        outdir=tmp_path,
        dnabert=str(tiny_set.dnabert),
        esm=str(tiny_set.esm_hf),
        classifier=str(tiny_set.classifier),
        encoders=EncoderSettings(device="cpu", max_batch_tokens=700),
    )
    job = PredictShardJob(settings, RunWeights(), tmp_path / "shards", tmp_path / "results")
    processor = PredictShardProcessor(job, WorkerSlot(0, "cpu", 1))  # CPU: no warm-up at open
    tokens = processor.esm.tokenizer.encode_batch(["MKVLAAGIVALLLAAGCSS", "MSTNPKPQRKTKRNTNRR"])
    before = embed_sequences(processor.esm.backend, tokens, 700)

    calls: list[int] = []
    for encoder in (processor.dnabert, processor.esm):
        original = encoder.backend.embed_padded

        def counting(ids, mask, original=original):
            calls.append(ids.shape[0])
            return original(ids, mask)

        encoder.backend.embed_padded = counting
    processor._warm_up()
    assert len(calls) >= 2 and sum(calls) == 4  # two sequences through each encoder
    np.testing.assert_array_equal(embed_sequences(processor.esm.backend, tokens, 700), before)
