"""The ``onnxruntime`` backend through the EngineBackend interface, on the CPU provider."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from virnucpro_trt.engines.onnx_session import session_options
from virnucpro_trt.engines.onnxruntime_backend import (
    ONNXRUNTIME_BACKEND,
    PROVIDER_ENV,
    OnnxRuntimeBackend,
    cuda_provider_list,
    profile_shapes,
)
from virnucpro_trt.engines.spec import BuildOptions, BuildRequest, LoadRequest, ShapeRange, artifact_name
from virnucpro_trt.environment import available_cpus
from virnucpro_trt.errors import EngineMismatchError, ShapeRangeError, UserError
from virnucpro_trt.models.random_checkpoints import (
    TINY_DNABERT_CONFIG,
    TINY_ESM2_CONFIG,
    random_dnabert,
    random_esm2,
)
from virnucpro_trt.models.tokenization import pad_batch
from virnucpro_trt.runtime.embedding import embed_sequences

CPU = torch.device("cpu")
SHAPES = ShapeRange(min_batch=1, opt_batch=4, max_batch=6, min_length=2, opt_length=20, max_length=40)
PAD = {"dnabert-s": 3, "esm2": 1}
DIM = {"dnabert-s": TINY_DNABERT_CONFIG.hidden_size, "esm2": TINY_ESM2_CONFIG.embed_dim}
# One-layer versions of the tiny models: export time grows ~2.5 s per layer on 2 CPU cores, and the
# backend's own logic does not depend on depth (the export tests cover two layers).
CONFIGS = {
    "dnabert-s": dataclasses.replace(TINY_DNABERT_CONFIG, num_hidden_layers=1),
    "esm2": dataclasses.replace(TINY_ESM2_CONFIG, num_layers=1),
}


def model_for(kind: str) -> torch.nn.Module:
    build = random_dnabert if kind == "dnabert-s" else random_esm2
    return build(CONFIGS[kind], seed=11)


def tokens(kind: str, lengths: list[int], seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    bos, eos, low, high = (1, 2, 5, 256) if kind == "dnabert-s" else (0, 2, 4, 24)
    return [np.concatenate([[bos], rng.integers(low, high, n - 2), [eos]]).astype(np.int64) for n in lengths]


def torch_pooled(model: torch.nn.Module, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """Both encoders built and loaded through the backend interface, as the build command does."""
    out = tmp_path_factory.mktemp("ort-engines")
    result = {}
    for kind in ("dnabert-s", "esm2"):
        ids, mask = pad_batch(tokens(kind, [12, 7, 19], seed=1), PAD[kind])
        example = (torch.from_numpy(ids), torch.from_numpy(mask))
        path = out / artifact_name(kind, "cpu", "fp32", ONNXRUNTIME_BACKEND.extension)
        options = BuildOptions(workdir=out)
        request = BuildRequest(model_for(kind), kind, example, SHAPES, "fp32", CPU, path, options)
        artifact = ONNXRUNTIME_BACKEND.build(request)
        runner = ONNXRUNTIME_BACKEND.load(request.load_request(artifact.path, DIM[kind], PAD[kind]))
        result[kind] = (artifact, runner)
    return result


@pytest.mark.parametrize("kind", ["dnabert-s", "esm2"])
def test_build_lists_its_files_and_validation(built, kind) -> None:
    artifact, _ = built[kind]
    assert artifact.path.name == f"{kind}.cpu.fp32.onnx" and artifact.files == [artifact.path]
    assert artifact.facts["validation_max_abs_diff"] < 1e-5
    assert artifact.facts["opset"] >= 18


@pytest.mark.parametrize("kind", ["dnabert-s", "esm2"])
def test_embed_padded_matches_torch_on_padded_batches(built, kind) -> None:
    _, runner = built[kind]
    model = model_for(kind)
    for lengths in ([40], [3, 40, 9, 22, 5, 14], [8, 8]):
        ids, mask = pad_batch(tokens(kind, lengths, seed=sum(lengths)), PAD[kind])
        got = runner.embed_padded(ids, mask)
        assert got.dtype == np.float32 and got.shape == (len(lengths), DIM[kind])
        np.testing.assert_allclose(got, torch_pooled(model, ids, mask), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["dnabert-s", "esm2"])
def test_runner_exposes_the_shape_range_to_the_batcher(built, kind) -> None:
    _, runner = built[kind]
    assert (runner.name, runner.dim, runner.pad_id) == ("onnxruntime", DIM[kind], PAD[kind])
    assert (runner.max_batch_size, runner.max_length) == (SHAPES.max_batch, SHAPES.max_length)
    assert runner.providers == ["CPUExecutionProvider"]
    # the embedding loop splits 9 items into batches of <= 6 rows and keeps input order
    items = tokens(kind, [int(n) for n in np.random.default_rng(3).integers(3, 41, 9)], seed=4)
    got = embed_sequences(runner, items, max_batch_tokens=10_000)
    model = model_for(kind)
    want = np.concatenate([torch_pooled(model, t[None], np.ones_like(t)[None]) for t in items])
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_batches_outside_the_range_are_refused(built) -> None:
    _, runner = built["esm2"]
    ids, mask = pad_batch(tokens("esm2", [41], seed=0), 1)
    with pytest.raises(ShapeRangeError, match=r"1 x 41 .*length 2\.\.40"):
        runner.embed_padded(ids, mask)
    ids, mask = pad_batch(tokens("esm2", [5] * 7, seed=0), 1)
    with pytest.raises(ShapeRangeError, match=r"batch 1\.\.6"):
        runner.embed_padded(ids, mask)


def test_availability_on_this_machine() -> None:
    assert ONNXRUNTIME_BACKEND.availability(CPU, "fp32") is None
    assert ONNXRUNTIME_BACKEND.availability(CPU, "fp16") is None
    assert "no bf16 kernels for MatMul" in ONNXRUNTIME_BACKEND.availability(CPU, "bf16")
    assert "Q/DQ" in ONNXRUNTIME_BACKEND.availability(CPU, "fp8")
    providers = ort.get_available_providers()
    if "CUDAExecutionProvider" in providers:
        pytest.skip("this machine has onnxruntime-gpu: the no-CUDA message cannot be checked")
    reason = ONNXRUNTIME_BACKEND.availability(torch.device("cuda"), "fp32")
    assert (
        reason
        == f"onnxruntime has no CUDAExecutionProvider here (providers: {providers}); install onnxruntime-gpu"
    )


def test_backend_identity_and_library_binding() -> None:
    assert (ONNXRUNTIME_BACKEND.name, ONNXRUNTIME_BACKEND.extension) == ("onnxruntime", "onnx")
    assert ONNXRUNTIME_BACKEND.library_versions() == {}  # an ONNX file is bound to its opset only


def test_missing_artifact_is_an_engine_mismatch(tmp_path) -> None:
    with pytest.raises(EngineMismatchError, match="does not exist"):
        ONNXRUNTIME_BACKEND.load(LoadRequest(tmp_path / "nope.onnx", "esm2", CPU, "fp32", 64, 1, SHAPES))


def test_provider_choice_is_validated(monkeypatch) -> None:
    monkeypatch.setenv(PROVIDER_ENV, "rocm")
    with pytest.raises(UserError, match="expected cuda or tensorrt"):
        OnnxRuntimeBackend()._cuda_provider()
    monkeypatch.setenv(PROVIDER_ENV, "TensorRT")
    assert OnnxRuntimeBackend()._cuda_provider() == "TensorrtExecutionProvider"
    assert OnnxRuntimeBackend(provider="cuda")._cuda_provider() == "CUDAExecutionProvider"


def test_cuda_provider_options_bind_torch_stream_and_profile(tmp_path: Path) -> None:
    cuda_only = cuda_provider_list("CUDAExecutionProvider", 1, 1234, "fp32", SHAPES, tmp_path)
    assert [p if isinstance(p, str) else p[0] for p in cuda_only] == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    options = cuda_only[0][1]
    assert options["device_id"] == "1" and options["user_compute_stream"] == "1234"
    assert options["has_user_compute_stream"] == "1" and options["use_tf32"] == "0"

    with_trt = cuda_provider_list("TensorrtExecutionProvider", 0, 99, "fp16", SHAPES, tmp_path)
    name, trt_options = with_trt[0]
    assert name == "TensorrtExecutionProvider" and with_trt[1][0] == "CUDAExecutionProvider"
    assert trt_options["trt_fp16_enable"] == "1" and trt_options["trt_engine_cache_path"] == str(tmp_path)
    assert trt_options["trt_profile_max_shapes"] == "input_ids:6x40,attention_mask:6x40"
    assert profile_shapes(SHAPES)["trt_profile_min_shapes"] == "input_ids:1x2,attention_mask:1x2"
    assert "use_tf32" not in with_trt[1][1]


def test_cpu_sessions_use_every_available_cpu_and_all_optimizations() -> None:
    options = session_options()
    assert options.intra_op_num_threads == available_cpus()
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def test_external_data_is_read_only_from_plain_files_of_the_engines_folder(built, tmp_path: Path) -> None:
    """An engine directory is hostile: an ONNX file naming '../x', an absolute path or a link out of its
    folder as external data is refused before ONNX Runtime opens it (releases before 1.24 read it)."""
    import onnx

    artifact, _ = built["esm2"]
    model = onnx.load(str(artifact.path))
    folder = tmp_path / "engines"
    folder.mkdir()
    path = folder / artifact.path.name
    onnx.save_model(model, str(path), save_as_external_data=True, location="weights.bin", size_threshold=1024)
    request = LoadRequest(path, "esm2", CPU, "fp32", DIM["esm2"], PAD["esm2"], SHAPES)
    assert ONNXRUNTIME_BACKEND.load(request) is not None  # external data beside it: accepted

    (tmp_path / "weights.bin").write_bytes((folder / "weights.bin").read_bytes())
    (folder / "link.bin").symlink_to(tmp_path / "weights.bin")
    for location, message in (
        ("../weights.bin", "not a plain file name"),
        (str(tmp_path / "weights.bin"), "not a plain file name"),
        ("link.bin", "outside"),
    ):
        edited = onnx.load(str(path), load_external_data=False)
        for tensor in edited.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
        path.write_bytes(edited.SerializeToString())
        with pytest.raises(UserError, match=message):
            ONNXRUNTIME_BACKEND.load(request)
    # From an engine directory, the file must also be one its manifest lists (and so hashed): a file
    # beside the .onnx that the manifest skips was read unverified.
    edited = onnx.load(str(path), load_external_data=False)
    for tensor in edited.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "weights.bin"
    path.write_bytes(edited.SerializeToString())
    listed = dataclasses.replace(request, listed=frozenset({path.name, "weights.bin"}))
    assert ONNXRUNTIME_BACKEND.load(listed) is not None
    unlisted = dataclasses.replace(request, listed=frozenset({path.name}))
    with pytest.raises(UserError, match=r"'weights\.bin', a file the engine directory's manifest does not"):
        ONNXRUNTIME_BACKEND.load(unlisted)


def test_exported_engines_pass_the_whole_model_external_data_check(built, tmp_path: Path) -> None:
    """The check now walks every tensor of the file (model-local functions included): the exporter's
    own files, inline or with their weights in a listed side file, still pass it and load."""
    import onnx

    from virnucpro_trt.engines.onnx_session import check_external_data

    for kind, (artifact, _) in built.items():
        check_external_data(artifact.path, frozenset(p.name for p in artifact.files))
        folder = tmp_path / kind
        folder.mkdir()
        path = folder / artifact.path.name
        model = onnx.load(str(artifact.path))
        onnx.save_model(model, str(path), save_as_external_data=True, location="w.bin", size_threshold=256)
        listed = frozenset({path.name, "w.bin"})
        check_external_data(path, listed)
        request = LoadRequest(path, kind, CPU, "fp32", DIM[kind], PAD[kind], SHAPES, listed)
        assert ONNXRUNTIME_BACKEND.load(request) is not None


def test_an_engine_given_in_the_other_ones_place_is_refused_at_load(built) -> None:
    """Its recorded kind, precision and output width must be the manifest's, as AOTInductor packages'
    are: swapped engines (hashes rewritten) failed at the first batch of every worker, three times."""
    dna, _ = built["dnabert-s"]
    as_esm = LoadRequest(dna.path, "esm2", CPU, "fp32", DIM["esm2"], PAD["esm2"], SHAPES)
    swapped = r"does not match its manifest: kind dnabert-s \(expected esm2\)"
    with pytest.raises(EngineMismatchError, match=swapped):
        ONNXRUNTIME_BACKEND.load(as_esm)
    as_bf16 = LoadRequest(dna.path, "dnabert-s", CPU, "bf16", DIM["dnabert-s"], PAD["dnabert-s"], SHAPES)
    with pytest.raises(EngineMismatchError, match=r"precision fp32 \(expected bf16\)"):
        ONNXRUNTIME_BACKEND.load(as_bf16)
