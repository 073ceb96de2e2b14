"""A group of result files that appear together, only when all of them are complete.

Every result is written under a temporary name beside its final name (:mod:`virnucpro_trt.files.atomic`)
and renamed (atomic on POSIX) only after the whole run succeeded, so an interrupted or failed run never
leaves a file that looks finished — nor a truncated temporary one, even when the disk filled up.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from virnucpro_trt.files.atomic import close_quietly, exclusive_mode, remove_quietly, temporary_name
from virnucpro_trt.files.no_replace import check_still_free, place_all
from virnucpro_trt.files.ownership import output_entry

if TYPE_CHECKING:
    from virnucpro_trt.outputs.embeddings_h5 import FrameEmbeddingsWriter


class ResultSet:
    """A group of text result files committed together at the end of a run. Its caller has cleared the
    names (or found them free) when its run began: a file at one of them now is another program's, and
    stops the run (``files.no_replace``) instead of being removed or written over."""

    def __init__(self, outdir: Path, names: list[str], on_create: Callable[[Path], None] | None = None):
        """``on_create`` is told of each temporary file as soon as it exists (a run's lock notes it, so
        the rerun after a SIGKILL removes it: ``RunLock.note``)."""
        self.outdir = outdir
        self.names = names
        self._on_create = on_create
        self._handles: dict[str, IO[str]] = {}
        self._temporary = {name: temporary_name(outdir / name, on_create) for name in names}
        self._closed = False

    def __enter__(self) -> ResultSet:
        self.outdir.mkdir(parents=True, exist_ok=True)
        check_still_free(self.outdir, self.names)
        opening = None
        try:
            for name in self.names:
                opening = name
                self._handles[name] = open(
                    self.partial(name), exclusive_mode("w"), encoding="utf-8", newline="\n"
                )
                if self._on_create is not None:
                    self._on_create(self.partial(name))
        except BaseException as exc:
            self._discard()
            # an interrupt between a file's creation and its handle being kept: the file is ours too
            if opening is not None and not isinstance(exc, FileExistsError):
                remove_quietly(self.partial(opening))
            raise
        return self

    def partial(self, name: str) -> Path:
        return self._temporary[name]

    def __getitem__(self, name: str) -> IO[str]:
        return self._handles[name]

    def commit(self) -> None:
        """:meth:`close`, then :meth:`rename`."""
        self.close()
        self.rename()

    def close(self) -> None:
        """Flush every file to disk and close it; they stay under their temporary names, complete, so
        :meth:`entries` can record them before :meth:`rename` shows them (a full disk fails here)."""
        for handle in self._handles.values():
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
        self._closed = True

    def entries(self) -> dict[str, dict[str, Any]]:
        """``{name: {bytes, sha256}}`` of the closed files, under their final names (what a rerun checks
        them against: a rename keeps the bytes)."""
        assert self._closed
        return {name: output_entry(self.partial(name)) for name in self.names}

    def publish(
        self,
        record: Callable[[dict[str, dict[str, Any]]], dict[str, str]],
        appender: FrameEmbeddingsWriter | None = None,
    ) -> None:
        """Close these files (and ``appender``'s, an ``embeddings.h5``), give ``record`` every file's
        final name and entry, write the texts it returns (the demo note, run.json: name -> text) complete
        under temporary names too, then rename everything into place, those texts last.

        Why in this order: a run stopped while renaming, or before its run.json, leaves files its rerun
        can tell are its own (``record`` noted them); and a full disk or a file-size limit meets the
        run's record before any result is shown, so results never stand without it through a failure."""
        self.close()
        entries = self.entries()
        if appender is not None:
            appender.close()
            entries[appender.path.name] = appender.entry()
        last = record(entries)
        with ResultSet(self.outdir, list(last), self._on_create) as tail:
            for name, text in last.items():
                tail[name].write(text)
            tail.close()
            if appender is not None:
                appender.rename()
            self.rename()
            tail.rename()

    def rename(self) -> None:
        """Rename the closed files into place (atomic each), none over a file (see the class)."""
        assert self._closed
        place_all([(self.partial(name), self.outdir / name) for name in self.names])
        self._handles.clear()

    def _discard(self) -> None:
        for name, handle in self._handles.items():
            close_quietly(handle)  # ENOSPC while flushing must not keep the file from being removed
            remove_quietly(self.partial(name))
        self._handles.clear()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._handles:  # not renamed: remove the temporary files
            self._discard()
