"""Inert stand-ins for the classes a whole pickled module names, so its weights can be read without
running any of its code.

Upstream VirNucPro saves its classifier as a WHOLE pickled module (``torch.save(model)``) whose class lives
in the training script's ``__main__``. Such a file cannot be read with ``weights_only=True``, and reading
it with plain ``pickle`` would execute whatever callable the file names. It is read by
:func:`~virnucpro_trt.models.torch_archive.load_torch_file` (never ``torch.load``), whose allow-list holds
tensors and plain containers; on top of that, module classes (``__main__.*``, ``torch.nn.modules.*`` and
upstream's ``MLPClassifier`` from any module) become inert :class:`PickledObject` stand-ins that only record
the state the pickle hands them — no ``nn.Module`` code runs. Any other global (``os.system``,
``builtins.eval``, ...) is refused before it can be called. :mod:`virnucpro_trt.models.classifier` turns
the tree of stand-ins into a state dict.
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

from virnucpro_trt.errors import UnsafePickleError
from virnucpro_trt.models.torch_archive import load_torch_file

# Module paths whose classes are replaced by stand-ins (their code never runs).
_STAND_IN_MODULE_PREFIXES = ("__main__", "__mp_main__", "torch.nn.modules.")
# Upstream's class name, from whatever module it was pickled: a script run as ``__main__`` names
# ``__main__.MLPClassifier``, the same class imported from a module (``train.MLPClassifier``, a test file)
# names that module. Neither is imported: both become the same kind of inert stand-in.
_UPSTREAM_CLASS = "MLPClassifier"
# A classifier is 3328 x 512 fp32 weights (6.8 MB); nothing this loader accepts is anywhere near this.
MAX_CLASSIFIER_BYTES = 256 << 20


class _StandInClass(type):
    """The stand-in classes are shared by every load in the process: closed to attribute changes, so a
    pickle cannot rewrite one for the files read after it (see ``torch_archive._refuse_build``)."""

    def __setattr__(cls, name: str, value: Any) -> None:
        raise UnsafePickleError(f"the pickle tries to change the stand-in class {cls.pickled_class}; refused")

    def __delattr__(cls, name: str) -> None:
        raise UnsafePickleError(f"the pickle tries to change the stand-in class {cls.pickled_class}; refused")


class PickledObject(metaclass=_StandInClass):
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
        """What the pickle's BUILD handed over; empty when it gave none (``NEWOBJ`` skips ``__init__``)."""
        return self.__dict__.get("_state", {})

    def __repr__(self) -> str:
        return f"<pickled {self.pickled_class}>"


_stand_in_cache: dict[str, type[PickledObject]] = {}


def module_stand_in(module: str, name: str) -> type[PickledObject] | None:
    """The stand-in class for ``module.name`` when it is a module class, else None (refused)."""
    if not name.isidentifier():
        return None
    named_module = name == _UPSTREAM_CLASS and all(part.isidentifier() for part in module.split("."))
    if not (module.startswith(_STAND_IN_MODULE_PREFIXES) or named_module):
        return None
    qualified = f"{module}.{name}"
    cls = _stand_in_cache.get(qualified)
    if cls is None:
        cls = _StandInClass(name, (PickledObject,), {"pickled_class": qualified})
        _stand_in_cache[qualified] = cls
    return cls


def restricted_torch_load(path: Path) -> Any:
    """A ``torch.save`` archive of a whole module or a state dict, with module classes as stand-ins.

    ``argparse.Namespace`` reads as a plain namespace, as for fair-esm files, so a fair-esm checkpoint
    given in the classifier's place is told apart by its keys (not refused as a code-execution attempt).
    """
    return load_torch_file(
        path,
        extra_globals={("argparse", "Namespace"): types.SimpleNamespace},
        stand_ins=module_stand_in,
        max_storage_bytes=MAX_CLASSIFIER_BYTES,
    )
