"""ONNX export of the native encoders: signature, dynamic axes, precision islands, external data.

Each export takes 5-10 s on 2 CPU cores (torch.export dominates), so every graph is exported once per
module and shared by the tests that read it.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from virnucpro_trt.engines.onnx_export import (
    INPUT_NAMES,
    OUTPUT_NAME,
    export_onnx,
    external_data_name,
    fit_example,
    max_abs_diff,
)
from virnucpro_trt.engines.spec import ShapeRange
from virnucpro_trt.errors import UserError
from virnucpro_trt.models.random_checkpoints import (
    TINY_DNABERT_CONFIG,
    TINY_ESM2_CONFIG,
    random_dnabert,
    random_esm2,
)
from virnucpro_trt.models.tokenization import pad_batch

SHAPES = ShapeRange(min_batch=1, opt_batch=4, max_batch=8, min_length=2, opt_length=24, max_length=48)
PAD = {"dnabert-s": 3, "esm2": 1}
BUILD = {"dnabert-s": random_dnabert, "esm2": random_esm2}
DIM = {"dnabert-s": TINY_DNABERT_CONFIG.hidden_size, "esm2": TINY_ESM2_CONFIG.embed_dim}
# Export time grows ~2.5 s per layer on 2 cores: the precision tests use one-layer versions of the tiny
# models (the two-layer ones cover the fp32 parity tests).
ONE_LAYER = {
    "dnabert-s": dataclasses.replace(TINY_DNABERT_CONFIG, num_hidden_layers=1),
    "esm2": dataclasses.replace(TINY_ESM2_CONFIG, num_layers=1),
}


def tokens(kind: str, lengths: list[int], seed: int) -> list[np.ndarray]:
    """Token rows of the given total lengths: BOS/CLS + random body + EOS/SEP, like the tokenizers."""
    rng = np.random.default_rng(seed)
    bos, eos, low, high = (1, 2, 5, 256) if kind == "dnabert-s" else (0, 2, 4, 24)
    return [np.concatenate([[bos], rng.integers(low, high, n - 2), [eos]]).astype(np.int64) for n in lengths]


def padded(kind: str, lengths: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    return pad_batch(tokens(kind, lengths, seed), PAD[kind])


def example(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = padded(kind, [9, 6, 11], seed=99)
    return torch.from_numpy(ids), torch.from_numpy(mask)


def torch_pooled(model: torch.nn.Module, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(ids), torch.from_numpy(mask)).float().numpy()


def export(tmp: Path, kind: str, precision: str, config=None, **kwargs) -> tuple[Path, dict]:
    path = tmp / f"{kind}.cpu.{precision}.onnx"
    model = BUILD[kind](config, seed=7) if config else BUILD[kind](seed=7)
    facts = export_onnx(model, kind, example(kind), SHAPES, precision, path, **kwargs)
    return path, facts


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return sess.run([OUTPUT_NAME], {INPUT_NAMES[0]: ids, INPUT_NAMES[1]: mask})[0]


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="module")
def fp32_exports(out_dir) -> dict[str, tuple[Path, dict]]:
    """DNABERT-S as one file; ESM-2 with external data (threshold far below its 0.4 MB of weights)."""
    return {
        "dnabert-s": export(out_dir, "dnabert-s", "fp32"),
        "esm2": export(out_dir, "esm2", "fp32", external_data_threshold=10_000),
    }


@pytest.fixture(scope="module")
def fp16_esm(out_dir) -> tuple[Path, dict]:
    return export(out_dir, "esm2", "fp16", ONE_LAYER["esm2"])


@pytest.fixture(scope="module")
def bf16_dnabert(out_dir) -> tuple[Path, dict]:
    return export(out_dir, "dnabert-s", "bf16", ONE_LAYER["dnabert-s"])


def float_types_of(model: onnx.ModelProto, op_type: str) -> set[int]:
    """Element types of every float input of ``op_type`` nodes (after shape inference)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    types.update({v.name: v.type.tensor_type.elem_type for v in inferred.graph.input})
    types.update({t.name: t.data_type for t in inferred.graph.initializer})
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    return {
        types[name]
        for node in inferred.graph.node
        if node.op_type == op_type
        for name in node.input
        if name and types.get(name) in floats
    }


