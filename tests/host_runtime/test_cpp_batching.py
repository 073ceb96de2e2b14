"""``virnucpro-host`` batches by the Python runtime's token-budget rule and times its passes.

The batches are compared index for index with :func:`virnucpro_trt.runtime.batching.token_budget_batches`
(``--print-batches``), on lengths with many ties (the sort must be stable), on more short items than
the engine's max batch (the cap) and with a padding cap (``--max-padding``: the same cut, compared in
float64 as numpy compares); the embeddings, in input order, with the Python runtime's.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from virnucpro_trt.engines.engine_set import EngineSet, open_engine_set
from virnucpro_trt.models.tokenization import pad_batch
from virnucpro_trt.runtime.batching import token_budget_batches
from virnucpro_trt.runtime.embedding import BatchStats, embed_sequences
from virnucpro_trt.settings import PaddingCap

CPU = torch.device("cpu")
KINDS = ("dnabert-s", "esm2")


@pytest.fixture(scope="module")
def engine_set(engines: Path) -> EngineSet:
    return open_engine_set(engines, CPU, {"dnabert-s": None, "esm2": None, "classifier": None})


def _tokens(engine_set: EngineSet, dna_lengths: list[int], protein_lengths: list[int], seed: int) -> dict:
    rng = np.random.default_rng(seed)
    dna = ["".join(rng.choice(list("ACGT"), n)) for n in dna_lengths]
    proteins = ["M" + "".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), n - 1)) for n in protein_lengths]
    return {
        "dnabert-s": engine_set.dnabert.tokenizer.encode_batch(dna),
        "esm2": engine_set.esm.tokenizer.encode_batch(proteins),
    }


def _run(
    host_tool: Path,
    engines: Path,
    engine_set: EngineSet,
    tokens: dict,
    tmp_path: Path,
    *options: str,
    env: dict[str, str] | None = None,
):
    arrays = [
        *pad_batch(tokens["dnabert-s"], engine_set.dnabert.backend.pad_id),
        *pad_batch(tokens["esm2"], engine_set.esm.backend.pad_id),
    ]
    inputs, outputs, timing = tmp_path / "in.pt", tmp_path / "out.pt", tmp_path / "timing.json"
    torch.save(tuple(torch.from_numpy(a) for a in arrays), inputs)
    command = [str(host_tool), str(engines), str(inputs), str(outputs), "--timing", str(timing), *options]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr
    batches: dict[str, list[list[int]]] = {kind: [] for kind in KINDS}
    for line in done.stdout.splitlines():
        if line.startswith("batch "):
            _, kind, *indices = line.split()
            batches[kind].append([int(i) for i in indices])
    dna, esm, _ = (t.numpy() for t in torch.load(outputs))
    timings = json.loads(timing.read_text())
    timings["stderr"] = done.stderr
    return batches, {"dnabert-s": dna, "esm2": esm}, timings


def _python_batches(
    engine_set: EngineSet, tokens: dict, budget: int, cap: PaddingCap | None = None
) -> dict[str, list[list[int]]]:
    max_batch = {
        "dnabert-s": engine_set.dnabert.backend.max_batch_size,
        "esm2": engine_set.esm.backend.max_batch_size,
    }
    return {
        kind: [
            b.tolist()
            for b in token_budget_batches([len(t) for t in tokens[kind]], budget, max_batch[kind], cap)
        ]
        for kind in KINDS
    }


def test_batches_and_embeddings_are_the_python_runtimes(host_tool, engines, engine_set, tmp_path) -> None:
    rng = np.random.default_rng(11)
    # few distinct lengths: many ties, whose order the stable sort must keep
    tokens = _tokens(
        engine_set,
        rng.choice([31, 120, 250, 300, 480, 500], 40).tolist(),
        rng.choice([10, 49, 98, 166], 40).tolist(),
        seed=3,
    )
    budget = 700
    batches, got, timing = _run(
        host_tool, engines, engine_set, tokens, tmp_path, "--max-batch-tokens", str(budget), "--print-batches"
    )
    want = _python_batches(engine_set, tokens, budget)
    for kind, encoder in (("dnabert-s", engine_set.dnabert), ("esm2", engine_set.esm)):
        assert len(want[kind]) > 5
        assert batches[kind] == want[kind]
        stats = BatchStats()
        expected = embed_sequences(encoder.backend, tokens[kind], budget, stats=stats)
        np.testing.assert_allclose(got[kind], expected, atol=1e-5, rtol=0)  # input order
        host = timing[kind]
        assert (host["batches"], host["items"], host["tokens"], host["computed_tokens"]) == (
            stats.batches, stats.items, stats.tokens, stats.computed_tokens
        )  # fmt: skip


def test_default_budget_is_the_engines_and_the_max_batch_caps_a_batch(
    host_tool, engines, engine_set, tmp_path
) -> None:
    """300 short items fit 4096 tokens ~370 at a time, more than the engines' max batch of 256."""
    tokens = _tokens(engine_set, [31] * 300, [10] * 300, seed=5)
    batches, _, timing = _run(host_tool, engines, engine_set, tokens, tmp_path, "--print-batches")
    budget = engine_set.manifest.build.max_batch_tokens
    assert timing["max_batch_tokens"] == budget and timing["max_padding"] is None  # no cap by default
    want = _python_batches(engine_set, tokens, budget)
    assert [len(b) for b in want["esm2"]] == [256, 44]
    assert batches == want


