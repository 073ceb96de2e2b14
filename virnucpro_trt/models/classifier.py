"""The VirNucPro MLP classifier: loading its checkpoint formats safely and running it exactly.

Network (docs/upstream.md §4): ``Linear(D, 512) -> BatchNorm1d(512) (eval) -> ReLU -> Dropout (eval:
no-op) -> Linear(512, 2)``, then softmax; class 0 = ``others``, class 1 = ``virus``.

Accepted checkpoints:

* the upstream whole-module pickle (``300_model.pth`` / ``500_model.pth``), read through
  :mod:`virnucpro_trt.models.torch_archive` with :mod:`virnucpro_trt.models.pickle_guard`'s inert
  stand-ins (no pickled code runs; TorchScript, tar and legacy files are refused) and converted to tensors;
* a plain state dict saved with ``torch.save(model.state_dict())``;
* our own ``.safetensors`` conversion (``virnucpro-trt convert-classifier``), the safe format used
  everywhere downstream.

The input width is taken from the checkpoint and checked against the two encoders' widths before any
sequence is embedded, so a 768+2560 classifier never silently meets a differently sized ESM-2.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, TypeGuard

import numpy as np
import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn
from torch.nn import functional as F

from virnucpro_trt.errors import CheckpointError, show_value
from virnucpro_trt.files.atomic import write_bytes_atomic
from virnucpro_trt.files.bounded_read import open_regular
from virnucpro_trt.files.json_fields import parse_json
from virnucpro_trt.models.config_checks import MAX_LAYER_NORM_EPS, as_float
from virnucpro_trt.models.identity import WeightsIdentity, confirm_checkpoint, confirm_still
from virnucpro_trt.models.pickle_guard import MAX_CLASSIFIER_BYTES, PickledObject, restricted_torch_load

LABELS = ("others", "virus")

# Canonical tensor names (the upstream module's state-dict names).
_REQUIRED = (
    "hidden_layer.weight",
    "hidden_layer.bias",
    "bn1.weight",
    "bn1.bias",
    "bn1.running_mean",
    "bn1.running_var",
    "output_layer.weight",
    "output_layer.bias",
)
_EPS_KEY = "bn1.eps"
_FORMAT = "virnucpro-classifier"  # our .safetensors files' metadata "format"
_MAX_HEADER_BYTES = 1 << 16  # a safetensors header converted_input_width reads
# bn_eps as our .safetensors metadata writes it (repr of a float): a decimal number, nothing around it
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
MAX_BN_EPS = MAX_LAYER_NORM_EPS  # the encoders' bound on their normalisation epsilons (torch's default: 1e-5)


@dataclass(frozen=True)
class ClassifierWeights:
    """Tensors of the classifier, fp32 on CPU, plus the BatchNorm epsilon."""

    tensors: dict[str, torch.Tensor]
    bn_eps: float = 1e-5

    @property
    def input_dim(self) -> int:
        return int(self.tensors["hidden_layer.weight"].shape[1])

    @property
    def hidden_dim(self) -> int:
        return int(self.tensors["hidden_layer.weight"].shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.tensors["output_layer.weight"].shape[0])


class MLPClassifier(nn.Module):
    """Inference-only re-statement of upstream's ``MLPClassifier`` with the same parameter names."""

    def __init__(self, input_dim: int, hidden_dim: int = 512, num_classes: int = 2, bn_eps: float = 1e-5):
        super().__init__()
        self.hidden_layer = nn.Linear(input_dim, hidden_dim)
        self.bn1 = nn.BatchNorm1d(hidden_dim, eps=bn_eps)
        self.output_layer = nn.Linear(hidden_dim, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Return class probabilities [N, 2] (softmax of the logits), as upstream writes them."""
        x = self.hidden_layer(features)
        x = self.bn1(x)
        x = F.relu(x)
        logits = self.output_layer(x)
        return torch.softmax(logits, dim=1)

    @classmethod
    def from_weights(cls, weights: ClassifierWeights) -> MLPClassifier:
        model = cls(weights.input_dim, weights.hidden_dim, weights.num_classes, weights.bn_eps)
        state = {k: v for k, v in weights.tensors.items() if k in _REQUIRED}
        state["bn1.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
        model.load_state_dict(state)
        return model.eval()


# The upstream module's three submodules and the classes a pickle must give them.
_CHILDREN = {
    "hidden_layer": "torch.nn.modules.linear.Linear",
    "bn1": "torch.nn.modules.batchnorm.BatchNorm1d",
    "output_layer": "torch.nn.modules.linear.Linear",
}
# Integer attributes a pickled submodule may carry, and the weight dimension each must equal.
_SIZE_ATTRIBUTES = {
    "hidden_layer": {"in_features": ("hidden_layer.weight", 1), "out_features": ("hidden_layer.weight", 0)},
    "bn1": {"num_features": ("bn1.weight", 0)},
    "output_layer": {"in_features": ("output_layer.weight", 1), "out_features": ("output_layer.weight", 0)},
}


def _mapping(value: Any, what: str, path: Path) -> Mapping[str, Any]:
    """A pickled module's ``_parameters``/``_buffers``/``_modules``: a dict with string keys (or absent)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise CheckpointError(f"{path}: {what} is a {type(value).__name__}, expected a dict of named entries")
    return value


def _from_pickled_module(root: PickledObject, path: Path) -> ClassifierWeights:
    """The weights of upstream's pickled ``MLPClassifier``: only its three direct submodules are read.

    Everything in the pickle is hostile: containers are type-checked before use (a ``_modules`` that is
    a string, or a cycle of modules, is bad input, not a crash), the submodules' size attributes must
    agree with their weights, and ``bn1.eps`` must be a usable epsilon.
    """
    modules = _mapping(root.state.get("_modules"), f"{root.pickled_class}._modules", path)
    flat: dict[str, Any] = {}
    for child, expected_class in _CHILDREN.items():
        module = modules.get(child)
        if module is None:
            continue
        if not isinstance(module, PickledObject) or module.pickled_class != expected_class:
            found = module.pickled_class if isinstance(module, PickledObject) else type(module).__name__
            raise CheckpointError(f"{path}: '{child}' is a {found}, expected {expected_class}")
        for group in ("_parameters", "_buffers"):
            for name, value in _mapping(module.state.get(group), f"'{child}'.{group}", path).items():
                if value is not None:
                    flat[f"{child}.{name}"] = value
    missing = [k for k in _REQUIRED if k not in flat]
    if missing:
        raise CheckpointError(
            f"{path} holds a pickled {root.pickled_class} with submodules {sorted(modules)}, not the "
            f"VirNucPro MLPClassifier layout (missing {', '.join(missing)})"
        )
    tensors = _checked_tensors(flat, path)
    for child, attributes in _SIZE_ATTRIBUTES.items():
        state = modules[child].state
        for attribute, (tensor, dim) in attributes.items():
            if attribute in state and not _is_int(state[attribute], tensors[tensor].shape[dim]):
                raise CheckpointError(
                    f"{path}: {child}.{attribute} is {show_value(state[attribute])}, but '{tensor}' has "
                    f"shape {tuple(tensors[tensor].shape)}"
                )
    bn1 = modules["bn1"].state
    eps = _checked_eps(bn1["eps"], f"{path}: {_EPS_KEY}") if "eps" in bn1 else 1e-5
    return ClassifierWeights(tensors=tensors, bn_eps=eps)


def _is_int(value: Any, expected: int) -> bool:
    return type(value) is int and value == expected


def _checked_eps(value: Any, where: str, shown: str | None = None) -> float:
    """BatchNorm's epsilon as a finite float > 0, else a CheckpointError naming ``where``.

    BatchNorm divides by sqrt(running_var + eps): an eps that is NaN, infinite, zero or negative makes
    scores NaN (or makes torch raise inside every worker), one past :data:`MAX_BN_EPS` makes every score
    alike, and a string or a tuple is no epsilon at all.
    A one-element tensor is accepted (a state dict may hold one). ``shown`` is how a message shows the
    value when it was parsed from text.
    """
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or not value.is_floating_point():
            raise CheckpointError(f"{where} is a {value.dtype} tensor of shape {tuple(value.shape)}")
        value = value.item()
    eps = as_float(value)
    if eps is None:
        raise CheckpointError(f"{where} is {show_value(value)}, expected a finite number > 0")
    if not math.isfinite(eps) or eps <= 0:
        raise CheckpointError(f"{where} is {shown or show_value(value)}, expected a finite number > 0")
    if eps > MAX_BN_EPS:
        raise CheckpointError(
            f"{where} is {shown or show_value(value)}, more than {MAX_BN_EPS}: no BatchNorm is trained "
            "with it, and it flattens the normalisation (every score alike)"
        )
    return eps


def _checked_tensors(found: Mapping[str, Any], path: Path) -> dict[str, torch.Tensor]:
    """The required tensors as fp32 copies, checked before and after they are materialised.

    Shapes and element counts are checked on the loaded views first, so a file whose views cover far more
    elements than it stores (zero strides) is refused before any memory is spent on it. Values must be
    finite and the running variance non-negative: NaN/Inf weights would give NaN scores, written to the
    result files as if they were answers.
    """
    views: dict[str, torch.Tensor] = {}
    for name in _REQUIRED:
        value = found[name]
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: '{name}' is a {type(value).__name__}, not a tensor")
        if not value.is_floating_point():
            raise CheckpointError(f"{path}: '{name}' holds {value.dtype} values, expected floating point")
        views[name] = value
    _check_shapes(views, path)
    elements = sum(v.numel() for v in views.values())
    if elements * 4 > MAX_CLASSIFIER_BYTES:
        raise CheckpointError(
            f"{path}: {elements} classifier weights; too large for a classifier (refused before reading them)"
        )
    tensors = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in views.items()}
    for name, tensor in tensors.items():
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            raise CheckpointError(
                f"{path}: '{name}' holds {bad} NaN/Inf value(s) (in fp32); the classifier's scores would "
                "be NaN"
            )
    if bool((tensors["bn1.running_var"] < 0).any()):
        raise CheckpointError(f"{path}: 'bn1.running_var' holds negative variances")
    return tensors


