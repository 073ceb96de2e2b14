"""Engine manifest checks, shape ranges, names, the --backend auto choice and the parity rules."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from virnucpro_trt.engines import registry
from virnucpro_trt.engines.manifest import (
    SCHEMA_VERSION,
    BuildFacts,
    EngineDevice,
    EngineManifest,
    ModelEntry,
    Present,
    check_manifest,
    manifest_mismatches,
    verify_files,
)
from virnucpro_trt.engines.parity import UNPADDED_COPIES, compare, run_parity, synthetic_sequences
from virnucpro_trt.engines.spec import ShapeRange, artifact_name, default_shape_range
from virnucpro_trt.errors import EngineMismatchError, UserError

H200 = EngineDevice("cuda", "sm90", "NVIDIA H200", compute_capability="9.0")


FAKE_SHA = "0" * 64


def _manifest(**overrides) -> EngineManifest:
    models = {
        "dnabert-s": ModelEntry(
            kind="dnabert-s",
            artifact="dnabert-s.sm90.bf16.pt2",
            weights_sha256="ddd",
            source="/m/dnabert",
            dim=768,
            pad_id=3,
            tokenizer="dnabert-s.tokenizer.json",
            shapes={},
        ),
        "esm2": ModelEntry(
            kind="esm2",
            artifact="esm2.sm90.bf16.pt2",
            weights_sha256="aaa",
            source="/m/esm",
            dim=2560,
            pad_id=1,
            tokenizer="esm2.vocab.txt",
            shapes={},
        ),
        "classifier": ModelEntry(
            kind="classifier",
            artifact="classifier.safetensors",
            weights_sha256="ccc",
            source="/m/500_model.pth",
        ),
    }
    fields = {
        "backend": "inductor",
        "precision": "bf16",
        "device": H200,
        "libraries": {"torch": "2.11.0"},
        "models": models,
    }
    fields.update(overrides)
    for entry in models.values():
        entry.file_sha256 = dict.fromkeys(entry.file_names(), FAKE_SHA)
    return EngineManifest(**fields)


def test_round_trip(tmp_path):
    manifest = _manifest()
    manifest.write(tmp_path)
    data = json.loads((tmp_path / "manifest.json").read_text())
    assert data["schema"] == "virnucpro-trt/engine-manifest" and data["schema_version"] == 2
    back = EngineManifest.read(tmp_path)
    assert back.to_json() == manifest.to_json()


def test_compatible_present_has_no_mismatch():
    present = Present(H200, {"torch": "2.11.0"}, {"esm2": "aaa", "classifier": "ccc"})
    assert manifest_mismatches(_manifest(), present) == []


@pytest.mark.parametrize(
    ("present", "needle"),
    [
        (Present(EngineDevice("cpu", "cpu", "cpu"), {"torch": "2.11.0"}, {}), "built for cuda"),
        (
            Present(dataclasses.replace(H200, arch="sm80", name="A100"), {"torch": "2.11.0"}, {}),
            "(sm90), running on A100",
        ),
        (Present(H200, {"torch": "2.13.0"}, {}), "built with torch 2.11.0, found 2.13.0"),
        (Present(H200, {"torch": "2.11.0"}, {"esm2": "bbb"}), "esm2 weights differ"),
        (Present(H200, {"torch": "2.11.0"}, {"dnabert-s": "x"}), "dnabert-s weights differ"),
    ],
)
def test_each_mismatch_is_named(present, needle, tmp_path):
    problems = manifest_mismatches(_manifest(), present)
    assert any(needle in p for p in problems), problems
    with pytest.raises(EngineMismatchError, match="--rebuild"):
        check_manifest(_manifest(), present, tmp_path)


def test_hardware_compatible_engines_ignore_the_arch():
    manifest = _manifest(build=BuildFacts(hardware_compatible=True))
    present = Present(dataclasses.replace(H200, arch="sm80"), {"torch": "2.11.0"}, {})
    assert manifest_mismatches(manifest, present) == []


def test_unreadable_or_foreign_manifests(tmp_path):
    with pytest.raises(EngineMismatchError, match="not an engine directory"):
        EngineManifest.read(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"schema": "other"}))
    with pytest.raises(EngineMismatchError, match="not a virnucpro-trt engine manifest"):
        EngineManifest.read(tmp_path)
    data = _manifest().to_json()
    data["schema_version"] = 99
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(EngineMismatchError, match="schema 99"):
        EngineManifest.read(tmp_path)
    data["schema_version"] = str(SCHEMA_VERSION)  # was "has manifest schema 2, this version reads 2"
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(EngineMismatchError, match=f"schema '{SCHEMA_VERSION}' \\(str\\), this version reads"):
        EngineManifest.read(tmp_path)


def test_the_vocabulary_size_is_read_back_and_holds_the_pad_id(tmp_path):
    """``vocab_size`` (written since the C++ host checks token ids) round-trips; an older manifest
    without it reads as 0 (not recorded); a pad id outside a recorded vocabulary is refused."""
    manifest = _manifest()
    manifest.models["dnabert-s"].vocab_size = 4096
    manifest.write(tmp_path)
    back = EngineManifest.read(tmp_path)
    assert back.models["dnabert-s"].vocab_size == 4096 and back.models["esm2"].vocab_size == 0
    data = json.loads((tmp_path / "manifest.json").read_text())
    for value, needle in ((4096, "pad_id 4096 is outside its 4096-token vocabulary"), (2.5, "wrong type")):
        data["models"]["dnabert-s"].update(pad_id=value)
        (tmp_path / "manifest.json").write_text(json.dumps(data))
        with pytest.raises(EngineMismatchError, match=needle):
            EngineManifest.read(tmp_path)


def _recorded_manifest(folder):
    """A manifest whose every listed file exists in ``folder`` (its own name as bytes), recorded."""
    manifest = _manifest()
    for entry in manifest.models.values():
        for name in entry.file_names():
            (folder / name).write_bytes(name.encode())
        entry.record_files(folder)
    return manifest


def test_verify_files_names_the_missing_file_and_the_damaged_one(tmp_path):
    manifest = _recorded_manifest(tmp_path)
    (tmp_path / "esm2.vocab.txt").unlink()
    with pytest.raises(EngineMismatchError, match=r"lacks esm2\.vocab\.txt"):
        verify_files(manifest, tmp_path)
    (tmp_path / "esm2.vocab.txt").write_bytes(b"esm2.vocab.txt")  # a new file, same bytes: hashed, accepted
    verified = verify_files(manifest, tmp_path)
    assert len(verified) == 5
    (tmp_path / "esm2.sm90.bf16.pt2").write_bytes(b"esm2.sm90.bf16.pt3")  # same size, other bytes
    with pytest.raises(EngineMismatchError, match=r"esm2\.sm90\.bf16\.pt2 \(esm2\) does not match"):
        verify_files(manifest, tmp_path)
    with pytest.raises(EngineMismatchError, match="does not match"):  # an earlier check's stamps: stale now
        verify_files(manifest, tmp_path, verified)


def test_shape_ranges_and_names():
    shapes = default_shape_range("esm2", 32768)
    assert shapes.max_length == 1026 and shapes.opt_length == 170
    assert shapes.opt_batch == 32768 // 170 and shapes.max_batch == 2048
    assert shapes.contains(1, 2) and not shapes.contains(1, 1027)
    assert default_shape_range("dnabert-s", 4096, max_length=300).max_length == 300
    assert ShapeRange.from_json(shapes.to_json()) == shapes
    with pytest.raises(ValueError):
        ShapeRange(1, 5, 4, 2, 3, 4)
    assert artifact_name("esm2", "sm90", "bf16", "pt2") == "esm2.sm90.bf16.pt2"


class _FakeBackend:
    def __init__(self, name: str, reason: str | None):
        self.name, self.reason, self.extension = name, reason, "x"

    def availability(self, device, precision):
        return self.reason


def test_auto_picks_only_verified_backends(monkeypatch, caplog):
    fakes = {
        "tensorrt": _FakeBackend("tensorrt", None),  # importable and able to build: still never auto
        "inductor": _FakeBackend("inductor", "torch too old"),
        "onnxruntime": _FakeBackend("onnxruntime", None),
    }
    monkeypatch.setattr(registry, "get_backend", lambda name: fakes[name])
    backend, why = registry.choose_backend("auto", torch.device("cuda:0"), "bf16")
    assert backend.name == "onnxruntime" and "inductor: torch too old" in why
    assert "tensorrt: not verified by the project" in why
    fakes["inductor"].reason = None
    assert registry.choose_backend("auto", torch.device("cuda:0"), "bf16")[0].name == "inductor"
    # On the CPU only ONNX Runtime is considered.
    assert registry.choose_backend("auto", torch.device("cpu"), "fp32")[0].name == "onnxruntime"
    fakes["onnxruntime"].reason = "not installed"
    with pytest.raises(UserError, match="no verified engine backend"):
        registry.choose_backend("auto", torch.device("cpu"), "fp32")
    with pytest.raises(UserError, match="cannot build"):
        registry.choose_backend("onnxruntime", torch.device("cpu"), "fp32")
    # Named, TensorRT is used, with one warning line saying it has never run.
    with caplog.at_level("WARNING", logger="virnucpro_trt.engines.registry"):
        backend, why = registry.choose_backend("tensorrt", torch.device("cuda:0"), "bf16")
    assert backend.name == "tensorrt" and "never been run by this project" in why
    (record,) = caplog.records
    assert "\n" not in record.getMessage() and "TensorRT backend has never been run" in record.getMessage()


def test_verification_table_drives_auto_and_its_help(monkeypatch):
    assert registry.auto_candidates("cuda") == ("inductor", "onnxruntime")
    assert registry.auto_candidates("cpu") == ("onnxruntime",)
    assert registry.unverified_note("inductor") is None
    assert "never been run" in (registry.unverified_note("tensorrt") or "")
    text = registry.auto_help()
    assert "AOTInductor then ONNX Runtime on CUDA" in text and "TensorRT only when named" in text
    # The day the TensorRT job passes, marking it verified on CUDA makes auto prefer it.
    verified = dataclasses.replace(registry.BACKENDS["tensorrt"], verified_on=("cuda",))
    monkeypatch.setitem(registry.BACKENDS, "tensorrt", verified)
    assert registry.auto_candidates("cuda") == ("tensorrt", "inductor", "onnxruntime")
    assert "TensorRT then AOTInductor then ONNX Runtime on CUDA" in registry.auto_help()
    assert registry.unverified_note("tensorrt") is None


def test_cli_help_describes_auto_from_the_table():
    from click.testing import CliRunner

    from virnucpro_trt.cli.main import cli

    for command in ("build", "predict"):
        result = CliRunner().invoke(cli, [command, "--help"], terminal_width=400)
        assert result.exit_code == 0
        help_text = " ".join(result.output.split())
        assert registry.auto_help() in help_text, command
        assert "TensorRT where importable" not in help_text


def test_parity_rules_can_fail():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((6, 32)).astype(np.float32)
    assert compare(ref, ref + 5e-5, "fp32").passed  # within the absolute bound
    drifted = compare(ref, ref * np.float32(1 + 2e-4), "fp32")  # rounding a deep model amplifies
    assert drifted.passed and drifted.max_abs > 1e-4 and 1e-4 < drifted.max_relative <= 5e-4
    assert not compare(ref, ref * np.float32(1 + 1e-3), "fp32").passed  # a 0.1% scale: neither bound
    small = ref * np.float32(1e-3)
    assert compare(small, small + 5e-5, "fp32").passed  # 5% of a tiny row, within the absolute bound
    assert not compare(small, small + 2e-4, "fp32").passed
    zero = np.zeros_like(ref)
    assert not compare(zero, zero + 2e-4, "fp32").passed and compare(zero, zero, "fp32").passed
    nan_row = ref.copy()
    nan_row[1, 0] = np.nan
    assert not compare(ref, nan_row, "fp32").passed
    noisy = ref + 0.001 * rng.standard_normal(ref.shape).astype(np.float32)
    assert compare(ref, noisy, "bf16").passed
    assert not compare(ref, ref + 0.2 * rng.standard_normal(ref.shape).astype(np.float32), "bf16").passed
    assert (
        compare(ref, ref + 0.05 * rng.standard_normal(ref.shape).astype(np.float32), "fp8").min_cosine
        < 0.9995
    )
    bad = ref.copy()
    bad[2, 3] = np.nan
    result = compare(ref, bad, "bf16")
    assert not result.passed and not result.finite


class _LookupEngine:
    """Returns each row's reference embedding (found by its first token), wrong ones on request."""

    name, dim, pad_id = "lookup", 4, 0

    def __init__(self, table: dict[int, np.ndarray], wrong_when_unpadded: bool):
        self.table, self.wrong_when_unpadded = table, wrong_when_unpadded
        self.unpadded_batches = 0

    def embed_padded(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        out = np.stack([self.table[int(row[0])] for row in input_ids])
        if attention_mask.all():
            self.unpadded_batches += 1
            if self.wrong_when_unpadded:
                return -out
        return out


@pytest.mark.parametrize("wrong_when_unpadded", [False, True])
def test_the_gate_also_runs_batches_without_padding(wrong_when_unpadded: bool) -> None:
    """Run-time batches of varied lengths are padded; the gate adds batches without padding (ESM-2
    engines take another attention path there), so an engine wrong only there fails it."""
    rng = np.random.default_rng(1)
    tokens = [np.array([i + 1, *rng.integers(4, 20, size=n)]) for i, n in enumerate([3, 9, 5, 12, 7, 20])]
    reference = rng.standard_normal((len(tokens), 4)).astype(np.float32)
    engine = _LookupEngine({i + 1: reference[i] for i in range(len(tokens))}, wrong_when_unpadded)
    result = run_parity(engine, reference, tokens, "fp32", 4096)
    assert engine.unpadded_batches == 3 and result.items == len(tokens) + 3 * UNPADDED_COPIES
    assert result.passed != wrong_when_unpadded
    # where it went wrong: each kind of batch keeps its own min cosine, in the gate's one line too
    by_batches = dict(result.min_cosine_by_batches)
    assert by_batches["mixed lengths"] == pytest.approx(1.0)
    assert by_batches["equal lengths"] == pytest.approx(-1.0 if wrong_when_unpadded else 1.0)
    assert result.min_cosine == min(by_batches.values())
    assert result.to_json()["min_cosine_by_batches"] == by_batches
    equal = "-1.000000" if wrong_when_unpadded else "1.000000"
    assert f"(mixed lengths 1.000000; equal lengths {equal})" in result.describe()
    assert "\n" not in result.describe()


def test_synthetic_batch_is_deterministic_and_varied():
    a, b = synthetic_sequences("dnabert-s"), synthetic_sequences("dnabert-s")
    assert a == b and len({len(s) for s in a}) > 6 and max(len(s) for s in a) <= 501
    proteins = synthetic_sequences("esm2")
    assert all(8 <= len(p) <= 166 for p in proteins)


def test_hostile_numbers_and_a_linked_manifest_are_refused_before_any_engine_runs(tmp_path):
    """Read as hostile: a shape bound or token budget that is no integer in range, and a manifest that
    is a link to a file elsewhere, are refused in one line (a bad budget killed each worker at its first
    batch, three times, before the run failed)."""
    from virnucpro_trt.engines import engine_set

    shapes = default_shape_range("esm2", 4096).to_json()
    bad = (("max_batch", 10**12), ("max_length", 1026.0), ("opt_batch", "8"), ("min_batch", True))
    for name, value in bad:
        with pytest.raises(ValueError, match=f"{name}: not an integer"):
            ShapeRange.from_json({**shapes, name: value})
    for budget in ("abc", [1], -5, 10**15, 1e300, 512.0, 0, None):
        data = _manifest().to_json()
        data["build"]["max_batch_tokens"] = budget
        (tmp_path / "manifest.json").write_text(json.dumps(data))
        with pytest.raises(EngineMismatchError, match=r"build\.max_batch_tokens .* is not a token budget"):
            engine_set.check_engine_set(tmp_path, torch.device("cpu"), {})
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps(_manifest().to_json()))
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "manifest.json").symlink_to(elsewhere)
    with pytest.raises(EngineMismatchError, match="is a symbolic link"):
        EngineManifest.read(tmp_path / "set")


