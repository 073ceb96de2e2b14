"""The shard done-marker: its JSON layout, and markers read back as hostile input (redo, no traceback)."""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
from pathlib import Path

import pytest

from virnucpro_trt.files.json_fields import FieldError
from virnucpro_trt.files.stamps import file_stamp
from virnucpro_trt.outputs.shard_results import write_shard_results
from virnucpro_trt.runtime.resume import WorkDir
from virnucpro_trt.runtime.shard_marker import (
    MAX_MARKER_BYTES,
    ShardMarker,
    ShardReport,
    marker_path,
    result_roles,
)
from virnucpro_trt.runtime.shards import ShardSpec
from virnucpro_trt.runtime.worker_messages import Done

SHARD = ShardSpec(id=3, first=768, records=256, bases=1000, chunks=300, frames=200, file="shard-000003.fa",
                  size_bytes=2000, sha256="0" * 64)  # fmt: skip
REPORT = ShardReport(
    counts={"records": 256, "frames": 200, "virus_frames": 7},
    timings_s={"prepare": 0.25, "process": 1.5},
    worker=1,
    device="cuda:1",
    device_name="NVIDIA H200",
    attempt=2,
    pid=4242,
)
CONTENTS = {"prediction": b"p\n", "frames": b"f\n", "sequences": b"s\n", "maxima": b"m\n"}


def _written(tmp_path: Path, contents: dict[str, bytes] = CONTENTS) -> tuple[WorkDir, ShardMarker]:
    work = WorkDir(tmp_path)
    work.results.mkdir(parents=True)
    return work, write_shard_results(work.results, SHARD, contents, REPORT)


def test_the_marker_keeps_its_json_layout_and_reads_back_equal(tmp_path: Path) -> None:
    _, marker = _written(tmp_path)
    data = json.loads(marker_path(tmp_path / ".work" / "results", SHARD).read_text())
    assert list(data) == [
        "schema", "shard", "first_record", "records", "counts", "timings_s", "worker", "device",
        "device_name", "attempt", "pid", "files",
    ]  # fmt: skip
    assert (data["schema"], data["shard"], data["first_record"], data["records"]) == (2, 3, 768, 256)
    maxima = tmp_path / ".work" / "results" / "shard-000003.maxima.tsv"
    assert data["files"]["maxima"] == {
        "name": "shard-000003.maxima.tsv",
        "bytes": 2,
        "sha256": hashlib.sha256(b"m\n").hexdigest(),
        "stamp": file_stamp(maxima),
    }
    assert data["counts"] == REPORT.counts and data["timings_s"] == REPORT.timings_s
    assert (data["worker"], data["device"], data["device_name"], data["attempt"], data["pid"]) == (
        1, "cuda:1", "NVIDIA H200", 2, 4242,
    )  # fmt: skip
    assert list(data["files"]) == ["prediction", "frames", "sequences", "maxima"]
    assert ShardMarker.from_json(data) == marker
    assert (marker.frames, marker.process_s) == (200, 1.5)
    assert pickle.loads(pickle.dumps(Done(1, 3, marker))) == Done(1, 3, marker)  # crosses the process line


def _hostile(data: dict) -> list[tuple[str, object]]:
    """Marker JSON variants a kill, an editor or a prankster could leave: each must mean "redo"."""
    files = data["files"]
    unstamped = {k: v for k, v in files["frames"].items() if k != "stamp"}

    def frames_file(**change: object) -> dict:
        return {**data, "files": {**files, "frames": {**files["frames"], **change}}}

    return [
        ("counts as text", {**data, "counts": "many"}),
        ("a count that is true", {**data, "counts": {**data["counts"], "frames": True}}),
        ("a negative count", {**data, "counts": {**data["counts"], "frames": -1}}),
        ("an infinite timing", {**data, "timings_s": {"process": float("inf")}}),
        ("no maxima file", {**data, "files": {k: v for k, v in files.items() if k != "maxima"}}),
        ("a file outside the shard", frames_file(name="../x")),
        ("another shard's file", frames_file(name="shard-000004.frames.tsv")),
        ("an unknown role", {**data, "files": {**files, "notes": files["frames"]}}),
        ("a size that is text", frames_file(bytes="2")),
        ("no SHA-256", frames_file(sha256="x")),
        ("a stamp that is text", frames_file(stamp="1")),
        ("a stamp with a negative field", frames_file(stamp=[2, -1])),
        ("a stamp with a flag", frames_file(stamp=[True])),
        ("no stamp in schema 2", {**data, "files": {**files, "frames": unstamped}}),
        ("a stamp in schema 1", {**data, "schema": 1}),
        ("an extra key", {**data, "note": 1}),
        ("a missing key", {k: v for k, v in data.items() if k != "pid"}),
        ("another schema", {**data, "schema": 3}),
        ("a schema that is true", {**data, "schema": True}),
        ("not an object", [data]),
        ("attempt 0", {**data, "attempt": 0}),
    ]  # fmt: skip


