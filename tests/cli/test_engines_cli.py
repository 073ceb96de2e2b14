"""`build` and `predict/embed --engines` on CPU: ONNX Runtime and AOTInductor engines, tiny checkpoints."""

from __future__ import annotations

import json
import os
import shutil
import stat
import warnings
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.cli.helpers import run_cli
from tests.reference_pipeline import read_prediction_results

BATCHING = ("--max-batch-tokens", "700")


def _build(tiny_set, out, backend, *extra):
    return run_cli(
        "build", "--dnabert", str(tiny_set.dnabert), "--esm", str(tiny_set.esm_hf),
        "--classifier", str(tiny_set.classifier), "--backend", backend, "--device", "cpu",
        "-o", str(out), *extra,
    )  # fmt: skip


@pytest.fixture(scope="module")
def torch_predictions(tiny_set, reads_fasta, tmp_path_factory):
    out = tmp_path_factory.mktemp("torch_pred")
    result = run_cli(
        "predict", str(reads_fasta), "-o", str(out), "--dnabert", str(tiny_set.dnabert), "--esm",
        str(tiny_set.esm_hf), "--classifier", str(tiny_set.classifier), "--device", "cpu", *BATCHING,
    )  # fmt: skip
    assert result.code == 0, result.stderr
    return out


@pytest.fixture(scope="module", params=["onnxruntime", "inductor"])
def engine_dir(request, tiny_set, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"engines_{request.param}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _build(tiny_set, out, request.param)
    assert result.code == 0, result.stderr
    # torch's own deprecation inside export/packaging printed two lines per inductor build: silenced
    assert [str(w.message) for w in caught if "LeafSpec" in str(w.message)] == []
    return out


def test_engine_directory_and_manifest(engine_dir):
    manifest = json.loads((engine_dir / "manifest.json").read_text())
    assert manifest["schema"] == "virnucpro-trt/engine-manifest" and manifest["schema_version"] == 2
    backend = manifest["backend"]
    ext = {"onnxruntime": "onnx", "inductor": "pt2"}[backend]
    assert manifest["precision"] == "fp32" and manifest["device"]["type"] == "cpu"
    for kind in ("dnabert-s", "esm2"):
        entry = manifest["models"][kind]
        assert entry["artifact"] == f"{kind}.cpu.fp32.{ext}"
        assert (engine_dir / entry["artifact"]).is_file() and (engine_dir / entry["tokenizer"]).is_file()
        assert len(entry["weights_sha256"]) == 64
        files = [entry["artifact"], *entry["files"], entry["tokenizer"]]
        assert sorted(entry["file_sha256"]) == sorted(files) and len(entry["file_stamps"]) == len(files)
        assert entry["parity"]["passed"] and entry["parity"]["max_abs"] <= 1e-4
        assert entry["shapes"]["max_length"] == {"dnabert-s": 512, "esm2": 1026}[kind]
        assert entry["source_stamp"] and all(Path(p).is_absolute() for p in entry["source_stamp"])
    assert manifest["models"]["classifier"]["artifact"] == "classifier.safetensors"
    assert "time" in manifest["build"] and manifest["libraries"] is not None
    assert manifest["build"]["attention_option"] == "efficient"  # the CUDA default; CPU: not restricted
    if backend == "inductor":
        assert {manifest["models"][k]["facts"]["attention"] for k in ("dnabert-s", "esm2")} == {"cpu"}
        _assert_no_weights_left_in_the_inductor_cache(engine_dir, manifest)


def _assert_no_weights_left_in_the_inductor_cache(engine_dir: Path, manifest: dict) -> None:
    """The weights are beside the package (recipe 9), so the build's copy of the library in Inductor's
    cache is code only: it stays, holding none of the weights' bytes (with the weights in it, the copy
    was 3-6 GB per full-size build, and went)."""
    from safetensors.torch import load_file

    from virnucpro_trt.engines.inductor_cache import WRAPPER_SUFFIX, inductor_cache_dir
    from virnucpro_trt.engines.package_weights import weights_file

    cache = inductor_cache_dir()
    assert cache is not None and cache.is_dir()
    for kind in ("dnabert-s", "esm2"):
        package = engine_dir / manifest["models"][kind]["artifact"]
        with zipfile.ZipFile(package) as archive:
            names = [Path(n).name for n in archive.namelist() if n.endswith(WRAPPER_SUFFIX)]
        assert len(names) == 1, names
        copies = list(cache.glob(f"*/{names[0]}"))
        largest = max(load_file(weights_file(package)).values(), key=lambda t: t.numel()).contiguous()
        sample = largest.flatten()[:64].numpy().tobytes()
        assert copies and not any(sample in copy.read_bytes() for copy in copies), kind


def test_every_engine_file_follows_the_umask(engine_dir):
    """A shared engine directory must be readable by the group/others the umask allows (no 0600 file)."""
    umask = os.umask(0)
    os.umask(umask)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in engine_dir.rglob("*") if p.is_file()}
    assert "classifier.safetensors" in modes
    assert {name: mode for name, mode in modes.items() if mode != 0o666 & ~umask} == {}


