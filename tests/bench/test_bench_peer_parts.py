"""The pieces behind the peer rows: precisions, planning, the compile baseline rule, torchao's API and the
Inductor options it changes, and why compile-fp8 cannot run here."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from tests.cli.helpers import run_cli
from virnucpro_trt.bench import peer
from virnucpro_trt.bench.config_names import parse_precisions
from virnucpro_trt.bench.configs import ConfigSpec, plan_configurations, resolve_precisions
from virnucpro_trt.bench.gate import evaluate_gate
from virnucpro_trt.bench.parity import path_parity
from virnucpro_trt.bench.path import PathResult
from virnucpro_trt.bench.report import fill_compile_speedups
from virnucpro_trt.errors import UserError
from virnucpro_trt.models.random_checkpoints import random_esm2
from virnucpro_trt.runtime.embedding import TorchBackend

CPU = torch.device("cpu")


def _row(config: str, fps: float | None, status: str = "ok", speedup: float = 2.0) -> dict:
    backend, precision = config.rsplit("-", 1) if config != "reference" else ("reference", "fp32")
    return {
        "config": config, "backend": backend, "precision": precision, "status": status,
        "frames_per_s": fps if status == "ok" else None, "speedup_vs_reference": speedup,
        "speedup_vs_compile": "unset", "compile_baseline": "unset", "parity": {"passed": True},
    }  # fmt: skip


def test_precisions_parse_resolve_and_plan_precision_by_precision() -> None:
    assert parse_precisions("bf16, fp8,bf16") == ("bf16", "fp8")
    assert resolve_precisions("auto", CPU) == ("fp32",)
    assert resolve_precisions("auto,fp32,fp8", CPU) == ("fp32", "fp8")
    assert resolve_precisions("auto", torch.device("cuda")) == ("bf16",)
    with pytest.raises(UserError, match="--precision 'int4'"):
        parse_precisions("int4")
    specs = plan_configurations(("torch", "compile", "inductor"), ("bf16", "fp8"))
    assert [s.name for s in specs] == [
        "reference", "torch-bf16", "compile-bf16", "inductor-bf16",
        "torch-fp8", "compile-fp8", "inductor-fp8",
    ]  # fmt: skip
    assert plan_configurations(("torch",), "bf16") == [
        ConfigSpec("reference", "fp32"),
        ConfigSpec("torch", "bf16"),
    ]
    assert [s.is_engine for s in specs] == [False, False, False, True, False, False, True]


def test_speedup_vs_compile_uses_the_same_precision_else_compile_bf16_and_names_it() -> None:
    rows = [
        _row("reference", 10.0, speedup=1.0), _row("torch-bf16", 300.0), _row("compile-bf16", 400.0),
        _row("inductor-bf16", 500.0), _row("inductor-fp8", 800.0), _row("compile-fp8", 0, "unavailable"),
        _row("torch-fp16", 200.0),
    ]  # fmt: skip
    fill_compile_speedups(rows)
    by = {r["config"]: r for r in rows}
    assert by["compile-bf16"]["speedup_vs_compile"] == 1.0
    assert (
        by["inductor-bf16"]["speedup_vs_compile"] == 1.25
        and by["inductor-bf16"]["compile_baseline"] == "compile-bf16"
    )
    # no compile-fp8 ran: fp8 rows are compared with compile-bf16, and say so
    assert (
        by["inductor-fp8"]["speedup_vs_compile"] == 2.0
        and by["inductor-fp8"]["compile_baseline"] == "compile-bf16"
    )
    assert by["torch-fp16"]["compile_baseline"] == "compile-bf16"
    assert by["compile-fp8"]["speedup_vs_compile"] is None and by["compile-fp8"]["compile_baseline"] is None
    rows.append(_row("compile-fp8", 640.0))
    fill_compile_speedups(rows)
    assert (
        by["inductor-fp8"]["speedup_vs_compile"] == 1.25
        and by["inductor-fp8"]["compile_baseline"] == "compile-fp8"
    )
    without = [_row("reference", 10.0, speedup=1.0), _row("torch-bf16", 300.0)]
    fill_compile_speedups(without)
    assert all(r["speedup_vs_compile"] is None and r["compile_baseline"] is None for r in without)


def test_the_gate_never_picks_the_peer() -> None:
    rows = [_row("reference", 10.0, speedup=1.0), _row("compile-bf16", 400.0, speedup=40.0),
            _row("inductor-bf16", 300.0, speedup=30.0)]  # fmt: skip
    verdict = evaluate_gate(rows, 3)
    assert verdict.best == "inductor-bf16" and verdict.passed
    only_peer = evaluate_gate([rows[0], rows[1]], 3)
    assert only_peer.passed is False and only_peer.best is None


def test_compile_fp8_reasons_name_every_missing_piece(monkeypatch) -> None:
    assert peer.peer_unavailable_reason("bf16", CPU) is None
    reason = peer.peer_unavailable_reason("fp8", CPU)
    assert reason is not None and "compute capability >= 8.9" in reason and "\n" not in reason
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        peer.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "torchao" else real_find_spec(name, *a),
    )
    reason = peer.peer_unavailable_reason("fp8", CPU)
    assert "compute capability >= 8.9" in reason and "torchao" in reason and "virnucpro-trt[peer]" in reason


def test_torchao_float8_row_wise_api_is_the_one_we_call() -> None:
    quantize, config = peer._torchao_fp8()
    from torchao.quantization import PerRow

    assert callable(quantize) and type(config).__name__ == "Float8DynamicActivationFloat8WeightConfig"
    granularity = config.granularity
    assert all(
        isinstance(g, PerRow)
        for g in (granularity if isinstance(granularity, list | tuple) else [granularity])
    )
    assert peer.torchao_version() is not None


def test_compile_fp8_quantises_each_model_then_compiles_and_restores_inductor_options(monkeypatch) -> None:
    import torch._inductor.config as inductor_config

    quantised: list[torch.nn.Module] = []

    def fake_quantize(module, config) -> None:  # what torchao's quantize_ does to the process
        quantised.append(module)
        inductor_config.coordinate_descent_check_all_directions = True

    monkeypatch.setattr(peer, "_torchao_fp8", lambda: (fake_quantize, object()))
    before = inductor_config.coordinate_descent_check_all_directions
    assert before is False
    backends = [TorchBackend(random_esm2(seed=s), 64, 1, CPU, torch.bfloat16) for s in (1, 2)]
    models = [b.model for b in backends]
    compiled = peer.compile_backends(backends, "fp8")
    assert quantised == models  # each model quantised, in place, before compiling
    assert all(b.name == "compile" and b.model is not m for b, m in zip(backends, models, strict=True))
    assert compiled.facts["quantization"] == peer.TORCHAO_FP8 and compiled.facts["mode"] == "default"
    assert compiled.facts["inductor_config_changed"] == {"coordinate_descent_check_all_directions": True}
    assert inductor_config.coordinate_descent_check_all_directions is True  # kept while the row runs
    compiled.finish()
    assert inductor_config.coordinate_descent_check_all_directions is before
    assert compiled.facts["graphs"] == 0  # nothing ran


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--precision", "bf16,int4"), "--precision"),
        (("--length-mix", "mixed", "--read-length", "300"), "--read-length"),
        (("in.fa", "--length-mix", "illumina"), "not both"),
        (("--length-mix", "long"), "--length-mix"),
    ],
)
def test_new_options_refuse_bad_combinations_with_exit_2(args, needle, tmp_path) -> None:
    result = run_cli("bench", "--random-weights", "tiny", *args, "--workdir", str(tmp_path / "work"))
    assert result.code == 2, (result.code, result.stderr)
    assert needle in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "work").exists()


def _path(ids: list[str], esm: np.ndarray, probs: np.ndarray) -> PathResult:
    return PathResult(ids, np.ones((len(ids), 4), np.float32), esm, probs, len(ids), 0, 0, {})


def _tilted(reference: np.ndarray, cosine: float) -> np.ndarray:
    """Rows at exactly ``cosine`` from the reference rows (rotated towards an orthogonal direction)."""
    other = np.roll(reference, 1, axis=1)
    along = (other * reference).sum(1, keepdims=True) / (reference * reference).sum(1, keepdims=True)
    other -= along * reference
    other *= np.linalg.norm(reference, axis=1, keepdims=True) / np.linalg.norm(other, axis=1, keepdims=True)
    return (cosine * reference + np.sqrt(1 - cosine**2) * other).astype(np.float32)


@pytest.mark.parametrize(
    ("cosine", "flipped", "passed"),
    [(0.9960, 4, True), (0.9940, 0, False), (0.9990, 6, False)],  # min cos 0.995, decisive labels 99.5%
)
def test_fp8_rows_are_held_to_min_cosine_0_995_and_99_5_percent_of_decisive_labels(cosine, flipped, passed):
    rng = np.random.default_rng(0)
    ids = [f"f{i}" for i in range(1000)]
    esm = rng.standard_normal((1000, 16)).astype(np.float32)
    p_virus = np.where(rng.random(1000) < 0.5, 0.2, 0.8).astype(np.float32)  # every frame decisive
    probs = np.stack([1 - p_virus, p_virus], axis=1)
    flipped_probs = probs.copy()
    flipped_probs[:flipped] = flipped_probs[:flipped, ::-1]
    parity = path_parity(_path(ids, esm, probs), _path(ids, _tilted(esm, cosine), flipped_probs), "fp8")
    assert parity["esm_min_cos"] == pytest.approx(cosine, abs=1e-5)
    assert parity["decisive_frames"] == 1000 and parity["decisive_label_agreement"] == 1 - flipped / 1000
    assert parity["passed"] is passed and "0.995" in parity["rule"]


def test_the_cli_offers_the_names_the_package_accepts() -> None:
    """The command module imports no numpy, so it spells the length mixes out; they must stay the
    package's. (Backends, precisions and random sizes come from the torch-free ``config_names``.)"""
    from virnucpro_trt.cli import bench_command
    from virnucpro_trt.sequences.synthetic import LENGTH_MIXES

    assert tuple(LENGTH_MIXES) == bench_command._LENGTH_MIXES