def test_a_malformed_marker_means_redo_the_shard(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    work, marker = _written(tmp_path)
    path = marker_path(work.results, SHARD)
    roles = result_roles(embeddings=False)
    assert work.finished_shards([SHARD], roles) == {SHARD.id: marker}
    for what, variant in _hostile(marker.to_json()):
        with pytest.raises(FieldError):
            ShardMarker.from_json(variant)
        path.write_text(json.dumps(variant))
        with caplog.at_level(logging.WARNING):
            assert work.finished_shards([SHARD], roles) == {}, what
        assert not path.exists(), what
        assert "shard 3 (records 769-1024) will be redone: its marker is malformed" in caplog.text, what
        caplog.clear()
    for raw in (b"{", b"\xff\xfe", b"[1, 2", b" " * (MAX_MARKER_BYTES + 1)):
        path.write_bytes(raw)
        assert work.finished_shards([SHARD], roles) == {} and not path.exists()


def test_a_run_that_saves_embeddings_redoes_a_shard_without_them(tmp_path: Path) -> None:
    work, _ = _written(tmp_path)
    assert work.finished_shards([SHARD], result_roles(embeddings=True)) == {}
    _, with_embeddings = _written(tmp_path / "e", {**CONTENTS, "embeddings": b"npz"})
    work = WorkDir(tmp_path / "e")
    assert work.finished_shards([SHARD], result_roles(embeddings=True)) == {SHARD.id: with_embeddings}


def test_a_resume_reads_again_only_result_files_whose_stamp_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Result files still carrying the stamps in their marker are not hashed again (with
    --save-embeddings they are most of a run's bytes); a same-size replacement is hashed and refused."""
    from virnucpro_trt.files import stamps

    work, marker = _written(tmp_path)
    roles = result_roles(embeddings=False)
    hashed: list[str] = []
    sha256_file = stamps.sha256_file

    def counted(path: Path) -> str:
        hashed.append(Path(path).name)
        return sha256_file(path)

    monkeypatch.setattr(stamps, "sha256_file", counted)
    assert work.finished_shards([SHARD], roles) == {SHARD.id: marker} and hashed == []
    frames = work.results / "shard-000003.frames.tsv"
    replacement = frames.with_name("replacement")
    replacement.write_bytes(b"F\n")  # same size, other content, put in place as an editor saves
    replacement.replace(frames)
    with caplog.at_level(logging.WARNING):
        assert work.finished_shards([SHARD], roles) == {}
    assert hashed == ["shard-000003.frames.tsv"]
    assert "will be redone: its frames file does not match its recorded SHA-256" in caplog.text
    assert not marker_path(work.results, SHARD).exists()


def test_a_marker_of_schema_1_is_still_read_and_its_files_hashed(tmp_path: Path) -> None:
    """Markers written before stamps (schema 1) keep their shards on resume, verified by hashing."""
    work, marker = _written(tmp_path)
    data = marker.to_json()
    data["schema"] = 1
    for entry in data["files"].values():
        del entry["stamp"]
    marker_path(work.results, SHARD).write_text(json.dumps(data))
    (finished,) = work.finished_shards([SHARD], result_roles(embeddings=False)).values()
    assert all(entry.stamp == () for entry in finished.files.values())
    (work.results / "shard-000003.prediction.txt").write_bytes(b"P\n")  # no stamp: the hash sees it
    assert work.finished_shards([SHARD], result_roles(embeddings=False)) == {}


def test_a_damaged_state_file_says_it_discards_finished_shards(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """state.json names the run the finished shards belong to; damaged, they cannot be trusted and are
    computed again, and the run says so (they were discarded without a word)."""
    work, _ = _written(tmp_path)
    work.write_state("a" * 64, "f" * 64, {})
    for damaged in (b"{", b"[]", b"[" * 100_000):
        work.state_path.write_bytes(damaged)
        with caplog.at_level(logging.WARNING):
            assert work.open("a" * 64, "f" * 64, force=False) is False
        assert "state.json is missing or damaged, so its 1 finished shard(s)" in caplog.text
        assert not work.root.exists()
        caplog.clear()
        work, _ = _written(tmp_path)


@pytest.mark.parametrize("recorded", ["0.0.9", None, 7])
def test_finished_shards_of_another_version_are_never_mixed_in(tmp_path: Path, recorded: object) -> None:
    """The tool's version is part of the resume key: shards computed by another version's code (or by a
    state that does not say which) are refused while any finished, discarded with --force, and a state
    without finished shards is simply discarded."""
    from virnucpro_trt import __version__
    from virnucpro_trt.errors import UserError

    work, _ = _written(tmp_path)
    work.write_state("a" * 64, "f" * 64, {})
    assert json.loads(work.state_path.read_text())["version"] == __version__
    assert work.open("a" * 64, "f" * 64, force=False) is True
    assert work.holds_run("a" * 64, "f" * 64)
    state = json.loads(work.state_path.read_text())
    state["version"] = recorded
    if recorded is None:
        del state["version"]
    work.state_path.write_text(json.dumps(state))
    assert not work.holds_run("a" * 64, "f" * 64)
    refused = r"1 finished shard\(s\) of a run with (another|no recorded) virnucpro-trt"
    with pytest.raises(UserError, match=refused):
        work.open("a" * 64, "f" * 64, force=False)
    assert work.state_path.exists()
    try:
        work.open("a" * 64, "f" * 64, force=False)
    except UserError as exc:
        if recorded is None:
            assert "no recorded virnucpro-trt version" in str(exc) and "original command" in str(exc)
        else:
            assert f"({recorded}, this is {__version__})" in str(exc) and "rerun that version" in str(exc)
    assert work.open("a" * 64, "f" * 64, force=True) is False
    assert not work.root.exists()
