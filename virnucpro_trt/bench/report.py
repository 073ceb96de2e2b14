"""The bench result: one JSON document with the machine, the workload and one row per configuration.

Schema (``schema_version`` 1)::

    {"schema": "virnucpro-trt/bench", "schema_version": 1, "version", "command", "started", "complete",
     "settings": {...}, "hardware": {...}, "workload": {...}, "models": {...}, "gate": {...} | null,
     "results": [{"config", "backend", "precision", "device", "gpus", "status", "reason",
                  "frames", "reads", "tokens", "extrapolated", "seconds", "passes_s", "warmup_s",
                  "stages_s", "frames_per_s", "reads_per_s", "tokens_per_s", "speedup_vs_reference",
                  "speedup_vs_compile", "compile_baseline",
                  "parity": {"frames", "dnabert_min_cos", "esm_min_cos", "label_agreement",
                             "max_abs_score_diff", ..., "frames_off_count",
                             "frames_off": [{"frame", "dnabert_cos", "esm_cos", "label_flipped"}]} | null,
                  "batching", "padding": {"dnabert": {...}, "esm": {...}} | null, "engine",
                  "compile", "open_s"}, ...]}

Every row has every key; a row that did not run (``status`` ``unavailable`` or ``failed``) has ``null``
figures and a one-line ``reason``. Throughput counts one median pass of the whole path; model loading
and engine building are outside it (``open_s``, ``engine.build_s``). ``reads_per_s`` is
``frames_per_s`` times the workload's reads per kept frame, so a row timed on a subset (the reference,
``extrapolated: true``) is extrapolated per frame like the others are measured.

``speedup_vs_compile`` is against the peer (:mod:`.peer`): the ``compile`` row of the row's own precision
when it ran, else ``compile-bf16`` (the peer the performance goals are stated against), else the first
``compile`` row that ran; ``compile_baseline`` names the row used, and both are ``null`` when no
``compile`` row ran. ``padding`` is per encoder, from the batches the pass actually ran
(:class:`~virnucpro_trt.runtime.embedding.BatchStats`): ``padded_fraction`` = padded tokens / computed
tokens. ``compile`` holds a compiled row's facts (mode, quantisation, torchao version, Inductor options
the quantisation changed, graphs compiled).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from virnucpro_trt import __version__
from virnucpro_trt.bench.config_names import PEER, REFERENCE
from virnucpro_trt.files.atomic import write_text_atomic

if TYPE_CHECKING:
    import torch

SCHEMA = "virnucpro-trt/bench"
SCHEMA_VERSION = 1
RESULT_KEYS = (
    "config", "backend", "precision", "device", "gpus", "status", "reason", "frames", "reads", "tokens",
    "extrapolated", "seconds", "passes_s", "warmup_s", "stages_s", "frames_per_s", "reads_per_s",
    "tokens_per_s", "speedup_vs_reference", "speedup_vs_compile", "compile_baseline", "parity", "batching",
    "padding", "engine", "compile", "open_s",
)  # fmt: skip
PEER_DEFAULT_PRECISION = "bf16"


def new_report(
    hardware: dict[str, Any], workload: dict[str, Any], models: dict[str, Any], settings: Any
) -> dict[str, Any]:
    """The report before any configuration ran (``complete`` false until the loop ends)."""
    settings_json = _plain(dataclasses.asdict(settings))
    settings_json.pop("command", None)
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "tool": "virnucpro-trt",
        "version": __version__,
        "command": list(settings.command),
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "complete": False,
        "settings": settings_json,
        "hardware": hardware,
        "workload": workload,
        "models": models,
        "gate": None,
        "results": [],
    }


def result_row(
    spec: Any,
    device: torch.device,
    status: str,
    *,
    reason: str | None = None,
    frames: int | None = None,
    reads: int | None = None,
    tokens: int | None = None,
    seconds: float | None = None,
    passes_s: tuple[float, ...] = (),
    warmup_s: float | None = None,
    stages_s: dict[str, float] | None = None,
    workload: dict[str, Any] | None = None,
    reference_row: dict[str, Any] | None = None,
    parity: dict[str, Any] | None = None,
    batching: dict[str, Any] | None = None,
    padding: dict[str, Any] | None = None,
    engine: dict[str, Any] | None = None,
    compile: dict[str, Any] | None = None,
    open_s: float | None = None,
) -> dict[str, Any]:
    """One configuration's row with every key of the schema (figures ``None`` unless it ran)."""
    frames_per_s = reads_per_s = tokens_per_s = speedup = None
    if status == "ok" and seconds and frames and tokens is not None and workload:
        frames_per_s = frames / seconds
        reads_per_s = frames_per_s * workload["reads"] / workload["frames"]
        tokens_per_s = tokens / seconds
        if spec.backend == REFERENCE:
            speedup = 1.0
        elif reference_row is not None and reference_row.get("frames_per_s"):
            speedup = frames_per_s / reference_row["frames_per_s"]
    ran = status == "ok"
    return {
        "config": spec.name,
        "backend": spec.backend,
        "precision": spec.precision,
        "device": str(device),
        "gpus": 1 if device.type == "cuda" else 0,
        "status": status,
        "reason": reason,
        "frames": frames,
        "reads": reads,
        "tokens": tokens,
        "extrapolated": bool(ran and workload and frames is not None and frames < workload["frames"]),
        "seconds": _round(seconds, 6),
        "passes_s": [_round(p, 6) for p in passes_s],
        "warmup_s": _round(warmup_s, 4),
        "stages_s": {k: _round(v, 6) for k, v in stages_s.items()} if stages_s else None,
        "frames_per_s": _round(frames_per_s, 3),
        "reads_per_s": _round(reads_per_s, 3),
        "tokens_per_s": _round(tokens_per_s, 1),
        "speedup_vs_reference": speedup if speedup == 1.0 else _round(speedup, 4),
        "speedup_vs_compile": None,  # filled over the whole table by fill_compile_speedups
        "compile_baseline": None,
        "parity": parity,
        "batching": batching,
        "padding": padding if ran else None,
        "engine": engine,
        "compile": compile,
        "open_s": open_s,
    }


