"""Reading ``torch.save`` files ourselves: format checked, sizes bounded, every global allow-listed.

``torch.load`` dispatches on what it finds: a TorchScript archive goes to ``torch.jit.load`` (which runs
the archive's code even when a restricted pickle module was passed), tar and legacy files go through
older readers, and a compressed record is inflated before anything looks at it. So no checkpoint we are
handed ever reaches ``torch.load``. This module:

* accepts only the zip archive ``torch.save`` has written since torch 1.6, and refuses TorchScript
  archives, tar and legacy pickles by name before reading a byte of their contents;
* checks every record it will read before reading it: stored (``torch.save`` never compresses), not
  encrypted, inside the file, and exactly the size the pickle declares for it, within a caller's limit;
* unpickles ``data.pkl`` with an :class:`pickle.Unpickler` whose ``find_class`` hands out only the
  globals of :data:`TENSOR_GLOBALS` plus what the caller adds, and rebuilds tensors with bounds checked;
* memory-maps storages copy-on-write when asked (a 6 GB checkpoint costs no copy), or reads them.

Anything that goes wrong inside the file — a stand-in called the wrong way, a truncated record, a
malformed pickle — is a :class:`~virnucpro_trt.errors.CheckpointError`: bad input, one line, exit 2.
"""

from __future__ import annotations

import codecs
import collections
import io
import mmap
import pickle
import reprlib
import struct
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from virnucpro_trt.errors import SHORT_OF_FILES, CheckpointError, UnsafePickleError
from virnucpro_trt.models.pickle_expansion import check_pickle_expansion

# data.pkl of a 15B-parameter checkpoint is well under 1 MB; it is read whole, then walked (pickle_expansion)
MAX_PICKLE_BYTES = 16 << 20
_TORCHSCRIPT_MARKERS = ("constants.pkl", "code/", "model.json", "bytecode.pkl", "attributes.pkl")
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, (skipped), file name length, extra field length
_MAX_DIMS = 64

StandIns = Callable[[str, str], Any]


def _refuse_build(target: object, state: Any) -> None:
    """``__setstate__`` of what the allow-list hands out: a pickle's BUILD onto it is refused.

    The unpickler hands every file the same allow-listed objects. BUILD writes into an object's
    ``__dict__`` or sets attributes, bypassing ``frozen=True``; onto a shared global that would change
    how every later file in the process is read (``HalfStorage`` decoding fp16 as bf16, say), while the
    file doing it still loads cleanly. ``torch.save`` only BUILDs onto objects the pickle itself made.
    """
    raise UnsafePickleError(f"the pickle tries to change the allow-listed global {target!r}; refused")


@dataclass(frozen=True)
class _StorageType:
    """What ``torch.FloatStorage`` & co. become while unpickling: only their dtype matters."""

    dtype: torch.dtype

    __setstate__ = _refuse_build


class _AllowedCall:
    """An allow-listed function as the unpickler hands it out: callable, closed to BUILD and setattr
    (a plain function's defaults and attributes could be rewritten; see :func:`_refuse_build`)."""

    __slots__ = ("_call",)

    def __init__(self, call: Callable[..., Any]):
        object.__setattr__(self, "_call", call)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(*args, **kwargs)

    def __setattr__(self, name: str, value: Any) -> None:
        _refuse_build(self, value)

    __setstate__ = _refuse_build

    def __repr__(self) -> str:
        return f"{self._call.__module__}.{self._call.__name__}"


@dataclass(frozen=True)
class _Storage:
    """One storage record of the archive as a flat tensor of its dtype."""

    flat: torch.Tensor


_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "UntypedStorage": torch.uint8,
}


def _int(value: Any, what: str) -> int:
    if type(value) is not int or value < 0:
        raise CheckpointError(f"{what} is {value!r}, expected a non-negative integer")
    return value


def _shape(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple) or len(value) > _MAX_DIMS:
        raise CheckpointError(f"tensor {what} is {type(value).__name__}, expected a tuple of integers")
    return tuple(_int(v, f"tensor {what} entry") for v in value)


def _elements_exceed(size: tuple[int, ...], limit: int) -> bool:
    """Whether a tensor of ``size`` has more than ``limit`` elements (the product stops once past it)."""
    if 0 in size:
        return False
    elements = 1
    for n in size:
        elements *= n
        if elements > limit:
            return True
    return False


