"""Worker facts and worker messages: typed, in run.json's layout; facts.json read back as hostile input."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import pytest
import torch

from virnucpro_trt.files.json_fields import FieldError
from virnucpro_trt.runtime.device import DeviceFacts, describe_device
from virnucpro_trt.runtime.resume import WorkDir
from virnucpro_trt.runtime.worker_facts import ClassifierFacts, EncoderFacts, WorkerFacts
from virnucpro_trt.runtime.worker_messages import Done, Failed, Fatal, Log, Progress, Ready, Started

ENCODER = EncoderFacts("models/dnabert", "/m/dnabert", "huggingface", "BertModel", 768, "ab" * 32, 32768)
FACTS = WorkerFacts(
    dnabert=ENCODER,
    esm=EncoderFacts("esm2_t36_3B_UR50D", "/m/esm.pt", "fair-esm", "fair-esm", 2560, None, 32768),
    classifier=ClassifierFacts("/m/500_model.pth", 3328, 512, 1e-5),
    device=DeviceFacts("cuda:0", "2.11.0+cu130", "NVIDIA H200", "9.0", 139.8, "13.0"),
    precision="bf16",
    backend="inductor",
    engines="/e/inductor-bf16",
)


def test_facts_keep_run_json_layout_and_read_back_equal(tmp_path: Path) -> None:
    data = json.loads(FACTS.encode())
    assert list(data) == ["models", "dims", "device", "precision", "backend", "engines"]
    assert list(data["models"]) == ["dnabert", "esm", "classifier"]
    assert list(data["models"]["dnabert"]) == [
        "spec", "path", "format", "layout", "dim", "weights_sha256", "max_batch_tokens",
    ]  # fmt: skip
    assert data["models"]["classifier"] == {
        "path": "/m/500_model.pth", "input_dim": 3328, "hidden_dim": 512, "bn_eps": 1e-5,
    }  # fmt: skip
    assert data["dims"] == {"dnabert": 768, "esm": 2560}
    assert data["device"] == {
        "device": "cuda:0", "torch": "2.11.0+cu130", "name": "NVIDIA H200", "compute_capability": "9.0",
        "memory_gib": 139.8, "cuda": "13.0",
    }  # fmt: skip
    assert WorkerFacts.from_json(data) == FACTS
    cpu = describe_device(torch.device("cpu"))
    assert list(cpu.to_json()) == ["device", "torch", "name", "threads"] and cpu.name == "cpu"
    assert DeviceFacts.from_json(cpu.to_json()) == cpu
    work = WorkDir(tmp_path)
    work.root.mkdir()
    work.save_facts(FACTS)
    assert work.read_facts() == FACTS


def test_malformed_facts_are_ignored_not_a_traceback(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    work = WorkDir(tmp_path)
    work.root.mkdir()
    assert work.read_facts() is None  # none saved yet: nothing to say
    data = FACTS.to_json()
    bad = [
        {**data, "dims": {"dnabert": 1, "esm": 2}},
        {**data, "precision": 16},
        {**data, "models": {**data["models"], "esm": {**data["models"]["esm"], "dim": "2560"}}},
        {**data, "device": {**data["device"], "memory_gib": float("nan")}},
        {**data, "device": {"device": "cpu", "torch": "2", "name": "cpu"}},
        {k: v for k, v in data.items() if k != "engines"},
        "facts",
    ]
    for variant in bad:
        with pytest.raises(FieldError):
            WorkerFacts.from_json(variant)
        work.facts_path.write_text(json.dumps(variant))
        with caplog.at_level(logging.WARNING):
            assert work.read_facts() is None
        assert "ignoring" in caplog.text
        caplog.clear()
    work.facts_path.write_bytes(b"{" * (2 << 20))
    assert work.read_facts() is None


def test_every_worker_message_crosses_a_process_line_intact() -> None:
    record = logging.LogRecord("virnucpro_trt.x", logging.INFO, __file__, 1, "hello", None, None)
    messages = [
        Ready(0, FACTS, 1.5), Started(0, 4), Progress(0, 4, 17), Failed(0, None, "OSError: x", "tb"),
        Fatal(1, 2, "bad model", "tb"),
    ]  # fmt: skip
    for message in messages:
        assert pickle.loads(pickle.dumps(message)) == message
    log = pickle.loads(pickle.dumps(Log(0, record)))
    assert log.record.getMessage() == "hello"
    assert Done.__dataclass_fields__.keys() == {"slot", "shard", "marker"}
