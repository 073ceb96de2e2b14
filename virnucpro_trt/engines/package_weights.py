"""An AOTInductor engine's weights in a safetensors file beside its package, checked before the loader
takes them.

Why outside the package: AOTInductor's loader unpacks the whole ``.pt2`` into a temporary folder before
it loads it (:mod:`virnucpro_trt.files.unpacking`), and with the weights inside the compiled library
(its default) that writes the whole model to disk and reads it back at every worker start: most of
the time before a worker is ready (DEVELOPERS.md, "Open problems"). Built with
``aot_inductor.package_constants_in_so=False`` the package holds code only, and the loader receives the
weights by ``load_constants``, read once from ``<package stem>.weights.safetensors`` straight to the
engine's device. The build also no longer links gigabytes of weights into a library.

Trust: the package's library is trusted code (README); the weights file is data and is checked first.
The package records, in its own metadata (``virnucpro.weights``), the name, dtype and shape of every
tensor the build wrote, and the file's header must match that table exactly. ``load_constants`` checks
neither shape nor dtype: a 2 x 2 tensor handed in for a 64 x 64 weight was taken, and the kernels read
past it. The safetensors library checks the header's offsets against the file; the manifest's SHA-256
covers the bytes. A package without the table (built before recipe 9) holds its weights itself.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from virnucpro_trt.engines.inductor_shapes import META_PREFIX
from virnucpro_trt.errors import BuildError, EngineMismatchError, shown
from virnucpro_trt.files.atomic import remove_quietly, temporary_name, umask_file_mode

WEIGHTS_KEY = f"{META_PREFIX}weights"  # package metadata: the weights table (JSON)
WEIGHTS_SUFFIX = ".weights.safetensors"
MAX_TENSORS = 1 << 16  # ESM-2 3B's engines hold ~600
MAX_DIMS = 8

# name -> (safetensors dtype name, shape)
WeightsTable = dict[str, tuple[str, tuple[int, ...]]]


def weights_file(package: Path) -> Path:
    """Where ``package``'s weights live: ``esm2.cuda.bf16.pt2`` -> ``esm2.cuda.bf16.weights.safetensors``."""
    return package.with_name(package.stem + WEIGHTS_SUFFIX)


def program_tensors(program: Any) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of an exported program, by the name AOTInductor's
    ``get_constant_fqns`` reports for it.

    A tensor the model makes in forward (``torch.tensor(...)``, a plain tensor attribute) is refused:
    the program lifts it as ``lifted_tensor_0``, and AOTInductor traces it again under another name
    (``_tensor_constant0``), so the package would ask for a tensor the file cannot hold. Before compiling,
    not at the first load after it; the model must hold such a tensor in a non-persistent buffer.
    """
    made = list(program.graph_signature.lifted_tensor_constants)
    if made:
        raise BuildError(
            f"the exported graph makes a tensor in forward ({shown(made[0], 80)}), which a weights file "
            "beside the package cannot name; hold it in a non-persistent buffer"
        )
    tensors: dict[str, torch.Tensor] = {}
    for name, value in [*program.state_dict.items(), *program.constants.items()]:
        if not isinstance(value, torch.Tensor):
            raise BuildError(f"the exported graph holds a constant {name!r} that is no tensor")
        tensors[name] = value
    return tensors


def write_weights(tensors: dict[str, torch.Tensor], path: Path) -> str:
    """Write ``tensors`` to ``path`` (safetensors) and return the table to record in the package: read
    back from the written header, so dtype names are the safetensors library's own."""
    from safetensors.torch import save_file

    if len(tensors) > MAX_TENSORS:
        raise BuildError(f"{len(tensors)} weight tensors, more than an engine may hold ({MAX_TENSORS})")
    owned = _one_storage_each(tensors)
    partial = temporary_name(path)
    try:
        save_file(owned, str(partial))
        del owned
        os.chmod(partial, umask_file_mode())  # save_file makes it 0600
        os.replace(partial, path)
    except BaseException:
        remove_quietly(partial)
        raise
    return table_text(read_table_of_file(path))


