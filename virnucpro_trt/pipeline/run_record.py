"""run.json, the account of one finished run (``predict``, or ``merge`` of a split's parts): how it is
read back, and the throughput block both writers compute by one rule.

A run.json is read back by a rerun (is the finished run there this very run?) and by ``merge`` (is each
part a finished predict of its split?). Either way it is hostile input: bounded in size, a JSON object,
its fields checked by the reader that relies on them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from virnucpro_trt.files.bounded_read import read_bounded
from virnucpro_trt.files.json_fields import parse_json

MAX_RUN_JSON_BYTES = 64 << 20
UNREADABLE: dict[str, Any] = {"status": "unreadable"}  # a damaged or foreign file: another run's


def read_run_json(path: Path) -> dict[str, Any] | None:
    """A run.json, or None when there is no regular file there; a damaged or foreign one reads as
    :data:`UNREADABLE` (whose status is not "complete": another run's). A link, FIFO or folder there
    counts as none: the stray-file check then refuses it."""
    if path.is_symlink() or not path.is_file():
        return None
    try:
        data = parse_json(read_bounded(path, MAX_RUN_JSON_BYTES))
    except (OSError, ValueError):  # FileTooLarge and a FIFO swapped in included
        return dict(UNREADABLE)
    return data if isinstance(data, dict) else dict(UNREADABLE)


def throughput(
    frames: int, records: int, timings_s: dict[str, float], steady_s: float | None
) -> dict[str, Any]:
    """run.json's ``throughput`` block: ``frames`` scored over the encoders' summed time, over the wall
    time the workers ran, and over the steady state (every worker ready to the last shard done: start-up
    and shutdown left out; None when not measured), and ``records`` over the whole command."""
    encoder_s = timings_s.get("embed_dnabert", 0.0) + timings_s.get("embed_esm", 0.0)
    return {
        "frames_per_s_encoders": round(frames / max(encoder_s, 1e-9), 2),
        "frames_per_s_workers_wall": round(frames / max(timings_s.get("workers", 0.0), 1e-9), 2),
        "frames_per_s_steady": round(frames / steady_s, 2) if steady_s else None,
        "steady_s": round(steady_s, 4) if steady_s is not None else None,
        "reads_per_s_total": round(records / max(timings_s.get("total", 0.0), 1e-9), 2),
    }
