"""AOTInductor's C++ wrapper without its size-array declaration cache, for the length of a build.

The fault: the wrapper declares each size/stride array (``static constexpr int64_t int_array_N[] =
{...};``) through the writer it is handed and caches the name, keyed on the array and that writer's
identity (torch 2.13: ``id(writeline.__self__)``; earlier: the bound method under ``functools.cache``).
A later hit returns the name without writing anything. When the first writer's lines are not in the
final wrapper (memory planning writes two passes; a short-lived buffer is dropped and a new one takes
its address), the hit names an array that is declared nowhere, and the C++ compile fails with
``'int_array_292' was not declared in this scope``. On the H200 this broke fp8 ESM-2 builds at random,
the same command building on the next try (measurement log, 2026-12-03, tenth session, and 2026-12-04,
sixteenth session; pytorch#193621).

The remedy: every call declares a fresh array at the point of use, so a name is always declared in the
lines that use it. That is what the uncached implementation does; the cost is a few more lines of
wrapper code. Patched only inside :func:`fresh_int_array_declarations` (around
``aoti_compile_and_package``) and only where the method has one of the two known forms; otherwise
nothing changes and the build's retry of that error (``inductor_backend.COMPILE_ATTEMPTS``) is what is
left.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)
# The uncached declaration's parameters in torch 2.13, the form this module calls.
_IMPL_PARAMETERS = ("self", "int_array", "writeline", "known_statically")


def _uncached(cls: type) -> Callable[..., Any] | None:
    """``codegen_int_array_var`` of ``cls`` without the cache, or None when its form is unknown."""
    impl = getattr(cls, "_codegen_int_array_var_impl", None)
    if impl is not None:  # torch 2.13: the cache in the method, the declaration in the impl
        if list(inspect.signature(impl).parameters) != list(_IMPL_PARAMETERS):
            return None  # another form of it: calling it our way could break every build

        def declare(
            self: Any, int_array: str, writeline: Any, known_statically: bool = False, graph: Any = None
        ) -> str:
            return impl(self, int_array, writeline, known_statically)

        return declare
    # earlier torch: the method itself, wrapped by functools.cache / lru_cache
    return getattr(cls.__dict__.get("codegen_int_array_var"), "__wrapped__", None)


@contextlib.contextmanager
def fresh_int_array_declarations() -> Iterator[bool]:
    """Inside: the C++ wrapper declares each size/stride array where it is used (module docstring).

    Yields whether the patch applied. Restores the original method on exit, also on errors.
    """
    try:
        from torch._inductor.codegen.cpp_wrapper_cpu import CppWrapperCpu
    except ImportError:
        yield False
        return
    original = CppWrapperCpu.__dict__.get("codegen_int_array_var")
    uncached = _uncached(CppWrapperCpu) if original is not None else None
    if uncached is None:
        log.debug("AOTInductor's codegen_int_array_var has an unknown form: left as it is")
        yield False
        return
    CppWrapperCpu.codegen_int_array_var = uncached  # type: ignore[method-assign]
    try:
        yield True
    finally:
        CppWrapperCpu.codegen_int_array_var = original  # type: ignore[method-assign]