def _mixed_tokens(engine_set: EngineSet) -> dict:
    """400 frames of mixed lengths, where a padding cap cuts batches; for ESM-2 also 300 proteins of one
    length, more than the engine's max batch of 256 fit the budget, then 40 slightly shorter ones."""
    rng = np.random.default_rng(7)
    protein_lengths = [10] * 300 + [8] * 40 + rng.integers(10, 200, 60).tolist()
    order = rng.permutation(len(protein_lengths))  # input order is not length order
    return _tokens(
        engine_set, rng.integers(30, 500, 400).tolist(), [protein_lengths[i] for i in order], seed=1
    )


@pytest.mark.parametrize("text", ["0.05", "0.05:1024", "NONE"])
def test_padding_cap_batches_and_embeddings_are_the_python_runtimes(
    text, host_tool, engines, engine_set, tmp_path
) -> None:
    """``--max-padding`` cuts the batches where ``token_budget_batches(..., cap=...)`` cuts them, index for
    index, with and without a floor (and the engine's max batch still capping a batch of equal lengths);
    the embeddings and batch figures are the Python runtime's with the same cap."""
    cap = None if text.lower() == "none" else PaddingCap.parse(text)
    tokens = _mixed_tokens(engine_set)
    budget = 4096
    plain = _python_batches(engine_set, tokens, budget)
    capped = _python_batches(engine_set, tokens, budget, PaddingCap(0.05))
    floored = _python_batches(engine_set, tokens, budget, PaddingCap(0.05, 1024))
    for kind in KINDS:  # the cap cuts, and the floor keeps some of what the cap alone would cut
        assert len(plain[kind]) < len(floored[kind]) < len(capped[kind])
    # 4096 // 12 tokens is 341 proteins of 10 residues: the engine's max batch, 256, still caps that batch
    assert 256 in [len(b) for b in floored["esm2"]] and 256 in [len(b) for b in capped["esm2"]]

    batches, got, timing = _run(
        host_tool, engines, engine_set, tokens, tmp_path, "--max-batch-tokens", str(budget),
        "--max-padding", text, "--print-batches",
    )  # fmt: skip
    assert timing["max_padding"] == (None if cap is None else dataclasses.asdict(cap))
    assert batches == _python_batches(engine_set, tokens, budget, cap)
    for kind, encoder in (("dnabert-s", engine_set.dnabert), ("esm2", engine_set.esm)):
        stats = BatchStats()
        expected = embed_sequences(encoder.backend, tokens[kind], budget, stats=stats, cap=cap)
        np.testing.assert_allclose(got[kind], expected, atol=1e-5, rtol=0)  # input order
        host = timing[kind]
        assert (host["batches"], host["items"], host["tokens"], host["computed_tokens"]) == (
            stats.batches, stats.items, stats.tokens, stats.computed_tokens
        )  # fmt: skip


