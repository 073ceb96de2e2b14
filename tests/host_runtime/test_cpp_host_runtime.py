"""The C++ host runtime (runtime/, CMakeLists.txt): built with CMake against the installed libtorch, run on
a CPU AOTInductor engine directory, compared with the Python runtime on the same token ids (the tool and
the engines come from conftest.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.host_runtime.tiny_engines import build_tiny_engines
from virnucpro_trt.engines.engine_set import open_engine_set
from virnucpro_trt.models.classifier import MLPClassifier, classify
from virnucpro_trt.models.tokenization import pad_batch

CPU = torch.device("cpu")


def _inputs(engine_set, tmp_path: Path) -> tuple[Path, tuple[np.ndarray, ...]]:
    rng = np.random.default_rng(7)
    dna = ["".join(rng.choice(list("ACGT"), n)) for n in (300, 297, 150, 500, 33)]
    proteins = ["M" + "".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), n)) for n in (99, 98, 49, 166, 10)]
    dna_ids, dna_mask = pad_batch(
        engine_set.dnabert.tokenizer.encode_batch(dna), engine_set.dnabert.tokenizer.pad_id
    )
    esm_ids, esm_mask = pad_batch(
        engine_set.esm.tokenizer.encode_batch(proteins), engine_set.esm.tokenizer.pad_id
    )
    arrays = (dna_ids, dna_mask, esm_ids, esm_mask)
    path = tmp_path / "inputs.pt"
    torch.save(tuple(torch.from_numpy(a) for a in arrays), path)
    return path, arrays


def test_host_runtime_matches_the_python_runtime(host_tool, engines, tiny_set, tmp_path) -> None:
    _host_matches_python(host_tool, engines, tmp_path)


@pytest.mark.usefixtures("gelu_epilogue_on_cpu")
def test_the_host_runs_an_engine_that_calls_addmm_activation(host_tool, tiny_set, tmp_path) -> None:
    """CUDA bf16/fp16 ESM-2 engines (build recipe 7) compute fc1 + GELU by ``torch._addmm_activation``,
    which AOTInductor calls through its C shim: the host's libtorch must resolve it as the Python
    runtime's does. Here the rule is widened to the CPU's fp32 engines so that one calls it too."""
    out = build_tiny_engines(tiny_set, tmp_path / "engines", "cpu")
    facts = json.loads((out / "manifest.json").read_text())["models"]["esm2"]["facts"]
    assert facts["gelu_epilogue_layers"] > 0
    assert facts["extern_kernels"]["_addmm_activation"] == facts["gelu_epilogue_layers"]
    _host_matches_python(host_tool, out, tmp_path)


def test_the_host_runs_engines_that_hold_their_weights_inside(
    host_tool, tiny_set, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Packages built before recipe 9 hold their weights in their library and record no weights table
    (no ``.weights.safetensors`` beside them): the host, like the Python loader, runs them as they are.
    Such a set is built here as recipe 8 built it, with the weights inside."""
    from virnucpro_trt.engines import inductor_backend

    made = inductor_backend.inductor_configs

    def weights_inside(*args):  # type: ignore[no-untyped-def]
        return {**made(*args), "aot_inductor.package_constants_in_so": True}

    monkeypatch.setattr(inductor_backend, "inductor_configs", weights_inside)
    out = build_tiny_engines(tiny_set, tmp_path / "engines", "cpu")
    assert not list(out.glob("*.weights.safetensors"))
    _host_matches_python(host_tool, out, tmp_path)