def _entry_edited(tmp_path, kind: str, **fields) -> None:
    """Write ``_manifest()`` with ``models[kind]`` changed to ``fields`` (``None``: the field removed)."""
    data = _manifest().to_json()
    for name, value in fields.items():
        if value is None:
            data["models"][kind].pop(name, None)
        else:
            data["models"][kind][name] = value
    (tmp_path / "manifest.json").write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("kind", "fields", "needle"),
    [
        # vocab_size not recorded (0 or absent): the pad id was not checked at all. 2**70 failed every
        # shard three times (OverflowError while padding, exit 1); -5 ran, indexing the table from its end.
        ("esm2", {"pad_id": 2**70, "vocab_size": 0}, "pad_id 1180591620717411303424 is not a token id"),
        ("esm2", {"pad_id": -5, "vocab_size": None}, "pad_id -5 is not a token id"),
        ("dnabert-s", {"pad_id": -1, "vocab_size": 0}, "pad_id -1 is not a token id"),
        ("classifier", {"pad_id": 2**63}, "pad_id 9223372036854775808 is not a token id"),
        # vocab_size itself bounded (it held any pad id below it)
        ("esm2", {"pad_id": 2**62, "vocab_size": 2**70}, "vocab_size 1180591620717411303424 is not a voc"),
        ("esm2", {"pad_id": 1, "vocab_size": (1 << 24) + 1}, "vocab_size 16777217 is not a vocabulary size"),
        ("esm2", {"pad_id": 1, "vocab_size": -3}, "vocab_size -3 is not a vocabulary size"),
        ("esm2", {"pad_id": -5, "vocab_size": 33}, "pad_id -5 is outside its 33-token vocabulary"),
        ("esm2", {"pad_id": True, "vocab_size": 33}, "pad_id has the wrong type"),
        ("esm2", {"pad_id": 1, "vocab_size": True}, "vocab_size has the wrong type"),
    ],
)
def test_a_pad_id_or_vocabulary_size_out_of_range_is_refused_at_the_manifest(tmp_path, kind, fields, needle):
    """Every entry's pad id is a token id and its vocabulary size a bounded count, recorded or not:
    refused in one line (EngineMismatchError, exit 2) when the manifest is read, before any worker."""
    _entry_edited(tmp_path, kind, **fields)
    with pytest.raises(EngineMismatchError, match=needle) as caught:
        EngineManifest.read(tmp_path)
    assert caught.value.exit_code == 2 and "\n" not in str(caught.value)