def test_the_padding_cap_compares_in_float64_as_numpy_does(host_tool, engines, engine_set, tmp_path) -> None:
    """At share 0.29, 0.29 * 300 is exactly 87.0 in float64 (a padding of 87 is kept: the bound holds
    with equality) but 0.29 * 100 is 28.999999999999996 (a padding of 29 is cut, though 29/100 is 0.29
    in exact arithmetic): the host cuts exactly where the Python runtime does."""
    # ESM-2 tokens: residues + 2, so 21, 150, 50 and 63 tokens
    tokens = _tokens(engine_set, [300, 120, 250, 31], [19, 148, 48, 61], seed=8)
    assert [len(t) for t in tokens["esm2"]] == [21, 150, 50, 63]
    cap = PaddingCap(0.29)
    want = _python_batches(engine_set, tokens, 300, cap)
    # [150, 63]: padded 87 <= 87.0; [50, 21]: padded 29 > 28.999999999999996, so 50 and 21 apart
    assert want["esm2"] == [[1, 3], [2], [0]]
    batches, _, timing = _run(
        host_tool, engines, engine_set, tokens, tmp_path, "--max-batch-tokens", "300",
        "--max-padding", "0.29", "--print-batches",
    )  # fmt: skip
    assert batches == want and timing["max_padding"] == {"max_share": 0.29, "floor_tokens": 0}


def _halved(batch: list[int], rows: int) -> list[list[int]]:
    """The Python runtime's split of a batch that ran out of memory: first half len // 2, recursively."""
    if len(batch) <= rows:
        return [batch]
    half = len(batch) // 2
    return _halved(batch[:half], rows) + _halved(batch[half:], rows)


def test_a_batch_that_runs_out_of_memory_is_run_in_halves(host_tool, engines, engine_set, tmp_path) -> None:
    """With every batch of more than 3 rows failing as out of memory (the host's test fault), each is run
    as halves by the Python runtime's rule, the embeddings stay the unsplit run's, and each split is said
    on stderr; when even one item does not fit, the host stops with one line, exit 1."""
    dna_lengths, protein_lengths = [300, 120, 250, 31, 500, 120, 480, 31, 250, 90], [98, 40, 166, 10, 49] * 2
    tokens = _tokens(engine_set, dna_lengths, protein_lengths, seed=4)
    budget = 4096
    batches, got, timing = _run(
        host_tool, engines, engine_set, tokens, tmp_path, "--max-batch-tokens", str(budget),
        "--print-batches", env={"VIRNUCPRO_HOST_TEST_OOM_ROWS": "3"},
    )  # fmt: skip
    want = _python_batches(engine_set, tokens, budget)
    assert any(len(b) > 3 for kind in KINDS for b in want[kind])  # something to split
    for kind, encoder in (("dnabert-s", engine_set.dnabert), ("esm2", engine_set.esm)):
        assert batches[kind] == [half for b in want[kind] for half in _halved(b, 3)]
        assert timing[kind]["batches"] == len(batches[kind]) and timing[kind]["items"] == len(tokens[kind])
        expected = embed_sequences(encoder.backend, tokens[kind], budget)  # unsplit
        np.testing.assert_allclose(got[kind], expected, atol=1e-5, rtol=0)
    assert timing["stderr"].count("ran out of memory") >= 4 and "retrying as" in timing["stderr"]

    arrays = [*pad_batch(tokens["dnabert-s"], 0), *pad_batch(tokens["esm2"], 0)]
    torch.save(tuple(torch.from_numpy(a) for a in arrays), tmp_path / "in.pt")
    done = subprocess.run(
        [str(host_tool), str(engines), str(tmp_path / "in.pt"), str(tmp_path / "none.pt")],
        capture_output=True, text=True, env={**os.environ, "VIRNUCPRO_HOST_TEST_OOM_ROWS": "0"},
    )  # fmt: skip
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error")]
    assert done.returncode == 1 and len(errors) == 1 and "ran out of memory" in errors[0]
    assert "(batch 1 x" in errors[0] and not (tmp_path / "none.pt").exists()


