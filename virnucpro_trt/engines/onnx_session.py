"""Creating ONNX Runtime sessions: lazy import, provider lists and session options in one place.

Both the exporter (which validates every file it writes on ONNX Runtime right away) and the
``onnxruntime`` backend's runners create sessions; they must agree on the options, and neither may import
onnxruntime at module import time (the CLI has to start, and say what is missing, without it).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from virnucpro_trt.environment import available_cpus, import_onnxruntime
from virnucpro_trt.errors import UserError

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
TENSORRT_PROVIDER = "TensorrtExecutionProvider"


def onnxruntime_problem() -> str | None:
    """Why onnxruntime cannot be used here (one line), or ``None``."""
    try:
        import_onnxruntime()
    except ImportError as exc:
        return f"onnxruntime is not importable here ({exc})"
    return None


def available_providers() -> list[str]:
    return list(import_onnxruntime().get_available_providers())


def session_options(threads: int | None = None) -> Any:
    """All graph optimizations on; intra-op threads = available CPUs (ORT's default counts all cores).

    One inter-op thread: the encoders are a single chain of ops, parallel branches buy nothing.
    """
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or available_cpus()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: ORT's warnings about CPU fallbacks are reported by us
    return options


def _model_tensors(model: Any) -> Iterator[Any]:
    """Every TensorProto anywhere in ``model``: the graph's initializers and sparse initializers, node
    attributes' tensors (``t``, ``tensors``, sparse ones' values and indices), subgraphs (If/Loop/Scan
    bodies) at any depth, the model-local functions (``model.functions``: their nodes, their attributes'
    default values, their subgraphs) and the training graphs. Found by walking every message field of
    the protobuf rather than a list of the places known today, so a tensor in a place a list forgot
    (model-local functions were) is still checked. Iterative: a deeply nested file cannot exhaust the
    stack; large scalar arrays (inline weights) are never iterated."""
    import onnx  # its messages are protobuf messages (ListFields); protobuf itself comes with onnx

    stack = [model]
    while stack:
        message = stack.pop()
        if isinstance(message, onnx.TensorProto):
            yield message
            continue  # a tensor holds no further tensors
        for field, value in message.ListFields():
            if field.type != field.TYPE_MESSAGE:
                continue
            if hasattr(value, "ListFields"):  # one message; otherwise a repeated field of them
                stack.append(value)
            else:
                stack.extend(value)


def _locations(tensor: Any) -> list[Any]:
    """The external-data locations ``tensor`` names (each one: ONNX Runtime releases differ in which of
    several they use); ``[None]`` for external data that names none."""
    import onnx

    if tensor.data_location != onnx.TensorProto.EXTERNAL and not len(tensor.external_data):
        return []
    return [entry.value for entry in tensor.external_data if entry.key == "location"] or [None]


def check_external_data(path: Path, listed: frozenset[str] | None = None) -> None:
    """Refuse an ONNX file whose tensors read external data from anywhere but a plain file of its own
    folder (:func:`~virnucpro_trt.files.names.member_path`: no separators, no ``..``, no absolute path,
    no link out). An engine directory is hostile input: ONNX Runtime read any path the file names
    (``../../etc/...``) into the weights until its own check of late 2025, and sparse tensors escaped that
    check in later releases; the oldest onnxruntime this package accepts (1.18) has none. Every tensor
    of the file is checked (:func:`_model_tensors`), those of model-local functions included: ONNX
    Runtime reads a function's Constant from its external file too. With ``listed`` (an engine
    directory's manifest's files for this model), the file must also be one the manifest lists, so its
    SHA-256 was checked: an unlisted file beside the .onnx was read unverified. The graph is parsed
    without its external data, so this reads only the .onnx file itself."""
    import onnx

    from virnucpro_trt.files.names import member_path

    model = onnx.load(str(path), load_external_data=False)
    for tensor in _model_tensors(model):
        for location in _locations(tensor):
            member_path(path.parent, location, f"{path} (tensor {tensor.name!r})")
            if listed is not None and location not in listed:
                raise UserError(
                    f"{path} (tensor {tensor.name!r}) reads its data from {location!r}, a file the engine "
                    "directory's manifest does not list (so no SHA-256 covers it); rebuild the engines"
                )


def create_session(
    path: Path, providers: list[Any], threads: int | None = None, listed: frozenset[str] | None = None
) -> Any:
    """An ``InferenceSession`` for ``path`` (external data is found next to it, and only there, among
    the ``listed`` files when given: :func:`check_external_data`) with ``providers``."""
    check_external_data(path, listed)
    ort = import_onnxruntime()
    return ort.InferenceSession(str(path), sess_options=session_options(threads), providers=providers)
