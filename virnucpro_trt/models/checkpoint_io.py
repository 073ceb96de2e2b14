"""Reading weight files safely, and the checks every checkpoint loader shares.

PyTorch files are read by :mod:`~virnucpro_trt.models.torch_archive` (tensors and plain containers only;
a pickle that names any other global is refused before anything runs; TorchScript, tar and legacy files
are refused by format). Safetensors files cannot carry code at all. Errors are
:class:`~virnucpro_trt.errors.CheckpointError` with a one-line message that says what was found.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from virnucpro_trt.errors import CheckpointError
from virnucpro_trt.files.bounded_read import FileTooLarge, read_bounded
from virnucpro_trt.files.names import member_path
from virnucpro_trt.models.torch_archive import load_torch_file

StateDict = dict[str, torch.Tensor]

SAFETENSORS_SINGLE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_SINGLE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"

# A model folder's text files (config.json, shard indexes, tokenizer.json, vocab.txt): kilobytes to a few
# MB in practice (DNABERT-S's tokenizer.json is ~300 KB; large BPE tokenizers ~20 MB).
MAX_TEXT_BYTES = 64 << 20


def safe_torch_load(path: Path, extra_globals: Mapping[tuple[str, str], Any] | None = None) -> Any:
    """A ``torch.save`` archive of tensors and plain containers, memory-mapped, never through ``torch.load``.

    :func:`~virnucpro_trt.models.torch_archive.load_torch_file` refuses TorchScript, tar and legacy files
    and any global outside the tensor allow-list; ``extra_globals`` widens it for known harmless types
    (fair-esm's ``argparse.Namespace``).
    """
    return load_torch_file(path, extra_globals=extra_globals, use_mmap=True)


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
            weight_map = read_json(folder / index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(f"{folder / index}: not a shard index (no 'weight_map' object)")
            names = sorted({str(name) for name in weight_map.values()})
            shards = [member_path(folder, name, f"{folder / index}") for name in names]
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


def read_text_file(path: Path) -> str:
    """A model folder's text file, read whole but never past :data:`MAX_TEXT_BYTES`.

    Every loader of these files reads through here (one limit, one place; the bounded read itself is
    :func:`~virnucpro_trt.files.bounded_read.read_bounded`).
    """
    if not path.is_file():
        raise CheckpointError(f"{path.parent}: no {path.name}")
    try:
        raw = read_bounded(path, MAX_TEXT_BYTES)
    except FileTooLarge as exc:
        raise CheckpointError(f"{path}: {exc}, too large for a model's text file") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a checkpoint folder (size bounded: it is read whole)."""
    text = read_text_file(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    except RecursionError:
        raise CheckpointError(f"{path}: JSON nested too deeply for a model's file") from None
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
