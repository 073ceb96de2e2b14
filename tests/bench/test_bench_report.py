"""The result file and the table of one real run: every key, its type, and figures that make sense."""

from __future__ import annotations

import io
import math

import pytest

from virnucpro_trt.bench.report import RESULT_KEYS
from virnucpro_trt.bench.table import print_plain, print_rich, print_table

NUMBER = (int, float)
PARITY_KEYS = ("dnabert_min_cos", "esm_min_cos", "label_agreement", "max_abs_score_diff")


def _rows(report):
    return {row["config"]: row for row in report["results"]}


def test_top_level_blocks(bench_run) -> None:
    report = bench_run.report
    assert report["schema"] == "virnucpro-trt/bench" and report["schema_version"] == 1
    assert report["complete"] is True
    assert isinstance(report["command"], list) and report["settings"]["reference_frames"] == 40
    hardware = report["hardware"]
    for key in (
        "device",
        "gpu",
        "driver",
        "compute_capability",
        "cpu",
        "cpu_count",
        "torch",
        "cuda",
        "onnxruntime",
    ):
        assert key in hardware, key
    assert hardware["device"] == "cpu" and hardware["gpu"] is None and hardware["driver"] is None
    assert isinstance(hardware["cpu"], str) and hardware["cpu_count"] >= 1
    assert isinstance(hardware["torch"], str) and isinstance(hardware["onnxruntime"], str)
    workload = report["workload"]
    assert workload["source"] == "generated" and workload["reads"] == 140 and workload["read_length"] == 500
    assert 0 < workload["frames"] <= 6 * workload["reads"]
    assert workload["tokens"] == workload["dnabert_tokens"] + workload["esm_tokens"] > workload["frames"]
    assert workload["seed"] == 42
    assert report["models"]["source"] == "random-weights tiny"
    assert report["gate"]["passed"] is True and report["gate"]["threshold"] == 0.01


def test_every_row_has_every_key_and_the_configurations_asked_for(bench_run) -> None:
    rows = bench_run.report["results"]
    assert [r["config"] for r in rows] == ["reference", "torch-fp32", "onnxruntime-fp32", "tensorrt-fp32"]
    for row in rows:
        assert tuple(row) == RESULT_KEYS, row["config"]
        assert row["gpus"] == 0 and row["device"] == "cpu"
        assert row["status"] in ("ok", "unavailable", "failed")


def test_rows_that_ran_have_consistent_figures(bench_run) -> None:
    report = bench_run.report
    workload = report["workload"]
    for row in (r for r in report["results"] if r["status"] == "ok"):
        assert row["reason"] is None
        for key in ("frames_per_s", "reads_per_s", "tokens_per_s", "speedup_vs_reference", "seconds"):
            assert isinstance(row[key], NUMBER) and row[key] > 0, (row["config"], key)
        assert len(row["passes_s"]) == 1 and row["warmup_s"] > 0
        assert set(row["stages_s"]) == {"prepare", "tokenize", "dnabert", "esm", "classify"}
        assert row["frames_per_s"] == pytest.approx(row["frames"] / row["seconds"], rel=1e-3)
        assert row["tokens_per_s"] == pytest.approx(row["tokens"] / row["seconds"], rel=1e-3)
        per_frame = workload["reads"] / workload["frames"]
        assert row["reads_per_s"] == pytest.approx(row["frames_per_s"] * per_frame, rel=1e-3)
        assert row["batching"]["esm_max_batch_tokens"] >= 1


def test_reference_row_is_upstreams_way_on_a_subset(bench_run) -> None:
    reference = _rows(bench_run.report)["reference"]
    assert reference["backend"] == "reference" and reference["precision"] == "fp32"
    assert reference["speedup_vs_reference"] == 1.0
    assert reference["batching"]["dnabert_max_batch_tokens"] == 1  # one sequence per forward
    assert reference["batching"]["esm_max_batch_tokens"] == 2048  # fair-esm toks_per_batch
    assert (
        reference["extrapolated"] is True
        and 40 <= reference["frames"] < bench_run.report["workload"]["frames"]
    )
    parity = reference["parity"]
    assert parity["frames"] == reference["frames"]
    assert parity["dnabert_min_cos"] == parity["esm_min_cos"] == parity["label_agreement"] == 1.0
    assert parity["max_abs_score_diff"] == 0.0 and parity["passed"] is True


def test_parity_fields_are_sensible(bench_run) -> None:
    rows = _rows(bench_run.report)
    for name in ("torch-fp32", "onnxruntime-fp32"):
        row = rows[name]
        assert row["extrapolated"] is False and row["frames"] == bench_run.report["workload"]["frames"]
        parity = row["parity"]
        assert parity["frames"] == rows["reference"]["frames"]  # the frames both computed
        for key in PARITY_KEYS:
            assert isinstance(parity[key], float) and 0.0 <= parity[key] <= 1.0, (name, key)
        # fp32 against fp32: batching only moves the last bits
        assert parity["dnabert_min_cos"] > 0.99999 and parity["esm_min_cos"] > 0.99999
        assert parity["label_agreement"] == 1.0 and parity["max_abs_score_diff"] < 1e-4
        assert parity["passed"] is True and parity["finite"] is True
    engine = rows["onnxruntime-fp32"]["engine"]
    assert engine["source"] == "built" and engine["build_s"] > 0
    assert all(p["passed"] for p in engine["build_parity"].values())


def test_unavailable_configuration_is_reported_with_its_reason(bench_run) -> None:
    row = _rows(bench_run.report)["tensorrt-fp32"]
    assert row["status"] == "unavailable"
    assert (
        isinstance(row["reason"], str) and "tensorrt" in row["reason"].lower() and "\n" not in row["reason"]
    )
    for key in ("frames_per_s", "reads_per_s", "tokens_per_s", "speedup_vs_reference", "parity", "seconds"):
        assert row[key] is None, key


def test_json_has_no_nan(bench_run) -> None:
    text = bench_run.json_path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert all(not (isinstance(v, float) and math.isnan(v)) for v in bench_run.report["hardware"].values())


def test_plain_table_on_stdout(bench_run) -> None:
    out = bench_run.result.stdout
    header = next(line for line in out.splitlines() if line.startswith("config"))
    assert "frames/s" in header and "speedup" in header
    for name in ("reference", "torch-fp32", "onnxruntime-fp32", "tensorrt-fp32"):
        assert any(line.startswith(name) for line in out.splitlines()), name
    assert "tensorrt-fp32: unavailable:" in out
    assert "extrapolated per frame" in out  # the starred reference frame count is explained
    assert "\x1b[" not in out  # not a terminal: no colour codes


def test_rich_table_and_the_automatic_choice(bench_run) -> None:
    stream = io.StringIO()
    print_rich(bench_run.report, stream, width=200)
    text = stream.getvalue()
    assert "onnxruntime-fp32" in text and "1.00x" in text and "unavailable" in text
    plain = io.StringIO()
    print_table(bench_run.report, plain)  # a StringIO is not a terminal: plain text
    reference = io.StringIO()
    print_plain(bench_run.report, reference)
    assert plain.getvalue() == reference.getvalue()
