"""Passes and checks on an exported ONNX graph (the exporter's in-memory ``onnx_ir`` model).

They work on the IR rather than on an ``onnx.ModelProto`` because a full-size ESM-2 3B graph holds
5.6-11 GB of weights, past protobuf's 2 GB limit; the IR keeps tensors out of protobuf until the file is
written with external data.

* :func:`upcast_softmax` runs every half-precision Softmax in fp32 (Cast in, Softmax, Cast out). The
  models already keep LayerNorm statistics, rotary and pooling in fp32 explicitly; the attention softmax
  comes from ``scaled_dot_product_attention``, which the exporter decomposes into ops in the weight dtype.
* :func:`mixed_layernorms` finds LayerNormalization nodes whose inputs mix float types: the export bug
  ONNX Runtime refuses to load (docs/models.md), checked on every export.
* :func:`float_op_dtypes` says which ops compute in which float type (recorded with every export).
* :func:`strip_trace_metadata` drops the exporter's per-node stack traces and FX dumps (two thirds of
  a tiny graph file, and absolute source paths of the build machine).
* :func:`missing_kernels` probes, op by op, what an ONNX Runtime provider cannot execute (ORT CPU has no
  bf16 MatMul), so a failure is reported as a precise list rather than the first error ORT meets.
"""

from __future__ import annotations

from typing import Any

try:
    import onnx_ir as ir
except ImportError:  # onnxscript < 0.3 shipped the IR inside itself
    from onnxscript import ir  # type: ignore[no-redef]

HALF_TYPES = (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)
FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.DOUBLE, *HALF_TYPES)
SHORT_NAMES = {
    ir.DataType.FLOAT: "fp32",
    ir.DataType.DOUBLE: "fp64",
    ir.DataType.FLOAT16: "fp16",
    ir.DataType.BFLOAT16: "bf16",
}


def _is_default_domain(node: ir.Node) -> bool:
    return node.domain in ("", "ai.onnx")


def upcast_softmax(graph: ir.Graph) -> int:
    """Make every fp16/bf16 Softmax compute in fp32; returns how many were changed.

    The logits are cast up, the Softmax runs in fp32 and its result is cast back for the following
    MatMul, so the graph's other types do not change.
    """
    changed = 0
    for node in list(graph):
        if node.op_type != "Softmax" or not _is_default_domain(node):
            continue
        logits, probs = node.inputs[0], node.outputs[0]
        if logits is None or logits.dtype not in HALF_TYPES or probs.is_graph_output():
            continue
        half = logits.dtype
        base = node.name or f"softmax_{changed}"
        logits32 = ir.Value(name=f"{base}_logits_fp32", type=ir.TensorType(ir.DataType.FLOAT))
        logits32.shape = logits.shape
        cast_in = ir.node(
            "Cast", [logits], {"to": ir.DataType.FLOAT}, outputs=[logits32], name=f"{base}_cast_fp32"
        )
        uses = list(probs.uses())
        probs_half = ir.Value(name=f"{base}_probs_{SHORT_NAMES[half]}", type=ir.TensorType(half))
        probs_half.shape = probs.shape
        cast_out = ir.node("Cast", [probs], {"to": half}, outputs=[probs_half], name=f"{base}_cast_back")
        for user, index in uses:
            user.replace_input_with(index, probs_half)
        node.replace_input_with(0, logits32)
        probs.dtype = ir.DataType.FLOAT
        graph.insert_before(node, cast_in)
        graph.insert_after(node, cast_out)
        changed += 1
    return changed


def strip_trace_metadata(graph: ir.Graph, prefix: str = "pkg.torch.onnx.") -> int:
    """Remove node metadata keys starting with ``prefix``; returns how many were removed."""
    removed = 0
    for node in graph:
        for key in [k for k in node.metadata_props if k.startswith(prefix)]:
            del node.metadata_props[key]
            removed += 1
    return removed


def _float_inputs(node: ir.Node) -> list[ir.DataType]:
    return [v.dtype for v in node.inputs if v is not None and v.dtype in FLOAT_TYPES]


def mixed_layernorms(graph: ir.Graph) -> list[str]:
    """LayerNormalization nodes whose float inputs (X, scale, bias) are not all one type."""
    return [
        f"{node.name or '?'} ({', '.join(SHORT_NAMES[t] for t in _float_inputs(node))})"
        for node in graph
        if node.op_type == "LayerNormalization" and len(set(_float_inputs(node))) > 1
    ]


def float_op_dtypes(graph: ir.Graph) -> dict[str, list[str]]:
    """``{op_type: [float types its inputs carry]}`` for every op with a float input, sorted."""
    found: dict[str, set[str]] = {}
    for node in graph:
        types = _float_inputs(node)
        if types:
            found.setdefault(node.op_type, set()).update(SHORT_NAMES[t] for t in types)
    return {op: sorted(types) for op, types in sorted(found.items())}


def _single_node_model(node: ir.Node, opsets: dict[str, int], ir_version: int) -> ir.Model:
    """A model holding one copy of ``node`` with fresh, shapeless inputs and outputs of the same types."""
    inputs = [
        None if v is None else ir.Value(name=f"in{i}", type=ir.TensorType(v.dtype))
        for i, v in enumerate(node.inputs)
    ]
    outputs = [ir.Value(name=f"out{i}", type=ir.TensorType(v.dtype)) for i, v in enumerate(node.outputs)]
    copy = ir.Node(
        node.domain, node.op_type, inputs, attributes=list(node.attributes.values()), outputs=outputs
    )
    graph = ir.Graph([v for v in inputs if v is not None], outputs, nodes=[copy], opset_imports=opsets)
    return ir.Model(graph, ir_version=ir_version)


def missing_kernels(model: ir.Model, providers: list[Any]) -> dict[str, str]:
    """``{"MatMul(bf16, bf16)": ORT's message}`` for every op signature ``providers`` cannot run.

    Only signatures with a half-precision input are probed (fp32 and integer kernels exist everywhere);
    each probe is a one-node session, which takes milliseconds.
    """
    from virnucpro_trt.engines.onnx_session import import_onnxruntime, session_options

    ort = import_onnxruntime()
    opsets = dict(model.opset_imports)
    missing: dict[str, str] = {}
    seen: set[str] = set()
    for node in model.graph:
        types = [v.dtype if v is not None else None for v in node.inputs]
        if not any(t in HALF_TYPES for t in types):
            continue
        signature = f"{node.op_type}({', '.join(SHORT_NAMES.get(t, str(t).lower()) for t in types)})"
        if signature in seen:
            continue
        seen.add(signature)
        proto = ir.to_proto(_single_node_model(node, opsets, model.ir_version))
        try:
            ort.InferenceSession(proto.SerializeToString(), session_options(1), providers=providers)
        except Exception as exc:  # ORT raises its own NotImplemented/Fail types
            missing[signature] = str(exc).strip().splitlines()[0]
    return missing
