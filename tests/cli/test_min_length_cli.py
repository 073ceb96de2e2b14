"""``predict --min-length N``, as a user runs it: short reads are listed ``too_short`` and scored nowhere."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.cli.helpers import run_cli
from tests.cli.result_checks import check_sequence_rows, read_tsv
from tests.reference_pipeline import read_prediction_results

BATCHING = ("--max-batch-tokens", "700", "--threads", "1")
SHORT = 400  # the fixture's "short_*" reads are 333 bp; everything else is empty or >= 420 bp


def _predict(tiny_set, reads: Path, out: Path, *extra: str):
    result = run_cli(
        "predict", str(reads), "-o", str(out), "--dnabert", str(tiny_set.dnabert),
        "--esm", str(tiny_set.esm_hf), "--classifier", str(tiny_set.classifier), "--device", "cpu",
        *BATCHING, *extra,
    )  # fmt: skip
    assert result.code == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def runs(tiny_set, reads_fasta, tmp_path_factory):
    root = tmp_path_factory.mktemp("min_length")
    _predict(tiny_set, reads_fasta, root / "all")
    result = _predict(tiny_set, reads_fasta, root / "min", "--min-length", str(SHORT))
    return root / "all", root / "min", result


def test_short_reads_are_listed_too_short_and_scored_nowhere(runs, reads_fasta):
    from Bio import SeqIO

    everything, trimmed, result = runs
    lengths = {r.id: len(r.seq) for r in SeqIO.parse(str(reads_fasta), "fasta")}
    short = {rid for rid, n in lengths.items() if 0 < n < SHORT}
    assert len(short) == 6

    rows = check_sequence_rows(trimmed, min_length=SHORT)
    assert list(rows) == list(lengths)  # every input record, in input order
    assert {rid for rid, row in rows.items() if row["status"] == "too_short"} == short
    for rid in short:
        assert rows[rid]["length"] == str(lengths[rid]) and rows[rid]["chunks"] == "0"
    assert rows["empty_one"]["status"] == "empty" and rows["all_n"]["status"] == "no_stop_free_frame"
    assert "6 record(s) shorter than --min-length 400 bp are not scored" in result.stderr

    def read_of(frame_id: str) -> str:
        return frame_id.rsplit("_chunk_", 1)[0]

    ids, _, scores = read_prediction_results(trimmed / "prediction_results.txt")
    all_ids, _, all_scores = read_prediction_results(everything / "prediction_results.txt")
    assert not {read_of(i) for i in ids} & short
    assert {read_of(i) for i in all_ids} & short  # without --min-length they were scored
    keep = [i for i, fid in enumerate(all_ids) if read_of(fid) not in short]
    assert ids == [all_ids[i] for i in keep]
    # the other reads' frames are scored as before (other batches: fp32 sums move in the last bits)
    np.testing.assert_allclose(scores, all_scores[keep], atol=1e-5, rtol=0)
    highest = [r["Modified_ID"] for r in read_tsv(trimmed / "prediction_results_highestscore.csv")]
    assert highest == sorted({fid[:-2] for fid in ids}) and not {read_of(c + "F1") for c in highest} & short
    assert not {r["sequence_id"] for r in read_tsv(trimmed / "frames.tsv")} & short


def test_min_length_is_a_recorded_result_setting(runs):
    everything, trimmed, _ = runs
    one, two = (json.loads((out / "run.json").read_text()) for out in (everything, trimmed))
    assert one["settings"]["min_length"] == 0 and two["settings"]["min_length"] == SHORT
    assert two["counts"]["status_too_short"] == 6 and one["counts"]["status_too_short"] == 0
    assert two["counts"]["records"] == one["counts"]["records"]
    assert two["counts"]["chunks"] == one["counts"]["chunks"] - 6
    assert two["settings_fingerprint"] != one["settings_fingerprint"]


def test_min_length_zero_keeps_the_fingerprint_of_earlier_runs():
    from virnucpro_trt.settings import PredictSettings, settings_fingerprint

    settings = PredictSettings("in.fa", Path("out"), "d", "e", "c")
    before = settings.to_json()
    before.pop("min_length")  # run.json of a version without --min-length
    assert settings.fingerprint() == settings_fingerprint(before)


def test_negative_min_length_is_a_usage_error(reads_fasta, tmp_path):
    result = run_cli(
        "predict", str(reads_fasta), "-o", str(tmp_path / "o"), "--min-length", "-5"
    )
    assert result.code == 2 and "--min-length" in result.stderr
    assert not (tmp_path / "o").exists()
