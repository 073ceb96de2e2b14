"""JSON read back from files treated as hostile: every way the text is wrong is one ValueError, which
each reader turns into its one-line refusal (or "redo that work"), never an unexpected failure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from virnucpro_trt.engines.manifest import MANIFEST_NAME, EngineManifest
from virnucpro_trt.errors import CheckpointError, EngineMismatchError
from virnucpro_trt.files.json_fields import FieldError, number, parse_json, read_json_object, timings
from virnucpro_trt.models.checkpoint_io import read_json

DEEP = "[" * 200_000 + "]" * 200_000  # past the parser's recursion: a RecursionError before
HUGE_INT = '{"hidden_size": ' + "9" * 5000 + "}"  # past Python's int digits limit: a plain ValueError


@pytest.mark.parametrize("text", [DEEP, HUGE_INT, "{", b"\xff\xfe"], ids=["deep", "huge-int", "cut", "bytes"])
def test_every_malformed_text_is_a_value_error(text: str | bytes, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        parse_json(text)
    path = tmp_path / "f.json"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    with pytest.raises(FieldError, match="not JSON"):  # done-markers, worker facts, output records
        read_json_object(path, 1 << 20)


@pytest.mark.parametrize("text", [DEEP, HUGE_INT], ids=["deep", "huge-int"])
def test_a_model_config_and_an_engine_manifest_are_refused_in_one_line(text: str, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(CheckpointError, match=r"config\.json: not valid JSON"):
        read_json(tmp_path / "config.json")
    (tmp_path / MANIFEST_NAME).write_text(text)
    with pytest.raises(EngineMismatchError, match="is not valid JSON"):
        EngineManifest.read(tmp_path)


def test_ordinary_json_reads_as_json() -> None:
    assert parse_json(b'{"a": [1, 2.5, null]}') == json.loads('{"a": [1, 2.5, null]}')


@pytest.mark.parametrize("value", [10**400, -(10**400), float("nan"), float("inf"), True, "1", None])
def test_a_number_no_float_holds_is_a_field_error_not_an_overflow(value: object) -> None:
    """A shard marker's or worker's seconds of 10**400 made ``math.isfinite`` raise OverflowError, an
    unexpected failure instead of "redo that work"."""
    with pytest.raises(FieldError, match="total: not a finite number"):
        timings({"timings_s": {"total": value}}, "timings_s")
    with pytest.raises(FieldError):
        number({"x": value}, "x")
    assert number({"x": 10**300}, "x") == 1e300
