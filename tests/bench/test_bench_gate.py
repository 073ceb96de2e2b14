"""``--gate``: it passes, it fails (exit 1, one line naming the best engine), and it falls back honestly."""

from __future__ import annotations

import json
import logging
import shutil

from tests.bench.conftest import bench
from virnucpro_trt.bench.gate import evaluate_gate, parity_failures
from virnucpro_trt.cli.bench_command import _finish


def _row(config: str, backend: str, speedup: float | None, status: str = "ok") -> dict:
    return {"config": config, "backend": backend, "status": status, "speedup_vs_reference": speedup}


def _failed_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("FAILED")]


def test_gate_rule_picks_the_best_engine_not_torch() -> None:
    rows = [
        _row("reference", "reference", 1.0),
        _row("torch-bf16", "torch", 9.0),  # faster than every engine, yet not a candidate
        _row("onnxruntime-bf16", "onnxruntime", 2.5),
        _row("inductor-bf16", "inductor", 4.0),
        _row("tensorrt-bf16", "tensorrt", None, status="unavailable"),
    ]
    verdict = evaluate_gate(rows, 3.0)
    assert verdict.passed and verdict.best == "inductor-bf16" and verdict.speedup == 4.0
    assert verdict.candidates == "engines" and verdict.message.startswith("PASSED")
    failed = evaluate_gate(rows, 5.0)
    assert not failed.passed and failed.best == "inductor-bf16"
    assert (
        failed.message.startswith("FAILED")
        and "inductor-bf16" in failed.message
        and "4.00x" in failed.message
    )


def test_gate_falls_back_to_torch_only_when_no_engine_ran() -> None:
    rows = [
        _row("reference", "reference", 1.0),
        _row("torch-bf16", "torch", 2.0),
        _row("inductor-bf16", "inductor", None, status="failed"),
    ]
    verdict = evaluate_gate(rows, 1.5)
    assert verdict.passed and verdict.best == "torch-bf16" and verdict.candidates == "torch (no engine ran)"
    assert "no engine ran" in verdict.message


def test_engines_that_failed_parity_do_not_count() -> None:
    rows = [
        _row("reference", "reference", 1.0),
        _row("torch-bf16", "torch", 2.0),
        {**_row("inductor-fp8", "inductor", 9.0), "parity": {"passed": False}},
        {**_row("inductor-bf16", "inductor", 4.0), "parity": {"passed": True}},
    ]
    verdict = evaluate_gate(rows, 3.0)
    assert verdict.passed and verdict.best == "inductor-bf16"
    assert "inductor-fp8 failed parity" in verdict.message
    rows[3]["parity"]["passed"] = False  # now every engine is wrong: torch stands in, and says why
    fallback = evaluate_gate(rows, 3.0)
    assert not fallback.passed and fallback.best == "torch-bf16"
    assert "inductor-fp8, inductor-bf16 failed parity" in fallback.message


def test_without_a_gate_the_status_line_names_the_rows_that_failed_parity(caplog) -> None:
    rows = [
        {**_row("reference", "reference", 1.0), "parity": {"passed": False}},  # never judged
        {**_row("compile-bf16", "compile", 14.0), "parity": {"passed": False}},
        {**_row("inductor-fp8", "inductor", 22.0), "parity": {"passed": True}},
        {**_row("inductor-bf16", "inductor", None, status="failed"), "parity": {"passed": False}},
    ]
    assert parity_failures(rows) == ["compile-bf16"]
    rows.pop()  # a failed row fails the run; this one is about the rows that ran
    with caplog.at_level(logging.INFO, logger="virnucpro_trt"):
        _finish({"results": rows}, None)
    assert "PASSED: 3 configurations compared, but parity FAILED for compile-bf16" in caplog.text
    caplog.clear()
    rows[1]["parity"]["passed"] = True
    with caplog.at_level(logging.INFO, logger="virnucpro_trt"):
        _finish({"results": rows}, None)
    assert "PASSED: 3 configurations compared" in caplog.text and "parity FAILED" not in caplog.text


def test_gate_with_nothing_but_the_reference_fails() -> None:
    verdict = evaluate_gate([_row("reference", "reference", 1.0)], 0.001)
    assert not verdict.passed and verdict.best is None and verdict.message.startswith("FAILED")


def test_low_gate_passes_in_a_real_run(bench_run) -> None:
    gate = bench_run.report["gate"]
    assert gate["passed"] is True and gate["best"] == "onnxruntime-fp32" and gate["candidates"] == "engines"
    assert gate["speedup_vs_reference"] > 0.01
    assert not _failed_lines(bench_run.result.stderr)


def test_impossible_gate_fails_with_one_line_naming_the_engine(bench_run, tmp_path) -> None:
    """Also the --engines path: the engine directory of the first run, manifest checked, not rebuilt."""
    engines = bench_run.workdir / "engines-onnxruntime-fp32"
    out = tmp_path / "gate.json"
    result = bench(bench_run.workdir, "--engines", str(engines), "--gate", "1e6", "--json", str(out))
    assert result.code == 1, result.stderr
    lines = _failed_lines(result.stderr)
    assert len(lines) == 1 and "onnxruntime-fp32" in lines[0] and "1e+06x" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    report = json.loads(out.read_text())  # written before the verdict
    assert report["gate"]["passed"] is False and report["gate"]["best"] == "onnxruntime-fp32"
    rows = {r["config"]: r for r in report["results"]}
    assert list(rows) == ["reference", "torch-fp32", "onnxruntime-fp32"]  # --engines: torch by default
    assert rows["onnxruntime-fp32"]["engine"]["source"] == "given"
    assert rows["onnxruntime-fp32"]["parity"]["passed"] is True


