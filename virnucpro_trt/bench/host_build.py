"""Configuring and building the C++ host runtime (``CMakeLists.txt``) against the running Python's torch.

The host must link the libtorch release its engines were built with (the manifest check refuses any
other), and the surest way to get it is the libtorch inside the torch wheel this interpreter imports:
``torch.utils.cmake_prefix_path``. nlohmann/json comes from the ``nlohmann-json`` wheel. For a CUDA wheel
the CUDA toolkit root is picked by ``CMakeLists.txt`` itself (see its "CUDA libtorch" notes), so a plain
``cmake`` command line and this helper configure alike; what it found is read back from the cache.

A build folder is reused while it was configured for the same torch (its cache's ``CMAKE_PREFIX_PATH``);
one configured for another torch is configured afresh, because CMake keeps the first Torch_DIR it found.
The test suite's fault injection lives in its own tool (``virnucpro-host-test-hooks``), outside the
default build: built only when asked for, in the same folder, sharing every object file but one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from virnucpro_trt.errors import UserError

REPO = Path(__file__).resolve().parents[2]
TOOL = "virnucpro-host"
TEST_HOOKS_TOOL = "virnucpro-host-test-hooks"  # the test suite's fault injection compiled in (never in TOOL)
CACHE = "CMakeCache.txt"
# What a report records of the configuration: which torch, compiler, CUDA toolkit (as a CUDA libtorch's
# FindCUDA cached it) and OpenSSL it found.
REPORTED_CACHE = (
    "CMAKE_PREFIX_PATH",
    "CMAKE_GENERATOR",
    "CMAKE_CXX_COMPILER",
    "CUDA_TOOLKIT_ROOT_DIR_INTERNAL",
    "CUDA_NVCC_EXECUTABLE",
    "CUDA_CUDART_LIBRARY",
    "OPENSSL_CRYPTO_LIBRARY",
)


@dataclass(frozen=True)
class HostBuild:
    """The built tool and how it was built (what a benchmark report records)."""

    tool: Path
    build_dir: Path
    configured: bool  # False: an existing configuration was reused
    configure_s: float
    build_s: float
    cache: dict[str, str] = field(default_factory=dict)  # the cache entries worth reporting

    def to_json(self) -> dict[str, Any]:
        return {
            "tool": str(self.tool),
            "build_dir": str(self.build_dir),
            "configured": self.configured,
            "configure_s": round(self.configure_s, 1),
            "build_s": round(self.build_s, 1),
            "cache": self.cache,
        }


def nlohmann_include() -> Path:
    """The include folder of the ``nlohmann-json`` wheel (``pip install nlohmann-json``), found without
    importing the package: its ``__init__`` needs ``importlib_resources``, which the GPU hosts lack."""
    import importlib.util

    spec = importlib.util.find_spec("nlohmann_json")
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        if (Path(folder) / "include" / "nlohmann" / "json.hpp").is_file():
            return Path(folder) / "include"
    raise UserError("the C++ host needs nlohmann/json: pip install nlohmann-json")


def configure_command(build_dir: Path, source: Path = REPO) -> list[str]:
    """The ``cmake`` configure command for ``build_dir`` against this interpreter's torch."""
    command = ["cmake", "-S", str(source), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release"]
    command += [f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"]
    command += [f"-DNLOHMANN_JSON_INCLUDE_DIR={nlohmann_include()}"]
    if shutil.which("ninja"):
        command += ["-G", "Ninja"]
    return command


def read_cache(build_dir: Path) -> dict[str, str]:
    """``NAME:TYPE=VALUE`` lines of a CMake cache as {NAME: VALUE} (empty when there is none)."""
    path = build_dir / CACHE
    if not path.is_file():
        return {}
    entries = {}
    for line in path.read_text(errors="replace").splitlines():
        if line and not line.startswith(("#", "//")) and "=" in line:
            key, value = line.split("=", 1)
            entries[key.split(":", 1)[0]] = value
    return entries


def _run(command: list[str], what: str) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stdout[-3000:] + "\n" + done.stderr[-3000:]).strip()
        raise RuntimeError(f"{what} failed ({done.returncode}): {' '.join(command)}\n{tail}")
    return time.perf_counter() - started


def build_host(
    build_dir: Path, jobs: int | None = None, source: Path = REPO, test_hooks: bool = False
) -> HostBuild:
    """Configure (unless ``build_dir`` is already configured for this torch) and build ``virnucpro-host``;
    ``test_hooks`` (the test suite only) also builds its fault-injection twin, which the result names."""
    build_dir = build_dir.resolve()
    configured_for = read_cache(build_dir).get("CMAKE_PREFIX_PATH")
    configure_s = 0.0
    configure = configured_for != torch.utils.cmake_prefix_path
    if configure:
        if configured_for is not None:  # another torch: start the configuration afresh
            (build_dir / CACHE).unlink()
            shutil.rmtree(build_dir / "CMakeFiles", ignore_errors=True)
        build_dir.mkdir(parents=True, exist_ok=True)
        configure_s = _run(configure_command(build_dir, source), "configuring the C++ host")
    jobs = jobs or os.cpu_count() or 1
    targets = [TOOL, TEST_HOOKS_TOOL] if test_hooks else [TOOL]
    build = ["cmake", "--build", str(build_dir), "-j", str(jobs), "--target", *targets]
    build_s = _run(build, "building the C++ host")
    cache = read_cache(build_dir)
    reported = {k: cache[k] for k in REPORTED_CACHE if k in cache}
    tool = build_dir / (TEST_HOOKS_TOOL if test_hooks else TOOL)
    return HostBuild(tool, build_dir, configure, configure_s, build_s, reported)