def test_predict_with_engines_matches_torch_backend(engine_dir, reads_fasta, torch_predictions, tmp_path):
    result = run_cli(
        "predict", str(reads_fasta), "-o", str(tmp_path), "--engines", str(engine_dir), *BATCHING
    )
    assert result.code == 0, result.stderr
    ids, labels, scores = read_prediction_results(tmp_path / "prediction_results.txt")
    ref_ids, ref_labels, ref_scores = read_prediction_results(torch_predictions / "prediction_results.txt")
    assert ids == ref_ids and labels == ref_labels
    np.testing.assert_allclose(scores, ref_scores, atol=1e-4, rtol=0)
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["backend"] == json.loads((engine_dir / "manifest.json").read_text())["backend"]
    assert run["engines"] == str(engine_dir)


def test_predict_refuses_a_precision_or_backend_its_engines_are_not_on_a_rerun_too(
    engine_dir, reads_fasta, tmp_path
):
    """A named set's identity stands for its backend and precision in the settings fingerprint, so a rerun
    onto finished results asking for others must be refused as a fresh run is (exit 2, one line), not
    reported finished."""
    built = json.loads((engine_dir / "manifest.json").read_text())["backend"]
    other = "inductor" if built == "onnxruntime" else "onnxruntime"
    args = ("predict", str(reads_fasta), "--engines", str(engine_dir), *BATCHING)
    assert run_cli(*args, "-o", str(tmp_path / "done")).code == 0
    for option, said in ((("--precision", "fp16"), "--precision fp16 asked"), (("--backend", other), other)):
        for out in (tmp_path / "done", tmp_path / "fresh"):
            result = run_cli(*args, "-o", str(out), *option)
            errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
            assert result.code == 2 and len(errors) == 1 and said in errors[0], result.stderr
    assert not (tmp_path / "fresh").exists()


def test_embed_with_engines_matches_torch(engine_dir, tiny_set, tmp_path):
    fasta = tmp_path / "p.faa"
    fasta.write_text(">a\nMKVLAAGIVGLLLAEE\n>b\nMSTNPKPQRKTKRNTNRRPQDVKFPGG\n>c\nMW\n")
    torch_out, engine_out = tmp_path / "t.h5", tmp_path / "e.h5"
    assert (
        run_cli(
            "embed",
            str(fasta),
            "--model",
            "esm2",
            "--weights",
            str(tiny_set.esm_hf),
            "-o",
            str(torch_out),
            "--device",
            "cpu",
        ).code
        == 0
    )
    result = run_cli(
        "embed", str(fasta), "--model", "esm2", "--engines", str(engine_dir), "-o", str(engine_out)
    )
    assert result.code == 0, result.stderr
    with h5py.File(torch_out) as a, h5py.File(engine_out) as b:
        np.testing.assert_allclose(a["embeddings"][:], b["embeddings"][:], atol=1e-4, rtol=0)


