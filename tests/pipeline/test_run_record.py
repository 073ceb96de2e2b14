"""run.json read back as hostile input through its one typed record, and the one throughput rule predict
and merge both write."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from virnucpro_trt.pipeline import run_record
from virnucpro_trt.pipeline.run_record import (
    UNREADABLE,
    NotFinishedRun,
    RunRecord,
    RunRecordError,
    read_run_json,
    read_run_record,
    throughput,
)


def test_throughput_is_frames_and_records_over_their_times() -> None:
    timings = {"embed_dnabert": 1.0, "embed_esm": 3.0, "workers": 5.0, "total": 10.0}
    block = throughput(400, 1000, timings, 2.0)
    assert block == {
        "frames_per_s_encoders": 100.0, "frames_per_s_workers_wall": 80.0, "frames_per_s_steady": 200.0,
        "steady_s": 2.0, "reads_per_s_total": 100.0,
    }  # fmt: skip
    nothing_run = throughput(0, 1000, {"total": 0.5}, None)  # a resume with every shard finished
    assert nothing_run["frames_per_s_steady"] is None and nothing_run["steady_s"] is None
    assert nothing_run["frames_per_s_encoders"] == 0.0 and nothing_run["reads_per_s_total"] == 2000.0


def test_a_run_json_is_read_bounded_and_anything_else_is_another_runs(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "run.json"
    assert read_run_json(path) is None
    path.write_text(json.dumps({"status": "complete", "tool": "virnucpro-trt"}))
    assert read_run_json(path) == {"status": "complete", "tool": "virnucpro-trt"}
    for text in ("[1, 2]", "{not json", "[" * 100_000):
        path.write_text(text)
        assert read_run_json(path) == UNREADABLE
    monkeypatch.setattr(run_record, "MAX_RUN_JSON_BYTES", 8)
    path.write_text(json.dumps({"status": "complete"}))
    assert read_run_json(path) == UNREADABLE
    path.unlink()
    os.mkfifo(path)  # never waited on
    assert read_run_json(path) is None
    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "elsewhere.json")
    assert read_run_json(link) is None


# -- the typed record: one strict parser, one writer ---------------------------------------------------

_SHA = "ab" * 32


def _predict_record() -> dict:
    """A run.json as predict writes it (keys in their order; values shortened)."""
    return {
        "tool": "virnucpro-trt", "version": "0.1.0", "status": "complete", "demo_random_weights": False,
        "command": ["virnucpro-trt", "predict", "in.fa", "-o", "out"],
        "started": "2026-01-01T00:00:00+00:00", "finished": "2026-01-01T00:00:09+00:00",
        "settings": {"input": "in.fa", "save_embeddings": True, "run": {"keep_work": True}, "part": None},
        "settings_fingerprint": _SHA,
        "input": {"path": "in.fa", "sha256": _SHA, "size_bytes": 120},
        "models": {"dnabert": {"weights_sha256": _SHA}, "esm": {"weights_sha256": "cd" * 32}},
        "model_identity": {"dnabert-s": _SHA, "esm2": _SHA, "classifier": _SHA, "engines": None},
        "counts": {"frames": 3, "virus_sequences": 1, "esm_computed_tokens": None, "records": 2},
        "timings_s": {"total": 1.5, "workers": 1.0},
        "throughput": {"frames_per_s_steady": 3.0, "steady_s": 1.0},
        "device": {"device": "cuda:1", "name": "H100"},
        "precision": "fp16", "backend": "tensorrt", "engines": "/engines",
        "shards": {"total": 1, "records_per_shard": 2, "processed": 1, "skipped": 0, "failed_attempts": 0},
        "workers": [{"slot": 0, "device": "cuda:1"}],
        "restarts": 0,
        "model_weights": {"dnabert-s": {"sha256": _SHA, "stamps": {}}},
        "outputs": {"frames.tsv": {"bytes": 10, "sha256": _SHA}},
    }  # fmt: skip


def _merge_record() -> dict:
    """A run.json as merge writes it: no model_weights, split and parts before outputs."""
    record = {k: v for k, v in _predict_record().items() if k not in ("model_weights", "outputs")}
    record.update(
        split={"split_id": _SHA, "parts": 2, "records_per_shard": 2, "shard_records": None},
        parts=[{"part": 1, "run_json_sha256": _SHA}, {"part": 2, "run_json_sha256": "cd" * 32}],
        outputs={"frames.tsv": {"bytes": 10, "sha256": _SHA}},
    )
    return record


@pytest.mark.parametrize("make", [_predict_record, _merge_record])
def test_the_record_writes_back_what_it_read_in_the_same_order(make) -> None:
    data = make()
    record = RunRecord.from_json(data)
    assert record.to_json() == data and list(record.to_json()) == list(data)
    assert record.text() == json.dumps(data, indent=2) + "\n"
    assert RunRecord.from_json(json.loads(record.text())) == record


def test_the_record_answers_what_its_readers_ask() -> None:
    record = RunRecord.from_json(_predict_record())
    assert record.keep_work and record.saved_embeddings and record.device_type == "cuda"
    assert record.steady_s == 1.0 and record.weights_sha256("esm") == "cd" * 32
    assert record.weights_sha256("classifier") is None and record.part_run_sha256s is None
    assert record.split is None and record.counts["esm_computed_tokens"] is None  # unknown, not 0
    merged = RunRecord.from_json(_merge_record())
    assert merged.part_run_sha256s == [_SHA, "cd" * 32] and merged.split is not None
    assert merged.split.parts == 2 and merged.model_weights is None
    no_identity = _merge_record()
    del no_identity["model_identity"]  # a merge of parts that lack it: the key stays absent
    assert "model_identity" not in RunRecord.from_json(no_identity).to_json()


def _without(key: str):
    def edit(data: dict) -> None:
        del data[key]

    return edit


def _setting(path: str, value):
    def edit(data: dict) -> None:
        *parents, last = path.split(".")
        target = data
        for name in parents:
            target = target[name][0] if isinstance(target[name], list) else target[name]
        target[last] = value

    return edit


_DAMAGED = [
    ("version", _without("version")), ("version", _setting("version", 1)),
    ("demo_random_weights", _setting("demo_random_weights", "yes")),
    ("demo_random_weights", _setting("demo_random_weights", 0)),
    ("command", _setting("command", "virnucpro-trt predict")), ("command", _setting("command", [1])),
    ("started", _setting("started", None)), ("finished", _without("finished")),
    ("settings", _setting("settings", [])), ("settings", _without("settings")),
    ("settings_fingerprint", _setting("settings_fingerprint", "not a hash")),
    ("settings_fingerprint", _setting("settings_fingerprint", None)),
    ("input", _setting("input", "in.fa")), ("input.sha256", _setting("input.sha256", 5)),
    ("input.path", _setting("input.path", None)), ("input.size_bytes", _setting("input.size_bytes", -1)),
    ("input.size_bytes", _setting("input.size_bytes", True)),
    ("models", _setting("models", None)), ("model_identity", _setting("model_identity", "x")),
    ("counts", _without("counts")), ("counts.frames", _setting("counts.frames", "many")),
    ("counts.frames", _setting("counts.frames", -1)), ("counts.frames", _setting("counts.frames", None)),
    ("counts.records", _setting("counts.records", 2.0)), ("counts.bases", _setting("counts.bases", False)),
    ("timings_s", _setting("timings_s", [])), ("timings_s.total", _setting("timings_s.total", "1")),
    ("timings_s.total", _setting("timings_s.total", float("nan"))),
    ("throughput", _without("throughput")),
    ("throughput.steady_s", _setting("throughput.steady_s", "1")),
    ("device", _setting("device", "cpu")),
    ("precision", _setting("precision", 16)), ("backend", _setting("backend", ["torch"])),
    ("engines", _setting("engines", {})),
    ("shards", _setting("shards", 3)), ("shards.total", _setting("shards.total", 1.5)),
    ("workers", _setting("workers", {})), ("workers", _setting("workers", ["slot 0"])),
    ("restarts", _without("restarts")), ("restarts", _setting("restarts", "0")),
    ("model_weights", _setting("model_weights", [])),
    ("outputs", _without("outputs")), ("outputs", _setting("outputs", ["frames.tsv"])),
    ("outputs.frames.tsv", _setting("outputs", {"frames.tsv": "10 bytes"})),
    ("split", _setting("split", "one")), ("split.split_id", _setting("split", {"split_id": 1, "parts": 2})),
    ("split.parts", _setting("split", {"split_id": _SHA, "parts": "2"})),
    ("parts", _setting("parts", {})), ("parts[0].run_json_sha256", _setting("parts", [{"part": 1}])),
    ("parts", _setting("parts", [None])),
]  # fmt: skip


@pytest.mark.parametrize(("field", "edit"), _DAMAGED, ids=[f"{f}-{i}" for i, (f, _) in enumerate(_DAMAGED)])
def test_a_field_missing_or_of_the_wrong_type_is_named_never_a_traceback(field, edit) -> None:
    """A hostile run.json fails in the one parser with RunRecordError naming the field (readers make it
    "another run's" / "damaged"), never a KeyError or TypeError from a reader."""
    data = _merge_record() if field.startswith(("split", "parts")) else _predict_record()
    edit(data)
    with pytest.raises(RunRecordError, match=rf"^{re.escape(field)}[:.\[]") as caught:
        RunRecord.from_json(data)
    assert not isinstance(caught.value, NotFinishedRun)


@pytest.mark.parametrize(
    "data",
    [None, [], "run", 3, {}, {"status": "complete"}, {"tool": "virnucpro-trt"}, UNREADABLE,
     {**_predict_record(), "status": "running"}, {**_predict_record(), "tool": "other-tool"}],
)  # fmt: skip
def test_anything_but_a_finished_run_of_this_tool_is_not_finished(data) -> None:
    with pytest.raises(NotFinishedRun, match="not a complete virnucpro-trt run"):
        RunRecord.from_json(data)


def test_a_run_json_file_reads_as_a_record_none_or_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    assert read_run_record(path) is None
    path.write_text(json.dumps(_predict_record(), indent=2) + "\n")
    assert read_run_record(path) == RunRecord.from_json(_predict_record())
    for text in ("{not json", "[1]", '{"tool": "virnucpro-trt", "status": "complete"}'):
        path.write_text(text)
        with pytest.raises(RunRecordError):
            read_run_record(path)
    path.write_text(
        json.dumps({**_predict_record(), "counts": {"frames": 0}}).replace(
            '"frames": 0', '"frames": 1' + "0" * 5000
        )
    )
    with pytest.raises(RunRecordError):  # Python refuses to convert so many digits: not JSON then
        read_run_record(path)
    path.write_text(json.dumps({**_predict_record(), "timings_s": {"total": 10**400}}))
    with pytest.raises(RunRecordError, match=r"timings_s\.total"):  # past any float: summing it overflows
        read_run_record(path)