def _host_matches_python(host_tool: Path, engines: Path, tmp_path: Path) -> None:
    """The host's embeddings and probabilities on five frames equal the Python runtime's on the same
    engines and token ids."""
    engine_set = open_engine_set(engines, CPU, {"dnabert-s": None, "esm2": None, "classifier": None})
    inputs, (dna_ids, dna_mask, esm_ids, esm_mask) = _inputs(engine_set, tmp_path)
    out = tmp_path / "outputs.pt"
    done = subprocess.run(
        [str(host_tool), str(engines), str(inputs), str(out)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "embedded 5 frames" in done.stdout
    dna, esm, probs = (t.numpy() for t in torch.load(out))
    want_dna = engine_set.dnabert.backend.embed_padded(dna_ids, dna_mask)
    want_esm = engine_set.esm.backend.embed_padded(esm_ids, esm_mask)
    np.testing.assert_allclose(dna, want_dna, atol=1e-5, rtol=0)
    np.testing.assert_allclose(esm, want_esm, atol=1e-5, rtol=0)
    want_probs = classify(
        MLPClassifier.from_weights(engine_set.classifier), np.concatenate([want_dna, want_esm], 1)
    )
    np.testing.assert_allclose(probs, want_probs, atol=1e-5, rtol=0)


def test_help_prints_the_usage_and_exits_0(host_tool) -> None:
    for flag in ("--help", "-h"):
        done = subprocess.run([str(host_tool), flag], capture_output=True, text=True)
        assert done.returncode == 0 and done.stdout.startswith("Usage: virnucpro-host "), done.stderr
    wrong = subprocess.run([str(host_tool), "--helpme"], capture_output=True, text=True)
    assert wrong.returncode == 2 and wrong.stderr.startswith("Error: unknown option --helpme")


def test_check_accepts_the_engines_and_refuses_a_changed_manifest(host_tool, engines, tmp_path) -> None:
    ok = subprocess.run([str(host_tool), str(engines), "--check"], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.startswith("ok: inductor fp32"), ok.stderr

    changed = tmp_path / "changed"
    shutil.copytree(engines, changed)
    manifest = json.loads((changed / "manifest.json").read_text())
    manifest["libraries"]["torch"] = "1.0.0"
    manifest["device"]["type"] = "cuda"
    (changed / "manifest.json").write_text(json.dumps(manifest))
    refused = subprocess.run([str(host_tool), str(changed), "--check"], capture_output=True, text=True)
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and len(lines) == 1
    assert "built for cuda, running on cpu" in lines[0] and "built with torch 1.0.0" in lines[0]


def test_damaged_artifact_and_onnx_engines_are_refused(host_tool, engines, tiny_set, tmp_path) -> None:
    damaged = tmp_path / "damaged"
    shutil.copytree(engines, damaged)
    artifact = next(damaged.glob("esm2.*.pt2"))
    artifact.write_bytes(artifact.read_bytes()[:-10] + b"0123456789")
    refused = subprocess.run([str(host_tool), str(damaged), "--check"], capture_output=True, text=True)
    assert refused.returncode == 2 and "does not match its sha256" in refused.stderr

    # A manifest naming a .pt2 (native code) outside its folder is refused, whatever the hash says.
    outside = tmp_path / "outside"
    shutil.copytree(engines, outside)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    manifest = json.loads((outside / "manifest.json").read_text())
    entry = manifest["models"]["esm2"]
    (elsewhere / entry["artifact"]).write_bytes((outside / entry["artifact"]).read_bytes())

    def check_with_esm2_entry(changed: dict) -> subprocess.CompletedProcess:
        models = {**manifest["models"], "esm2": dict(entry, **changed)}
        (outside / "manifest.json").write_text(json.dumps({**manifest, "models": models}))
        return subprocess.run([str(host_tool), str(outside), "--check"], capture_output=True, text=True)

    for name in ("../elsewhere/" + entry["artifact"], str(elsewhere / entry["artifact"])):
        refused = check_with_esm2_entry({"artifact": name, "file_sha256": {name: "0" * 64}})
        assert refused.returncode == 2 and "not a plain file name" in refused.stderr, refused.stderr
    (outside / "link.pt2").symlink_to(elsewhere / entry["artifact"])
    sha = entry["file_sha256"][entry["artifact"]]
    refused = check_with_esm2_entry({"artifact": "link.pt2", "file_sha256": {"link.pt2": sha}})
    assert refused.returncode == 2 and "resolves outside" in refused.stderr, refused.stderr

    inputs = tmp_path / "inputs.pt"
    torch.save((torch.zeros(1, 3, dtype=torch.long),) * 2, inputs)  # two tensors instead of four
    command = [str(host_tool), str(engines), str(inputs), str(tmp_path / "o.pt")]
    bad = subprocess.run(command, capture_output=True, text=True)
    assert bad.returncode == 2 and "must hold (dna_ids, dna_mask, protein_ids, protein_mask)" in bad.stderr

    manifest = json.loads((engines / "manifest.json").read_text())
    manifest["backend"] = "onnxruntime"
    onnx_like = tmp_path / "onnx_like"
    shutil.copytree(engines, onnx_like)
    (onnx_like / "manifest.json").write_text(json.dumps(manifest))
    refused = subprocess.run([str(host_tool), str(onnx_like), "--check"], capture_output=True, text=True)
    assert refused.returncode == 2 and "build with --backend inductor" in refused.stderr


def test_scores_that_overflow_stop_the_host_with_one_line(host_tool, engines, tmp_path) -> None:
    """Finite but huge classifier weights overflow to Inf logits and NaN scores: the host stops with one
    line naming the frames (exit 1) and writes no outputs, as the Python runtime fails the batch."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from virnucpro_trt.files.digests import sha256_file

    changed = tmp_path / "overflow"
    shutil.copytree(engines, changed)
    manifest = json.loads((changed / "manifest.json").read_text())
    entry = manifest["models"]["classifier"]
    path = changed / entry["artifact"]
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 - safe_open has no items()
    tensors["hidden_layer.weight"] = tensors["hidden_layer.weight"] * 1e25
    tensors["output_layer.weight"] = tensors["output_layer.weight"] * 1e25
    save_file(tensors, str(path), metadata=metadata)
    entry["file_sha256"][entry["artifact"]] = sha256_file(path)
    (changed / "manifest.json").write_text(json.dumps(manifest))

    engine_set = open_engine_set(engines, CPU, {"dnabert-s": None, "esm2": None, "classifier": None})
    inputs, _ = _inputs(engine_set, tmp_path)
    out = tmp_path / "outputs.pt"
    command = [str(host_tool), str(changed), str(inputs), str(out)]
    done = subprocess.run(command, capture_output=True, text=True)
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error")]
    assert done.returncode == 1 and len(errors) == 1, done.stderr
    assert "the classifier produced NaN/Inf scores for" in errors[0] and "of 5 frame(s)" in errors[0]
    assert not out.exists()


def test_the_host_refuses_hostile_inputs_and_outputs_in_one_line(host_tool, engines, tmp_path) -> None:
    """Found by the eighteenth session's audit: negative ids and masks other than 0/1 reached the
    engine's kernels (whose bounds checks abort the process); a FIFO as INPUTS.pt blocked forever; a
    link at OUTPUTS.pt was written through, and a failed write ended with exit 0."""
    ids, mask = torch.full((2, 4), 5, dtype=torch.long), torch.ones(2, 4, dtype=torch.long)

    def host(inputs: Path, outputs: Path | str) -> subprocess.CompletedProcess[str]:
        command = [str(host_tool), str(engines), str(inputs), str(outputs)]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    for name, tensors, needle in (
        ("negative", (ids, mask, -ids, mask), "protein_ids holds a negative token id"),
        ("mask", (ids, mask * 5, ids, mask), "dna_mask must hold only 0 and 1"),
        ("int32", (ids.int(), mask, ids, mask), "dna_ids must be a 2-D int64 tensor"),
    ):
        path = tmp_path / f"{name}.pt"
        torch.save(tensors, path)
        refused = host(path, tmp_path / f"{name}.out.pt")
        assert refused.returncode == 2 and needle in refused.stderr, (name, refused.stderr)
        assert refused.stderr.count("Error:") == 1 and not (tmp_path / f"{name}.out.pt").exists()

    fifo = tmp_path / "fifo.pt"
    os.mkfifo(fifo)
    refused = host(fifo, tmp_path / "o.pt")
    assert refused.returncode == 2 and "not a regular file" in refused.stderr

    good = tmp_path / "good.pt"
    torch.save((ids, mask, ids, mask), good)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep\n")
    (tmp_path / "link.pt").symlink_to(victim)
    refused = host(good, tmp_path / "link.pt")
    assert refused.returncode != 0 and "symbolic link" in refused.stderr and victim.read_text() == "keep\n"
    failed = host(good, tmp_path / "victim.txt" / "below.pt")
    assert failed.returncode != 0 and "cannot write" in failed.stderr, failed.stderr
    fifo_out = tmp_path / "out.fifo"
    os.mkfifo(fifo_out)  # never replaced (nor, as root, a device node such as /dev/full)
    failed = host(good, fifo_out)
    assert failed.returncode != 0 and "not a regular file" in failed.stderr and fifo_out.is_fifo()
    assert host(good, tmp_path / "out.pt").returncode == 0 and (tmp_path / "out.pt").stat().st_size > 0
    assert not list(tmp_path.glob(".*.partial"))
