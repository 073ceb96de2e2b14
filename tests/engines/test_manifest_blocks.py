"""The manifest's ``device``, ``build`` and per-encoder ``parity`` blocks, read as hostile JSON.

Each is a typed, frozen dataclass (``EngineDevice``, ``BuildFacts``, ``ParityResult``) whose JSON is what
``build`` writes, byte for byte; a block of another shape is refused by ``EngineManifest.read`` in one line
(they were plain dicts: a wrong type ran, or failed deep inside a run). What earlier builds of schema 2
wrote, and keys this version does not know, are still read.

The refusals are written against the manifest's JSON only, so that they fail where the blocks were read
as dicts.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from virnucpro_trt.engines.manifest import EngineManifest
from virnucpro_trt.errors import EngineMismatchError
from virnucpro_trt.files.json_fields import FieldError
from virnucpro_trt.models.parity_result import ParityResult

SHA = "0" * 64
PARITY = {
    "precision": "fp32",
    "items": 21,
    "max_abs": 4.76837158203125e-07,
    "min_cosine": 0.9999999999999872,
    "finite": True,
    "passed": True,
    "rule": "fp32: max abs <= 0.0001",
    "min_cosine_by_batches": {"mixed lengths": 0.9999999999999872, "equal lengths": 1.0},
}


def _encoder(kind: str, artifact: str, tokenizer: str) -> dict[str, Any]:
    return {
        "kind": kind, "artifact": artifact, "weights_sha256": SHA, "source": f"/m/{kind}", "dim": 8,
        "pad_id": 1, "vocab_size": 40, "tokenizer": tokenizer, "shapes": {}, "files": [],
        "file_sha256": {artifact: SHA, tokenizer: SHA}, "file_stamps": {}, "parity": dict(PARITY),
        "facts": {}, "source_stamp": {},
    }  # fmt: skip


def _manifest() -> dict[str, Any]:
    """A manifest as ``build`` writes one for the CPU (keys in its order)."""
    classifier = {
        "kind": "classifier", "artifact": "classifier.safetensors", "weights_sha256": SHA, "source": "/m/c",
        "dim": 16, "pad_id": 0, "vocab_size": 0, "tokenizer": None, "shapes": None, "files": [],
        "file_sha256": {"classifier.safetensors": SHA}, "file_stamps": {}, "parity": {}, "facts": {},
        "source_stamp": {},
    }  # fmt: skip
    return {
        "schema": "virnucpro-trt/engine-manifest",
        "schema_version": 2,
        "virnucpro_trt": "0.1.0",
        "backend": "onnxruntime",
        "precision": "fp32",
        "device": {"type": "cpu", "arch": "cpu", "name": "cpu", "instruction_sets": ["avx2", "sse4_2"]},
        "libraries": {"onnxruntime": "1.23.2"},
        "build": {
            "time": "2026-12-06T05:54:20+00:00",
            "backend_choice": "--backend onnxruntime requested",
            "recipe_version": 1,
            "max_batch_tokens": 512,
            "hardware_compatible": False,
            "attention_option": "efficient",
            "parity_failures_kept": [],
            "command": ["virnucpro-trt", "build", "-o", "engines"],
            "virnucpro_trt": "0.1.0",
            "own_files": ["tensorrt.timing-cache"],
            "stale_files": {"esm2.cpu.fp16.onnx": "1" * 64},
            "seconds": 8.3,
            "manifest_sha256": "2" * 64,
        },
        "models": {
            "dnabert-s": _encoder("dnabert-s", "dnabert-s.cpu.fp32.onnx", "dnabert-s.tokenizer.json"),
            "esm2": _encoder("esm2", "esm2.cpu.fp32.onnx", "esm2.vocab.txt"),
            "classifier": classifier,
        },
    }


def _write(folder: Path, data: dict[str, Any]) -> str:
    text = json.dumps(data, indent=2) + "\n"
    (folder / "manifest.json").write_text(text)
    return text


def _edited(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """``_manifest()`` with the key at ``path`` set to ``value`` (``DROP``: removed)."""
    data = copy.deepcopy(_manifest())
    *parents, key = path
    block = data
    for name in parents:
        block = block[name]
    if value is DROP:
        del block[key]
    else:
        block[key] = value
    return data


DROP = object()
LONG = "x" * ((1 << 16) + 1)
ISA, BUDGET = ("device", "instruction_sets"), ("build", "max_batch_tokens")
GATE = ("models", "esm2", "parity")
NAN_GATE = {**PARITY, "max_abs": float("inf"), "min_cosine": float("nan"), "finite": False, "passed": False}
# The build block of a set built on 2026-12-02 (schema 2 then too): the keys of that day, in its order.
EARLIER_BUILD = {
    "time": "2026-12-02T10:00:00+00:00", "seconds": 12.5, "backend_choice": "auto: onnxruntime",
    "max_batch_tokens": 4096, "hardware_compatible": False, "attention": "efficient",
    "parity_failures_kept": [], "command": ["virnucpro-trt", "build"], "virnucpro_trt": "0.1.0",
}  # fmt: skip


def test_a_manifest_as_build_writes_it_reads_back_byte_for_byte(tmp_path: Path) -> None:
    text = _write(tmp_path, _manifest())
    manifest = EngineManifest.read(tmp_path)
    assert json.dumps(manifest.to_json(), indent=2) + "\n" == text


def test_the_blocks_are_typed_and_round_trip() -> None:
    from virnucpro_trt.engines.manifest import BuildFacts, EngineDevice
    from virnucpro_trt.models.parity_result import ParityResult

    data = _manifest()
    device, build = EngineDevice.from_json(data["device"]), BuildFacts.from_json(data["build"])
    parity = ParityResult.from_json(PARITY)
    assert device.instruction_sets == ("avx2", "sse4_2") and device.compute_capability is None
    assert build.max_batch_tokens == 512 and build.command == ("virnucpro-trt", "build", "-o", "engines")
    assert build.stale_files == {"esm2.cpu.fp16.onnx": "1" * 64} and build.hardware_compatible is False
    assert parity.passed and parity.min_cosine_by_batches == tuple(PARITY["min_cosine_by_batches"].items())
    for block, json_of in ((device, data["device"]), (build, data["build"]), (parity, PARITY)):
        assert list(block.to_json().items()) == list(json_of.items())  # same keys, same order, same values
        assert type(block).from_json(block.to_json()) == block
    assert BuildFacts().to_json() == {}  # nothing recorded, nothing written
    gpu = {"type": "cuda", "arch": "sm90", "name": "NVIDIA H200", "compute_capability": "9.0"}
    assert EngineDevice.from_json(gpu).to_json() == gpu


HOSTILE = [
    # device: read as a dict, a type-less or malformed block ran (the C++ host refused some of them)
    (("device", "type"), 5, "device.type: not a string"),
    (("device", "name"), DROP, "device.name: not a string"),
    (("device", "arch"), LONG, "device.arch: a string of 65537 characters, more than 65536"),
    (("device", "compute_capability"), 9.0, "device.compute_capability: not a string"),
    (ISA, "avx2 sse4_2", "device.instruction_sets: not a list of at most 4096"),
    (ISA, ["avx2", 7], "device.instruction_sets[1]: not a string"),
    (ISA, ["avx2", "rm -rf"], "device.instruction_sets: not instruction-set names"),
    (ISA, ["avx"] * 4097, "device.instruction_sets: not a list of at most 4096"),
    # build: every key optional, but one present has its type (a non-object was taken as {})
    (("build",), [], "build: not an object"),
    (("build", "time"), 20261206, "build.time: not a string"),
    (("build", "backend_choice"), LONG, "build.backend_choice: a string of 65537 characters"),
    (("build", "recipe_version"), True, "build.recipe_version: not an integer >= 0"),
    (BUDGET, 512.0, "build.max_batch_tokens 512.0 (float) is not a token budget"),
    (BUDGET, 0, "build.max_batch_tokens 0 (int) is not a token budget"),
    (BUDGET, None, "build.max_batch_tokens a value of type NoneType is not a token budget"),
    (("build", "hardware_compatible"), "yes", "build.hardware_compatible: not true or false"),
    (("build", "attention_option"), None, "build.attention_option: not a string"),
    (("build", "parity_failures_kept"), "esm2: failed", "build.parity_failures_kept: not a list"),
    (("build", "command"), "virnucpro-trt build", "build.command: not a list of at most 65536 strings"),
    (("build", "command"), ["build", ["-o"]], "build.command[1]: not a string of at most 131072"),
    (("build", "command"), ["x"] * 65537, "build.command: not a list of at most 65536 strings"),
    (("build", "virnucpro_trt"), 1, "build.virnucpro_trt: not a string"),
    (("build", "own_files"), ["../../etc/passwd"], "build.own_files: not plain names of files"),
    (("build", "own_files"), {"a": 1}, "build.own_files: not a list"),
    (("build", "stale_files"), {"esm2.onnx": "abc"}, "build.stale_files: not plain names of files"),
    (("build", "stale_files"), {"/tmp/x": "1" * 64}, "build.stale_files: not plain names of files"),
    (("build", "stale_files"), ["esm2.onnx"], "build.stale_files: not an object"),
    (("build", "seconds"), float("nan"), "build.seconds: not a finite number"),
    (("build", "seconds"), -1, "build.seconds: below 0.0"),
    (("build", "manifest_sha256"), "edited", "build.manifest_sha256: not a SHA-256"),
    # an encoder's parity gate: read as a dict, a malformed one was reported or trusted as it stood
    ((*GATE, "passed"), DROP, "models.esm2.parity.passed: missing"),
    ((*GATE, "passed"), "yes", "models.esm2.parity.passed: not true or false"),
    ((*GATE, "finite"), 1, "models.esm2.parity.finite: not true or false"),
    (("models", "dnabert-s", "parity", "max_abs"), "0.1", "dnabert-s.parity.max_abs: not a number"),
    ((*GATE, "min_cosine"), True, "models.esm2.parity.min_cosine: not a number"),
    ((*GATE, "max_abs"), 10**400, "models.esm2.parity.max_abs: not a number a float holds"),
    ((*GATE, "items"), -1, "models.esm2.parity.items: not an integer >= 0"),
    ((*GATE, "rule"), LONG, "models.esm2.parity.rule: a string of 65537 characters"),
    ((*GATE, "precision"), None, "models.esm2.parity.precision: not a string"),
    ((*GATE, "min_cosine_by_batches"), [0.9], "models.esm2.parity.min_cosine_by_batches: not an object"),
    ((*GATE, "min_cosine_by_batches"), {"mixed": "0.9"}, "min_cosine_by_batches.mixed: not a number"),
    (GATE, {"passed": True}, "models.esm2.parity.precision: missing"),
]


@pytest.mark.parametrize(("path", "value", "said"), HOSTILE, ids=[said for *_, said in HOSTILE])
def test_a_hostile_block_is_refused_in_one_line(tmp_path: Path, path, value, said) -> None:
    _write(tmp_path, _edited(path, value))
    with pytest.raises(EngineMismatchError) as caught:
        EngineManifest.read(tmp_path)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'manifest.json'}: ") and said in message, message
    assert "\n" not in message and len(message) < 400, message


@pytest.mark.parametrize(
    ("path", "value"),
    [
        # keys this version does not know are ignored in each block, as in the rest of the manifest
        (("device", "vendor"), {"any": ["thing"]}),
        (("build", "options"), [1, 2]),
        ((*GATE, "median_cosine"), 1.0),
        # what sets built by earlier versions of schema 2 hold: no instruction sets, no per-batch cosines
        (("device", "instruction_sets"), DROP),
        ((*GATE, "min_cosine_by_batches"), DROP),
        (("models", "classifier", "parity"), DROP),
        (("build",), DROP),
        # an earlier build block: "attention" (now attention_option), no recipe, own or stale files, seal
        (("build",), EARLIER_BUILD),
        # an engine that gave NaN, kept by --keep-failing: the gate records Infinity and NaN
        (GATE, NAN_GATE),
    ],
)
def test_what_earlier_builds_wrote_and_unknown_keys_are_still_read(tmp_path: Path, path, value) -> None:
    _write(tmp_path, _edited(path, value))
    manifest = EngineManifest.read(tmp_path)
    assert manifest.backend == "onnxruntime"


def test_a_kept_gate_of_nan_and_infinity_is_written_back_as_read(tmp_path: Path) -> None:
    data = _edited(("models", "esm2", "parity", "max_abs"), float("inf"))
    data["models"]["esm2"]["parity"].update(min_cosine=float("nan"), finite=False, passed=False)
    data["models"]["esm2"]["parity"]["min_cosine_by_batches"]["mixed lengths"] = float("nan")
    text = _write(tmp_path, data)
    assert '"max_abs": Infinity' in text and '"min_cosine": NaN' in text
    assert json.dumps(EngineManifest.read(tmp_path).to_json(), indent=2) + "\n" == text


def test_the_fp32_relative_figure_is_read_back_and_may_be_absent() -> None:
    """``max_relative`` (the fp32 rule's second bound) came later within schema 2: a set built before
    has none, and one recorded is a number like the gate's other figures."""
    recorded = ParityResult.from_json({**PARITY, "max_relative": 6e-5})
    assert recorded.max_relative == 6e-5 and ParityResult.from_json(recorded.to_json()) == recorded
    assert ParityResult.from_json(PARITY).max_relative is None
    assert "max_relative" not in ParityResult.from_json(PARITY).to_json()
    with pytest.raises(FieldError, match="max_relative"):
        ParityResult.from_json({**PARITY, "max_relative": "small"})
