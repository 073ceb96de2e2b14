"""A build's own copy of its package's library in Inductor's cache, removed once the package holds it.

``aoti_compile_and_package`` compiles into a folder of Inductor's cache (``$TORCHINDUCTOR_CACHE_DIR``,
by default ``/tmp/torchinductor_<user>``) and copies the result into the ``.pt2``. The weights are in
that library, so each full-size build left a 3-6 GB ``wrapper.so`` in the cache that nothing reads
again (a rebuild of the same set is skipped before it compiles; any other build compiles anew): this
machine's cache had grown to 6.6 GB from test builds of tiny models alone. Only that folder goes; the
kernel caches beside it, which make the next build faster, stay.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

WRAPPER_SUFFIX = ".wrapper.so"


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
