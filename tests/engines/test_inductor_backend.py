"""AOTInductor backend on CPU with tiny random encoders (one compile per encoder for the whole module).

The DNABERT-S engine is built with ``sequence_multiple=8`` and ``min_export_batch=2`` (the padding paths a
CUDA build or an older exporter takes); the ESM-2 engine with the CPU defaults. Compiling a tiny encoder
takes ~25-45 s on 2 cores, so the whole file runs in ~2 minutes.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import stat
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from virnucpro_trt.engines.fp8_quantize import GELU_TANH
from virnucpro_trt.engines.inductor_backend import INDUCTOR_BACKEND
from virnucpro_trt.engines.spec import (
    BuildOptions,
    BuildRequest,
    BuiltArtifact,
    LoadRequest,
    ModelKind,
    ShapeRange,
)
from virnucpro_trt.errors import BuildError, EngineMismatchError, ShapeRangeError
from virnucpro_trt.models.dnabert import DnabertConfig
from virnucpro_trt.models.random_checkpoints import random_dnabert, random_esm2
from virnucpro_trt.models.tokenization import pad_batch
from virnucpro_trt.runtime.embedding import EmbeddingBackend, embed_sequences

CPU = torch.device("cpu")
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Engine:
    """A built and loaded tiny engine with the eager model it came from."""

    kind: ModelKind
    model: torch.nn.Module
    shapes: ShapeRange
    pad_id: int
    min_real: int  # shortest input with something to pool (ESM-2 pools residues only)
    built: BuiltArtifact
    runner: EmbeddingBackend

    @property
    def dim(self) -> int:
        return self.runner.dim

    def batch(self, rng: np.random.Generator, batch: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Right-padded token batch with random lengths; row 0 has exactly ``length`` tokens."""
        lengths = rng.integers(min(self.min_real, length), length + 1, size=batch)
        lengths[0] = length
        return pad_batch([rng.integers(4, 24, size=n) for n in lengths], self.pad_id)

    def eager(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()


def _build(
    tmp: Path,
    kind: ModelKind,
    model: torch.nn.Module,
    shapes: ShapeRange,
    pad_id: int,
    min_real: int,
    **extra,
) -> Engine:
    example = (torch.randint(4, 24, (3, 11)), torch.ones(3, 11, dtype=torch.int64))
    out = tmp / f"{kind}.cpu.fp32.pt2"
    request = BuildRequest(model, kind, example, shapes, "fp32", CPU, out, BuildOptions(extra=extra))
    built = INDUCTOR_BACKEND.build(request)
    dim = int(model(*example).shape[-1])
    runner = INDUCTOR_BACKEND.load(request.load_request(built.path, dim, pad_id))
    return Engine(kind, model, shapes, pad_id, min_real, built, runner)


@pytest.fixture(scope="module")
def dnabert_engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    shapes = ShapeRange(1, 4, 8, 2, 24, 37)  # 37 is not a multiple of 8: the graph goes to 40
    # DNABERT-S's own 12 heads: more ALiBi slopes than Inductor inlines as literals (8), which the build
    # must hold in a buffer for the weights file to name them (4 heads passed where 12 failed)
    config = DnabertConfig(
        hidden_size=96, num_hidden_layers=2, num_attention_heads=12, intermediate_size=128, vocab_size=256
    )
    model = random_dnabert(config, seed=31)
    tmp = tmp_path_factory.mktemp("inductor_dnabert")
    return _build(tmp, "dnabert-s", model, shapes, 3, 2, sequence_multiple=8, min_export_batch=2)


@pytest.fixture(scope="module")
def esm_engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    shapes = ShapeRange(1, 4, 8, 2, 20, 45)
    return _build(tmp_path_factory.mktemp("inductor_esm"), "esm2", random_esm2(seed=32), shapes, 1, 3)


@pytest.fixture(params=["dnabert", "esm"])
def engine(request: pytest.FixtureRequest) -> Engine:
    return request.getfixturevalue(f"{request.param}_engine")


# ----------------------------------------------------------------------------- parity with eager fp32
def test_outputs_equal_eager_inside_the_range(engine: Engine) -> None:
    rng = np.random.default_rng(0)
    top_b, top_t = engine.shapes.max_batch, engine.shapes.max_length
    for batch, length in ((1, 3), (1, top_t), (3, 17), (5, 9), (2, 8), (top_b, top_t), (top_b, 4)):
        ids, mask = engine.batch(rng, batch, length)
        out = engine.runner.embed_padded(ids, mask)
        assert out.dtype == np.float32 and out.shape == (batch, engine.dim)
        np.testing.assert_allclose(
            out, engine.eager(ids, mask), atol=1e-5, rtol=0, err_msg=f"{batch}x{length}"
        )


def test_embed_sequences_through_the_runner(engine: Engine) -> None:
    """The runtime loop (token-budget batches, max_batch_size/max_length) drives the engine unchanged."""
    rng = np.random.default_rng(1)
    tokens = [
        rng.integers(4, 24, size=n) for n in rng.integers(engine.min_real, engine.shapes.max_length, 19)
    ]
    out = embed_sequences(engine.runner, tokens, max_batch_tokens=96)
    expected = np.concatenate([engine.eager(*pad_batch([t], engine.pad_id)) for t in tokens])
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=0)


