"""Reading weight files safely, and the checks every checkpoint loader shares.

Every ``torch.load`` here runs with ``weights_only=True`` (tensors and plain containers only; a pickle that
names any other global is refused before anything runs) and ``map_location="cpu"``. Safetensors files
cannot carry code at all. Errors are :class:`~virnucpro_trt.errors.CheckpointError` with a one-line
message that says what was found.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch

from virnucpro_trt.errors import CheckpointError, UnsafePickleError

StateDict = dict[str, torch.Tensor]

SAFETENSORS_SINGLE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_SINGLE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"

_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def safe_torch_load(path: Path, allowed_globals: Sequence[Any] = ()) -> Any:
    """``torch.load`` with ``weights_only=True``, memory-mapped when the file format allows it.

    ``allowed_globals`` widens the allow-list for known harmless types (fair-esm's ``argparse.Namespace``).
    """
    context: AbstractContextManager[Any] = nullcontext()
    if allowed_globals:
        if hasattr(torch.serialization, "safe_globals"):
            context = torch.serialization.safe_globals(list(allowed_globals))
        else:  # torch < 2.5 has only the process-wide allow-list
            torch.serialization.add_safe_globals(list(allowed_globals))
    try:
        with context:
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):  # legacy (non-zip) files cannot be memory-mapped
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _UNSUPPORTED_GLOBAL.search(str(exc))
        what = found.group(1) if found else str(exc).splitlines()[0]
        raise UnsafePickleError(f"{path}: refused to unpickle {what} (only tensors are loaded)") from exc
    except (RuntimeError, EOFError, OSError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: cannot read as a PyTorch file ({first_line})") from exc


def load_safetensors(path: Path) -> StateDict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: cannot read as safetensors ({exc})") from exc


def _load_state_dict_file(path: Path) -> StateDict:
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    loaded = safe_torch_load(path)
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors, found {type(loaded).__name__}")
    return dict(loaded)


def hf_weight_files(folder: Path) -> list[Path]:
    """The weight files of a Hugging Face model folder, preferring safetensors, following shard indexes."""
    for single, index in ((SAFETENSORS_SINGLE, SAFETENSORS_INDEX), (BIN_SINGLE, BIN_INDEX)):
        if (folder / single).is_file():
            return [folder / single]
        if (folder / index).is_file():
            try:
                weight_map = json.loads((folder / index).read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise CheckpointError(f"{folder / index}: not a shard index ({exc})") from exc
            shards = [folder / name for name in sorted(set(weight_map.values()))]
            missing = [p.name for p in shards if not p.is_file()]
            if missing:
                raise CheckpointError(f"{folder}: shard index lists missing files {', '.join(missing)}")
            return shards
    present = ", ".join(sorted(p.name for p in folder.iterdir())) if folder.is_dir() else "nothing"
    raise CheckpointError(
        f"{folder}: no weights ({SAFETENSORS_SINGLE}, {BIN_SINGLE} or a shard index); found: {present}"
    )


def checkpoint_files(path: Path) -> list[Path]:
    """The files whose contents identify a checkpoint: the file itself, or a folder's weight files."""
    return [path] if path.is_file() else hf_weight_files(path)


def load_weight_files(files: Iterable[Path]) -> StateDict:
    """Merge the state dicts of one or more weight files (shards must not repeat a key)."""
    merged: StateDict = {}
    for path in files:
        part = _load_state_dict_file(path)
        repeated = sorted(set(part) & set(merged))
        if repeated:
            raise CheckpointError(f"{path}: repeats keys of another shard: {summarize(repeated)}")
        merged.update(part)
    return merged


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path.parent}: no {path.name}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def summarize(keys: Sequence[str], limit: int = 4) -> str:
    """'a, b, c, d (+12 more)': key lists in one-line error messages stay short."""
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def check_state_dict(found: Mapping[str, torch.Tensor], model: torch.nn.Module, what: str) -> None:
    """Raise a CheckpointError naming missing, unexpected and shape-mismatched keys, if any."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = [
        f"{name} {tuple(found[name].shape)} vs expected {expected[name]}"
        for name in sorted(set(found) & set(expected))
        if tuple(found[name].shape) != expected[name]
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {summarize(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {summarize(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch {summarize(mismatched, 2)}")
    if problems:
        raise CheckpointError(f"{what}: " + "; ".join(problems))


def layer_count(keys: Iterable[str], pattern: str) -> int:
    """Number of layers = 1 + the largest index captured by ``pattern`` (a regex with one group)."""
    regex = re.compile(pattern)
    indices = [int(m.group(1)) for key in keys if (m := regex.match(key))]
    return max(indices) + 1 if indices else 0


def to_float32(state: StateDict) -> StateDict:
    """fp32 contiguous copies where needed (fair-esm files are fp16; HF files may be bf16/fp16)."""
    return {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in state.items()}


def weights_sha256(paths: Iterable[str | Path]) -> str:
    """SHA-256 identifying a set of weight files, independent of the folder they sit in.

    Per-file digests of the contents are combined in file-name order, so the same shards give the same
    hash wherever they are (e.g. a Hugging Face snapshot folder and a copy of it).
    """
    combined = hashlib.sha256()
    for path in sorted((Path(p) for p in paths), key=lambda p: p.name):
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 24):
                digest.update(chunk)
        combined.update(digest.digest())
    return combined.hexdigest()