def _from_state_dict(state: Mapping[Any, Any], path: Path) -> ClassifierWeights:
    # Accept "module."-prefixed dicts (DataParallel) too.
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        names = sorted(str(k)[:60] for k in state if k != _EPS_KEY)  # not the epsilon a .safetensors adds
        raise CheckpointError(
            f"{path} is a state dict without the classifier tensors (missing {', '.join(missing)}; "
            f"found {', '.join(names[:8])}{'...' if len(names) > 8 else ''})"
        )
    tensors = _checked_tensors(state, path)
    eps = _checked_eps(state[_EPS_KEY], f"{path}: {_EPS_KEY}") if _EPS_KEY in state else 1e-5
    return ClassifierWeights(tensors=tensors, bn_eps=eps)


def _check_shapes(t: Mapping[str, torch.Tensor], path: Path) -> None:
    """Upstream's shapes: ``hidden_layer.weight`` [H, D] fixes the rest; two classes out."""
    hidden = t["hidden_layer.weight"]
    if hidden.dim() != 2 or 0 in hidden.shape:
        raise CheckpointError(
            f"{path}: 'hidden_layer.weight' has shape {tuple(hidden.shape)}, expected [hidden, input] > 0"
        )
    h = hidden.shape[0]
    output = t["output_layer.weight"]
    if output.dim() == 2 and output.shape[1] == h and output.shape[0] != 2:
        raise CheckpointError(f"{path}: the classifier has {output.shape[0]} outputs, VirNucPro's has 2")
    shapes = {
        "hidden_layer.bias": (h,),
        "bn1.weight": (h,),
        "bn1.bias": (h,),
        "bn1.running_mean": (h,),
        "bn1.running_var": (h,),
        "output_layer.weight": (2, h),
        "output_layer.bias": (2,),
    }
    for name, shape in shapes.items():
        if tuple(t[name].shape) != shape:
            raise CheckpointError(f"{path}: '{name}' has shape {tuple(t[name].shape)}, expected {shape}")