def _rebuild_tensor(
    storage: Any, offset: Any, size: Any, stride: Any, *_rest: Any, **_kwargs: Any
) -> torch.Tensor:
    """A view of ``storage`` after checking that every element it covers lies inside the storage, and
    that it shows no more elements than the storage holds.

    The second rule bounds what a view can cost once copied: zero (or overlapping) strides let one stored
    float appear as a tensor of 10**9 elements, which ``.contiguous()`` or ``.float()`` would then
    allocate. ``torch.save`` of any ordinary tensor never writes such a view.
    """
    if not isinstance(storage, _Storage):
        raise CheckpointError(f"a tensor refers to a {type(storage).__name__}, not to a storage record")
    offset = _int(offset, "tensor storage offset")
    size, stride = _shape(size, "size"), _shape(stride, "stride")
    if len(size) != len(stride):
        raise CheckpointError(f"tensor size {size} and stride {stride} differ in rank")
    numel = storage.flat.numel()
    if all(size):
        last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if last >= numel:
            raise CheckpointError(f"a tensor of size {size} at offset {offset} overruns its storage")
    if _elements_exceed(size, numel):
        raise CheckpointError(
            f"a tensor of size {str(size)[:80]} shows more elements than its storage of {numel} holds "
            "(zero or overlapping strides); refused before it is copied"
        )
    return storage.flat.as_strided(size, stride, offset if all(size) else 0)


def _rebuild_tensor_v2(
    storage: Any,
    offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> torch.Tensor:
    if backward_hooks:  # hooks are callables: a tensor checkpoint never needs them
        raise UnsafePickleError("a tensor carries backward hooks (code); refused")
    return _rebuild_tensor(storage, offset, size, stride)


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None, *_: Any) -> Any:
    """Parameters become plain tensors: we only read weights."""
    if backward_hooks:
        raise UnsafePickleError("a parameter carries backward hooks (code); refused")
    if not isinstance(data, torch.Tensor):
        raise CheckpointError(f"a parameter wraps a {type(data).__name__}, not a tensor")
    return data


def _encode(text: Any, encoding: Any = "latin1") -> bytes:
    """Protocol-2 pickles write ``bytes`` as ``_codecs.encode(str, 'latin1')``: allow exactly that."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError("'_codecs.encode' is only allowed for latin-1 byte strings")
    return codecs.encode(text, "latin1")


# The globals a plain tensor checkpoint uses: containers, tensor rebuilders, storage types, dtypes.
# Shared by every load, so each is closed to a pickle's BUILD: a built-in type or dtype (immutable), a
# _StorageType or an _AllowedCall (both refuse it; tests try BUILD on every entry).
TENSOR_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
    ("builtins", "tuple"): tuple,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "int"): int,
    ("builtins", "float"): float,
    ("builtins", "bool"): bool,
    ("builtins", "str"): str,
    ("_codecs", "encode"): _AllowedCall(_encode),
    ("torch", "Size"): torch.Size,
    ("torch._utils", "_rebuild_tensor"): _AllowedCall(_rebuild_tensor),
    ("torch._utils", "_rebuild_tensor_v2"): _AllowedCall(_rebuild_tensor_v2),
    ("torch._utils", "_rebuild_parameter"): _AllowedCall(_rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): _AllowedCall(_rebuild_parameter),
    **{("torch", name): _StorageType(dtype) for name, dtype in _STORAGE_DTYPES.items()},
    **{
        ("torch", name): getattr(torch, name)
        for name in ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8")
    },
    ("torch", "bool"): torch.bool,
}


def _sniff_other_format(path: Path) -> str:
    """What a file that is not a zip archive is, for the refusal message (a file that cannot even be
    read, such as a link to ``/proc/self/mem``, is named too, not left to an unexpected OSError)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(512)
    except OSError as exc:  # the reason is then the whole message
        if exc.errno in SHORT_OF_FILES:  # the process's limit, not the file: said as such
            raise
        return f"cannot be read ({exc.strerror or exc})"
    if len(head) > 262 and head[257:262] == b"ustar":
        return "a tar-format torch checkpoint (torch < 0.4)"
    if head[:1] == b"\x80":
        return "a legacy (pre-1.6) torch pickle"
    if head[:4] == b"PK\x03\x04":  # a zip's first entry, but no central directory at the end
        return "a truncated or damaged zip archive (an interrupted download or copy?)"
    if head.startswith(b"version https://git-lfs."):  # a clone without `git lfs pull`
        return "a Git LFS pointer, not the weights (fetch them: `git lfs pull` in its repository)"
    return "not a PyTorch checkpoint"