@pytest.mark.parametrize("where", ["0", "-1", "-129"])
def test_a_batch_with_a_nan_embedding_stops_the_host(host_tool, engines, engine_set, tmp_path, where) -> None:
    """A NaN anywhere in a batch's embeddings (the host's test fault puts one at the first value, the
    last, or inside the last row but one) stops the host with one line, exit 1, and no outputs, as the
    Python runtime fails such a batch: the check reads every value."""
    tokens = _tokens(engine_set, [300, 120, 250, 31, 500], [98, 40, 166, 10, 49], seed=7)
    arrays = [*pad_batch(tokens["dnabert-s"], 0), *pad_batch(tokens["esm2"], 0)]
    torch.save(tuple(torch.from_numpy(a) for a in arrays), tmp_path / "in.pt")
    done = subprocess.run(
        [str(host_tool), str(engines), str(tmp_path / "in.pt"), str(tmp_path / "none.pt")],
        capture_output=True, text=True, env={**os.environ, "VIRNUCPRO_HOST_TEST_NAN_AT": where},
    )  # fmt: skip
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error")]
    assert done.returncode == 1 and len(errors) == 1, done.stderr
    assert "dnabert-s produced NaN/Inf embeddings in a batch of" in errors[0]
    assert not (tmp_path / "none.pt").exists()


def test_a_production_build_has_no_fault_injection(production_build, engines, engine_set, tmp_path) -> None:
    """The fault hooks are compiled only into the test suite's host: a default build ignores
    VIRNUCPRO_HOST_TEST_OOM_ROWS and VIRNUCPRO_HOST_TEST_NAN_AT, and embeds every batch whole."""
    production = production_build.tool
    tokens = _tokens(engine_set, [300, 120, 250, 31, 500], [98, 40, 166, 10, 49], seed=6)
    batches, got, timing = _run(
        production, engines, engine_set, tokens, tmp_path, "--max-batch-tokens", "4096",
        "--print-batches", env={"VIRNUCPRO_HOST_TEST_OOM_ROWS": "0", "VIRNUCPRO_HOST_TEST_NAN_AT": "0"},
    )  # fmt: skip
    want = _python_batches(engine_set, tokens, 4096)
    assert "ran out of memory" not in timing["stderr"] and "NaN" not in timing["stderr"]
    for kind, encoder in (("dnabert-s", engine_set.dnabert), ("esm2", engine_set.esm)):
        assert batches[kind] == want[kind]
        np.testing.assert_allclose(got[kind], embed_sequences(encoder.backend, tokens[kind], 4096), atol=1e-5)


def test_timing_json(host_tool, engines, engine_set, tmp_path) -> None:
    tokens = _tokens(engine_set, [500, 300, 120, 300], [166, 98, 40, 98], seed=9)
    _, _, timing = _run(
        host_tool, engines, engine_set, tokens, tmp_path, "--warmup", "--max-batch-tokens", "300"
    )
    assert timing["device"] == "cpu" and timing["frames"] == 4 and timing["max_batch_tokens"] == 300
    assert timing["warmup"] is True and timing["warmup_s"] > 0 and timing["load_s"] > 0
    assert timing["engines"] == {"backend": "inductor", "precision": "fp32", "arch": "cpu"}
    stages = [timing["dnabert-s"]["seconds"], timing["esm2"]["seconds"], timing["classifier"]["seconds"]]
    assert all(s > 0 for s in stages) and timing["seconds"] == pytest.approx(sum(stages))
    assert timing["esm2"]["batches"] == len(token_budget_batches([len(t) for t in tokens["esm2"]], 300, 256))
    assert timing["torch"] == torch.__version__.split("+")[0]
    for kind in ("dnabert-s", "esm2"):  # the engine calls are part of each stage, the batching the rest
        parts = timing[kind]["host_work_s"]
        assert set(parts) == {"select", "check", "place"} and all(s > 0 for s in parts.values())
        assert 0 < timing[kind]["embed_s"] + sum(parts.values()) <= timing[kind]["seconds"]
    fresh = subprocess.run(  # libtorch's default, as a fresh process has it (tests may change this one's)
        [sys.executable, "-c", "import torch; print(torch.get_num_threads())"], capture_output=True, text=True
    )
    assert timing["cpu_threads"] == int(fresh.stdout)

    _, _, cold = _run(host_tool, engines, engine_set, tokens, tmp_path, "--cpu-threads", "1")
    assert cold["warmup"] is False and cold["warmup_s"] == 0 and cold["cpu_threads"] == 1