def test_configurations_that_cannot_run_here_are_kept_and_torch_stands_in(bench_run, tmp_path) -> None:
    out = tmp_path / "bf16.json"
    result = bench(
        bench_run.workdir, "--precision", "bf16", "--backends", "onnxruntime,tensorrt,torch",
        "--reference-frames", "20", "--gate", "0.001", "--json", str(out),
    )  # fmt: skip
    assert result.code == 0, result.stderr
    report = json.loads(out.read_text())
    rows = {r["config"]: r for r in report["results"]}
    assert list(rows) == ["reference", "onnxruntime-bf16", "tensorrt-bf16", "torch-bf16"]
    assert (
        rows["onnxruntime-bf16"]["status"] == "unavailable" and "bf16" in rows["onnxruntime-bf16"]["reason"]
    )
    assert rows["tensorrt-bf16"]["status"] == "unavailable" and rows["tensorrt-bf16"]["reason"]
    torch_row = rows["torch-bf16"]
    assert torch_row["status"] == "ok" and torch_row["precision"] == "bf16"
    assert 0.99 < torch_row["parity"]["esm_min_cos"] < 1.0  # bf16 is close, not identical
    assert report["gate"]["candidates"] == "torch (no engine ran)" and report["gate"]["passed"] is True


def test_gate_fails_when_nothing_but_the_reference_can_run(bench_run) -> None:
    result = bench(
        bench_run.workdir, "--precision", "fp8", "--backends", "torch,onnxruntime",
        "--reference-frames", "10", "--gate", "0.001",
    )  # fmt: skip
    assert result.code == 1, result.stderr
    lines = _failed_lines(result.stderr)
    assert len(lines) == 1 and "no engine" in lines[0], result.stderr
    assert "torch-fp8" in result.stdout and "eager PyTorch has no fp8 path" in result.stdout


def test_a_failed_configuration_is_kept_and_fails_the_run(bench_run, monkeypatch, tmp_path) -> None:
    from virnucpro_trt.bench import build_worker

    def crashed(settings) -> None:
        raise build_worker.BuildFailed("the build process was killed by SIGSEGV")

    monkeypatch.setattr(build_worker, "build_in_child", crashed)
    out = tmp_path / "failed.json"
    result = bench(
        bench_run.workdir, "--precision", "fp16", "--backends", "onnxruntime", "--reference-frames", "10",
        "--json", str(out),
    )  # fmt: skip
    assert result.code == 1
    lines = _failed_lines(result.stderr)
    assert len(lines) == 1 and "onnxruntime-fp16" in lines[0] and "SIGSEGV" in lines[0], result.stderr
    row = json.loads(out.read_text())["results"][1]
    assert row["status"] == "failed" and row["reason"].startswith("BuildFailed: ")
    assert row["frames_per_s"] is None and row["parity"] is None


def test_engines_of_an_older_build_recipe_are_rebuilt_not_measured(bench_run, tmp_path) -> None:
    """A work folder's engines are reused while they record this version's build recipe; from an older
    recipe (here: the manifest says 0) they are rebuilt, so a bench never reports an old recipe's speed
    as this version's. Done on a copy: the shared work folder stays as the other tests expect it."""
    from virnucpro_trt.engines.manifest import SEAL_KEY, manifest_seal
    from virnucpro_trt.engines.onnxruntime_backend import OnnxRuntimeBackend

    workdir = tmp_path / "work"
    shutil.copytree(bench_run.workdir, workdir)
    manifest_path = workdir / "engines-onnxruntime-fp32" / "manifest.json"
    assert (
        json.loads(manifest_path.read_text())["build"]["recipe_version"] == OnnxRuntimeBackend.recipe_version
    )

    def engine_source(name: str) -> tuple[str, str]:
        out = tmp_path / f"{name}.json"
        result = bench(workdir, "--backends", "onnxruntime", "--reference-frames", "10", "--json", str(out))
        assert result.code == 0, result.stderr
        rows = {r["config"]: r for r in json.loads(out.read_text())["results"]}
        return rows["onnxruntime-fp32"]["engine"]["source"], result.stderr

    source, stderr = engine_source("same")
    assert source == "reused" and "rebuilding" not in stderr
    manifest = json.loads(manifest_path.read_text())
    manifest["build"]["recipe_version"] = 0
    manifest["build"][SEAL_KEY] = manifest_seal(manifest)  # as a build of that recipe would have sealed it
    manifest_path.write_text(json.dumps(manifest))
    source, stderr = engine_source("older")
    assert source == "built"
    assert f"build recipe: built 0, asked {OnnxRuntimeBackend.recipe_version}" in stderr
    rebuilt = json.loads(manifest_path.read_text())["build"]
    assert rebuilt["recipe_version"] == OnnxRuntimeBackend.recipe_version
