"""A rerun of ``build`` finds the set it would make already in its folder, and leaves it (no recompile).

Everything that decides what the engines compute or how fast must match for the set to count as made
(``engines/finished_build.py``); each such difference, and any damage a run would refuse, builds again.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from tests.cli.helpers import build_tiny
from virnucpro_trt.engines.build import BuildPlan, BuildSettings, device_facts
from virnucpro_trt.engines.manifest import (
    SEAL_KEY,
    EngineDevice,
    EngineManifest,
    Present,
    manifest_mismatches,
    manifest_seal,
)
from virnucpro_trt.environment import cpu_instruction_sets
from virnucpro_trt.files.run_lock import LOCK_FILE


def _settings(tiny_set, out: Path, **changes) -> BuildSettings:
    base = BuildSettings(
        str(tiny_set.dnabert), str(tiny_set.esm_hf), str(tiny_set.classifier), out,
        backend="onnxruntime", device="cpu", max_batch_tokens=512, max_length=256,
    )  # fmt: skip
    return dataclasses.replace(base, **changes)


def _differences(settings: BuildSettings) -> list[str]:
    return BuildPlan.of(settings).differences(settings)


def _snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def built(tiny_set, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "engines"
    result = build_tiny(tiny_set, out)
    assert result.code == 0, result.stderr
    assert "PASSED: onnxruntime fp32 engines" in result.stderr
    return out


def test_a_rerun_with_nothing_changed_leaves_the_set_and_force_builds_it_again(tiny_set, built, tmp_path):
    out = tmp_path / "engines"
    shutil.copytree(built, out)  # a copy keeps its files' content, so stamps differ and hashes are checked
    before = _snapshot(out)
    result = build_tiny(tiny_set, out)
    assert result.code == 0, result.stderr
    assert "already holds these engines" in result.stderr and "--force builds them again" in result.stderr
    assert "UP TO DATE: onnxruntime fp32 engines" in result.stderr
    assert "building dnabert-s" not in result.stderr
    assert _snapshot(out) == before  # not one file written, the manifest included

    result = build_tiny(tiny_set, out, "--force")
    assert result.code == 0, result.stderr
    assert "building dnabert-s" in result.stderr and "PASSED: onnxruntime fp32 engines" in result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["build"]["time"] >= json.loads(before["manifest.json"][1])["build"]["time"]
    assert _snapshot(out)["manifest.json"] != before["manifest.json"]


@pytest.mark.parametrize(
    ("changes", "said"),
    [
        ({"max_length": 128}, "esm2 shapes: built"),
        ({"max_batch_tokens": 1024}, "token budget: built 512, asked 1024"),
        ({"attention": "cudnn"}, "--attention: built efficient, asked cudnn"),
        ({"hardware_compatible": True}, "--hardware-compatible: built False, asked True"),
        ({"backend": "inductor"}, "backend: built onnxruntime, asked inductor"),
    ],
)
def test_each_setting_that_shapes_the_engines_builds_again(tiny_set, built, changes, said) -> None:
    assert _differences(_settings(tiny_set, built)) == []
    differences = _differences(_settings(tiny_set, built, **changes))
    assert any(said in d for d in differences), differences


def test_other_checkpoint_contents_build_again_and_the_same_contents_elsewhere_do_not(
    tiny_set, built, tmp_path
) -> None:
    same = tmp_path / "classifier-copy.pth"
    shutil.copyfile(tiny_set.classifier, same)
    assert _differences(_settings(tiny_set, built, classifier=str(same))) == []
    assert _differences(_settings(tiny_set, built, classifier=str(tiny_set.classifier_300))) == [
        "classifier checkpoint differs from the one the set was built from"
    ]
    esm = tmp_path / "esm2"
    shutil.copytree(tiny_set.esm_hf, esm)
    config = json.loads((esm / "config.json").read_text())
    config["layer_norm_eps"] = 1e-6  # a configuring file changes what the encoder computes
    (esm / "config.json").write_text(json.dumps(config))
    assert _differences(_settings(tiny_set, built, esm=str(esm))) == [
        "esm2 checkpoint differs from the one the set was built from"
    ]


def _edited_copy(built: Path, tmp_path: Path, edit, seal: bool = True) -> Path:
    """A copy of the set with its manifest edited, sealed again as a build would have written it (the
    other differences are what is tested) unless ``seal`` is False."""
    out = tmp_path / "engines"
    shutil.copytree(built, out)
    manifest = json.loads((out / "manifest.json").read_text())
    edit(out, manifest)
    if seal:
        manifest["build"][SEAL_KEY] = manifest_seal(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def _set_recipe(out, manifest):
    manifest["build"]["recipe_version"] = 0


def _kept_failure(out, manifest):
    manifest["models"]["esm2"]["parity"]["passed"] = False
    manifest["build"]["parity_failures_kept"] = ["esm2: min cosine 0.5"]


def _damaged_file(out, manifest):
    artifact = manifest["models"]["esm2"]["artifact"]
    (out / artifact).write_bytes((out / artifact).read_bytes()[:-1] + b"\0")


def _wrong_pad(out, manifest):
    manifest["models"]["esm2"]["pad_id"] = 0


def _stale_left(out, manifest):
    (out / "esm2.cpu.fp16.onnx").write_bytes(b"an earlier build's engine")
    manifest["build"]["stale_files"] = {"esm2.cpu.fp16.onnx": "0" * 64}


def _other_version(out, manifest):
    manifest["virnucpro_trt"] = "0.0.1"


def _budget_as_float(out, manifest):
    manifest["build"]["max_batch_tokens"] = 512.0


def _budget_changed(out, manifest):
    manifest["build"]["max_batch_tokens"] = 1024


# Instruction sets no CPU reports: real names (amx_tile, avx10_2) are on some CI machines' CPUs.
_NO_CPU_HAS = ("avx_absent_here", "amx_absent_here")


def _other_cpu(out, manifest):
    manifest["device"]["instruction_sets"] = [*manifest["device"]["instruction_sets"], _NO_CPU_HAS[0]]


def _other_exporter(out, manifest):
    manifest["models"]["dnabert-s"]["facts"]["library_versions"]["torch"] = "1.0.0"


@pytest.mark.parametrize(
    ("edit", "said"),
    [
        (_set_recipe, "build recipe: built 0, asked"),
        (_kept_failure, "did not pass its parity gate"),
        (_damaged_file, "does not match the SHA-256 its manifest records"),
        (_wrong_pad, "is not its tokenizer's"),
        (_stale_left, "an earlier build's files are still to be removed"),
        (_other_version, "virnucpro-trt version: built 0.0.1"),
        (_budget_as_float, "build.max_batch_tokens 512.0 (float) is not a token budget"),  # not read
        (_budget_changed, "token budget: built 1024, asked 512"),
        (_other_cpu, "device: built {'instruction_sets'"),
        (_other_exporter, "dnabert-s exported with: built {'torch': '1.0.0'}"),
    ],
)
def test_a_set_a_run_would_refuse_or_another_recipe_made_is_built_again(
    tiny_set, built, tmp_path, edit, said
) -> None:
    out = _edited_copy(built, tmp_path, edit)
    differences = _differences(_settings(tiny_set, out))
    assert any(said in d for d in differences), differences


@pytest.mark.parametrize("edit", [_wrong_pad, _budget_changed, _other_version])
def test_any_edit_of_the_manifest_breaks_its_seal(tiny_set, built, tmp_path, edit) -> None:
    """An edited manifest may be one predict refuses in ways the comparisons above do not foresee (a
    dimension, a tokenizer dropped): a manifest not as its build wrote it is never a finished set."""
    assert EngineManifest.read(built).sealed
    out = _edited_copy(built, tmp_path, edit, seal=False)
    assert not EngineManifest.read(out).sealed
    assert _differences(_settings(tiny_set, out)) == [
        "its manifest was edited since the build wrote it (or written before builds sealed it)"
    ]


def test_a_damaged_set_is_rebuilt_by_a_plain_rerun(tiny_set, built, tmp_path) -> None:
    """The way out that `predict` names for a damaged set ("rebuild the engines") works without --force
    when the damaged file is the tool's (here the manifest's pad id, which only the manifest holds)."""
    out = _edited_copy(built, tmp_path, _wrong_pad, seal=False)
    result = build_tiny(tiny_set, out)
    assert result.code == 0, result.stderr
    assert "building again in" in result.stderr and "PASSED" in result.stderr
    assert json.loads((out / "manifest.json").read_text())["models"]["esm2"]["pad_id"] == 1


def test_an_intact_set_in_a_read_only_folder_is_up_to_date_and_a_stray_file_does_not_matter(
    tiny_set, built, tmp_path, monkeypatch
) -> None:
    """Finding the set made writes nothing, so it neither takes the run lock (which needs a writable
    folder) nor judges the folder's other files (which only matter to a build that writes)."""
    import virnucpro_trt.engines.build as build

    out = tmp_path / "engines"
    shutil.copytree(built, out)
    (out / "notes.txt").write_text("mine\n")

    def no_lock(*args, **kwargs):
        raise AssertionError("the run lock was taken")

    monkeypatch.setattr(build, "outdir_lock", no_lock)  # as root, a mode of 555 stops no write
    out.chmod(0o555)
    try:
        result = build_tiny(tiny_set, out)
    finally:
        out.chmod(0o755)
    assert result.code == 0, result.stderr
    assert "UP TO DATE" in result.stderr and "parity" not in result.stderr  # one line says it: no gate ran
    assert (out / "notes.txt").read_text() == "mine\n" and not (out / LOCK_FILE).exists()