# --------------------------------------------------------------------------- fp32: structure and parity
@pytest.mark.parametrize("kind", ["dnabert-s", "esm2"])
def test_fp32_export_passes_checker_and_has_the_runner_signature(fp32_exports, kind) -> None:
    path, facts = fp32_exports[kind]
    onnx.checker.check_model(str(path), full_check=True)  # by path: follows external data
    model = onnx.load(str(path), load_external_data=False)
    assert [(i.name, i.type.tensor_type.elem_type) for i in model.graph.input] == [
        ("input_ids", onnx.TensorProto.INT64),
        ("attention_mask", onnx.TensorProto.INT64),
    ]
    for tensor in model.graph.input:
        assert [d.dim_param for d in tensor.type.tensor_type.shape.dim] == ["batch", "sequence"]
    (output,) = model.graph.output
    assert output.name == "pooled" and output.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_param or d.dim_value for d in output.type.tensor_type.shape.dim] == ["batch", DIM[kind]]
    opset = {o.domain: o.version for o in model.opset_import}[""]
    assert opset >= 18 and facts["opset"] == opset
    # embeddings/2 per layer (DNABERT post-LN) or 2 per layer + final (ESM pre-LN): 5 for 2 layers
    assert sum(n.op_type == "LayerNormalization" for n in model.graph.node) == 5
    assert facts["exporter"] == "torch.onnx.export(dynamo=True)"


@pytest.mark.parametrize("kind", ["dnabert-s", "esm2"])
def test_dynamic_batch_and_length_match_torch_fp32(fp32_exports, kind) -> None:
    path, facts = fp32_exports[kind]
    assert facts["validation_provider"] == "CPUExecutionProvider"
    assert facts["validation_max_abs_diff"] < 1e-5
    model = BUILD[kind](seed=7)
    sess = session(path)
    for lengths in ([3], [48, 5, 17], [12] * 8, [2 if kind == "dnabert-s" else 3, 30]):
        ids, mask = padded(kind, lengths, seed=len(lengths))
        got, want = run(sess, ids, mask), torch_pooled(model, ids, mask)
        assert got.dtype == np.float32 and got.shape == (len(lengths), DIM[kind])
        assert max_abs_diff(got, want) < 1e-5, lengths


def test_small_model_is_one_file(fp32_exports) -> None:
    path, facts = fp32_exports["dnabert-s"]
    assert facts["external_data"] == [] and facts["files"] == [path.name]
    assert not path.with_name(external_data_name(path)).exists()
    assert path.stat().st_size == facts["file_bytes"]


