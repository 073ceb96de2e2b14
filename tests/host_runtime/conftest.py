"""The C++ host runtime built once per session against the installed libtorch, and tiny CPU engines for it.

Building the tool (~1 min) and the engines (~1-2 min on two cores) dominates these tests, so every module
of this folder shares one of each.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.host_runtime.tiny_engines import build_tiny_engines
from virnucpro_trt.bench.host_build import HostBuild, build_host


@pytest.fixture(scope="session")
def host_build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One build folder for both tools: the production one and its fault-injection twin share every
    object file but the encoder's."""
    if shutil.which("cmake") is None or shutil.which("c++") is None:
        pytest.skip("the C++ host runtime needs cmake and a C++ compiler")
    return tmp_path_factory.mktemp("host_build")


@pytest.fixture(scope="session")
def host_build(host_build_dir: Path) -> HostBuild:
    """The test suite's host: fault injection compiled in (the production tool is built beside it)."""
    return build_host(host_build_dir, jobs=min(os.cpu_count() or 2, 8), test_hooks=True)


@pytest.fixture(scope="session")
def production_build(host_build: HostBuild) -> HostBuild:
    """The host as users build it (the default target, no test hooks; the benchmark script builds this
    way), from the folder the test host was built in: nothing is compiled again."""
    return build_host(host_build.build_dir, jobs=min(os.cpu_count() or 2, 8))


@pytest.fixture(scope="session")
def host_tool(host_build: HostBuild) -> Path:
    return host_build.tool


@pytest.fixture(scope="session")
def engines(tiny_set, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny inductor fp32 engines for the CPU (built for the default CPU budget, 4096 tokens)."""
    return build_tiny_engines(tiny_set, tmp_path_factory.mktemp("host_engines"), "cpu")