def test_bad_options_and_inputs_are_one_line_errors(host_tool, engines, engine_set, tmp_path) -> None:
    tokens = _tokens(engine_set, [300, 120], [98, 40], seed=2)
    arrays = [*pad_batch(tokens["dnabert-s"], 0), *pad_batch(tokens["esm2"], 0)]
    inputs = tmp_path / "in.pt"
    torch.save(tuple(torch.from_numpy(a) for a in arrays), inputs)
    base = [str(host_tool), str(engines), str(inputs), str(tmp_path / "out.pt")]
    cases = {
        ("--max-batch-tokens", "0"): "--max-batch-tokens 0: expected a positive integer",
        ("--max-batch-tokens", "12x"): "--max-batch-tokens 12x: expected a positive integer",
        ("--cpu-threads", "0"): "--cpu-threads 0: expected a positive integer",
        # an int to libtorch: a pool of 1215752191 threads
        ("--cpu-threads", "99999999999"): "--cpu-threads 99999999999: expected a positive integer of at most",
        ("--device", "gpu"): "--device gpu: expected cpu, cuda or cuda:N",
        ("--device", "meta"): "--device meta: expected cpu, cuda or cuda:N",  # the CPU engines on it: SIGSEGV
        ("--timing", str(tmp_path / "no" / "t.json")): "cannot write",
        ("--max-padding", "0.05x"): "--max-padding: padding cap '0.05x': the share '0.05x' is not a number",
        ("--max-padding", "1"): "share must be in [0, 1), got 1",
        ("--max-padding", "nan"): "the share 'nan' is not a number",
        ("--max-padding", "0.05:-1"): "floor must be >= 0 tokens, got -1",
        ("--max-padding", "0.05:1.5"): "the floor '1.5' is not an integer",
        ("--max-padding", " 0.05"): "the share ' 0.05' is not a number",
        ("--max-padding", ":8192"): "the share '' is not a number",
        ("--max-padding", "inf"): "the share 'inf' is not a number",
        ("--max-padding", "0.05:+8"): "the floor '+8' is not an integer",
        ("--max-padding", "0.05:" + "9" * 20): "the floor '" + "9" * 20 + "' is out of range",
    }
    for options, message in cases.items():
        (tmp_path / "out.pt").unlink(missing_ok=True)
        done = subprocess.run([*base, *options], capture_output=True, text=True)
        assert done.returncode == 2, (options, done.stderr)
        assert done.stderr.splitlines()[0].startswith("Error: ") and message in done.stderr.splitlines()[0]
        assert sum(line.startswith("Error") for line in done.stderr.splitlines()) == 1
        if options[0] == "--max-padding":  # refused before anything runs
            assert not (tmp_path / "out.pt").exists()

    too_long = torch.ones(2, 600, dtype=torch.long)  # DNABERT-S engines take at most 512 tokens
    torch.save((too_long, too_long, *(torch.from_numpy(a) for a in arrays[2:])), inputs)
    done = subprocess.run(base, capture_output=True, text=True)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "#0 has 600 tokens but the dnabert-s engine accepts at most 512" in done.stderr
