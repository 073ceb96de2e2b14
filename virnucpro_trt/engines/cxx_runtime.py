"""Making the C++ runtime visible process-wide before an AOTInductor CUDA package is loaded.

Kept free of torch imports so a test can check it in a bare interpreter, where libstdc++ is not loaded.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

CXX_RUNTIME = "stdc++"


@functools.cache
def expose_cxx_runtime() -> str | None:
    """Put the C++ runtime (libstdc++) in the process's global symbol scope; returns its name.

    Why: the CUDA wrapper ``.so`` inside an AOTInductor package (torch 2.11, seen on the H200) does not
    list libstdc++ among its needed libraries and leaves some C++ runtime symbols as *weak* undefined
    references, expecting the process to provide them. A Python process has libstdc++ loaded (torch
    needs it) but only in torch's local scope, so those references bind to NULL and
    ``aoti_load_package`` dies with SIGSEGV. Any library that brings libstdc++ in with ``RTLD_GLOBAL``
    hides the bug (importing onnxruntime did, which is why the engine benchmark never crashed);
    re-opening libstdc++ itself with ``RTLD_GLOBAL`` promotes the already-loaded copy, which is what
    this does. Bisection: ``benchmarks/diagnostics/aoti_load_crash.py``.
    """
    name = ctypes.util.find_library(CXX_RUNTIME) or "libstdc++.so.6"
    try:
        ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
    except OSError:  # no shared libstdc++ (static toolchains): nothing to expose
        return None
    return name