class _ArchiveReader:
    """One open ``torch.save`` zip archive: its records checked, storages read on demand."""

    def __init__(self, path: Path, zf: zipfile.ZipFile, max_storage_bytes: int | None, use_mmap: bool):
        self.path = path
        self.zf = zf
        self.file_size = path.stat().st_size
        self.max_storage_bytes = max_storage_bytes
        self.storage_bytes = 0
        self.storages: dict[str, _Storage] = {}
        self._mmap: mmap.mmap | None = None
        self._use_mmap = use_mmap
        names = [info.filename for info in zf.infolist()]
        if len(set(names)) != len(names):
            raise CheckpointError(f"{path}: the archive repeats entry names")
        roots = [n[: -len("data.pkl")] for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(roots) != 1:
            raise CheckpointError(f"{path}: not a torch.save archive (expected one <name>/data.pkl)")
        self.prefix = roots[0]
        for name in names:
            if any(name.startswith(self.prefix + marker) for marker in _TORCHSCRIPT_MARKERS):
                raise CheckpointError(
                    f"{path}: a TorchScript archive (torch.jit.save), which runs code when loaded; refused "
                    "(checkpoints must be torch.save files of tensors)"
                )

    def _entry(self, name: str) -> zipfile.ZipInfo:
        try:
            info = self.zf.getinfo(self.prefix + name)
        except KeyError:
            raise CheckpointError(f"{self.path}: the archive has no record {name!r}") from None
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
            raise CheckpointError(
                f"{self.path}: record {name!r} is compressed or encrypted (torch.save never does that); "
                "refused"
            )
        if info.file_size != info.compress_size or info.header_offset + info.file_size > self.file_size:
            raise CheckpointError(f"{self.path}: record {name!r} declares a size beyond the file")
        return info

    def read_small(self, name: str, limit: int) -> bytes:
        info = self._entry(name)
        if info.file_size > limit:
            raise CheckpointError(f"{self.path}: record {name!r} is {info.file_size} bytes (limit {limit})")
        return self.zf.read(info)

    def byteorder(self) -> str:
        if self.prefix + "byteorder" not in self.zf.namelist():
            return "little"  # archives from before torch recorded it were written little-endian
        return self.read_small("byteorder", 16).decode("ascii", "replace")

    def _data_offset(self, info: zipfile.ZipInfo) -> int:
        assert self._mmap is not None
        start = info.header_offset
        if start + _LOCAL_HEADER.size > self.file_size:
            raise CheckpointError(f"{self.path}: a record header lies beyond the file")
        signature, name_len, extra_len = _LOCAL_HEADER.unpack_from(self._mmap, start)
        name = self._mmap[start + _LOCAL_HEADER.size : start + _LOCAL_HEADER.size + name_len]
        if signature != b"PK\x03\x04" or name != info.filename.encode("utf-8"):
            raise CheckpointError(f"{self.path}: record {info.filename!r} has a damaged local header")
        offset = start + _LOCAL_HEADER.size + name_len + extra_len
        if offset + info.file_size > self.file_size:
            raise CheckpointError(f"{self.path}: record {info.filename!r} runs past the end of the file")
        return offset

    def storage(self, pid: Any) -> _Storage:
        """``persistent_load`` for ``('storage', type, key, location, numel)``."""
        if not isinstance(pid, tuple) or len(pid) != 5 or pid[0] != "storage":
            raise CheckpointError(f"{self.path}: unexpected persistent id {reprlib.repr(pid)}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType) or not isinstance(key, str) or not key.isalnum():
            raise CheckpointError(f"{self.path}: malformed storage reference {reprlib.repr(pid)}")
        numel = _int(numel, "storage size")
        if key in self.storages:
            cached = self.storages[key]
            if cached.flat.dtype != storage_type.dtype or cached.flat.numel() != numel:
                raise CheckpointError(f"{self.path}: storage {key} is referenced with two different types")
            return cached
        dtype = storage_type.dtype
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        info = self._entry(f"data/{key}")
        if info.file_size != nbytes:
            raise CheckpointError(
                f"{self.path}: storage {key} declares {nbytes} bytes but its record holds {info.file_size}"
            )
        self.storage_bytes += nbytes
        if self.max_storage_bytes is not None and self.storage_bytes > self.max_storage_bytes:
            raise CheckpointError(
                f"{self.path}: tensors of more than {self.max_storage_bytes} bytes; too large for this "
                "kind of checkpoint (refused before reading them)"
            )
        self.storages[key] = _Storage(self._tensor(info, dtype, numel))
        return self.storages[key]

    def _tensor(self, info: zipfile.ZipInfo, dtype: torch.dtype, numel: int) -> torch.Tensor:
        if numel == 0:
            return torch.empty(0, dtype=dtype)
        if not self._use_mmap:
            return torch.frombuffer(bytearray(self.zf.read(info)), dtype=torch.uint8).view(dtype)
        if self._mmap is None:
            with open(self.path, "rb") as handle:
                self._mmap = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
        offset = self._data_offset(info)
        raw = torch.frombuffer(self._mmap, dtype=torch.uint8, count=info.file_size, offset=offset)
        if offset % 64:  # torch.save aligns records to 64 bytes; anything else gets an aligned copy
            raw = raw.clone()
        return raw.view(dtype)


class _Unpickler(pickle.Unpickler):
    def __init__(
        self,
        data: bytes,
        reader: _ArchiveReader,
        extra: Mapping[tuple[str, str], Any],
        stand_ins: StandIns | None,
    ):
        super().__init__(io.BytesIO(data))
        self._reader = reader
        self._extra = extra
        self._stand_ins = stand_ins

    def find_class(self, module: str, name: str) -> Any:
        module = {"__builtin__": "builtins", "copy_reg": "copyreg"}.get(module, module)
        key = (module, name)
        if key in self._extra:
            return self._extra[key]
        if key in TENSOR_GLOBALS:
            return TENSOR_GLOBALS[key]
        if self._stand_ins is not None:
            found = self._stand_ins(module, name)
            if found is not None:
                return found
        raise UnsafePickleError(
            f"{self._reader.path}: refused to unpickle global '{module}.{name}' (only tensors and plain "
            "containers are read; it could execute arbitrary code)"
        )

    def persistent_load(self, pid: Any) -> Any:
        return self._reader.storage(pid)


def load_torch_file(
    path: Path,
    *,
    extra_globals: Mapping[tuple[str, str], Any] | None = None,
    stand_ins: StandIns | None = None,
    max_storage_bytes: int | None = None,
    use_mmap: bool = False,
) -> Any:
    """The object a ``torch.save`` archive holds, read without ``torch.load`` (see the module docstring).

    ``extra_globals`` widens the allow-list by exact ``(module, name)``; ``stand_ins`` may return an inert
    replacement for other globals (or None to refuse). ``max_storage_bytes`` bounds the tensors read.
    """
    path = Path(path)
    if not zipfile.is_zipfile(path):
        what = _sniff_other_format(path)
        if what.startswith("cannot be read"):
            raise CheckpointError(f"{path}: {what}")
        raise CheckpointError(f"{path}: {what}; only torch.save zip archives (torch >= 1.6) are read")
    try:
        with zipfile.ZipFile(path) as zf:
            reader = _ArchiveReader(path, zf, max_storage_bytes, use_mmap)
            if reader.byteorder() != "little":
                raise CheckpointError(f"{path}: a big-endian archive; re-save it on a little-endian machine")
            data = reader.read_small("data.pkl", MAX_PICKLE_BYTES)
            check_pickle_expansion(data, f"{path}: data.pkl")  # before any of it is built
            return _Unpickler(data, reader, extra_globals or {}, stand_ins).load()
    except CheckpointError as exc:  # the tensor rebuilders and stand-ins do not know the file: name it
        if str(exc).startswith(str(path)):
            raise
        raise type(exc)(f"{path}: {exc}") from exc
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
        raise CheckpointError(f"{path}: cannot read as a torch.save archive ({_first_line(exc)})") from exc
    except Exception as exc:  # anything a hostile pickle provokes in the allowed callables is bad input
        raise CheckpointError(
            f"{path}: malformed checkpoint ({type(exc).__name__}: {_first_line(exc)})"
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