def test_batches_without_padding_equal_eager(esm_engine: Engine) -> None:
    """Batches of equal-length rows (no key masked) and the same rows beside a shorter one both equal the
    eager model."""
    rng = np.random.default_rng(5)
    for batch, length in ((2, 3), (5, 17), (7, 45)):
        ids = rng.integers(4, 24, size=(batch, length))
        mask = np.ones_like(ids)
        full = esm_engine.runner.embed_padded(ids, mask)
        np.testing.assert_allclose(full, esm_engine.eager(ids, mask), atol=1e-5, rtol=0)
        padded_ids = np.concatenate([ids, np.full((1, length), esm_engine.pad_id)])
        padded_mask = np.concatenate([mask, np.zeros((1, length), dtype=mask.dtype)])
        padded_mask[-1, :3], padded_ids[-1, :3] = 1, ids[0, :3]
        with_short = esm_engine.runner.embed_padded(padded_ids, padded_mask)
        np.testing.assert_allclose(with_short[:batch], full, atol=1e-5, rtol=0)


def test_extra_padding_does_not_change_results(engine: Engine) -> None:
    """What sequence_multiple does inside the runner, done by hand: more pad columns change nothing."""
    ids, mask = engine.batch(np.random.default_rng(2), 4, 17)
    wide_ids = np.full((4, 29), engine.pad_id, dtype=np.int64)
    wide_mask = np.zeros((4, 29), dtype=np.int64)
    wide_ids[:, :17], wide_mask[:, :17] = ids, mask
    narrow = engine.runner.embed_padded(ids, mask)
    np.testing.assert_allclose(engine.runner.embed_padded(wide_ids, wide_mask), narrow, atol=1e-6, rtol=0)
    np.testing.assert_allclose(narrow, engine.eager(ids, mask), atol=1e-5, rtol=0)


def test_sequence_multiple_and_batch_floor_are_in_the_graph(dnabert_engine: Engine) -> None:
    facts = dnabert_engine.built.facts
    assert facts["dynamic_dims"]["sequence_multiple"] == 8
    low, high = facts["dynamic_dims"]["sequence"]
    assert low % 8 == 0 and high == 40
    assert facts["dynamic_dims"]["batch"] == [2, 8]  # forced floor: batch 1 is padded to 2 rows
    assert facts["export_example"] == [4, 24]  # the opt point: Inductor's size hints


def test_build_does_not_touch_the_source_model(esm_engine: Engine) -> None:
    fresh = random_esm2(seed=32)
    for (name, got), want in zip(
        esm_engine.model.state_dict().items(), fresh.state_dict().values(), strict=True
    ):
        assert got.dtype == want.dtype and got.device == CPU, name
        assert torch.equal(got, want), name


class _FakeCppCompileError(RuntimeError):
    """Shaped like AOTInductor's CppCompileError: a first line, then the compiler's output."""


_UNDECLARED = _FakeCppCompileError(
    "C++ compile error\n\nOutput:\n/tmp/c.main.cpp:3: error: 'int_array_196' was not declared in this "
    "scope; did you mean 'int_array_396'?"
)
# GCC in a UTF-8 locale (the H200 hosts): typographic quotes
_UNDECLARED_UTF8 = _FakeCppCompileError(
    "C++ compile error\n\nOutput:\n/tmp/c.main.cpp:3: error: \u2018int_array_292\u2019 was not declared in "
    "this scope; did you mean \u2018int_array_592\u2019?"
)
_OTHER = _FakeCppCompileError(
    "C++ compile error\n\nOutput:\n/tmp/c.main.cpp:1: error: 'foo' was not declared"
)


