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
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn
from torch.nn import functional as F

from virnucpro_trt.errors import CheckpointError
from virnucpro_trt.files.atomic import write_bytes_atomic
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


def _module_tensors(obj: PickledObject, prefix: str, out: dict[str, Any]) -> None:
    """Flatten a stand-in module tree into ``name -> tensor`` (parameters and buffers) and attributes."""
    state = obj.state
    for group in ("_parameters", "_buffers"):
        for name, value in (state.get(group) or {}).items():
            if value is not None:
                out[f"{prefix}{name}"] = value
    for attr in ("eps", "in_features", "out_features", "num_features"):
        if attr in state:
            out[f"{prefix}{attr}"] = state[attr]
    out[f"{prefix}__class__"] = obj.pickled_class
    for name, child in (state.get("_modules") or {}).items():
        if isinstance(child, PickledObject):
            _module_tensors(child, f"{prefix}{name}.", out)


def _from_pickled_module(root: PickledObject, path: Path) -> ClassifierWeights:
    flat: dict[str, Any] = {}
    _module_tensors(root, "", flat)
    missing = [k for k in _REQUIRED if k not in flat]
    if missing:
        children = sorted((root.state.get("_modules") or {}).keys())
        raise CheckpointError(
            f"{path} holds a pickled {root.pickled_class} with submodules {children}, not the VirNucPro "
            f"MLPClassifier layout (missing {', '.join(missing)})"
        )
    expected = {
        "hidden_layer.__class__": "torch.nn.modules.linear.Linear",
        "bn1.__class__": "torch.nn.modules.batchnorm.BatchNorm1d",
        "output_layer.__class__": "torch.nn.modules.linear.Linear",
    }
    for key, cls in expected.items():
        if flat.get(key) != cls:
            raise CheckpointError(f"{path}: '{key.split('.')[0]}' is a {flat.get(key)}, expected {cls}")
    tensors = {k: _as_tensor(flat[k], k, path) for k in _REQUIRED}
    eps = float(flat.get(_EPS_KEY, 1e-5))
    return ClassifierWeights(tensors=tensors, bn_eps=eps)


def _as_tensor(value: Any, name: str, path: Path) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise CheckpointError(f"{path}: '{name}' is a {type(value).__name__}, not a tensor")
    return value.detach().to(torch.float32).contiguous().clone()


def _from_state_dict(state: Mapping[str, Any], path: Path) -> ClassifierWeights:
    # Accept "module."-prefixed dicts (DataParallel) too.
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise CheckpointError(
            f"{path} is a state dict without the classifier tensors (missing {', '.join(missing)}; "
            f"found {', '.join(sorted(state)[:8])}{'...' if len(state) > 8 else ''})"
        )
    tensors = {k: _as_tensor(state[k], k, path) for k in _REQUIRED}
    eps = state.get(_EPS_KEY, 1e-5)
    eps = float(eps.item() if isinstance(eps, torch.Tensor) else eps)
    return ClassifierWeights(tensors=tensors, bn_eps=eps)


def _check_shapes(w: ClassifierWeights, path: Path) -> None:
    t = w.tensors
    h = t["hidden_layer.weight"].shape[0]
    shapes = {
        "hidden_layer.bias": (h,),
        "bn1.weight": (h,),
        "bn1.bias": (h,),
        "bn1.running_mean": (h,),
        "bn1.running_var": (h,),
        "output_layer.bias": (w.num_classes,),
        "output_layer.weight": (w.num_classes, h),
    }
    for name, shape in shapes.items():
        if tuple(t[name].shape) != shape:
            raise CheckpointError(f"{path}: '{name}' has shape {tuple(t[name].shape)}, expected {shape}")
    if w.num_classes != 2:
        raise CheckpointError(f"{path}: the classifier has {w.num_classes} outputs, VirNucPro's has 2")


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
    if path.suffix == ".safetensors":
        if path.stat().st_size > MAX_CLASSIFIER_BYTES:
            raise CheckpointError(f"{path}: {path.stat().st_size} bytes, far too large for a classifier")
        try:
            tensors = load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"cannot read {path} as safetensors: {exc}") from exc
        meta = _safetensors_metadata(path)
        state: dict[str, Any] = dict(tensors)
        state[_EPS_KEY] = float(meta.get("bn_eps", 1e-5))
        weights = _from_state_dict(state, path)
    else:
        obj = restricted_torch_load(path)
        if isinstance(obj, PickledObject):
            weights = _from_pickled_module(obj, path)
        elif isinstance(obj, Mapping):
            if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
                obj = obj["state_dict"]
            weights = _from_state_dict(obj, path)
        else:
            raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a VirNucPro classifier")
    _check_shapes(weights, path)
    return weights


def _safetensors_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def save_classifier_safetensors(weights: ClassifierWeights, path: str | Path, source: str = "") -> None:
    """Write the classifier in the safe format (tensors + BatchNorm epsilon in the metadata).

    Written whole or not at all, with the umask's permissions like every other file the tool writes
    (safetensors' ``save_file`` creates it mode 0600, which locks other users out of a shared engine
    directory); the classifier is a few MB, so the bytes are built in memory.
    """
    meta = {
        "format": "virnucpro-classifier",
        "version": "1",
        "bn_eps": repr(weights.bn_eps),
        "source": source,
    }
    data = safetensors_bytes({k: v.contiguous() for k, v in weights.tensors.items()}, metadata=meta)
    write_bytes_atomic(Path(path), data)


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