def compile_baseline(rows: list[dict[str, Any]], precision: str) -> dict[str, Any] | None:
    """The peer a row of ``precision`` is compared with (see the module docstring), or None."""
    ran = [r for r in rows if r["backend"] == PEER and r["status"] == "ok" and r["frames_per_s"]]
    for wanted in (precision, PEER_DEFAULT_PRECISION):
        for row in ran:
            if row["precision"] == wanted:
                return row
    return ran[0] if ran else None


def fill_compile_speedups(rows: list[dict[str, Any]]) -> None:
    """Set every row's ``speedup_vs_compile``/``compile_baseline`` from the compile rows so far (the
    compile rows may run after the rows they are compared with, so the whole table is redone)."""
    for row in rows:
        baseline = compile_baseline(rows, row["precision"])
        ran = row["status"] == "ok" and row["frames_per_s"]
        if baseline is None or not ran:
            row["speedup_vs_compile"] = row["compile_baseline"] = None
            continue
        speedup = row["frames_per_s"] / baseline["frames_per_s"]
        row["speedup_vs_compile"] = 1.0 if row is baseline else _round(speedup, 4)
        row["compile_baseline"] = baseline["config"]


def _plain(value: Any) -> Any:
    """Paths as strings and tuples as lists, recursively (what JSON can hold)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(float(value), digits)


def _finite(value: Any) -> Any:
    """NaN/Inf are not JSON: write them as null (the row's ``finite`` flag says what happened)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def write_json(report: dict[str, Any], path: Path) -> None:
    """Write atomically (temporary name, then rename): a file that exists is a whole document."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(_finite(report), indent=2, allow_nan=False) + "\n")