def test_the_cpu_instruction_sets_are_read_from_cpuinfo(tmp_path) -> None:
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu avx2 hypervisor avx512f sse4_2 constant_tsc fma\n\n"
                   "processor\t: 1\nflags\t\t: fpu avx2\n")  # fmt: skip
    assert cpu_instruction_sets(x86) == ["avx2", "avx512f", "fma", "sse4_2"]
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd sve2 bf16\n")
    assert cpu_instruction_sets(arm) == ["asimd", "bf16", "fp", "sve2"]
    assert cpu_instruction_sets(tmp_path / "absent") == []


def test_a_cpu_engine_of_compiled_code_is_refused_on_a_cpu_lacking_its_instructions(built) -> None:
    """AOTInductor compiles CPU engines with -march=native: on a CPU lacking one of the build CPU's
    instruction sets the engine would die of SIGILL, so the manifest check refuses it; an ONNX file
    is portable (ONNX Runtime picks its kernels when it runs) and is not held to them."""
    import torch

    manifest = EngineManifest.read(built)
    here = device_facts(torch.device("cpu"))
    assert manifest.device == here and here.instruction_sets == tuple(cpu_instruction_sets())
    assert isinstance(here, EngineDevice)
    assert not set(_NO_CPU_HAS) & set(here.instruction_sets)
    built_on = dataclasses.replace(here, instruction_sets=(*here.instruction_sets, *_NO_CPU_HAS))
    manifest.device = built_on
    compiled = Present(here, {}, {}, native_cpu_code=True)
    assert manifest_mismatches(manifest, compiled) == [
        "built on a CPU with instructions this one lacks (amx_absent_here, avx_absent_here)"
    ]
    assert manifest_mismatches(manifest, Present(here, {}, {}, native_cpu_code=False)) == []
    manifest.device = dataclasses.replace(here, instruction_sets=here.instruction_sets[:3])  # an older CPU
    assert manifest_mismatches(manifest, compiled) == []