def test_the_token_fields_a_build_writes_are_read(tmp_path):
    """What ``build`` writes (each encoder's vocabulary and its tokenizer's pad id; the classifier's
    0 and 0, it has no tokens) and what a build older than ``vocab_size`` wrote (none) still read."""
    _entry_edited(tmp_path, "esm2", pad_id=1, vocab_size=33)
    assert EngineManifest.read(tmp_path).models["esm2"].vocab_size == 33
    _entry_edited(tmp_path, "dnabert-s", pad_id=4095, vocab_size=4096)
    assert EngineManifest.read(tmp_path).models["dnabert-s"].pad_id == 4095
    _entry_edited(tmp_path, "esm2", pad_id=(1 << 24) - 1, vocab_size=1 << 24)  # the bound itself
    assert EngineManifest.read(tmp_path).models["esm2"].vocab_size == 1 << 24
    _entry_edited(tmp_path, "esm2", pad_id=1, vocab_size=None)  # an older build: not recorded
    back = EngineManifest.read(tmp_path)
    assert back.models["esm2"].vocab_size == 0 and back.models["esm2"].pad_id == 1
    assert back.models["classifier"].pad_id == 0 and back.models["classifier"].vocab_size == 0


def test_the_schema_version_is_a_json_integer(tmp_path):
    """``"schema_version": 2.0`` compared equal to 2 and was read; the C++ host refuses it (a JSON
    integer in range), as this reader refuses every other manifest integer written as a float."""
    data = _manifest().to_json()
    data["schema_version"] = float(SCHEMA_VERSION)
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(EngineMismatchError, match=r"schema 2\.0 \(float\), this version reads 2"):
        EngineManifest.read(tmp_path)
    data["schema_version"] = SCHEMA_VERSION
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    assert EngineManifest.read(tmp_path).schema_version == SCHEMA_VERSION


def test_a_file_name_the_system_cannot_resolve_is_refused_in_one_line(tmp_path):
    """A 5000-character name (ENAMETOOLONG) and a link to itself (a loop) ended as "unexpected
    failure" (exit 1) inside the path resolution; they are refused like any other bad name (exit 2)."""
    manifest = _recorded_manifest(tmp_path)
    (tmp_path / "esm2.vocab.txt").unlink()
    (tmp_path / "esm2.vocab.txt").symlink_to("esm2.vocab.txt")
    with pytest.raises(EngineMismatchError, match=r"'esm2\.vocab\.txt' cannot be resolved") as caught:
        verify_files(manifest, tmp_path)
    assert caught.value.exit_code == 2
    long_name = "x" * 5000
    entry = manifest.models["classifier"]
    entry.artifact, entry.file_sha256 = long_name, {long_name: FAKE_SHA}
    (tmp_path / "esm2.vocab.txt").unlink()
    (tmp_path / "esm2.vocab.txt").write_bytes(b"esm2.vocab.txt")
    with pytest.raises(EngineMismatchError, match="cannot be resolved") as caught:
        verify_files(manifest, tmp_path)
    assert caught.value.exit_code == 2 and "\n" not in str(caught.value)