def _failing_compiles(monkeypatch: pytest.MonkeyPatch, errors: list[BaseException]) -> list[int]:
    """Make the next ``len(errors)`` AOTInductor compiles raise ``errors`` in turn; later ones run."""
    compile_package = torch._inductor.aoti_compile_and_package
    calls: list[int] = []

    def compile_or_fail(program: torch.export.ExportedProgram, **kwargs: object) -> str:
        calls.append(len(calls))
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return compile_package(program, **kwargs)

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", compile_or_fail)
    return calls


@pytest.mark.parametrize("fault", [_UNDECLARED, _UNDECLARED_UTF8], ids=["ascii-quotes", "utf8-quotes"])
def test_the_wrappers_undeclared_size_array_fault_is_compiled_again(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture, fault: Exception
) -> None:
    """A C++ wrapper that names an undeclared ``int_array_N`` (a fault that came and went on the H200)
    is compiled again, says so once, and the engine built on the next try is the model's; with GCC's
    quotes in either locale (the H200's messages have typographic ones)."""
    calls = _failing_compiles(monkeypatch, [fault])
    shapes = ShapeRange(1, 4, 8, 2, 20, 45)
    with caplog.at_level("WARNING", logger="virnucpro_trt.engines.inductor_backend"):
        engine = _build(tmp_path, "esm2", random_esm2(seed=35), shapes, 1, 3)
    assert len(calls) == 2
    assert caplog.text.count("compiling again (attempt 2 of 3)") == 1
    assert "int_array_" in caplog.text and "was not declared" in caplog.text
    assert engine.built.facts["compile_attempts"] == 2
    assert engine.built.facts["fresh_int_arrays"] is True  # torch here has a form the build knows
    ids, mask = engine.batch(np.random.default_rng(10), 3, 17)
    np.testing.assert_allclose(engine.runner.embed_padded(ids, mask), engine.eager(ids, mask), atol=1e-5)


@pytest.mark.parametrize(
    "errors, compiles",
    [([_OTHER], 1), ([_UNDECLARED] * 3, 3)],
    ids=["another-compiler-error", "the-fault-every-time"],
)
def test_other_compile_errors_and_a_lasting_fault_fail_the_build_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, errors: list[BaseException], compiles: int
) -> None:
    """Any other compiler error is not retried, and the undeclared-array fault at most three times; the
    build then fails in one line with the compiler's first error, and leaves no package behind."""
    calls = _failing_compiles(monkeypatch, errors)
    shapes = ShapeRange(1, 4, 8, 2, 20, 45)
    first = "AOTInductor could not compile esm2 (fp32): _FakeCppCompileError: C++ compile error (first"
    with pytest.raises(BuildError) as info:
        _build(tmp_path, "esm2", random_esm2(seed=35), shapes, 1, 3)
    assert len(calls) == compiles
    assert str(info.value).startswith(first) and "\n" not in str(info.value)
    assert not (tmp_path / "esm2.cpu.fp32.pt2").exists()
    assert not (tmp_path / "esm2.cpu.fp32.weights.safetensors").exists()  # written before the compile


# ----------------------------------------------------------------------------- the artifact
def test_artifact_is_a_pt2_file_and_its_weights_with_facts(esm_engine: Engine) -> None:
    built = esm_engine.built
    weights = built.path.with_name("esm2.cpu.fp32.weights.safetensors")
    assert built.files == [built.path, weights] and built.path.suffix == ".pt2"
    assert sorted(p.name for p in built.path.parent.iterdir()) == sorted([built.path.name, weights.name])
    # the package holds code only: the bytes of its largest weight are in no member of it
    tensors = load_file(weights)
    largest = max(tensors.values(), key=lambda t: t.numel()).contiguous()
    sample = largest.flatten()[:64].numpy().tobytes()
    with zipfile.ZipFile(built.path) as archive:
        assert not any(sample in archive.read(name) for name in archive.namelist())
    # every parameter of the model, under its state-dict name, and the frozen rotary tables in fp32
    assert set(esm_engine.model.state_dict()) <= set(tensors)
    assert tensors["rotary.frozen_cos"].dtype == torch.float32
    assert stat.S_IMODE(weights.stat().st_mode) == stat.S_IMODE(built.path.stat().st_mode)  # not 0600
    facts = built.facts
    assert facts["torch"] == torch.__version__
    assert facts["compile_seconds"] > 0 and facts["export_seconds"] > 0
    assert facts["dynamic_dims"] == {"batch": [1, 8], "sequence": [2, 45], "sequence_multiple": 1}
    assert facts["inductor_configs"]["aot_inductor.metadata"]["virnucpro.kind"] == "esm2"
    # one attention call per layer: SDPA, lowered to the CPU flash kernel
    layers = len(esm_engine.model.layers)
    assert facts["extern_kernels"]["_scaled_dot_product_flash_attention_for_cpu"] == layers
    assert facts["attention"] == "cpu" and facts["rotary_attention_kernel"] is False
    assert facts["frozen_rotary_tables"] == 1  # outputs: test_outputs_equal_eager_inside_the_range
    assert facts["residual_fp32"] is True
    json.dumps(facts)  # goes into the manifest


