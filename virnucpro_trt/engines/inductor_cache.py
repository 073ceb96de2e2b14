"""A build's own copy of its package's library in Inductor's cache, removed once the package holds it.

``aoti_compile_and_package`` compiles into a folder of Inductor's cache (``$TORCHINDUCTOR_CACHE_DIR``,
by default ``/tmp/torchinductor_<user>``) and copies the result into the ``.pt2``. The weights are in
that library, so each full-size build left a 3-6 GB ``wrapper.so`` in the cache that nothing reads
again (a rebuild of the same set is skipped before it compiles; any other build compiles anew): this
machine's cache had grown to 6.6 GB from test builds of tiny models alone. Only that folder goes; the
kernel caches beside it, which make the next build faster, stay.

A compile that does not finish (a compiler or linker error, a full disk, Ctrl-C or SIGTERM, which
``interrupts`` raises as ``KeyboardInterrupt``) leaves no package to read the names from, but its folder
already holds the weights (the constants' object file, or a linked library): :func:`compile_folders_removed`
removes the folders that compile wrote, known by the package metadata Inductor writes beside the wrapper.

Only for a library that holds the weights (build recipe 8 and before, or ``package_constants_in_so``
set again): with the weights beside the package (recipe 9, the default) the cached library is code
only, a few MB, kept like the kernel caches. Removing a folder pulls it from under a build of the same
graph running at the same time with the same cache (two pytest workers: "can't create ....wrapper.o");
Inductor's own compile lock does not expect a folder to vanish. So such compiles take turns on one
cache (:func:`weights_in_library_compile` holds a lock on the cache folder itself from before the
compile to after its folder goes): each holds a 3-6 GB copy of the weights in memory anyway.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from virnucpro_trt.files.bounded_read import read_bounded
from virnucpro_trt.files.folder_flock import folder_locked

WRAPPER_SUFFIX = ".wrapper.so"
METADATA_SUFFIX = ".wrapper_metadata.json"  # the package's metadata, written before anything compiles
_MAX_METADATA_BYTES = 1 << 20

log = logging.getLogger(__name__)


def inductor_cache_dir() -> Path | None:
    """Inductor's cache folder in this process, or None where this torch does not say."""
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir
    except ImportError:  # older torch
        return None
    return Path(cache_dir())


def remove_cached_library(package: Path, since: float) -> list[Path]:
    """Remove the cache folders holding ``package``'s libraries (by their content-hash names) that were
    written at or after ``since`` (``time.time()`` before the compile): those this build made. The
    folders removed are returned."""
    root = inductor_cache_dir()
    if root is None or not root.is_dir():
        return []
    with zipfile.ZipFile(package) as archive:
        names = {Path(n).name for n in archive.namelist() if n.endswith(WRAPPER_SUFFIX)}
    removed = []
    for name in sorted(names):
        for library in root.glob(f"*/{name}"):
            folder = library.parent
            if folder.is_symlink() or library.is_symlink() or library.stat().st_mtime < since - 1:
                continue
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _holds_metadata(folder: Path, metadata: Mapping[str, str]) -> bool:
    """Whether a wrapper metadata file directly in ``folder`` carries every item of ``metadata``."""
    for candidate in folder.glob(f"*{METADATA_SUFFIX}"):
        if candidate.is_symlink():
            continue
        try:
            written = json.loads(read_bounded(candidate, _MAX_METADATA_BYTES))
        except (OSError, ValueError):
            continue
        if isinstance(written, dict) and all(written.get(k) == v for k, v in metadata.items()):
            return True
    return False


def _written_since(folder: Path, since: float) -> bool:
    """Whether anything in ``folder`` (not following links) was written at or after ``since``."""
    for parent, dirs, files in os.walk(folder):
        for name in (*dirs, *files):
            with contextlib.suppress(OSError):
                if os.lstat(os.path.join(parent, name)).st_mtime >= since - 1:
                    return True
    return False


def remove_unfinished_compile(metadata: Mapping[str, str], since: float) -> list[Path]:
    """Remove the cache folders of a compile that did not finish: those whose wrapper metadata carries
    ``metadata`` (this build's package metadata: kind, precision, shapes) and that were written at or
    after ``since`` (``time.time()`` before the compile). A folder an earlier compile left and this one
    did not write stays. The folders removed are returned."""
    root = inductor_cache_dir()
    if root is None or not root.is_dir() or not metadata:
        return []
    removed = []
    for folder in sorted(root.iterdir()):
        if folder.is_symlink() or not folder.is_dir() or not _holds_metadata(folder, metadata):
            continue
        if _written_since(folder, since):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


@contextlib.contextmanager
def compile_folders_removed(metadata: Mapping[str, str]) -> Iterator[None]:
    """Around one ``aoti_compile_and_package`` call with ``metadata``: should it raise (any exception,
    ``KeyboardInterrupt`` included), the cache folders it wrote go before the exception passes on. They
    hold the weights (3-6 GB for full-size ESM-2) and nothing reads them again: a rebuild compiles
    anew."""
    since = time.time()
    try:
        yield
    except BaseException:
        remove_unfinished_compile(metadata, since)
        raise


@contextlib.contextmanager
def weights_in_library_compile(metadata: Mapping[str, str], package: Path) -> Iterator[None]:
    """Around one ``aoti_compile_and_package`` into ``package`` whose library holds the weights: wait for
    this cache's other such compiles to end, and end with no copy of the weights left in the cache:
    the folders of a compile that raises go (:func:`compile_folders_removed`), and so do the folders
    of one that finishes, whose library the package now holds (:func:`remove_cached_library`). The
    start time both go by is taken once the turn has come, so nothing another build wrote counts."""
    root = inductor_cache_dir()
    turn: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if root is not None:
        with contextlib.suppress(OSError):  # a cache that cannot be made: the compile says so
            root.mkdir(parents=True, exist_ok=True)
        turn = folder_locked(root, f"waiting for another build's compile in {root} (each holds the weights)")
    with turn:
        since = time.time()
        with compile_folders_removed(metadata):
            yield
        for folder in remove_cached_library(package, since):
            log.debug("removed %s from Inductor's cache (the package holds it)", folder)
