"""The C++ wrapper's size-array declarations during a build: fresh at each use, never a cached name
whose declaration went with a dropped writer (engines/aoti_int_arrays.py)."""

from __future__ import annotations

from itertools import count

import pytest
from torch._inductor.codegen.cpp_wrapper_cpu import CppWrapperCpu
from torch._inductor.utils import IndentedBuffer
from torch.utils._ordered_set import OrderedSet

from virnucpro_trt.engines.aoti_int_arrays import fresh_int_array_declarations


def _wrapper() -> CppWrapperCpu:
    """Only the state the declaration code reads (a whole wrapper needs a graph being compiled)."""
    wrapper = CppWrapperCpu.__new__(CppWrapperCpu)
    wrapper.int_array_id = count()
    wrapper.declared_int_array_vars = OrderedSet()
    wrapper.codegen_int_array_var_cache = {}
    return wrapper


def _declare_twice(wrapper: CppWrapperCpu) -> tuple[str, str, str]:
    """Declare an array, drop the writer's lines (as memory planning's first pass is dropped), declare
    it again: the names and what the writer holds then."""
    writer = IndentedBuffer()
    first = wrapper.codegen_int_array_var("{2, 170}", writer.writeline, known_statically=True)
    writer.clear()
    second = wrapper.codegen_int_array_var("{2, 170}", writer.writeline, known_statically=True)
    return first, second, writer.getvalue()


def test_torch_alone_names_an_array_whose_declaration_was_dropped() -> None:
    """The fault the workaround is for, in this torch: the cached name comes back, declared nowhere in
    the lines that will be compiled. (If this stops failing here, torch fixed it: see the module.)"""
    first, second, lines = _declare_twice(_wrapper())
    assert second == first and first not in lines


def test_inside_a_build_every_use_declares_its_own_array() -> None:
    original = CppWrapperCpu.__dict__["codegen_int_array_var"]
    with fresh_int_array_declarations() as patched:
        assert patched
        first, second, lines = _declare_twice(_wrapper())
        wrapper = _wrapper()
        empty = wrapper.codegen_int_array_var("{}", IndentedBuffer().writeline)  # no bound: a null pointer
    assert second != first and f"{second}[] = {{2, 170}};" in lines and first not in lines
    assert empty.startswith("int_array_")
    assert CppWrapperCpu.__dict__["codegen_int_array_var"] is original  # restored after the build


def test_the_original_comes_back_when_the_build_fails() -> None:
    original = CppWrapperCpu.__dict__["codegen_int_array_var"]
    with pytest.raises(RuntimeError, match="compile failed"), fresh_int_array_declarations():
        assert CppWrapperCpu.__dict__["codegen_int_array_var"] is not original
        raise RuntimeError("compile failed")
    assert CppWrapperCpu.__dict__["codegen_int_array_var"] is original


def test_an_unknown_form_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where torch's declaration code has another shape, nothing is patched (calling it our way could
    break every build); the retry of the fault is what is left."""

    def impl(self, int_array, writeline, known_statically, graph):  # one parameter more
        raise AssertionError("not to be called")

    monkeypatch.setattr(CppWrapperCpu, "_codegen_int_array_var_impl", impl)
    original = CppWrapperCpu.__dict__["codegen_int_array_var"]
    with fresh_int_array_declarations() as patched:
        assert not patched and CppWrapperCpu.__dict__["codegen_int_array_var"] is original
