"""The peer in the harness: ``compile-<precision>`` rows, ``speedup_vs_compile``, several precisions in one
run, the length-mix workload's padding figures and the outlier-channel weights, from one real CPU run."""

from __future__ import annotations

import json

import pytest

from virnucpro_trt.bench.report import RESULT_KEYS


def _rows(report):
    return {row["config"]: row for row in report["results"]}


def test_compile_rows_run_the_same_models_under_torch_compile(peer_run) -> None:
    report = peer_run.report
    rows = _rows(report)
    assert list(rows) == ["reference", "torch-fp32", "compile-fp32", "torch-fp8", "compile-fp8"]
    assert all(tuple(row) == RESULT_KEYS for row in rows.values())
    compiled, eager = rows["compile-fp32"], rows["torch-fp32"]
    assert compiled["status"] == "ok" and compiled["backend"] == "compile" and compiled["precision"] == "fp32"
    assert compiled["frames"] == eager["frames"] == report["workload"]["frames"]  # the same batches
    assert compiled["batching"] == eager["batching"]
    facts = compiled["compile"]
    assert facts["mode"] == "default" and facts["quantization"] is None and facts["graphs"] >= 1
    assert eager["compile"] is None and rows["reference"]["compile"] is None
    parity = compiled["parity"]  # the same fp32 arithmetic, fused: within the fp32 gate of the reference
    assert parity["passed"] is True and parity["esm_min_cos"] > 0.99999
    assert report["settings"]["precision"] == "fp32,fp8"
    assert report["settings"]["precision_resolved"] == "fp32,fp8"


def test_every_row_is_compared_with_the_compile_row_of_its_precision(peer_run) -> None:
    rows = _rows(peer_run.report)
    compiled, eager, reference = rows["compile-fp32"], rows["torch-fp32"], rows["reference"]
    assert compiled["speedup_vs_compile"] == 1.0 and compiled["compile_baseline"] == "compile-fp32"
    assert eager["speedup_vs_compile"] == pytest.approx(
        eager["frames_per_s"] / compiled["frames_per_s"], rel=1e-3
    )
    assert reference["compile_baseline"] == "compile-fp32" and reference["speedup_vs_compile"] > 0
    for name in ("torch-fp8", "compile-fp8"):  # did not run: nothing to compare
        assert rows[name]["speedup_vs_compile"] is None and rows[name]["compile_baseline"] is None
    header = next(line for line in peer_run.result.stdout.splitlines() if line.startswith("config"))
    assert "vs compile" in header and "padding" in header


def test_compile_fp8_is_unavailable_without_a_recent_gpu_with_one_line_saying_why(peer_run) -> None:
    rows = _rows(peer_run.report)
    row = rows["compile-fp8"]
    assert row["status"] == "unavailable" and "\n" not in row["reason"]
    assert "compute capability >= 8.9" in row["reason"]
    assert rows["torch-fp8"]["status"] == "unavailable"
    assert "compile-fp8: unavailable:" in peer_run.result.stdout


def test_the_peer_never_counts_as_an_engine_for_the_gate(peer_run) -> None:
    gate = peer_run.report["gate"]
    assert gate["candidates"] == "torch (no engine ran)" and gate["best"] == "torch-fp32"


def test_mixed_lengths_report_the_padding_of_the_batches_that_ran(peer_run) -> None:
    report = peer_run.report
    workload = report["workload"]
    assert workload["length_mix"] == "mixed" and "100-1000 bp" in workload["length_mix_rule"]
    assert 100 <= workload["read_length_min"] < workload["read_length_median"] < workload["read_length_max"]
    assert workload["read_length_max"] <= 1000
    rows = _rows(report)
    for row in (r for r in rows.values() if r["status"] == "ok"):
        for encoder in ("dnabert", "esm"):
            stats = row["padding"][encoder]
            assert stats["items"] == row["frames"] and stats["batches"] >= 1
            assert stats["computed_tokens"] == stats["tokens"] + stats["padded_tokens"]
            assert 0.0 <= stats["padded_fraction"] < 0.5
            share = stats["padded_tokens"] / stats["computed_tokens"]
            assert stats["padded_fraction"] == pytest.approx(share, abs=1e-6)
    reference = rows["reference"]["padding"]
    assert reference["dnabert"]["padded_tokens"] == 0  # one frame per forward: nothing to pad
    assert reference["dnabert"]["batches"] == rows["reference"]["frames"]
    assert rows["torch-fp32"]["padding"]["esm"]["padded_tokens"] > 0  # proteins of many lengths
    assert rows["torch-fp8"]["padding"] is None
    assert "padding: padded tokens / computed tokens" in peer_run.result.stdout


def test_outlier_weights_are_the_checkpoints_every_row_ran(peer_run) -> None:
    assert peer_run.report["models"]["source"] == "random-weights tiny-outliers"
    marker = json.loads(
        (peer_run.workdir / "models-random-tiny-outliers" / "random-weights.json").read_text()
    )
    assert marker["size"] == "tiny-outliers"
    for encoder in ("dnabert", "esm"):
        facts = marker["outliers"][encoder]
        assert len(facts["channels"]) == 2 and all(20 <= g <= 50 for g in facts["gain_factors"])
