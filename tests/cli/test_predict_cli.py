"""``predict`` end to end on tiny random checkpoints, against an independent reference."""

from __future__ import annotations

import bz2
import gzip
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.cli.helpers import run_cli
from tests.cli.result_checks import check_sequence_rows
from tests.reference_pipeline import highest_score_rows, read_prediction_results, reference_predictions

# Same batch composition everywhere a test compares bytes (fp32 sums depend on the batch shape).
BATCHING = ("--max-batch-tokens", "700")
RESULT_FILES = (
    "prediction_results.txt",
    "prediction_results_highestscore.csv",
    "sequences.tsv",
    "frames.tsv",
    "run.json",
)


def _predict(tiny_set, reads: Path, out: Path, *extra: str, esm: Path | None = None, classifier=None):
    return run_cli(
        "predict", str(reads), "-o", str(out),
        "--dnabert", str(tiny_set.dnabert),
        "--esm", str(esm or tiny_set.esm_hf),
        "--classifier", str(classifier or tiny_set.classifier),
        "--device", "cpu", *extra,
    )  # fmt: skip


@pytest.fixture(scope="module")
def predicted(tiny_set, reads_fasta, tmp_path_factory):
    out = tmp_path_factory.mktemp("predict500")
    result = _predict(tiny_set, reads_fasta, out, "--save-embeddings", *BATCHING)
    assert result.code == 0, result.stderr
    return out


@pytest.mark.parametrize("chunk_length", [500, 300])
def test_predict_matches_independent_reference(tiny_set, reads_fasta, tmp_path, chunk_length):
    classifier = tiny_set.classifier if chunk_length == 500 else tiny_set.classifier_300
    result = _predict(
        tiny_set, reads_fasta, tmp_path, "--chunk-length", str(chunk_length), classifier=classifier
    )
    assert result.code == 0, result.stderr
    ids, labels, scores = read_prediction_results(tmp_path / "prediction_results.txt")
    ref_ids, ref_probs = reference_predictions(
        reads_fasta, chunk_length, tiny_set.dnabert, tiny_set.esm_hf, classifier
    )
    assert ids == ref_ids
    assert len(ids) > 10
    np.testing.assert_allclose(scores, ref_probs, atol=1e-5, rtol=0)
    ref_labels = ["virus" if p1 > p0 else "others" for p0, p1 in ref_probs]
    assert labels == ref_labels
    highest = (tmp_path / "prediction_results_highestscore.csv").read_text().splitlines()
    assert highest[0] == "Modified_ID\tIs_Virus"
    assert highest[1:] == highest_score_rows(ref_ids, ref_probs)


def test_fair_esm_checkpoint_gives_same_rows(tiny_set, reads_fasta, predicted, tmp_path):
    result = _predict(tiny_set, reads_fasta, tmp_path, esm=tiny_set.esm_pt)
    assert result.code == 0, result.stderr
    a = read_prediction_results(predicted / "prediction_results.txt")
    b = read_prediction_results(tmp_path / "prediction_results.txt")
    assert a[0] == b[0] and a[1] == b[1]
    np.testing.assert_allclose(a[2], b[2], atol=1e-6)


def test_sequences_table_lists_every_record_with_status(predicted, reads_fasta):
    from Bio import SeqIO

    record_ids = [r.id for r in SeqIO.parse(str(reads_fasta), "fasta")]
    lines = (predicted / "sequences.tsv").read_text().splitlines()
    assert lines[0].split("\t")[0] == "sequence_id"
    assert [line.split("\t")[0] for line in lines[1:]] == record_ids
    by_id = check_sequence_rows(predicted)
    assert by_id["empty_one"]["status"] == "empty"
    assert by_id["empty_one"]["label"] == "NA"
    assert by_id["all_n"]["status"] == "no_stop_free_frame"
    statuses = {r["status"] for r in by_id.values()}
    assert statuses == {"scored", "empty", "no_stop_free_frame"}