_FRESH_PROCESS = """
import json, sys
from pathlib import Path
import numpy as np, torch
from virnucpro_trt.engines.inductor_backend import INDUCTOR_BACKEND
from virnucpro_trt.engines.spec import LoadRequest, ShapeRange
path, shapes, ids, mask, out = sys.argv[1:]
runner = INDUCTOR_BACKEND.load(LoadRequest(Path(path), "esm2", torch.device("cpu"), "fp32", 64, 1,
                                           ShapeRange.from_json(json.loads(shapes))))
np.save(out, runner.embed_padded(np.load(ids), np.load(mask)))
heavy = ("torch._dynamo", "torch.export.pt2_archive", "sympy")
print(json.dumps([sorted(m for m in sys.modules if m.startswith("virnucpro_trt.models")),
                  [m for m in heavy if m in sys.modules]]))
"""


def test_package_loads_in_a_fresh_process(esm_engine: Engine, tmp_path: Path) -> None:
    """Only the copied .pt2 file and its weights: no model object, no model module, no inductor cache of
    the build, and none of the compiler's modules imported."""
    package = shutil.copy(esm_engine.built.path, tmp_path / "copied.pt2")
    shutil.copy(esm_engine.built.files[1], tmp_path / "copied.weights.safetensors")
    ids, mask = esm_engine.batch(np.random.default_rng(3), 6, 30)
    np.save(tmp_path / "ids.npy", ids)
    np.save(tmp_path / "mask.npy", mask)
    shapes = json.dumps(esm_engine.shapes.to_json())
    args = [package, shapes, tmp_path / "ids.npy", tmp_path / "mask.npy", tmp_path / "out.npy"]
    env = {"PYTHONPATH": str(REPO), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache"), "PATH": ""}
    done = subprocess.run(
        [sys.executable, "-c", _FRESH_PROCESS, *map(str, args)], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    imported, heavy = json.loads(done.stdout.strip().splitlines()[-1])
    assert "virnucpro_trt.models.esm2" not in imported and "virnucpro_trt.models.layers" not in imported
    # nor TorchDynamo and SymPy, which torch's package wrapper imports: seconds of a worker's start
    assert heavy == []
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), esm_engine.eager(ids, mask), atol=1e-5, rtol=0)


