"""Embeddings in one HDF5 file, appended block by block, renamed into place only when complete.

Layout (documented in the README): ``ids`` (utf-8 strings [N]) and float32 matrices keyed by model, plus
attributes saying how they were pooled and by what. ``embed`` writes ``embeddings`` [N, D] (and a
``status`` per record); ``predict --save-embeddings`` writes ``dnabert`` [N, 768] and ``esm`` [N, 2560] per
kept frame — the classifier's features, consolidated instead of upstream's per-split ``.pt`` files.

A file read back (``merge`` reads the parts' files) is hostile input: HDF5 lets a dataset keep its bytes
in other files (external raw storage, virtual datasets, soft and external links), so every dataset read
goes through :func:`plain_dataset` first.

A file written is written through :class:`_FailedWrites`, so HDF5 itself never meets a failed write
(see there), and with signals held (:func:`~virnucpro_trt.interrupts.signals_held`): an interrupt is
raised after HDF5 returns, never inside its call back into Python.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import h5py
import numpy as np

from virnucpro_trt.errors import UserError
from virnucpro_trt.files.atomic import close_quietly, exclusive_mode, remove_quietly, temporary_name
from virnucpro_trt.files.no_replace import appeared_meanwhile, place_all
from virnucpro_trt.files.ownership import output_entry
from virnucpro_trt.files.stamps import stamp_at
from virnucpro_trt.interrupts import signals_held

_STR = h5py.string_dtype("utf-8")
# Layouts whose bytes live in the file itself (a virtual dataset's layout is h5d.VIRTUAL).
_INSIDE_LAYOUTS = (h5py.h5d.CONTIGUOUS, h5py.h5d.CHUNKED, h5py.h5d.COMPACT)


class ForeignStorage(UserError):
    """An HDF5 dataset that is not plain storage inside its own file (exit 2)."""


def plain_dataset(handle: h5py.File, name: str, path: Path) -> h5py.Dataset:
    """``handle[name]``, refused unless it is a dataset of this file whose bytes are stored in it.

    The rule: a hard link in the root group to a dataset with contiguous, chunked or compact layout, no
    external raw-data files, not virtual, and no filters (the tool never writes any). Why: reading a
    soft/external link, a virtual dataset or external storage reads another file — any the user can
    read — and the merge would copy its bytes into the results; a filter can make HDF5 load a plugin.
    """
    link = handle.get(name, getlink=True)
    if link is None:
        raise ForeignStorage(f"{path}: no dataset {name!r}")
    if not isinstance(link, h5py.HardLink):
        raise ForeignStorage(
            f"{path}: {name!r} is an HDF5 {type(link).__name__} to data elsewhere, not a dataset of "
            "the file (refused)"
        )
    dataset = handle[name]
    if not isinstance(dataset, h5py.Dataset):
        raise ForeignStorage(f"{path}: {name!r} is not a dataset")
    plist = dataset.id.get_create_plist()
    if (
        dataset.is_virtual
        or dataset.external
        or plist.get_external_count()
        or plist.get_layout() not in _INSIDE_LAYOUTS
    ):
        raise ForeignStorage(
            f"{path}: dataset {name!r} keeps its data outside the file (HDF5 external storage or a "
            "virtual dataset; refused)"
        )
    if plist.get_nfilters():
        raise ForeignStorage(f"{path}: dataset {name!r} uses HDF5 filters, which virnucpro-trt never writes")
    return dataset


class _FailedWrites:
    """The file object HDF5 writes through (h5py's file-object driver): a failed write or flush (a full
    disk, a quota) is kept in :attr:`failure` and HDF5 is told it succeeded, and nothing more is written.

    Why: HDF5 writes its cached chunks and metadata when it sees fit (on a flush, an eviction, a
    close); a write that fails there leaves its library state broken, and the process segfaulted on the
    next call or at exit, after pages of tracebacks from h5py's ``__dealloc__``. Told nothing failed,
    HDF5 stays whole; the writer checks :attr:`failure` after each block and raises it as the OSError
    it was, and the file, garbage from then on, is removed.
    """

    def __init__(self, raw: IO[bytes]):
        self.raw = raw  # unbuffered
        self.failure: OSError | None = None

    def _guarded(self, call: Callable[[], object]) -> None:
        if self.failure is None:
            try:
                call()
            except OSError as exc:
                self.failure = exc

    def write(self, data: bytes) -> int:
        view = memoryview(data).cast("B")
        self._guarded(lambda: self._write_all(view))
        return view.nbytes

    def _write_all(self, view: memoryview) -> None:
        while view:  # an unbuffered file may write less than asked
            view = view[self.raw.write(view) :]

    def truncate(self, size: int | None = None) -> int:
        self._guarded(lambda: self.raw.truncate(size))
        return self.raw.tell() if size is None else size

    def flush(self) -> None:
        self._guarded(self.raw.flush)

    def close(self) -> None:
        """Flush, sync to disk (where some file systems first report a full disk) and close."""
        self.flush()
        self._guarded(lambda: os.fsync(self.raw.fileno()))
        self._guarded(self.raw.close)

    def read(self, size: int = -1) -> bytes:  # h5py takes an object with read and seek for a file
        return self.raw.read(size)

    def readinto(self, buffer: bytearray) -> int | None:
        return self.raw.readinto(buffer)  # type: ignore[attr-defined]

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()


class _Appender:
    """Resizable HDF5 datasets grown by appending row blocks."""

    def __init__(
        self,
        path: Path,
        columns: dict[str, tuple[Any, tuple[int, ...]]],
        attrs: dict[str, str],
        on_create: Callable[[Path], None] | None = None,
    ):
        self.path = path
        # what a rename may replace: what the command checked at its start
        self._found = stamp_at(path, follow_symlinks=False)
        self.partial = temporary_name(path, on_create)
        self.rows = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        try:  # created new: never through a planted link
            # unbuffered: a buffer would flush, and fail, inside a seek, out of the guard's reach
            self.raw: IO[bytes] = open(self.partial, exclusive_mode("w+b"), buffering=0)  # noqa: SIM115
        except FileExistsError:  # the random name taken (only a planted file does that): left alone
            raise
        except BaseException:  # an interrupt between the file's creation and here
            remove_quietly(self.partial)
            raise
        try:  # from here on, any failure or interrupt removes the file (no ``with`` holds it yet)
            self.writes = _FailedWrites(self.raw)
            if on_create is not None:  # told as soon as it exists (see ResultSet)
                on_create(self.partial)
            with signals_held():
                self.file = h5py.File(self.writes, "w")
                for key, value in attrs.items():
                    self.file.attrs[key] = value
                for name, (dtype, tail) in columns.items():
                    self.file.create_dataset(
                        name,
                        shape=(0, *tail),
                        maxshape=(None, *tail),
                        dtype=dtype,
                        chunks=(max(1, min(4096, 2**20 // max(1, int(np.prod(tail or (1,)))))), *tail),
                    )
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def append(self, **columns: Any) -> None:
        n = len(next(iter(columns.values())))
        if n == 0:
            return
        with signals_held():  # HDF5 calls back into Python (_FailedWrites): no interrupt raised inside
            for name, values in columns.items():
                ds = self.file[name]
                ds.resize(self.rows + n, axis=0)
                ds[self.rows : self.rows + n] = values
            self.file.flush()  # what a full disk refuses is met here, block by block
        self.rows += n
        self._raise_failure()

    def _raise_failure(self) -> None:
        """The write that failed, as an OSError naming the output (its temporary name means nothing to
        the user): a full disk is then one line and a rerun, like every other output's."""
        failure = self.writes.failure
        if failure is not None:
            raise OSError(failure.errno, failure.strerror or str(failure), str(self.path)) from failure

    def commit(self) -> None:
        """:meth:`close`, then :meth:`rename`."""
        self.close()
        self.rename()

    def close(self) -> None:
        """Close the file, complete, still under its temporary name (see ``ResultSet.close``)."""
        with signals_held():
            self.file.close()
        self.writes.close()
        self._raise_failure()

    def entry(self) -> dict[str, Any]:
        """``{bytes, sha256}`` of the closed file, for its final name."""
        return output_entry(self.partial)

    def rename(self) -> None:
        """Put the file in place, over only what was at its name when this writer began (the file the
        command's start checked it may replace); a file another program put there since stops it."""
        if self._found is None:
            place_all([(self.partial, self.path)])
        elif stamp_at(self.path, follow_symlinks=False) != self._found:
            raise appeared_meanwhile(self.path)
        else:
            os.replace(self.partial, self.path)

    def __enter__(self) -> _Appender:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        file = getattr(self, "file", None)
        if file is not None and file.id.valid:  # not committed: close, then remove it
            with contextlib.suppress(Exception), signals_held():
                file.close()
        close_quietly(self.raw)
        remove_quietly(self.partial)


