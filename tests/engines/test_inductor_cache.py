"""A compile that does not finish leaves nothing of its own in Inductor's cache (the weights are there).

The unit tests lay out folders as AOTInductor does (``<cache>/<key>/<wrapper>.wrapper_metadata.json``
beside the wrapper's sources and objects); the last one cuts a real CPU compile of a tiny ESM-2 short
at its link step, as a linker error, a full disk or SIGTERM would (about 30 s on 2 cores).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from virnucpro_trt.engines import inductor_cache
from virnucpro_trt.engines.inductor_cache import WRAPPER_SUFFIX

METADATA_SUFFIX = ".wrapper_metadata.json"  # AOTInductor's name for the package metadata it writes
OURS = {"virnucpro.kind": "esm2", "virnucpro.precision": "fp32", "virnucpro.graph.max_batch": "8"}


def _compile_folder(root: Path, name: str, metadata: dict[str, str], age_s: float = 0.0) -> Path:
    """A folder as AOTInductor leaves it mid-compile: sources, the metadata, the constants' object."""
    folder = root / name
    (folder / "sub").mkdir(parents=True)
    (folder / "cwrapper.wrapper.cpp").write_text("// wrapper\n")
    (folder / f"cwrapper{METADATA_SUFFIX}").write_text(json.dumps({**metadata, "AOTI_DEVICE_KEY": "cpu"}))
    (folder / "cconsts.o").write_bytes(b"\0" * 4096)  # the weights
    if age_s:
        then = time.time() - age_s
        for path in (*folder.rglob("*"), folder):
            os.utime(path, (then, then))
    return folder


def test_an_unfinished_compile_removes_only_the_folders_it_wrote(tmp_path, monkeypatch):
    """The folder this compile wrote goes; another build's (other metadata), one an earlier compile left
    (written before this one began), one reached through a symbolic link and the kernel caches stay."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(cache))
    cache.mkdir()
    earlier = _compile_folder(cache, "cearlier", OURS, age_s=3600)
    kernels = cache / "ab"
    kernels.mkdir()
    (kernels / "cab.so").write_bytes(b"kernel")
    elsewhere = _compile_folder(tmp_path, "celsewhere", OURS)
    with pytest.raises(KeyboardInterrupt), inductor_cache.compile_folders_removed(OURS):
        mine = _compile_folder(cache, "cmine", OURS)
        other = _compile_folder(cache, "cother", {**OURS, "virnucpro.kind": "dnabert-s"})
        (cache / "clink").symlink_to(elsewhere)
        raise KeyboardInterrupt  # SIGTERM, as interrupts raises it
    assert not mine.exists()
    assert other.is_dir() and earlier.is_dir() and (kernels / "cab.so").is_file()
    assert (cache / "clink").is_symlink() and (elsewhere / "cconsts.o").is_file()


def test_a_finished_compile_leaves_the_cache_to_remove_cached_library(tmp_path, monkeypatch):
    """No exception: nothing is removed here (the package holds the names; remove_cached_library)."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    with inductor_cache.compile_folders_removed(OURS):
        mine = _compile_folder(tmp_path, "cmine", OURS)
    assert mine.is_dir()