def test_frames_table_matches_prediction_rows(predicted):
    frames = (predicted / "frames.tsv").read_text().splitlines()
    header = frames[0].split("\t")
    rows = [dict(zip(header, line.split("\t"), strict=True)) for line in frames[1:]]
    ids, labels, _ = read_prediction_results(predicted / "prediction_results.txt")
    assert [r["frame_id"] for r in rows] == ids
    assert [r["label"] for r in rows] == labels
    for row in rows:
        strand = "+" if row["frame_id"][-2] == "F" else "-"
        assert row["strand"] == strand and row["frame"] == row["frame_id"][-1]
        start, end = int(row["dna_start"]), int(row["dna_end"])
        assert int(row["chunk_start"]) <= start < end <= int(row["chunk_end"])
        assert end - start <= 3 * int(row["protein_length"]) + 1


def test_run_json_and_embeddings(predicted):
    run = json.loads((predicted / "run.json").read_text())
    assert run["status"] == "complete"
    assert run["counts"]["records"] == 32
    assert run["counts"]["status_empty"] == 1
    assert len(run["input"]["sha256"]) == 64
    assert run["models"]["esm"]["weights_sha256"]
    for stage in ("validate_input", "embed_dnabert", "embed_esm", "classify", "total"):
        assert stage in run["timings_s"]
    ids, _, _ = read_prediction_results(predicted / "prediction_results.txt")
    with h5py.File(predicted / "embeddings.h5") as h5:
        assert [i.decode() for i in h5["ids"][:]] == ids
        assert h5["dnabert"].shape == (len(ids), 64) and h5["esm"].shape == (len(ids), 64)
        assert np.isfinite(h5["dnabert"][:]).all()
    assert not list(predicted.glob("*.partial"))


def test_compressed_and_crlf_inputs_give_identical_rows(tiny_set, reads_fasta, predicted, tmp_path):
    raw = reads_fasta.read_bytes()
    variants = {
        "reads.fa.gz": gzip.compress(raw),
        "reads.bz2": bz2.compress(raw),  # the name says nothing: the content decides
        "reads_crlf.fasta": raw.replace(b"\n", b"\r\n"),
    }
    expected = (predicted / "prediction_results.txt").read_text()
    for name, data in variants.items():
        path = tmp_path / name
        path.write_bytes(data)
        out = tmp_path / f"out_{name}"
        result = _predict(tiny_set, path, out, *BATCHING)
        assert result.code == 0, result.stderr
        assert (out / "prediction_results.txt").read_text() == expected, name
        assert (out / "sequences.tsv").read_text() == (predicted / "sequences.tsv").read_text()


def test_empty_input_gives_header_only_outputs(tiny_set, tmp_path):
    empty = tmp_path / "empty.fa"
    empty.write_text("")
    result = _predict(tiny_set, empty, tmp_path / "out")
    assert result.code == 0, result.stderr
    assert "no records" in result.stderr
    out = tmp_path / "out"
    assert (out / "prediction_results.txt").read_text() == "Sequence_ID\tPrediction\tscore1\tscore2\n"
    assert (out / "prediction_results_highestscore.csv").read_text() == "Modified_ID\tIs_Virus\n"
    assert len((out / "sequences.tsv").read_text().splitlines()) == 1


def test_stdin_through_the_real_entry_point(tiny_set, reads_fasta, predicted, tmp_path):
    out = tmp_path / "stdin_out"
    cmd = [
        sys.executable, "-m", "virnucpro_trt", "predict", "-", "-o", str(out),
        "--dnabert", str(tiny_set.dnabert), "--esm", str(tiny_set.esm_hf),
        "--classifier", str(tiny_set.classifier), "--device", "cpu", "-q", *BATCHING,
    ]  # fmt: skip
    proc = subprocess.run(cmd, input=reads_fasta.read_bytes(), capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    assert (out / "prediction_results.txt").read_text() == (predicted / "prediction_results.txt").read_text()
    assert not [p for p in out.iterdir() if p.name.startswith(".stdin")]


def test_bf16_runs_and_mostly_agrees(tiny_set, reads_fasta, predicted, tmp_path):
    result = _predict(tiny_set, reads_fasta, tmp_path, "--precision", "bf16")
    assert result.code == 0, result.stderr
    _, _, a = read_prediction_results(predicted / "prediction_results.txt")
    _, _, b = read_prediction_results(tmp_path / "prediction_results.txt")
    assert np.isfinite(b).all()
    assert np.abs(a - b).max() < 0.05