def _one_storage_each(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` on the CPU, contiguous, no two sharing a storage (safetensors refuses shared memory: a
    tied weight is written twice). Only a tensor whose storage was seen before is copied, so a CPU build
    does not hold a second copy of the model while it writes."""
    seen: set[int] = set()
    owned: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        cpu = tensor.detach().to("cpu").contiguous()
        storage = cpu.untyped_storage().data_ptr()
        if storage in seen:
            cpu = cpu.clone()
        seen.add(cpu.untyped_storage().data_ptr())
        owned[name] = cpu
    return owned


def table_text(table: WeightsTable) -> str:
    """The table as the package records it: compact JSON, names sorted."""
    return json.dumps({k: [d, list(s)] for k, (d, s) in sorted(table.items())}, separators=(",", ":"))


def read_table_of_file(path: Path) -> WeightsTable:
    """Names, dtypes and shapes of a safetensors file's header (the library checks the layout)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return _table_of(f)


def _table_of(handle: Any) -> WeightsTable:
    table: WeightsTable = {}
    for name in handle.keys():  # noqa: SIM118 (safe_open is no dict)
        piece = handle.get_slice(name)
        table[name] = (piece.get_dtype(), tuple(int(d) for d in piece.get_shape()))
    return table


def recorded_table(metadata: dict[str, str], package: Path) -> WeightsTable | None:
    """The package's weights table, or None for a package holding its weights (no table recorded)."""
    text = metadata.get(WEIGHTS_KEY)
    if text is None:
        return None
    try:
        raw = json.loads(text)
        if not isinstance(raw, dict) or len(raw) > MAX_TENSORS:
            raise ValueError("not a table")
        table: WeightsTable = {}
        for name, (dtype, shape) in raw.items():
            if not (isinstance(dtype, str) and isinstance(shape, list) and len(shape) <= MAX_DIMS):
                raise ValueError(name)
            if not all(type(d) is int and d >= 0 for d in shape):
                raise ValueError(name)
            table[name] = (dtype, tuple(shape))
    except (ValueError, TypeError) as exc:
        raise EngineMismatchError(f"{package.name} records an unreadable weights table") from exc
    return table


def load_weights(
    compiled: Any,
    metadata: dict[str, str],
    package: Path,
    device: torch.device,
    listed: frozenset[str] | None,
) -> dict[str, torch.Tensor]:
    """Hand a loaded package its weights (``compiled``: the ``aoti_load_package`` model); returns the
    tensors, which the caller must keep alive (the loader uses them in place). Nothing for a package
    that holds its own. ``listed``: the engine directory's files for this model (None: a fresh build)."""
    table = recorded_table(metadata, package)
    if table is None:
        return {}
    path = weights_file(package)
    if listed is not None and path.name not in listed:
        raise EngineMismatchError(f"the manifest does not list {path.name}, which {package.name} needs")
    if not path.is_file():
        raise EngineMismatchError(f"{path.name} is missing (the weights of {package.name})")
    wanted = list(compiled.get_constant_fqns())
    lacking = [name for name in wanted if name not in table]
    if lacking:
        raise EngineMismatchError(f"{package.name} needs a weight its table lacks: {shown(lacking[0], 80)}")
    from safetensors import safe_open

    # One open file for the check and the read: the table checked is the one the tensors come from
    # (a file replaced between two opens could hand over other shapes).
    try:
        handle = safe_open(str(path), framework="pt", device=str(device) if device.type == "cuda" else "cpu")
    except Exception as exc:  # the library's refusal of a damaged header
        why = shown(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__, 99)
        raise EngineMismatchError(f"{path.name} is no readable safetensors file: {why}") from exc
    with handle as f:
        found = _table_of(f)
        if found != table:
            not_its = f"{path.name} is not the weights {package.name} was built for"
            raise EngineMismatchError(f"{not_its}: {_difference(found, table)}")
        tensors = {name: f.get_tensor(name) for name in wanted}
    compiled.load_constants(tensors, check_full_update=True, user_managed=True)
    return tensors


def _difference(found: WeightsTable, table: WeightsTable) -> str:
    """The first way the file's table differs from the package's, for the one-line refusal."""
    extra = sorted(set(found) - set(table))
    if extra:
        return f"it holds {shown(extra[0], 80)}, which the package does not know"
    missing = sorted(set(table) - set(found))
    if missing:
        return f"it lacks {shown(missing[0], 80)}"
    name = next(n for n in sorted(table) if found[n] != table[n])
    (has, has_shape), (wants, wants_shape) = found[name], table[name]
    return f"{shown(name, 80)} is {has} {list(has_shape)}, the package expects {wants} {list(wants_shape)}"