def test_external_data_goes_to_one_side_file_that_moves_with_the_graph(fp32_exports, tmp_path) -> None:
    path, facts = fp32_exports["esm2"]
    side = external_data_name(path)
    assert facts["external_data"] == [side] and facts["files"] == [path.name, side]
    graph_only = onnx.load(str(path), load_external_data=False)
    external = [t for t in graph_only.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external, "no initializer went to external data"
    assert {e.value for t in external for e in t.external_data if e.key == "location"} == {side}
    assert path.stat().st_size < facts["weight_bytes"] / 4  # the weights are not in the graph file
    for name in facts["files"]:  # relative location: the pair works from anywhere
        shutil.copy(path.with_name(name), tmp_path / name)
    ids, mask = padded("esm2", [7, 20], seed=5)
    moved = run(session(tmp_path / path.name), ids, mask)
    assert max_abs_diff(moved, torch_pooled(random_esm2(seed=7), ids, mask)) < 1e-5


# --------------------------------------------------------------------------- reduced precision
def test_fp16_graph_loads_in_ort_cpu_with_fp32_islands(fp16_esm) -> None:
    path, facts = fp16_esm
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    assert float_types_of(model, "LayerNormalization") == {onnx.TensorProto.FLOAT}
    assert float_types_of(model, "Softmax") == {onnx.TensorProto.FLOAT}
    assert float_types_of(model, "MatMul") == {onnx.TensorProto.FLOAT16}
    ops = facts["op_dtypes"]
    assert ops["LayerNormalization"] == ["fp32"] and ops["Softmax"] == ["fp32"]
    assert ops["MatMul"] == ["fp16"] and ops["Cos"] == ["fp32"] and ops["ReduceSum"] == ["fp32"]
    assert facts["softmax_upcast_to_fp32"] == 1  # one per layer
    # torch fp16 on CPU and ORT fp16 on CPU round differently; both stay close to each other
    assert facts["validation_max_abs_diff"] < 2e-3
    ids, mask = padded("esm2", [40, 9, 25], seed=3)
    got = run(session(path), ids, mask)
    fp32 = torch_pooled(random_esm2(ONE_LAYER["esm2"], seed=7), ids, mask)
    cosine = (got * fp32).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(fp32, axis=1)
    assert got.dtype == np.float32 and cosine.min() > 0.9999


def test_bf16_graph_is_valid_but_ort_cpu_lacks_bf16_kernels(bf16_dnabert) -> None:
    """ORT 1.32's CPU provider has no bf16 MatMul/Add/Mul/Div/Erf: the graph is fine, the provider is not."""
    path, facts = bf16_dnabert
    onnx.checker.check_model(str(path), full_check=True)
    ops = facts["op_dtypes"]
    assert ops["LayerNormalization"] == ["fp32"] and ops["Softmax"] == ["fp32"] and ops["MatMul"] == ["bf16"]
    assert facts["validation_max_abs_diff"] is None
    assert "NOT_IMPLEMENTED" in facts["validation_error"]
    missing = set(facts["validation_missing_kernels"])
    assert {"MatMul(bf16, bf16)", "Add(bf16, bf16)"} <= missing
    assert all("bf16" in signature for signature in missing)  # nothing fp32 is missing
    assert not any(s.startswith(("LayerNormalization", "Softmax", "ReduceSum")) for s in missing)
    with pytest.raises(Exception, match=r"Could not find an implementation for (MatMul|Add|Mul|Div|Erf)"):
        session(path)


def test_fp8_is_refused_before_exporting(tmp_path) -> None:
    with pytest.raises(UserError, match=r"fp8 .*Q/DQ"):
        export_onnx(random_dnabert(), "dnabert-s", example("dnabert-s"), SHAPES, "fp8", tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_opset_below_18_is_refused(tmp_path) -> None:
    with pytest.raises(UserError, match="opset 17"):
        export_onnx(
            random_dnabert(), "dnabert-s", example("dnabert-s"), SHAPES, "fp32", tmp_path / "x.onnx", 17
        )


# --------------------------------------------------------------------------- helpers
def test_fit_example_avoids_size_one_specialisation() -> None:
    ids, mask = torch.tensor([[5]]), torch.tensor([[1]])
    fitted_ids, fitted_mask = fit_example(ids, mask, SHAPES)
    assert fitted_ids.shape == (2, 2)
    assert fitted_mask.tolist() == [[1, 0], [1, 0]]  # the added position is padding
    fixed = ShapeRange(4, 4, 4, 16, 16, 16)
    assert fit_example(ids, mask, fixed)[0].shape == (4, 16)


def test_max_abs_diff_treats_shared_nan_as_equal() -> None:
    a = np.array([[1.0, np.nan]])
    assert max_abs_diff(a, np.array([[1.5, np.nan]])) == 0.5
    assert max_abs_diff(a, np.array([[1.0, 0.0]])) == float("inf")
