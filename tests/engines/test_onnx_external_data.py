"""``check_external_data`` finds every tensor of an ONNX file that reads external data — model-local
functions, subgraphs inside them, attribute defaults and training graphs included — and refuses any
location that is not a plain file of the engine folder the manifest lists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from virnucpro_trt.engines.onnx_session import CPU_PROVIDER, check_external_data, create_session
from virnucpro_trt.errors import UserError

onnx = pytest.importorskip("onnx")
helper = onnx.helper
TensorProto = onnx.TensorProto

MODEL = "model.onnx"
WEIGHTS = "weights.bin"
LISTED = frozenset({MODEL, WEIGHTS})
OPSETS = [helper.make_opsetid("", 18), helper.make_opsetid("local", 1)]
UNLISTED = ("unlisted.bin", r"reads its data from 'unlisted\.bin', a file the engine directory's manifest")


def _external(name: str, location: str | None) -> onnx.TensorProto:
    """A one-float tensor whose data is the first 4 bytes of ``location`` (no location when None)."""
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[1])
    tensor.data_location = TensorProto.EXTERNAL
    entries = {"offset": "0", "length": "4", **({"location": location} if location is not None else {})}
    for key, value in entries.items():
        tensor.external_data.add(key=key, value=value)
    return tensor


def _constant(output: str, location: str | None) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [output], value=_external(f"{output}_value", location))


def _if(output: str, branch: onnx.NodeProto) -> list[onnx.NodeProto]:
    """``output = If(true) then branch's value else 0``: the external tensor sits in a subgraph."""
    out = helper.make_tensor_value_info(branch.output[0], TensorProto.FLOAT, [1])
    zero = helper.make_node("Constant", [], [branch.output[0]], value=helper.make_tensor("z", 1, [1], [0.0]))
    true = helper.make_tensor("c", TensorProto.BOOL, [], [1])
    cond = helper.make_node("Constant", [], ["cond"], value=true)
    then = helper.make_graph([branch], "then", [], [out])
    other = helper.make_graph([zero], "else", [], [out])
    return [cond, helper.make_node("If", ["cond"], [output], then_branch=then, else_branch=other)]


def _model_with_function(body: list[onnx.NodeProto], **function_fields) -> onnx.ModelProto:
    """``Y = local.F(X) + X`` where ``F``'s body yields ``c`` (``F(X) = X + c``)."""
    function = helper.make_function(
        "local", "F", ["x"], ["y"], [*body, helper.make_node("Add", ["x", "c"], ["y"])], OPSETS
    )
    for name, value in function_fields.items():
        getattr(function, name).extend(value)
    graph = helper.make_graph(
        [helper.make_node("F", ["X"], ["Y"], domain="local")],
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1])],
    )
    return helper.make_model(graph, opset_imports=OPSETS, functions=[function], ir_version=9)


def _save(folder: Path, model: onnx.ModelProto) -> Path:
    folder.mkdir(exist_ok=True)
    for name in (WEIGHTS, "unlisted.bin"):
        (folder / name).write_bytes(np.array([7.0], dtype=np.float32).tobytes())
    path = folder / MODEL
    path.write_bytes(model.SerializeToString())
    return path


def test_a_function_constant_read_from_a_listed_file_is_accepted_and_runs(tmp_path) -> None:
    """The legitimate case, and the proof that ONNX Runtime does read a function's external Constant
    (from the listed, hashed file here): the check must look there."""
    path = _save(tmp_path / "engines", _model_with_function([_constant("c", WEIGHTS)]))
    check_external_data(path, LISTED)
    session = create_session(path, [CPU_PROVIDER], threads=1, listed=LISTED)
    (y,) = session.run(None, {"X": np.array([1.0], dtype=np.float32)})
    assert y.tolist() == [8.0]


def _absolute(tmp_path: Path) -> str:
    return str(tmp_path / "engines" / "unlisted.bin")


@pytest.mark.parametrize(
    ("location", "needle"),
    [
        UNLISTED,  # the audit's case: the run passed on data no SHA-256 covers
        (_absolute, "not a plain file name"),  # ONNX Runtime before 1.24 reads it
        ("../unlisted.bin", "not a plain file name"),
        ("sub/unlisted.bin", "not a plain file name"),
        (None, "expected a file name, found None"),
    ],
)
@pytest.mark.parametrize("where", ["function", "if-in-function", "function-attribute-default"])
def test_external_data_of_a_model_local_function_is_checked(tmp_path, location, needle, where) -> None:
    """The check walked ``model.graph`` only: a model-local function's tensors (a Constant's value, an
    If branch inside the function, an attribute's default value) named any file, unlisted or outside the
    folder, and ONNX Runtime read it."""
    location = location(tmp_path) if callable(location) else location
    if where == "function":
        model = _model_with_function([_constant("c", location)])
    elif where == "if-in-function":
        model = _model_with_function(_if("c", _constant("inner", location)))
    else:  # Constant(value=@v), v's default in the function: used when the caller gives none
        node = helper.make_node("Constant", [], ["c"])
        node.attribute.add(name="value", ref_attr_name="v", type=onnx.AttributeProto.TENSOR)
        default = helper.make_attribute("v", _external("v_default", location))
        model = _model_with_function([node], attribute_proto=[default])
    path = _save(tmp_path / "engines", model)
    with pytest.raises(UserError, match=needle) as caught:
        check_external_data(path, LISTED)
    assert caught.value.exit_code == 2
    with pytest.raises(UserError, match=needle):  # and so before ONNX Runtime opens the file
        create_session(path, [CPU_PROVIDER], threads=1, listed=LISTED)


def _plain_graph(nodes: list[onnx.NodeProto], output: str) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [], [helper.make_tensor_value_info(output, TensorProto.FLOAT, [1])])
    return helper.make_model(graph, opset_imports=OPSETS[:1], ir_version=9)


@pytest.mark.parametrize(("location", "needle"), [UNLISTED, ("../unlisted.bin", "not a plain file name")])
def test_external_data_elsewhere_in_the_model_is_checked(tmp_path, location, needle) -> None:
    """The main graph's If branches, sparse initializers and the training graphs: every TensorProto of
    the file is looked at, wherever it sits."""
    cases = {
        "if": _plain_graph(_if("Y", _constant("inner", location)), "Y"),
        "initializer": _plain_graph([helper.make_node("Identity", ["w"], ["Y"])], "Y"),
        "sparse": _plain_graph([helper.make_node("Identity", ["w"], ["Y"])], "Y"),
        "training": _plain_graph([_constant("Y", WEIGHTS)], "Y"),
    }
    cases["initializer"].graph.initializer.append(_external("w", location))
    sparse = helper.make_sparse_tensor(_external("w", location), helper.make_tensor("i", 7, [1], [0]), [1])
    cases["sparse"].graph.sparse_initializer.append(sparse)
    init = helper.make_graph([], "init", [], [], initializer=[_external("t", location)])
    cases["training"].training_info.add(initialization=init)
    for name, model in cases.items():
        path = _save(tmp_path / name, model)
        with pytest.raises(UserError, match=needle):
            check_external_data(path, LISTED)


def test_external_data_without_a_listed_set_is_still_held_to_plain_names(tmp_path) -> None:
    """A fresh export is validated without a manifest (``listed=None``): a plain name beside it passes,
    anything else is refused."""
    path = _save(tmp_path / "engines", _model_with_function([_constant("c", "unlisted.bin")]))
    check_external_data(path)
    path = _save(tmp_path / "engines", _model_with_function([_constant("c", _absolute(tmp_path))]))
    with pytest.raises(UserError, match="not a plain file name"):
        check_external_data(path)
