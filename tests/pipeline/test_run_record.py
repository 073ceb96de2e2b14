"""run.json read back as hostile input, and the one throughput rule predict and merge both write."""

from __future__ import annotations

import json
import os
from pathlib import Path

from virnucpro_trt.pipeline import run_record
from virnucpro_trt.pipeline.run_record import UNREADABLE, read_run_json, throughput


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

