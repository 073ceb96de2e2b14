"""One path: ``bench`` times exactly what a ``predict`` worker computes, opened the same way."""

from __future__ import annotations

import dataclasses

import numpy as np

from tests.cli.helpers import run_cli
from virnucpro_trt.bench.path import run_path
from virnucpro_trt.pipeline.encoders import open_models
from virnucpro_trt.sequences.reader import read_records
from virnucpro_trt.settings import EncoderSettings

BUDGET = "512"


def test_bench_path_gives_predicts_scores_bit_for_bit(tiny_set, reads_fasta, tmp_path) -> None:
    out = tmp_path / "predicted"
    result = run_cli(
        "predict", str(reads_fasta), "-o", str(out), "--dnabert", str(tiny_set.dnabert), "--esm",
        str(tiny_set.esm_hf), "--classifier", str(tiny_set.classifier), "--device", "cpu",
        "--max-batch-tokens", BUDGET, "--threads", "1",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    specs = {
        "dnabert-s": str(tiny_set.dnabert),
        "esm2": str(tiny_set.esm_hf),
        "classifier": str(tiny_set.classifier),
    }
    settings = EncoderSettings(device="cpu", max_batch_tokens=int(BUDGET), threads=1)
    models = open_models(settings, specs, ("dnabert-s", "esm2"), True).frame_models()
    records = list(read_records(reads_fasta, "dna"))
    path = run_path(models, records, 500)
    rows = [line.split("\t") for line in (out / "prediction_results.txt").read_text().splitlines()[1:]]
    assert [r[0] for r in rows] == path.frame_ids
    assert [r[2] for r in rows] == [str(p) for p in path.probabilities[:, 0]]
    assert [r[3] for r in rows] == [str(p) for p in path.probabilities[:, 1]]
    assert set(path.stages_s) == {"prepare", "tokenize", "dnabert", "esm", "classify"}
    # upstream's batching is a parameter of the same path: one DNABERT-S frame per forward, no padding
    one_by_one = dataclasses.replace(models, dnabert=dataclasses.replace(models.dnabert, max_batch_tokens=1))
    reference = run_path(one_by_one, records, 500)
    assert reference.padding["dnabert"]["padded_tokens"] == 0
    assert reference.padding["dnabert"]["batches"] == len(path.frame_ids)
    np.testing.assert_allclose(reference.dnabert, path.dnabert, atol=1e-5)
