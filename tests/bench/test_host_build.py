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
            hooks = next(a.split("=")[1] for a in command if a.startswith(f"-D{host_build.HOOKS}="))
            (build / host_build.CACHE).write_text(
                "# comment\n//help\nCMAKE_PREFIX_PATH:UNINITIALIZED=" + torch.utils.cmake_prefix_path + "\n"
                "CUDA_NVCC_EXECUTABLE:FILEPATH=/opt/cuda/bin/nvcc\n"
                f"{host_build.HOOKS}:BOOL={hooks}\n"
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
    assert commands[1] == ["cmake", "--build", str(build), "-j", "3"]
    assert "-DVIRNUCPRO_TEST_HOOKS=OFF" in configure  # production builds have no fault injection
    assert first.cache == {
        "CMAKE_PREFIX_PATH": torch.utils.cmake_prefix_path,
        "CUDA_NVCC_EXECUTABLE": "/opt/cuda/bin/nvcc",
        "VIRNUCPRO_TEST_HOOKS": "OFF",
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


def test_the_test_hooks_setting_reconfigures_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Asking for the test suite's fault injection in a folder built without it (or the reverse)
    configures again, keeping the folder's other configuration; asking the same way reuses it."""
    commands = _fake_cmake(monkeypatch)
    build = tmp_path / "build"
    host_build.build_host(build, jobs=1)
    (build / "CMakeFiles").mkdir()
    hooked = host_build.build_host(build, jobs=1, test_hooks=True)
    assert hooked.configured and "-DVIRNUCPRO_TEST_HOOKS=ON" in commands[2]
    assert (build / "CMakeFiles").is_dir() and hooked.cache["VIRNUCPRO_TEST_HOOKS"] == "ON"
    assert not host_build.build_host(build, jobs=1, test_hooks=True).configured
    assert host_build.build_host(build, jobs=1).configured