@pytest.mark.parametrize("weights_inside", [True, False], ids=["weights-inside", "weights-beside"])
def test_a_build_cut_short_at_its_link_leaves_no_library_folder_holding_weights(
    tmp_path, monkeypatch, weights_inside: bool
):
    """A real compile stopped as it links the library (the weights' object file is written by then, where
    they go into the library): the build fails and the compile's folder in Inductor's cache is gone;
    before, it stayed (3-6 GB for a full-size ESM-2, read by nothing). With the weights beside the
    package (the default) the folder is code only and stays: removing it pulled it from under a
    concurrent build of the same graph."""
    from torch._inductor import cpp_builder

    from virnucpro_trt.engines.inductor_backend import INDUCTOR_BACKEND
    from virnucpro_trt.engines.spec import BuildOptions, BuildRequest, ShapeRange
    from virnucpro_trt.models.random_checkpoints import random_esm2

    folders: list[Path] = []
    build = cpp_builder.CppBuilder.build

    def build_or_stop(self: cpp_builder.CppBuilder) -> None:
        target = Path(self.get_target_file_path())
        if target.name.endswith(WRAPPER_SUFFIX):
            folders.append(target.parent)
            raise KeyboardInterrupt  # as SIGTERM arrives
        build(self)

    monkeypatch.setattr(cpp_builder.CppBuilder, "build", build_or_stop)
    example = (torch.randint(4, 24, (3, 11)), torch.ones(3, 11, dtype=torch.int64))
    shapes = ShapeRange(1, 4, 8, 2, 20, 45)
    out = tmp_path / "esm2.cpu.fp32.pt2"
    configs = {"aot_inductor.package_constants_in_so": weights_inside}
    options = BuildOptions(extra={"inductor_configs": configs})
    model, cpu = random_esm2(seed=35), torch.device("cpu")
    request = BuildRequest(model, "esm2", example, shapes, "fp32", cpu, out, options)
    with pytest.raises(KeyboardInterrupt):
        INDUCTOR_BACKEND.build(request)
    assert len(folders) == 1
    assert folders[0].exists() is not weights_inside
    assert bool(list(folders[0].glob(f"*{METADATA_SUFFIX}"))) is not weights_inside
    assert not out.exists() and not (tmp_path / "esm2.cpu.fp32.weights.safetensors").exists()


def _package_naming(path: Path, wrapper: str) -> Path:
    """A ``.pt2`` stand-in: a zip holding a library named ``wrapper`` (as the package names it)."""
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"data/aotinductor/model/{wrapper}", b"library")
    return path


def test_compiles_holding_the_weights_take_turns_on_one_cache(tmp_path, monkeypatch, caplog):
    """A second build of the same graph waits, saying so, until the first has compiled and removed its
    folder (the race this closes: the folder pulled from under the other's compile). Its own folder goes
    too, and the lock leaves nothing in the cache."""
    import threading

    cache = tmp_path / "cache"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(cache))
    cache.mkdir()
    first_in, first_go, second_in = threading.Event(), threading.Event(), threading.Event()
    folders: dict[str, Path] = {}
    failures: list[BaseException] = []

    def build(name: str, entered: threading.Event, go: threading.Event | None) -> None:
        package = _package_naming(tmp_path / f"{name}.pt2", f"cgraph{WRAPPER_SUFFIX}")
        try:
            with inductor_cache.weights_in_library_compile(OURS, package):
                entered.set()
                if go is not None:
                    assert go.wait(30)
                folder = _compile_folder(cache, "cgraph", OURS)  # the same graph: the same folder
                (folder / f"cgraph{WRAPPER_SUFFIX}").write_bytes(b"library with weights")
                folders[name] = folder
        except BaseException as exc:  # reported below
            failures.append(exc)

    first = threading.Thread(target=build, args=("first", first_in, first_go))
    second = threading.Thread(target=build, args=("second", second_in, None))
    with caplog.at_level("INFO", logger="virnucpro_trt.files.folder_flock"):
        first.start()
        assert first_in.wait(30)
        second.start()
        assert not second_in.wait(1.0), "the second compile began while the first held the cache"
        first_go.set()
        first.join(30)
        second.join(30)
    assert not failures
    assert second_in.is_set()
    assert not folders["second"].exists()  # its own copy of the weights went as well
    assert not list(cache.iterdir())
    assert "waiting for another build's compile" in caplog.text


def test_where_the_cache_cannot_be_locked_the_compile_runs_and_still_removes_its_copy(tmp_path, monkeypatch):
    """A file system without ``flock`` (some network mounts): the compile runs unlocked, as before the
    lock, and its copy of the weights still goes."""
    import fcntl

    def no_flock(fd: int, operation: int) -> None:
        raise OSError(38, "Function not implemented")

    cache = tmp_path / "cache"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(cache))
    monkeypatch.setattr(fcntl, "flock", no_flock)
    package = _package_naming(tmp_path / "esm2.pt2", f"cgraph{WRAPPER_SUFFIX}")
    with inductor_cache.weights_in_library_compile(OURS, package):
        folder = _compile_folder(cache, "cgraph", OURS)
        (folder / f"cgraph{WRAPPER_SUFFIX}").write_bytes(b"library with weights")
    assert not folder.exists()