def load_classifier_weights(path: str | Path, identity: WeightsIdentity | None = None) -> ClassifierWeights:
    """Read any accepted classifier checkpoint without executing pickled code.

    With ``identity`` (what a run's coordinator hashed), a file that no longer holds those weights is
    refused instead of being mixed into the run's results.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"classifier checkpoint {path} is not a file")
    if identity is None:
        return _read_classifier(path)
    found = confirm_checkpoint("classifier", path, identity)
    weights = _read_classifier(path)
    confirm_still(found, path)
    return weights


def _read_classifier(path: Path) -> ClassifierWeights:
    size = path.stat().st_size
    if size > MAX_CLASSIFIER_BYTES:  # upstream's is ~7 MB: most likely an encoder given in its place
        raise CheckpointError(
            f"{path}: {size / 2**20:.0f} MiB, far too large for a VirNucPro classifier (~7 MB); an "
            "encoder's checkpoint goes to --esm or --dnabert"
        )
    if path.suffix == ".safetensors":
        try:
            tensors = load_file(str(path))
            meta = _safetensors_metadata(path)
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"cannot read {path} as safetensors: {exc}") from exc
        state: dict[str, Any] = dict(tensors)
        state[_EPS_KEY] = _metadata_eps(meta, path)
        weights = _from_state_dict(state, path)
    else:
        obj = restricted_torch_load(path)
        if isinstance(obj, PickledObject):
            weights = _from_pickled_module(obj, path)
        elif isinstance(obj, Mapping):
            if "model" in obj and ("args" in obj or "cfg" in obj):
                raise CheckpointError(
                    f"{path}: a fair-esm (ESM) checkpoint, not a VirNucPro classifier; give it as --esm"
                )
            if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
                obj = obj["state_dict"]
            weights = _from_state_dict(obj, path)
        else:
            raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a VirNucPro classifier")
    return weights


def _metadata_eps(meta: Mapping[str, str], path: Path) -> float:
    """The ``bn_eps`` our safetensors files carry as text (``repr`` of a float; 1e-5 when absent),
    held to the same rule as a pickled epsilon."""
    text = meta.get("bn_eps")
    if text is None:
        return 1e-5
    # a decimal number as repr writes it, the C++ host's rule (runtime/src/classifier.cpp metadata_eps):
    # float() alone also takes blanks around it, "1_0" and other scripts' digits
    value = float(text) if _DECIMAL.fullmatch(text) else math.nan  # not one: refused below like NaN
    return _checked_eps(value, f"{path}: metadata bn_eps", show_value(text))


def classifier_source(path: Path) -> str | None:
    """The file name a ``.safetensors`` classifier was converted from (its ``source`` metadata, which
    ``convert-classifier`` and ``build`` write), or None when absent or unreadable (loading reports why)."""
    try:
        # a regular file only: safe_open on a FIFO blocks for ever (`predict --engines DIR` reads
        # DIR/classifier.safetensors here, before the engine set is checked), and no signal ends it
        if path.suffix != ".safetensors" or not path.is_file() or path.stat().st_size > MAX_CLASSIFIER_BYTES:
            return None
        source = _safetensors_metadata(path).get("source")
    except Exception:  # a hint only: the real load names what is wrong with the file
        return None
    return PurePath(source).name if source else None


def _safetensors_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def save_classifier_safetensors(
    weights: ClassifierWeights,
    path: str | Path,
    source: str = "",
    on_create: Callable[[Path], None] | None = None,
) -> None:
    """Write the classifier in the safe format (tensors + BatchNorm epsilon in the metadata).

    Written whole or not at all, with the umask's permissions like every other file the tool writes
    (safetensors' ``save_file`` creates it mode 0600, which locks other users out of a shared engine
    directory); the classifier is a few MB, so the bytes are built in memory. ``on_create`` is told the
    temporary file as soon as it exists (a run lock notes it). ``source`` (a file name) is kept as text:
    a name of bytes that are not UTF-8 (Python holds them as lone surrogates, which the format's JSON
    header cannot carry) keeps them as ``\\udcNN`` escapes.
    """
    meta = {
        "format": _FORMAT,
        "version": "1",
        "bn_eps": repr(weights.bn_eps),
        "source": source.encode("utf-8", "backslashreplace").decode("utf-8"),
    }
    data = safetensors_bytes({k: v.contiguous() for k, v in weights.tensors.items()}, metadata=meta)
    write_bytes_atomic(Path(path), _sorted_header(data), on_create)


def converted_input_width(path: Path) -> int | None:
    """The input width of the classifier ``convert-classifier`` wrote at ``path``, read from the
    safetensors header alone; None when the file does not begin as such a file does.

    The file is read as hostile (its record is anyone's to edit): at most :data:`_MAX_HEADER_BYTES` of
    header (ours is under 2 kB), JSON whose metadata names our format, and ``hidden_layer.weight`` fp32
    of shape [hidden, input], positive integers whose bytes are the span the header gives it, inside a
    file of at most :data:`MAX_CLASSIFIER_BYTES`: the width printed is one the file's tensor has.
    """
    try:
        with os.fdopen(open_regular(path), "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            length = int.from_bytes(handle.read(8), "little")
            if size > MAX_CLASSIFIER_BYTES or not 2 <= length <= min(_MAX_HEADER_BYTES, size - 8):
                return None
            header = parse_json(handle.read(length))
    except (OSError, ValueError):  # unreadable, not UTF-8, not JSON
        return None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    tensor = header.get("hidden_layer.weight") if isinstance(header, dict) else None
    if not (isinstance(meta, dict) and meta.get("format") == _FORMAT and isinstance(tensor, dict)):
        return None
    shape, span = tensor.get("shape"), tensor.get("data_offsets")
    if tensor.get("dtype") != "F32" or not (_positive_ints(shape, 2) and _positive_ints(span, 2, 0)):
        return None
    if span[1] - span[0] != 4 * shape[0] * shape[1] or 8 + length + span[1] > size:
        return None
    return int(shape[1])


def _positive_ints(value: object, n: int, minimum: int = 1) -> TypeGuard[list[int]]:
    """Whether ``value`` (hostile JSON) is a list of ``n`` integers >= ``minimum`` (``true`` is none)."""
    return isinstance(value, list) and len(value) == n and all(type(v) is int and v >= minimum for v in value)


def _sorted_header(data: bytes) -> bytes:
    """``data`` (a safetensors file) with its JSON header's keys in sorted order, same length.

    Why: safetensors writes the metadata in its hash map's order, which changes from process to
    process, so the same weights converted twice were different files (another SHA-256: a finished
    run refused its own classifier as other weights). Readers take the header as JSON, in any order;
    the data section is untouched.
    """
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    if len(text) > length:  # not expected (the same JSON, compact); keep the library's bytes
        return data
    return data[:8] + text + b" " * (length - len(text)) + data[8 + length :]


def check_classifier_width(
    weights: ClassifierWeights, dnabert_dim: int, esm_dim: int, path: str | Path
) -> None:
    """The feature is concat(DNABERT-S | ESM-2): its width must be the classifier's input width."""
    if weights.input_dim != dnabert_dim + esm_dim:
        raise CheckpointError(
            f"classifier {path} expects {weights.input_dim} input features, but the encoders give "
            f"{dnabert_dim} (DNABERT-S) + {esm_dim} (ESM-2) = {dnabert_dim + esm_dim}: "
            "the classifier and the encoder checkpoints do not belong together"
        )


@torch.inference_mode()
def classify(model: MLPClassifier, features: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """Probabilities [N, 2] float32 for features [N, D] float32, in fp32 on the model's device.

    The model is tiny, but not free on a CPU (3328x512 multiply-adds per frame: a few percent of a GPU
    run's time when run on the host), so GPU workers keep it on their GPU (fp32 with TF32 off:
    upstream's arithmetic) and CPU runs on the CPU.
    """
    device = next(model.parameters()).device
    out = np.empty((features.shape[0], 2), dtype=np.float32)
    for start in range(0, features.shape[0], batch_size):
        chunk = torch.from_numpy(np.ascontiguousarray(features[start : start + batch_size], dtype=np.float32))
        out[start : start + batch_size] = model(chunk.to(device)).cpu().numpy()
    return out


def labels_from_probabilities(probs: np.ndarray) -> np.ndarray:
    """argmax with ties going to class 0 (``others``), as ``torch.max`` does upstream."""
    return (probs[:, 1] > probs[:, 0]).astype(np.int8)


def describe(weights: ClassifierWeights) -> str:
    return json.dumps(
        {"input_dim": weights.input_dim, "hidden_dim": weights.hidden_dim, "bn_eps": weights.bn_eps}
    )
