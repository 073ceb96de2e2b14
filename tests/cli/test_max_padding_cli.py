"""``predict --max-padding SHARE[:FLOOR]``, as a user runs it on reads of mixed lengths: fewer padded
tokens, the same calls, the setting recorded, and a bad value refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.cli.helpers import run_cli
from tests.cli.result_checks import check_sequence_rows
from tests.reference_pipeline import read_prediction_results
from virnucpro_trt.bench.workload import generated_workload
from virnucpro_trt.sequences.synthetic import write_fasta
from virnucpro_trt.settings import settings_fingerprint

ENCODERS = ("dnabert", "esm")
BATCHING = ("--max-batch-tokens", "2048", "--threads", "1", "--device", "cpu")


def _predict(tiny_set, reads: Path, out: Path, *extra: str):
    return run_cli(
        "predict", str(reads), "-o", str(out), "--dnabert", str(tiny_set.dnabert),
        "--esm", str(tiny_set.esm_hf), "--classifier", str(tiny_set.classifier), *BATCHING, *extra,
    )  # fmt: skip


@pytest.fixture(scope="module")
def mixed_reads(tmp_path_factory) -> Path:
    workload = generated_workload(80, 500, seed=7, coding_fraction=0.8, length_mix="mixed")
    path = tmp_path_factory.mktemp("mixed") / "mixed.fa"
    write_fasta([(r.id, r.sequence) for r in workload.records], path)
    return path


@pytest.fixture(scope="module")
def runs(tiny_set, mixed_reads, tmp_path_factory):
    root = tmp_path_factory.mktemp("max_padding")
    for name, extra in (("plain", ()), ("capped", ("--max-padding", "0.05"))):
        result = _predict(tiny_set, mixed_reads, root / name, *extra)
        assert result.code == 0, result.stderr
    return root / "plain", root / "capped"


def _run(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


def test_the_cap_pads_less_and_calls_the_same(runs, mixed_reads):
    plain, capped = runs
    padded = {}
    for out in runs:
        counts = _run(out)["counts"]
        for encoder in ENCODERS:
            assert counts[f"{encoder}_computed_tokens"] >= counts[f"{encoder}_tokens"] > 0
        padded[out.name] = {e: counts[f"{e}_computed_tokens"] - counts[f"{e}_tokens"] for e in ENCODERS}
    assert padded["capped"]["esm"] < padded["plain"]["esm"]
    assert padded["capped"]["dnabert"] < padded["plain"]["dnabert"]
    # the same frames and calls: only which frames share a batch changed (fp32 sums in the last bits)
    assert list(check_sequence_rows(capped)) == list(check_sequence_rows(plain))
    ids, labels, scores = read_prediction_results(capped / "prediction_results.txt")
    plain_ids, plain_labels, plain_scores = read_prediction_results(plain / "prediction_results.txt")
    assert ids == plain_ids and labels == plain_labels
    np.testing.assert_allclose(scores, plain_scores, atol=1e-4)


def test_the_cap_is_a_result_setting_and_no_cap_keeps_the_old_fingerprint(runs):
    plain, capped = (_run(out) for out in runs)
    assert capped["settings"]["encoders"]["padding_cap"] == {"max_share": 0.05, "floor_tokens": 0}
    assert plain["settings"]["encoders"]["padding_cap"] is None
    assert capped["settings_fingerprint"] != plain["settings_fingerprint"]
    older = json.loads(json.dumps(plain["settings"]))
    del older["encoders"]["padding_cap"]  # run.json of a version before --max-padding
    assert settings_fingerprint(older) == plain["settings_fingerprint"]


@pytest.mark.parametrize("value", ["1.5", "abc", "0.05:x", "-0.1"])
def test_a_bad_cap_is_one_line_and_nothing_is_written(tiny_set, mixed_reads, tmp_path, value):
    result = _predict(tiny_set, mixed_reads, tmp_path / "out", "--max-padding", value)
    assert result.code == 2
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: "), result.stderr
    assert "'--max-padding'" in errors[0] and f"padding cap '{value}'" in errors[0]
    assert not (tmp_path / "out").exists()
