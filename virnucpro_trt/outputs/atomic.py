"""Result files that appear only when complete.

Every result is written to ``<name>.partial`` beside its final name and renamed (atomic on POSIX) only
after the whole run succeeded, so an interrupted or failed run never leaves a file that looks finished.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import IO


class ResultSet:
    """A group of text result files committed together at the end of a run."""

    def __init__(self, outdir: Path, names: list[str]):
        self.outdir = outdir
        self.names = names
        self._handles: dict[str, IO[str]] = {}

    def __enter__(self) -> ResultSet:
        self.outdir.mkdir(parents=True, exist_ok=True)
        for name in self.names:
            # A previous run's file must not survive next to a run that may fail.
            with contextlib.suppress(FileNotFoundError):
                (self.outdir / name).unlink()
            self._handles[name] = open(self.partial(name), "w", encoding="utf-8", newline="\n")
        return self

    def partial(self, name: str) -> Path:
        return self.outdir / f"{name}.partial"

    def __getitem__(self, name: str) -> IO[str]:
        return self._handles[name]

    def commit(self) -> None:
        for handle in self._handles.values():
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
        for name in self.names:
            os.replace(self.partial(name), self.outdir / name)
        self._handles.clear()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._handles:  # not committed: remove the partial files
            for name, handle in self._handles.items():
                handle.close()
                with contextlib.suppress(FileNotFoundError):
                    self.partial(name).unlink()
            self._handles.clear()


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small file (run.json) through a temporary name."""
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def remove_if_exists(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