def test_mismatching_engines_are_refused_then_rebuilt(tiny_set, reads_fasta, tmp_path):
    engines = tmp_path / "engines"
    assert _build(tiny_set, engines, "onnxruntime").code == 0
    # Other weights than the ones the engines were built from: refused, with the way out.
    from virnucpro_trt.models.random_checkpoints import write_esm_hf_checkpoint

    other_esm = write_esm_hf_checkpoint(tmp_path / "other_esm", seed=99)
    result = run_cli("predict", str(reads_fasta), "-o", str(tmp_path / "o1"), "--engines", str(engines),
                     "--esm", str(other_esm))  # fmt: skip
    assert result.code == 2
    assert "esm2 weights differ" in result.stderr and "--rebuild" in result.stderr
    assert not (tmp_path / "o1" / "prediction_results.txt").exists()
    # The same weights as the build: accepted.
    result = run_cli("predict", str(reads_fasta), "-o", str(tmp_path / "o1"), "--engines", str(engines),
                     "--esm", str(tiny_set.esm_hf), "--dnabert", str(tiny_set.dnabert), "-q")  # fmt: skip
    assert result.code == 0, result.stderr
    # Libraries changed since the build (simulated): refused.
    manifest = json.loads((engines / "manifest.json").read_text())
    manifest["libraries"] = {"onnxruntime": "0.0.1"}
    (engines / "manifest.json").write_text(json.dumps(manifest))
    result = run_cli("predict", str(reads_fasta), "-o", str(tmp_path / "o2"), "--engines", str(engines))
    assert result.code == 2 and "built with onnxruntime 0.0.1" in result.stderr
    # --rebuild with the checkpoints rebuilds and runs.
    result = run_cli(
        "predict", str(reads_fasta), "-o", str(tmp_path / "o3"), "--engines", str(engines), "--rebuild",
        "--dnabert", str(tiny_set.dnabert), "--esm", str(tiny_set.esm_hf), "--classifier",
        str(tiny_set.classifier), "--backend", "onnxruntime",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    assert "rebuilding engines" in result.stderr
    assert json.loads((engines / "manifest.json").read_text())["libraries"] != {"onnxruntime": "0.0.1"}


def test_a_damaged_engine_file_is_replaced_by_predict_rebuild_or_build_force_only(
    tiny_set, reads_fasta, tmp_path
):
    """An engine file changed since its build (damaged, or edited by someone) is refused by predict; a
    plain rebuild refuses to replace it too (it may be a user's file now), ``predict --rebuild`` (the
    remedy the refusal names) and ``build --force`` replace it."""
    engines = tmp_path / "engines"
    assert _build(tiny_set, engines, "onnxruntime").code == 0
    vocab = engines / "esm2.vocab.txt"
    built = vocab.read_bytes()
    vocab.write_bytes(built + b"X\n")
    predict = ("predict", str(reads_fasta), "-o", str(tmp_path / "o1"), "--engines", str(engines), "-q")
    result = run_cli(*predict)
    assert result.code == 2 and "does not match the SHA-256" in result.stderr, result.stderr
    result = _build(tiny_set, engines, "onnxruntime")
    assert result.code == 2 and "esm2.vocab.txt changed since the build" in result.stderr, result.stderr
    assert vocab.read_bytes() == built + b"X\n"
    models = ("--dnabert", str(tiny_set.dnabert), "--esm", str(tiny_set.esm_hf), "--classifier",
              str(tiny_set.classifier), "--backend", "onnxruntime")  # fmt: skip
    result = run_cli(*predict, "--rebuild", *models)
    assert result.code == 0 and vocab.read_bytes() == built, result.stderr
    vocab.write_bytes(built + b"Y\n")
    result = _build(tiny_set, engines, "onnxruntime", "--force")
    assert result.code == 0 and vocab.read_bytes() == built, result.stderr


def test_not_an_engine_directory(tmp_path, reads_fasta):
    engines = tmp_path / "engines"
    engines.mkdir()
    result = run_cli("predict", str(reads_fasta), "-o", str(tmp_path / "o"), "--engines", str(engines))
    assert result.code == 2 and "not an engine directory" in result.stderr
    result = run_cli("predict", str(reads_fasta), "-o", str(tmp_path / "o"), "--engines", str(tmp_path))
    assert result.code == 2 and "a folder this run reads" in result.stderr  # an OUTDIR inside it, first


def test_backend_without_engines_builds_into_outdir_and_reuses(tiny_set, reads_fasta, tmp_path):
    args = (
        "predict",
        str(reads_fasta),
        "-o",
        str(tmp_path),
        "--dnabert",
        str(tiny_set.dnabert),
        "--esm",
        str(tiny_set.esm_hf),
        "--classifier",
        str(tiny_set.classifier),
        "--backend",
        "onnxruntime",
        "--device",
        "cpu",
    )
    first = run_cli(*args)
    assert first.code == 0, first.stderr
    assert (tmp_path / "engines" / "manifest.json").is_file()
    # a first build is said as one (it warned "rebuilding engines in OUTDIR/engines: no manifest.json")
    assert "building engines in" in first.stderr and "rebuilding" not in first.stderr, first.stderr
    second = run_cli(*args)
    assert second.code == 0 and "rebuilding" not in second.stderr


def test_a_rebuildable_set_of_another_backend_is_rebuilt_as_asked(tiny_set, reads_fasta, tmp_path):
    """OUTDIR/engines is predict's own, and a set named with --rebuild may be rebuilt: asked for another
    backend they are rebuilt as asked (they were refused, "rebuild them"); a named set without --rebuild
    is still refused."""
    models = ("--dnabert", str(tiny_set.dnabert), "--esm", str(tiny_set.esm_hf),
              "--classifier", str(tiny_set.classifier), "--device", "cpu", *BATCHING)  # fmt: skip
    out = tmp_path / "out"
    assert run_cli("predict", str(reads_fasta), "-o", str(out), *models, "--backend", "onnxruntime").code == 0
    again = run_cli("predict", str(reads_fasta), "-o", str(out), *models, "--backend", "inductor", "--force")
    assert again.code == 0, again.stderr
    assert "they are onnxruntime fp32, inductor fp32 asked" in again.stderr
    assert json.loads((out / "engines" / "manifest.json").read_text())["backend"] == "inductor"
    assert json.loads((out / "run.json").read_text())["backend"] == "inductor"
    named = ("predict", str(reads_fasta), "--engines", str(out / "engines"), "--backend", "onnxruntime")
    refused = run_cli(*named, "-o", str(tmp_path / "named"), *BATCHING)
    assert refused.code == 2 and "--backend onnxruntime asked, but the engines in" in refused.stderr


def test_parity_gate_can_fail_the_build(tiny_set, tmp_path, monkeypatch):
    import virnucpro_trt.engines.parity as parity

    monkeypatch.setattr(parity, "FP32_MAX_ABS", 0.0)  # nothing computed differently can pass now
    monkeypatch.setattr(parity, "FP32_MAX_RELATIVE", 0.0)
    result = _build(tiny_set, tmp_path / "e1", "onnxruntime")
    assert result.code == 1 and "parity gate failed" in result.stderr
    assert not (tmp_path / "e1" / "manifest.json").exists()
    result = _build(tiny_set, tmp_path / "e2", "onnxruntime", "--keep-failing")
    assert result.code == 0, result.stderr
    manifest = json.loads((tmp_path / "e2" / "manifest.json").read_text())
    assert manifest["build"]["parity_failures_kept"]
    assert manifest["models"]["esm2"]["parity"]["passed"] is False


def test_a_classifier_of_other_encoders_is_refused_before_anything_compiles(tiny_set, tmp_path, monkeypatch):
    """The classifier's input width is checked against the widths the encoder configs declare before
    either encoder loads or compiles: it was checked once both were compiled (minutes for ESM-2 3B)."""
    import virnucpro_trt.engines.build as build

    def compiled(*args: object) -> None:
        raise AssertionError("an encoder was built before the classifier's width was checked")

    monkeypatch.setattr(build, "_build_one", compiled)
    result = run_cli(
        "build", "--dnabert", str(tiny_set.dnabert), "--esm", str(tiny_set.esm_hf),
        "--classifier", str(tiny_set.classifier_wrong_width), "--backend", "onnxruntime", "--device", "cpu",
        "-o", str(tmp_path / "e"),
    )  # fmt: skip
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.code == 2 and len(errors) == 1 and "input features" in errors[0], result.stderr
    assert not (tmp_path / "e").exists()


def test_bf16_on_cpu_onnxruntime_is_refused_with_the_reason(tiny_set, tmp_path):
    result = _build(tiny_set, tmp_path / "e", "onnxruntime", "--precision", "bf16")
    assert result.code == 2 and "bf16" in result.stderr
    result = _build(tiny_set, tmp_path / "e", "tensorrt")
    assert result.code == 2 and "TensorRT" in result.stderr


# -- an engine directory is checked as hostile input ------------------------------------------------------


def _copy_engines(engine_dir: Path, dest: Path) -> Path:
    shutil.copytree(engine_dir, dest, symlinks=True)
    return dest


def _edit_manifest(folder: Path, kind: str, **changes) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["models"][kind].update(changes)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _refused(result, needle: str) -> None:
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.code == 2 and len(errors) == 1 and needle in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def _predict_with(engines: Path, reads: Path, out: Path):
    return run_cli("predict", str(reads), "-o", str(out), "--engines", str(engines), *BATCHING)


def test_a_flipped_classifier_in_an_engine_directory_is_refused(engine_dir, reads_fasta, tmp_path):
    """The attack: swap the two output rows of classifier.safetensors, which inverts every label."""
    from safetensors.torch import load_file, save_file

    engines = _copy_engines(engine_dir, tmp_path / "engines")
    path = engines / "classifier.safetensors"
    tensors = load_file(path)
    tensors["output_layer.weight"] = tensors["output_layer.weight"].flip(0).contiguous()
    tensors["output_layer.bias"] = tensors["output_layer.bias"].flip(0).contiguous()
    save_file(tensors, path, metadata={"format": "virnucpro-classifier", "version": "1", "bn_eps": "1e-05"})
    result = _predict_with(engines, reads_fasta, tmp_path / "out")
    _refused(result, "classifier.safetensors (classifier) does not match")
    assert not (tmp_path / "out").exists()


def test_an_edited_encoder_artifact_is_refused(engine_dir, reads_fasta, tmp_path):
    engines = _copy_engines(engine_dir, tmp_path / "engines")
    artifact = engines / json.loads((engines / "manifest.json").read_text())["models"]["esm2"]["artifact"]
    if artifact.suffix == ".onnx":  # a still-valid model with one initializer changed
        import onnx
        from onnx import numpy_helper

        model = onnx.load(artifact)
        init = max(model.graph.initializer, key=lambda t: numpy_helper.to_array(t).size)
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.5, init.name))
        onnx.save(model, artifact)
    else:
        data = bytearray(artifact.read_bytes())
        data[len(data) // 2] ^= 0xFF
        artifact.write_bytes(bytes(data))
    _refused(_predict_with(engines, reads_fasta, tmp_path / "out"), f"{artifact.name} (esm2) does not match")


def test_manifest_names_leading_out_of_the_folder_are_refused(engine_dir, reads_fasta, tmp_path):
    """An attacker who edits the manifest (hashes included) still cannot point it at a file elsewhere:
    for a .pt2 that file would be native code."""
    engines = _copy_engines(engine_dir, tmp_path / "engines")
    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    entry = json.loads((engines / "manifest.json").read_text())["models"]["esm2"]
    outside = elsewhere / entry["artifact"]
    shutil.copyfile(engines / entry["artifact"], outside)
    sha = entry["file_sha256"][entry["artifact"]]
    others = {k: v for k, v in entry["file_sha256"].items() if k != entry["artifact"]}
    for name in (str(outside), f"../other/{outside.name}"):
        _edit_manifest(engines, "esm2", artifact=name, file_sha256={**others, name: sha})
        _refused(_predict_with(engines, reads_fasta, tmp_path / "out"), "not a plain file name")
    (engines / "link.bin").symlink_to(outside)
    _edit_manifest(engines, "esm2", artifact="link.bin", file_sha256={**others, "link.bin": sha})
    _refused(_predict_with(engines, reads_fasta, tmp_path / "out"), "resolves to")
    assert not (tmp_path / "out").exists()


def test_a_device_build_or_gate_block_of_another_shape_is_refused_in_one_line(
    engine_dir, reads_fasta, tmp_path
):
    """The manifest's device, build and parity blocks are typed where they are read: one of another shape
    stops predict in one line before anything loads (each of these ran, read as a dict)."""
    engines = _copy_engines(engine_dir, tmp_path / "engines")
    original = (engines / "manifest.json").read_text()
    edits = [
        (lambda m: m["device"].update(instruction_sets="avx2"), "device.instruction_sets: not a list"),
        (lambda m: m.update(build=[]), "build: not an object"),
        (lambda m: m["build"].update(command="virnucpro-trt build"), "build.command: not a list"),
        (
            lambda m: m["models"]["esm2"]["parity"].update(passed="yes"),
            "esm2.parity.passed: not true or false",
        ),
    ]
    for edit, said in edits:
        manifest = json.loads(original)
        edit(manifest)
        (engines / "manifest.json").write_text(json.dumps(manifest))
        _refused(_predict_with(engines, reads_fasta, tmp_path / "out"), said)
        assert not (tmp_path / "out").exists()


def test_a_failed_gate_is_said_and_an_edited_vocabulary_size_is_refused(engine_dir, reads_fasta, tmp_path):
    """An engine that failed its parity gate (kept by ``build --keep-failing``) runs, with one warning
    (it ran silently); a vocabulary smaller than the tokenizer's ids contradicts the files the hashes
    hold, and is refused before any worker starts (it ran)."""
    engines = _copy_engines(engine_dir, tmp_path / "engines")
    original = (engines / "manifest.json").read_text()
    parity = json.loads(original)["models"]["esm2"]["parity"]
    _edit_manifest(engines, "esm2", parity={**parity, "passed": False})
    result = _predict_with(engines, reads_fasta, tmp_path / "kept")
    assert result.code == 0, result.stderr
    assert result.stderr.count("the esm2 engine in") == 1 and "failed its parity gate" in result.stderr
    (engines / "manifest.json").write_text(original)
    _edit_manifest(engines, "esm2", vocab_size=5)
    _refused(_predict_with(engines, reads_fasta, tmp_path / "out"), "the word embedding has 5 rows")
    assert not (tmp_path / "out").exists()


def test_a_pad_id_not_the_tokenizers_is_refused(engine_dir, reads_fasta, tmp_path):
    """A manifest without a vocabulary size (written before it was recorded) bounded its pad id by
    nothing but 2^24: an id past the tokenizer's ran (helper-46). The pad id is the tokenizer's."""
    engines = _copy_engines(engine_dir, tmp_path / "engines")
    for kind, pad_id in (("esm2", 1000), ("dnabert-s", 0)):  # DNABERT-S's [PAD] is 3
        original = (engines / "manifest.json").read_text()
        _edit_manifest(engines, kind, vocab_size=0, pad_id=pad_id)
        _refused(_predict_with(engines, reads_fasta, tmp_path / "out"), f"pad_id {pad_id} for {kind}")
        (engines / "manifest.json").write_text(original)
    assert not (tmp_path / "out").exists()


def test_a_torchscript_classifier_named_by_the_manifest_never_runs(engine_dir, reads_fasta, tmp_path):
    from tests.models.torchscript_payload import write_payload_archive
    from virnucpro_trt.files.digests import sha256_file

    marker = tmp_path / "marker"
    for name in ("classifier.pth", "classifier.safetensors"):
        engines = _copy_engines(engine_dir, tmp_path / f"engines-{name}")
        (engines / "classifier.safetensors").unlink()
        archive = write_payload_archive(engines / name, marker)
        _edit_manifest(engines, "classifier", artifact=name, file_sha256={name: sha256_file(archive)})
        result = _predict_with(engines, reads_fasta, tmp_path / "out")
        _refused(result, "classifier")
        assert marker.read_bytes() == b"x" * 16 and not (tmp_path / "out").exists()
    assert "must be .safetensors" in _predict_with(
        tmp_path / "engines-classifier.pth", reads_fasta, tmp_path / "out"
    ).stderr