def test_loading_skips_the_cpu_isa_probe(esm_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """aoti_load_package's device-information warning probes every CPU ISA with a fresh interpreter per
    ISA (45 s per process on the H200 host); loading goes to the C++ loader without it."""
    import torch._inductor.codecache as codecache
    import torch._inductor.cpu_vec_isa as cpu_vec_isa

    from virnucpro_trt.engines.inductor_runner import load_package

    def probe(*args: object) -> None:
        raise AssertionError("the CPU ISA probe ran")

    monkeypatch.setattr(codecache, "get_device_information", probe)
    monkeypatch.setattr(cpu_vec_isa, "pick_vec_isa", probe)
    loaded = load_package(esm_engine.built.path, CPU)
    assert loaded.metadata["AOTI_DEVICE_KEY"] == "cpu"
    # the vocabulary size the C++ host holds token ids to (an id past it aborts inside the kernel)
    assert loaded.metadata["virnucpro.vocab_size"] == str(esm_engine.model.config.vocab_size)
    ids, mask = esm_engine.batch(np.random.default_rng(8), 3, 16)
    with torch.inference_mode():
        out = loaded.model(torch.from_numpy(ids), torch.from_numpy(mask))
    np.testing.assert_allclose(out.numpy(), esm_engine.eager(ids, mask), atol=1e-5, rtol=0)


def test_load_checks_the_package_against_the_manifest(esm_engine: Engine, tmp_path: Path) -> None:
    path, shapes = esm_engine.built.path, esm_engine.shapes
    with pytest.raises(EngineMismatchError, match=r"kind esm2 \(expected dnabert-s\)"):
        INDUCTOR_BACKEND.load(LoadRequest(path, "dnabert-s", CPU, "fp32", 64, 1, shapes))
    with pytest.raises(
        EngineMismatchError, match=r"precision fp32 \(expected bf16\).*dim 64 \(expected 32\)"
    ):
        INDUCTOR_BACKEND.load(LoadRequest(path, "esm2", CPU, "bf16", 32, 1, shapes))
    with pytest.raises(EngineMismatchError, match="accepts at most 8 x 45"):
        INDUCTOR_BACKEND.load(LoadRequest(path, "esm2", CPU, "fp32", 64, 1, ShapeRange(1, 4, 16, 2, 20, 45)))
    with pytest.raises(EngineMismatchError, match="missing"):
        INDUCTOR_BACKEND.load(LoadRequest(tmp_path / "none.pt2", "esm2", CPU, "fp32", 64, 1, shapes))


def test_runner_rejects_shapes_outside_the_range(esm_engine: Engine) -> None:
    runner = esm_engine.runner
    assert (runner.max_batch_size, runner.max_length) == (8, 45)
    for batch, length in ((9, 10), (2, 46)):
        ids = np.full((batch, length), 5, dtype=np.int64)
        with pytest.raises(ShapeRangeError, match="outside the inductor engine's range"):
            runner.embed_padded(ids, np.ones_like(ids))


# ----------------------------------------------------------------------------- availability and versions
def test_availability_messages() -> None:
    assert INDUCTOR_BACKEND.availability(CPU, "fp32") is None
    assert INDUCTOR_BACKEND.availability(CPU, "bf16") is None
    fp8 = INDUCTOR_BACKEND.availability(CPU, "fp8")
    assert fp8 is not None and fp8.startswith("fp8 needs") and "CUDA" in fp8
    assert "no precision 'int4'" in (INDUCTOR_BACKEND.availability(CPU, "int4") or "")
    assert "cpu or cuda" in (INDUCTOR_BACKEND.availability(torch.device("meta"), "fp32") or "")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_availability_without_cuda() -> None:
    reason = INDUCTOR_BACKEND.availability(torch.device("cuda"), "bf16")
    assert reason is not None and reason.startswith("CUDA requested") and torch.__version__ in reason


def test_fp8_build_on_cpu_fails_in_one_line(tmp_path: Path) -> None:
    example = (torch.randint(4, 24, (2, 5)), torch.ones(2, 5, dtype=torch.int64))
    with pytest.raises(BuildError, match=r"^fp8 needs") as info:
        INDUCTOR_BACKEND.build(
            BuildRequest(
                random_esm2(), "esm2", example, ShapeRange(1, 2, 4, 2, 5, 9), "fp8", CPU, tmp_path / "x.pt2",
                BuildOptions(),
            )
        )  # fmt: skip
    assert "\n" not in str(info.value) and not (tmp_path / "x.pt2").exists()


# ----------------------------------------------------------------------------- fc1's GELU epilogue
@pytest.mark.parametrize(
    "device, precision, asked, expected",
    [("cuda", "bf16", True, 2), ("cuda", "fp16", True, 2), ("cuda", "bf16", False, 0),
     ("cuda", "fp32", True, 0), ("cpu", "bf16", True, 0)],
)  # fmt: skip
def test_the_gelu_epilogue_is_set_only_where_it_is_one_gemm(
    device: str, precision: str, asked: bool, expected: int
) -> None:
    """``extra["gelu_epilogue"]`` sets every ESM-2 layer's flag for CUDA half-precision engines only,
    and clears a flag the model arrived with everywhere else (the build decides, not the caller)."""
    from virnucpro_trt.engines.inductor_backend import _gelu_epilogue

    model = random_esm2(seed=5)
    for layer in model.layers:
        layer.gelu_epilogue = True  # left over: must not leak into an engine that did not ask
    options = BuildOptions(extra={"gelu_epilogue": asked})
    assert _gelu_epilogue(model, options, torch.device(device), precision) == expected
    assert [layer.gelu_epilogue for layer in model.layers] == [expected > 0] * len(model.layers)
    assert len(model.layers) == 2


def test_an_engine_without_its_gelu_epilogue_calls_fails_the_build() -> None:
    from virnucpro_trt.engines.inductor_backend import check_gelu_epilogue

    check_gelu_epilogue({"_addmm_activation": 36, "mm": 72}, 36, "esm2 (bf16)")
    check_gelu_epilogue({"addmm": 36}, 0, "esm2 (bf16)")
    wanted = r"^esm2 \(bf16\): built with 36 GELU epilogues but calls _addmm_activation 0x$"
    with pytest.raises(BuildError, match=wanted):
        check_gelu_epilogue({"addmm": 36}, 36, "esm2 (bf16)")
    with pytest.raises(BuildError, match="calls _addmm_activation 35x"):
        check_gelu_epilogue({"_addmm_activation": 35}, 36, "esm2 (bf16)")


@pytest.mark.usefixtures("gelu_epilogue_on_cpu")
def test_a_gelu_epilogue_engine_calls_addmm_activation_and_equals_eager(tmp_path: Path) -> None:
    """The whole build path of the option, on the CPU (the rule widened to it here: on CUDA it is what
    the GPU test runs): the export keeps ``_addmm_activation``, AOTInductor calls it once per layer as
    an extern kernel, the build's check passes and says so in the facts, and the engine equals eager."""
    model = random_esm2(seed=36)
    engine = _build(tmp_path, "esm2", model, ShapeRange(1, 4, 8, 2, 20, 45), 1, 3, gelu_epilogue=True)
    layers = len(model.layers)
    assert engine.built.facts["gelu_epilogue_layers"] == layers
    assert engine.built.facts["extern_kernels"]["_addmm_activation"] == layers
    assert not any(layer.gelu_epilogue for layer in model.layers)  # the source model is untouched
    ids, mask = engine.batch(np.random.default_rng(12), 5, 19)
    np.testing.assert_allclose(engine.runner.embed_padded(ids, mask), engine.eager(ids, mask), atol=1e-5)


def test_library_versions() -> None:
    versions = INDUCTOR_BACKEND.library_versions()
    assert versions["torch"] == torch.__version__
    assert ("triton" in versions) == (importlib.util.find_spec("triton") is not None)
    assert INDUCTOR_BACKEND.name == "inductor" and INDUCTOR_BACKEND.extension == "pt2"


# ----------------------------------------------------------------------------- CUDA (run on the H200 host)
def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the H200 host)")
@pytest.mark.parametrize("precision, gelu_epilogue", [("bf16", False), ("bf16", True), ("fp8", False)])
def test_cuda_build_matches_fp32(precision: str, gelu_epilogue: bool, tmp_path: Path) -> None:
    cuda = torch.device("cuda", 0)
    if (reason := INDUCTOR_BACKEND.availability(cuda, precision)) is not None:
        pytest.skip(reason)
    model, shapes = random_esm2(seed=33), ShapeRange(1, 16, 64, 2, 40, 130)
    example = (torch.randint(4, 24, (4, 12)), torch.ones(4, 12, dtype=torch.int64))
    path = tmp_path / f"esm2.{precision}.pt2"
    options = BuildOptions(extra={"gelu_epilogue": gelu_epilogue})
    request = BuildRequest(model, "esm2", example, shapes, precision, cuda, path, options)
    built = INDUCTOR_BACKEND.build(request)
    assert built.facts["gelu_epilogue_layers"] == (len(model.layers) if gelu_epilogue else 0)
    assert built.facts["dynamic_dims"]["sequence_multiple"] == 1  # pad tokens cost more than alignment
    if precision == "fp8":
        fp8 = built.facts["fp8"]
        assert fp8["fold_residual"] and fp8["row_kernels"]["bias_gelu"]["erf"] == GELU_TANH
    runner = INDUCTOR_BACKEND.load(request.load_request(built.path, 64, 1))
    engine = Engine("esm2", model, shapes, 1, 3, built, runner)
    rng = np.random.default_rng(4)
    floor = 0.9995 if precision == "bf16" else 0.99
    for batch, length in ((1, 3), (1, 130), (7, 41), (64, 130), (64, 17)):
        ids, mask = engine.batch(rng, batch, length)
        out = runner.embed_padded(ids, mask)
        assert np.isfinite(out).all() and out.shape == (batch, 64)
        assert _cosine(out, engine.eager(ids, mask)).min() >= floor, (batch, length, built.facts)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the H200 host)")
