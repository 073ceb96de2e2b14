"""Restricted unpickling of the upstream classifier checkpoint.

Upstream VirNucPro saves its classifier as a WHOLE pickled module (``torch.save(model)``) whose class lives
in the training script's ``__main__``. Such a file cannot be read with ``weights_only=True``, and reading
it with plain ``pickle`` would execute whatever callable the file names. Here every global the pickle asks
for goes through an allow-list:

* tensor reconstruction helpers and plain containers are returned as themselves;
* module classes (``__main__.*`` and ``torch.nn.modules.*``) are replaced by inert :class:`PickledObject`
  stand-ins that only record the state the pickle hands them — no ``nn.Module`` code runs;
* anything else (``os.system``, ``builtins.eval``, ``subprocess.Popen``, ...) raises
  :class:`~virnucpro_trt.errors.UnsafePickleError` before it can be called.

The result is a tree of stand-ins and tensors that :mod:`virnucpro_trt.models.classifier` converts into
a plain state dict.
"""

from __future__ import annotations

import collections
import io
import pickle
import types
from pathlib import Path
from typing import Any

import torch

from virnucpro_trt.errors import CheckpointError, UnsafePickleError

# Globals that only rebuild data. Each entry is (module, name).
_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
    ("builtins", "tuple"): tuple,
    ("builtins", "int"): int,
    ("builtins", "float"): float,
    ("builtins", "bool"): bool,
    ("builtins", "str"): str,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch", "Size"): torch.Size,
}
for _optional in ("_rebuild_tensor_v3", "_rebuild_parameter_with_state"):
    if hasattr(torch._utils, _optional):
        _SAFE_GLOBALS[("torch._utils", _optional)] = getattr(torch._utils, _optional)
for _dtype_name in ("float32", "float16", "bfloat16", "float64", "int64", "int32", "uint8", "bool"):
    _SAFE_GLOBALS[("torch", _dtype_name)] = getattr(torch, _dtype_name)

# Module paths whose classes are replaced by stand-ins (their code never runs).
_STAND_IN_MODULE_PREFIXES = ("__main__", "__mp_main__", "torch.nn.modules.")


class PickledObject:
    """Inert stand-in for a pickled class instance: it only keeps the state it was given."""

    pickled_class: str = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.__dict__["_args"] = args
        self.__dict__["_state"] = {}

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            # (dict_state, slots_state) form
            merged = dict(state[0] or {})
            merged.update(state[1])
            state = merged
        if not isinstance(state, dict):
            raise UnsafePickleError(
                f"unexpected state of type {type(state).__name__} for {self.pickled_class}"
            )
        self.__dict__["_state"] = state

    @property
    def state(self) -> dict[str, Any]:
        return self.__dict__["_state"]

    def __repr__(self) -> str:
        return f"<pickled {self.pickled_class}>"


_stand_in_cache: dict[str, type[PickledObject]] = {}


def _stand_in(qualified: str) -> type[PickledObject]:
    cls = _stand_in_cache.get(qualified)
    if cls is None:
        cls = type(qualified.rsplit(".", 1)[-1], (PickledObject,), {"pickled_class": qualified})
        _stand_in_cache[qualified] = cls
    return cls


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` only hands out allow-listed globals."""

    def find_class(self, module: str, name: str) -> Any:
        # Protocol-2 pickles name Python 3's ``builtins`` by its Python 2 name.
        module = {"__builtin__": "builtins", "copy_reg": "copyreg"}.get(module, module)
        safe = _SAFE_GLOBALS.get((module, name))
        if safe is not None:
            return safe
        if module.startswith(_STAND_IN_MODULE_PREFIXES) and name.isidentifier():
            return _stand_in(f"{module}.{name}")
        raise UnsafePickleError(
            f"refusing to unpickle global '{module}.{name}': the checkpoint asks for code outside the "
            "allow-list of the classifier layout (it could execute arbitrary code)"
        )


def _restricted_pickle_module() -> types.ModuleType:
    """A module object usable as ``torch.load(pickle_module=...)``."""
    mod = types.ModuleType("virnucpro_restricted_pickle")
    mod.Unpickler = RestrictedUnpickler  # type: ignore[attr-defined]

    def load(file: Any, **kwargs: Any) -> Any:
        return RestrictedUnpickler(file, **kwargs).load()

    def loads(data: bytes, **kwargs: Any) -> Any:
        return RestrictedUnpickler(io.BytesIO(data), **kwargs).load()

    mod.load = load  # type: ignore[attr-defined]
    mod.loads = loads  # type: ignore[attr-defined]
    mod.__version__ = "restricted"  # type: ignore[attr-defined]
    return mod


def restricted_torch_load(path: Path) -> Any:
    """Load a ``torch.save`` file (zip or legacy) through :class:`RestrictedUnpickler`, tensors on CPU."""
    try:
        return torch.load(
            path, map_location="cpu", pickle_module=_restricted_pickle_module(), weights_only=False
        )
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, AttributeError, KeyError) as exc:
        raise CheckpointError(f"cannot read {path} as a PyTorch checkpoint: {exc}") from exc