class FrameEmbeddingsWriter(_Appender):
    """``predict --save-embeddings``: per kept frame, the two encoder outputs the classifier sees."""

    def __init__(
        self,
        path: Path,
        dnabert_dim: int,
        esm_dim: int,
        attrs: dict[str, str],
        on_create: Callable[[Path], None] | None = None,
    ):
        super().__init__(
            path,
            {"ids": (_STR, ()), "dnabert": (np.float32, (dnabert_dim,)), "esm": (np.float32, (esm_dim,))},
            attrs,
            on_create,
        )

    def append(self, ids: Sequence[str], dnabert: np.ndarray, esm: np.ndarray) -> None:  # type: ignore[override]
        super().append(ids=list(ids), dnabert=dnabert, esm=esm)


class EmbeddingsWriter(_Appender):
    """``embed``: one pooled embedding per input record, in input order, with a status per record."""

    def __init__(
        self, path: Path, dim: int, attrs: dict[str, str], on_create: Callable[[Path], None] | None = None
    ):
        columns = {"ids": (_STR, ()), "embeddings": (np.float32, (dim,)), "status": (_STR, ())}
        super().__init__(path, columns, attrs, on_create)

    def append(self, ids: Sequence[str], embeddings: np.ndarray, status: Sequence[str]) -> None:  # type: ignore[override]
        super().append(ids=list(ids), embeddings=embeddings, status=list(status))