def test_cuda_engine_out_of_memory_splits_the_batch(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A real allocation failure inside an AOTInductor CUDA package (the wrapper raises a bare
    RuntimeError) is recognised and the batch is split, with the same embeddings as unconstrained.

    The memory limit is PyTorch's per-process fraction, set from a measured run so that the whole batch
    cannot fit but its halves (or quarters) can; AOTInductor allocates its buffers through the same
    caching allocator, so the limit applies to it.
    """
    import logging

    cuda = torch.device("cuda", 0)
    if (reason := INDUCTOR_BACKEND.availability(cuda, "bf16")) is not None:
        pytest.skip(reason)
    model, shapes = random_esm2(seed=35), ShapeRange(1, 64, 256, 2, 256, 514)
    example = (torch.randint(4, 24, (4, 40)), torch.ones(4, 40, dtype=torch.int64))
    path = tmp_path / "esm2.bf16.pt2"
    request = BuildRequest(model, "esm2", example, shapes, "bf16", cuda, path)
    built = INDUCTOR_BACKEND.build(request)
    runner = INDUCTOR_BACKEND.load(request.load_request(built.path, 64, 1))
    rng = np.random.default_rng(6)
    tokens = [rng.integers(4, 24, size=int(n)) for n in rng.integers(480, 513, size=256)]
    budget = 256 * 520  # the whole set is one batch
    reference = embed_sequences(runner, tokens, budget)  # also warms the kernels up
    torch.cuda.synchronize(cuda)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_reserved(cuda)
    torch.cuda.reset_peak_memory_stats(cuda)
    embed_sequences(runner, tokens, budget)
    extra = torch.cuda.max_memory_reserved(cuda) - base
    assert extra >= 32 * 2**20, f"the batch needs only {extra} bytes: too little to limit reliably"
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(cuda).total_memory
    torch.cuda.set_per_process_memory_fraction((base + 0.6 * extra) / total, cuda)
    try:
        with caplog.at_level(logging.WARNING, logger="virnucpro_trt.runtime.embedding"):
            out = embed_sequences(runner, tokens, budget)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, cuda)
    splits = [r.getMessage() for r in caplog.records if "ran out of memory" in r.getMessage()]
    assert splits and splits[0].startswith("inductor ran out of memory on a batch of 256"), splits
    assert _cosine(out, reference).min() >= 0.999


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the H200 host)")
@pytest.mark.parametrize("attention", ["efficient", "cudnn"])
@pytest.mark.parametrize("kind", ["dnabert-s", "esm2"])
def test_cuda_build_bakes_in_the_requested_attention(kind: ModelKind, attention: str, tmp_path: Path) -> None:
    """The attention kernel asked for is the one the engine calls (torch 2.11 would pick cuDNN on the
    H200, which plans every new shape), the build records it, and results stay at bf16 parity."""
    cuda = torch.device("cuda", 0)
    if (reason := INDUCTOR_BACKEND.availability(cuda, "bf16")) is not None:
        pytest.skip(reason)
    if kind == "esm2":
        model, shapes, pad_id, min_real = random_esm2(seed=36), ShapeRange(1, 16, 64, 2, 40, 130), 1, 3
    else:
        model, shapes, pad_id, min_real = random_dnabert(seed=37), ShapeRange(1, 16, 64, 2, 40, 130), 3, 2
    example = (torch.randint(4, 24, (4, 12)), torch.ones(4, 12, dtype=torch.int64))
    # ESM-2 on SDPA, not its own kernel (tests/engines/test_rotary_attention.py builds that)
    options = BuildOptions(attention=attention, extra={"rotary_attention_kernel": False})
    request = BuildRequest(model, kind, example, shapes, "bf16", cuda, tmp_path / "e.pt2", options)
    built = INDUCTOR_BACKEND.build(request)
    assert built.facts["attention"] == attention
    assert built.facts.get("rotary_attention_kernel", False) is False
    calls = sorted(k for k in built.facts["extern_kernels"] if "attention" in k)
    assert calls == [f"_scaled_dot_product_{attention}_attention"], built.facts["extern_kernels"]
    runner = INDUCTOR_BACKEND.load(request.load_request(built.path, 64, pad_id))
    engine = Engine(kind, model, shapes, pad_id, min_real, built, runner)
    rng = np.random.default_rng(8)
    for batch, length in ((1, 3), (7, 41), (64, 130), (33, 97)):
        ids, mask = engine.batch(rng, batch, length)
        assert _cosine(runner.embed_padded(ids, mask), engine.eager(ids, mask)).min() >= 0.9995
        full = rng.integers(4, 24, size=(batch, length)), np.ones((batch, length), dtype=np.int64)
        assert _cosine(runner.embed_padded(*full), engine.eager(*full)).min() >= 0.9995


_CXX_SCOPE = """
import ctypes, importlib.util, sys

def visible():
    try:
        ctypes.CDLL(None)._ZSt9terminatev  # std::terminate(), looked up in the global scope
        return True
    except AttributeError:
        return False

before = visible()
spec = importlib.util.spec_from_file_location("cxx_runtime", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
name = module.expose_cxx_runtime()
print(before, visible(), name)
"""


def test_cxx_runtime_is_promoted_to_the_global_scope() -> None:
    """The fix for the CUDA package-load SIGSEGV: libstdc++ symbols must resolve process-wide."""
    from virnucpro_trt.engines import cxx_runtime

    done = subprocess.run(
        [sys.executable, "-c", _CXX_SCOPE, cxx_runtime.__file__], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    before, after, name = done.stdout.split()
    assert before == "False", "a bare interpreter already exports libstdc++: this test cannot tell"
    assert after == "True" and "stdc++" in name


def test_a_failed_compile_is_reported_with_the_compilers_first_error() -> None:
    """AOTInductor's C++ compile errors carry the compiler's whole output; the one-line BuildError keeps
    the first ``error:`` of it (the line that tells an upstream codegen bug from a broken toolchain)."""
    from virnucpro_trt.engines.inductor_backend import _first_line

    output = (
        "CppCompileError: C++ compile error\n\nCommand:\ng++ /tmp/x/wrapper.cpp -O3 -o x.so\n\nOutput:\n"
        "/tmp/x/wrapper.cpp: In member function 'void run_impl()':\n"
        "/tmp/x/wrapper.cpp:9452:61: error: 'int_array_266' was not declared in this scope\n"
        "/tmp/x/wrapper.cpp:9460:1: error: something later\n"
    )
    line = _first_line(RuntimeError(output))
    assert line == (
        "RuntimeError: CppCompileError: C++ compile error "
        "(first compiler error: 'int_array_266' was not declared in this scope)"
    )
    assert _first_line(ValueError("plain\nmore")) == "ValueError: plain"
    assert _first_line(ValueError("")) == "ValueError: "
    assert len(_first_line(RuntimeError("x" * 1000 + "\nerror: y"))) == 300


def test_the_build_recipe_pins_the_build_defaults() -> None:
    """Every default that shapes an AOTInductor engine, as of build recipe 9. Changing one fails here on
    purpose: raise ``InductorBackend.recipe_version`` with it (``bench`` then rebuilds the engines of its
    work folders) and write the new defaults below."""
    from virnucpro_trt.engines.fp8_quantize import row_launch_facts
    from virnucpro_trt.engines.inductor_backend import EXTRA_DEFAULTS, InductorBackend
    from virnucpro_trt.engines.inductor_configs import inductor_configs
    from virnucpro_trt.engines.rotary_attention import ATTENTION_LAUNCH, AttentionLaunch
    from virnucpro_trt.engines.spec import BuildOptions
    from virnucpro_trt.settings import DEFAULT_ATTENTION

    assert InductorBackend.recipe_version == 9
    assert EXTRA_DEFAULTS == {
        "sequence_multiple": 1,
        "min_export_batch": 1,
        "frozen_rotary": True,
        "fp8_fold_residual": True,
        "rotary_attention_kernel": True,
        "fp8_qkv_bias_in_attention": True,
        "gelu_epilogue": True,
    }
    assert AttentionLaunch(block_m=64, block_n=32, num_warps=4, num_stages=1) == ATTENTION_LAUNCH
    options = BuildOptions()
    assert (options.attention, options.fp8_fast_accum, options.max_autotune) == (
        DEFAULT_ATTENTION,
        True,
        False,
    )
    assert DEFAULT_ATTENTION == "efficient"
    assert inductor_configs(torch.device("cuda"), options, {}) == {
        "aot_inductor.package_constants_in_so": False,
        "max_autotune": False,
        "coordinate_descent_tuning": True,
        "aot_inductor.metadata": {},
    }
    assert row_launch_facts() == {
        "bias_gelu": {"chunk": 2048, "num_warps": 4, "erf": GELU_TANH, "resident": False},
        "layernorm": {"chunk": 1024, "num_warps": 4, "erf": 0, "resident": False},
        "identity": {"chunk": 1024, "num_warps": 4, "erf": 0, "resident": False},
    }
