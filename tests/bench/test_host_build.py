"""Configuring the C++ host build: reused for the same torch, configured afresh for another one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from virnucpro_trt.bench import host_build


def _fake_cmake(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    commands: list[list[str]] = []

    def run(command: list[str], what: str) -> float:
        commands.append(command)
        if command[1] == "-S":  # configure: leave a cache behind as cmake does
            build = Path(command[command.index("-B") + 1])
            (build / host_build.CACHE).write_text(
                "# comment\n//help\nCMAKE_PREFIX_PATH:UNINITIALIZED=" + torch.utils.cmake_prefix_path + "\n"
                "CUDA_NVCC_EXECUTABLE:FILEPATH=/opt/cuda/bin/nvcc\n"
            )
        return 0.5

    monkeypatch.setattr(host_build, "_run", run)
    return commands


def test_configures_once_per_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    commands = _fake_cmake(monkeypatch)
    build = tmp_path / "build"
    first = host_build.build_host(build, jobs=3)
    assert first.configured and first.tool == build / "virnucpro-host"
    configure = commands[0]
    assert f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}" in configure
    assert any(arg.startswith("-DNLOHMANN_JSON_INCLUDE_DIR=") for arg in configure)
    assert commands[1] == ["cmake", "--build", str(build), "-j", "3", "--target", "virnucpro-host"]
    assert first.cache == {
        "CMAKE_PREFIX_PATH": torch.utils.cmake_prefix_path,
        "CUDA_NVCC_EXECUTABLE": "/opt/cuda/bin/nvcc",
    }

    again = host_build.build_host(build, jobs=3)
    assert not again.configured and len(commands) == 3 and commands[2][1] == "--build"

    # a folder configured for another torch: its cache and CMakeFiles go, then a fresh configure
    (build / host_build.CACHE).write_text("CMAKE_PREFIX_PATH:UNINITIALIZED=/other/torch/share/cmake\n")
    (build / "CMakeFiles").mkdir()
    (build / "CMakeFiles" / "stale").write_text("x")
    other = host_build.build_host(build, jobs=3)
    assert other.configured and commands[3][1] == "-S" and not (build / "CMakeFiles" / "stale").exists()


def test_read_cache_without_a_cache_is_empty(tmp_path: Path) -> None:
    assert host_build.read_cache(tmp_path) == {}


def test_a_failing_step_names_the_command(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"configuring failed \(1\): false"):
        host_build._run(["false"], "configuring")


def test_the_test_hooks_tool_is_built_beside_the_production_one_in_the_same_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection is a target of its own, not a configuration: asking for it builds one more target
    in the folder as configured (no configure), and names that tool; the default build never has it."""
    commands = _fake_cmake(monkeypatch)
    build = tmp_path / "build"
    host_build.build_host(build, jobs=1)
    hooked = host_build.build_host(build, jobs=1, test_hooks=True)
    assert not hooked.configured and hooked.tool == build / "virnucpro-host-test-hooks"
    assert commands[2][-3:] == ["--target", "virnucpro-host", "virnucpro-host-test-hooks"]
    assert not any(arg.startswith("-D") and "HOOKS" in arg for command in commands for arg in command)


def test_cmake_keeps_fault_injection_out_of_the_production_targets() -> None:
    """The CMake file itself: the fault-injection define is set on the test-hooks library only, and it
    and its tool are outside the default build."""
    text = (host_build.REPO / "CMakeLists.txt").read_text()
    defines = [line for line in text.splitlines() if "VIRNUCPRO_TEST_HOOKS" in line and "definitions" in line]
    only = "target_compile_definitions(virnucpro_runtime_test_hooks PRIVATE VIRNUCPRO_TEST_HOOKS)"
    assert defines == [only]
    assert "add_library(virnucpro_runtime_test_hooks EXCLUDE_FROM_ALL" in text
    assert "add_executable(virnucpro-host-test-hooks EXCLUDE_FROM_ALL" in text
    mentions = sorted(
        str(path.relative_to(host_build.REPO))
        for path in (host_build.REPO / "runtime").rglob("*")
        if path.is_file() and "VIRNUCPRO_TEST_HOOKS" in path.read_text(errors="replace")
    )
    assert mentions == ["runtime/src/encoder.cpp"]  # the one file the twin compiles apart: a hook elsewhere
    # would be compiled out of the test tool too (the other sources are shared with production)
