"""Reading weight files safely, and the checks every checkpoint loader shares.

PyTorch files are read by :mod:`~virnucpro_trt.models.torch_archive` (tensors and plain containers only;
a pickle that names any other global is refused before anything runs; TorchScript, tar and legacy files
are refused by format). Safetensors files cannot carry code at all. Errors are
:class:`~virnucpro_trt.errors.CheckpointError` with a one-line message that says what was found.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from virnucpro_trt.errors import CheckpointError, show_value
from virnucpro_trt.files.bounded_read import FileTooLarge, read_bounded
from virnucpro_trt.files.json_fields import parse_json
from virnucpro_trt.files.names import check_member_name
from virnucpro_trt.models.pickle_guard import module_stand_in
from virnucpro_trt.models.torch_archive import load_torch_file

StateDict = dict[str, torch.Tensor]

SAFETENSORS_SINGLE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_SINGLE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"

# A model folder's text files (config.json, shard indexes, tokenizer.json, vocab.txt): kilobytes to a few
# MB in practice (DNABERT-S's tokenizer.json is ~300 KB; large BPE tokenizers ~20 MB).
MAX_TEXT_BYTES = 64 << 20

FP32_BYTES_PER_STORED_BYTE = 2
"""What converting a checkpoint's floating tensors to fp32 can cost per byte stored: 2 for fp16/bf16
files, 1 for fp32, 0.5 for fp64. More than this means tensors share storage (see
:func:`check_fp32_bytes_fit_files`)."""


def safe_torch_load(path: Path, extra_globals: Mapping[tuple[str, str], Any] | None = None) -> Any:
    """A ``torch.save`` archive of tensors and plain containers, memory-mapped, never through ``torch.load``.

    :func:`~virnucpro_trt.models.torch_archive.load_torch_file` refuses TorchScript, tar and legacy files
    and any global outside the tensor allow-list; ``extra_globals`` widens it for known harmless types
    (fair-esm's ``argparse.Namespace``). A whole pickled module (a class of ``__main__``,
    ``torch.nn.modules`` or upstream's ``MLPClassifier``) is refused as what it is — most likely the
    classifier given in an encoder's place — rather than as a code-execution attempt.
    """

    def refuse_module(module: str, name: str) -> None:
        if module_stand_in(module, name) is None:
            return None  # refused as any other global
        if name == "MLPClassifier":
            raise CheckpointError(
                f"{path}: upstream's VirNucPro classifier (a pickled {module}.{name}), not an encoder's "
                "weights; give it as --classifier"
            )
        raise CheckpointError(
            f"{path}: holds a pickled {module}.{name} object (none of its code is run), not a checkpoint "
            "of weights; save the model's state_dict() instead"
        )

    return load_torch_file(path, extra_globals=extra_globals, stand_ins=refuse_module, use_mmap=True)


def load_safetensors(path: Path) -> StateDict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: cannot read as safetensors ({exc})") from exc
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:  # a header torch cannot build
        reason = " ".join(str(exc).split("\n", 1)[0].split())[:200]  # its first line: not torch's C++ trace
        raise CheckpointError(f"{path}: a tensor its header describes cannot be made ({reason})") from exc


def _load_state_dict_file(path: Path) -> StateDict:
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    loaded = safe_torch_load(path)
    if not isinstance(loaded, Mapping):
        raise CheckpointError(f"{path}: expected a state dict of tensors, found {type(loaded).__name__}")
    return check_tensor_entries(loaded, f"{path}")


def check_tensor_entries(entries: Mapping[Any, Any], where: str) -> StateDict:
    """``entries`` as a state dict, refused unless every key is a string and every value a tensor.

    A pickle can hold anything the allow-list permits (ints, lists, non-string keys): without this an
    ``int`` where a tensor belongs fails later as an AttributeError, far from the file that caused it.
    """
    for key, value in entries.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{where}: a state-dict key is {show_value(key)}, not a string")
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{where}: {key[:120]!r} holds {show_value(value)}, not a tensor")
    return dict(entries)


def is_present(path: Path) -> bool:
    """Whether anything at all is at ``path``: a file, a folder, a device, a FIFO or a (broken) link."""
    return os.path.lexists(path)


def require_regular_file(path: Path) -> None:
    """Refuse a model file that is present but is not (a link to) a regular file.

    Such a name is never skipped in favour of a default or another file: a ``vocab.txt`` that is a FIFO,
    a device (``/dev/zero``), a folder or a broken link must not silently become the default alphabet,
    and it must not be opened either (a FIFO blocks, a device never ends).
    """
    if not path.is_file():
        what = "a broken link" if not path.exists() else "not a regular file"
        raise CheckpointError(f"{path}: {what}; refused (a model's files must be regular files)")


def hf_weight_files(folder: Path) -> list[Path]:
    """The weight files of a Hugging Face model folder, preferring safetensors, following shard indexes.

    A weight or index name that is present but not a regular file is refused, not skipped for the next
    candidate (:func:`require_regular_file`). A shard index may only name plain files of the folder, but
    those may be links, as the single weight file may: the Hugging Face cache keeps every snapshot file as
    a link into the repository's ``blobs/`` folder, so sharded models (ESM-2 3B is one) live that way.
    """
    for single, index in ((SAFETENSORS_SINGLE, SAFETENSORS_INDEX), (BIN_SINGLE, BIN_INDEX)):
        for name in (single, index):
            if is_present(folder / name):
                require_regular_file(folder / name)
        if (folder / single).is_file():
            return [folder / single]
        if (folder / index).is_file():
            weight_map = read_json(folder / index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(f"{folder / index}: not a shard index (no 'weight_map' object)")
            names = sorted({str(name) for name in weight_map.values()})
            shards = [folder / check_member_name(name, f"{folder / index}") for name in names]
            missing = [p.name for p in shards if not is_present(p)]
            if missing:
                raise CheckpointError(f"{folder}: shard index lists missing files {', '.join(missing)}")
            for shard in shards:
                require_regular_file(shard)
            return shards
    present = ", ".join(sorted(p.name for p in folder.iterdir())) if folder.is_dir() else "nothing"
    raise CheckpointError(
        f"{folder}: no weights ({SAFETENSORS_SINGLE}, {BIN_SINGLE} or a shard index); found: {present}"
    )


# A model folder's text files that the loaders read beside the weights. They change the results as much
# as the weights do (config.json's layer_norm_eps, the vocabulary's ids), so they are part of the
# checkpoint's identity: an edited config must not pass for the weights a finished run used.
CONFIGURING_FILES = ("config.json", "tokenizer.json", "vocab.txt")


def checkpoint_files(path: Path) -> list[Path]:
    """The files whose contents identify a checkpoint: the file itself, or a folder's weight files and
    the :data:`CONFIGURING_FILES` it has."""
    if path.is_file():
        return [path]
    return [*hf_weight_files(path), *(path / name for name in CONFIGURING_FILES if (path / name).is_file())]


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


# transformers' legacy LayerNorm parameter names and the current ones.
_LEGACY_NORM_SUFFIXES = (("LayerNorm.gamma", "LayerNorm.weight"), ("LayerNorm.beta", "LayerNorm.bias"))


def with_current_norm_names(raw: StateDict, where: str) -> StateDict:
    """A Hugging Face state dict with ``LayerNorm.gamma``/``.beta`` keys named ``.weight``/``.bias``.

    transformers reads both spellings as one, and its 5.x ``save_pretrained`` writes the legacy one, so a
    folder that transformers itself wrote and reads back must load here too. A file that holds both
    spellings of one parameter is refused: which of the two transformers would use is not ours to guess.
    """
    renamed: StateDict = {}
    for key, tensor in raw.items():
        name = key
        for legacy, current in _LEGACY_NORM_SUFFIXES:
            if key.endswith(legacy):
                name = key[: -len(legacy)] + current
                if name in raw:
                    raise CheckpointError(f"{where}: holds both {key} and {name}")
        renamed[name] = tensor
    return renamed


def read_text_file(path: Path) -> str:
    """A model folder's text file, read whole but never past :data:`MAX_TEXT_BYTES`.

    Every loader of these files reads through here (one limit, one place; the bounded read itself is
    :func:`~virnucpro_trt.files.bounded_read.read_bounded`).
    """
    if not is_present(path):
        raise CheckpointError(f"{path.parent}: no {path.name}")
    require_regular_file(path)
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
        data = parse_json(text)
    except ValueError as exc:  # not JSON, nested too deeply, an integer of too many digits
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def summarize(keys: Sequence[str], limit: int = 4) -> str:
    """'a, b, c, d (+12 more)': key lists in one-line error messages stay short."""
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def check_state_dict(found: Mapping[str, torch.Tensor], model: torch.nn.Module, what: str) -> None:
    """Raise a CheckpointError naming missing, unexpected and shape-mismatched keys, if any."""
    check_state_shapes(found, {name: tuple(t.shape) for name, t in model.state_dict().items()}, what)


def check_state_shapes(
    found: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]], what: str
) -> None:
    """Raise a CheckpointError naming missing, unexpected, shape-mismatched and non-floating tensors.

    Reads only names, shapes and dtypes: run it before any tensor is converted or copied, so that a file
    of many extra keys (or keys aliasing one storage) is refused for what it is before it costs memory.
    """
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
    not_floating = sorted(
        f"{name} ({found[name].dtype})"
        for name in set(found) & set(expected)
        if not found[name].is_floating_point()
    )
    if not_floating:
        problems.append(f"not floating-point weights {summarize(not_floating, 2)}")
    if problems:
        raise CheckpointError(f"{what}: " + "; ".join(problems))


def fp32_bytes(shapes: Iterable[tuple[int, ...]]) -> int:
    """Bytes the tensors of these shapes take in fp32."""
    return 4 * sum(math.prod(shape) for shape in shapes)


def check_fp32_bytes_fit_files(
    expected: Mapping[str, tuple[int, ...]], files: Sequence[Path], what: str
) -> None:
    """The fp32 weights the config implies must fit what the weight files can hold.

    Every tensor of a file is a view of some storage, and views may share one: 1,500 keys over one 4 MB
    fp16 storage, or every layer of a config's 1,000 layers viewing layer 0's tensors, cost a few MB on
    disk and as many fp32 copies as there are keys once converted. Converting costs at most
    :data:`FP32_BYTES_PER_STORED_BYTE` per stored byte when no storage is shared, so the config's fp32
    total (the exact key and shape check has already made the kept tensors match it) is bounded by that
    factor times the files' size, before anything is converted.
    """
    needed = fp32_bytes(expected.values())
    stored = sum(path.stat().st_size for path in files)
    if needed > FP32_BYTES_PER_STORED_BYTE * stored:
        raise CheckpointError(
            f"{what}: the config's weights take {needed} bytes in fp32, but the weight files hold only "
            f"{stored} bytes: tensors share storage (repeated or aliased views); refused before "
            "converting them"
        )


def layer_count(keys: Iterable[str], pattern: str) -> int:
    """Number of layers = 1 + the largest index captured by ``pattern`` (a regex with one group)."""
    indices = layer_indices(keys, pattern)
    return max(indices) + 1 if indices else 0


def layer_indices(keys: Iterable[str], pattern: str) -> set[int]:
    """The layer indices captured by ``pattern`` (a regex with one group of digits) among ``keys``.

    An index of more than 18 digits counts as 10**18 (no encoder has that many layers; ``int()`` of a
    5,000-digit name would be a ValueError of its own).
    """
    regex = re.compile(pattern)
    return {_layer_index(m.group(1)) for key in keys if (m := regex.match(key))}


def _layer_index(digits: str) -> int:
    return int(digits) if len(digits) <= 18 else 10**18


def missing_layers(keys: Iterable[str], pattern: str) -> str:
    """'' when the layers named by ``keys`` are exactly 0..N-1, else a phrase saying which are absent.

    The largest index alone would let one key ``layers.20000000.x`` stand for 20 million layers; every
    layer up to it must have tensors before a layer count is taken from the keys.
    """
    indices = sorted(layer_indices(keys, pattern))
    if not indices or len(indices) == indices[-1] + 1:
        return ""
    first_gap = next(i for i, index in enumerate(indices) if index != i)
    return (
        f"layer indices run to {indices[-1]} but only {len(indices)} layers have tensors "
        f"(first missing: layer {first_gap})"
    )


def embedding_shape(state: StateDict, key: str, layer_pattern: str, where: str, expected: str) -> torch.Size:
    """The word embedding's shape, once it is known to be 2-D (``expected`` names its axes) and the layers
    the keys name (``layer_pattern``) run 0..N-1 with none absent (:func:`missing_layers`): what an
    encoder's cross-check of config against tensors may then read its sizes from."""
    embedding = state[key]
    if embedding.dim() != 2:
        raise CheckpointError(f"{where}: {key} has shape {tuple(embedding.shape)}, expected {expected}")
    gap = missing_layers(state, layer_pattern)
    if gap:
        raise CheckpointError(f"{where}: {gap}")
    return embedding.shape


def to_float32(state: StateDict) -> StateDict:
    """fp32 contiguous copies where needed (fair-esm files are fp16; HF files may be bf16/fp16).

    Only ever called on tensors whose names, shapes and total size have been checked
    (:func:`check_state_shapes`, :func:`check_fp32_bytes_fit_files`): converting is what costs memory.
    """
    return {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
