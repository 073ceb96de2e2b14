"""``convert-classifier`` run again onto its own unchanged output writes nothing (``UP TO DATE``, the input
width read from the output's own header); anything that changes the output (the checkpoint's bytes or
name, the tool's version, the output removed or edited) converts again under the ownership rules, and
``--force`` always does. The record is anyone's to edit: an entry of another shape never skips, and a
forged output is never reported as made. Each case is the real CLI on a tiny classifier."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import struct
from pathlib import Path

import pytest

from tests.cli.helpers import CliResult, run_cli
from virnucpro_trt.files.digests import sha256_file
from virnucpro_trt.files.ownership import RECORD
from virnucpro_trt.models.classifier import converted_input_width
from virnucpro_trt.models.random_classifier import write_upstream_classifier
from virnucpro_trt.pipeline import convert as convert_module

WIDTH = 40
_LINE = re.compile(r"(PASSED|UP TO DATE): \S+ -> \S+ \(input width (\d+)")


@pytest.fixture()
def checkpoint(tmp_path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    return write_upstream_classifier(folder / "500_model.pth", WIDTH, seed=3)


def _convert(checkpoint: Path, output: Path, *extra: str) -> CliResult:
    return run_cli("convert-classifier", str(checkpoint), str(output), *extra)


def _outcome(result: CliResult) -> tuple[str, int]:
    """The outcome and input width of the one line that reports them."""
    found = [m for line in result.stderr.splitlines() if (m := _LINE.search(line))]
    assert len(found) == 1, result.stderr
    return found[0].group(1), int(found[0].group(2))


def _identity(path: Path) -> tuple[int, int, bytes]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, path.read_bytes()


def _no_loading(*args, **kwargs):
    raise AssertionError("the rerun read the checkpoint")


def test_a_rerun_onto_its_own_output_converts_nothing(checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "out" / "c.safetensors"
    first = _convert(checkpoint, out)
    assert first.code == 0 and _outcome(first) == ("PASSED", WIDTH), first.stderr
    written = _identity(out)
    with monkeypatch.context() as patch:
        patch.setattr(convert_module, "load_classifier_weights", _no_loading)
        again = _convert(checkpoint, out)
    assert again.code == 0 and _outcome(again) == ("UP TO DATE", WIDTH), again.stderr
    assert _identity(out) == written

    forced = _convert(checkpoint, out, "--force")
    assert forced.code == 0 and _outcome(forced) == ("PASSED", WIDTH), forced.stderr
    assert "--force: converting" in forced.stderr
    assert _identity(out)[1] != written[1] and _identity(out)[2] == written[2]


def test_the_same_checkpoint_elsewhere_is_up_to_date(checkpoint, tmp_path):
    """Content and file name identify the checkpoint, not the folder it is read from."""
    out = tmp_path / "c.safetensors"
    assert _convert(checkpoint, out).code == 0
    copy = tmp_path / "copy" / checkpoint.name
    copy.parent.mkdir()
    shutil.copyfile(checkpoint, copy)
    assert _outcome(_convert(copy, out))[0] == "UP TO DATE"


@pytest.mark.parametrize("change", ["weights", "name", "version", "output removed"])
def test_what_changes_the_output_converts_again(checkpoint, tmp_path, monkeypatch, change):
    out = tmp_path / "c.safetensors"
    assert _convert(checkpoint, out).code == 0
    written = out.read_bytes()
    if change == "weights":  # other weights at the same path
        write_upstream_classifier(checkpoint, WIDTH, seed=4)
    elif change == "name":  # the same weights under another name: the output's "source" metadata differs
        checkpoint = Path(shutil.copyfile(checkpoint, checkpoint.with_name("300_model.pth")))
    elif change == "version":
        monkeypatch.setattr(convert_module, "__version__", "0.0.0-other")
    else:
        out.unlink()
    again = _convert(checkpoint, out)
    assert again.code == 0 and _outcome(again) == ("PASSED", WIDTH), (change, again.stderr)
    assert (out.read_bytes() == written) == (change in ("version", "output removed")), change
    assert _outcome(_convert(checkpoint, out))[0] == "UP TO DATE", change


def test_an_output_edited_since_is_still_refused(checkpoint, tmp_path):
    out = tmp_path / "c.safetensors"
    assert _convert(checkpoint, out).code == 0
    with open(out, "ab") as handle:
        handle.write(b"x")
    again = _convert(checkpoint, out)
    assert again.code == 2 and "changed since virnucpro-trt wrote it" in again.stderr, again.stderr
    assert out.read_bytes().endswith(b"x")
    forced = _convert(checkpoint, out, "--force")
    assert forced.code == 0 and _outcome(forced)[0] == "PASSED", forced.stderr


def _key(out: Path) -> dict:
    return json.loads((out.parent / RECORD).read_text())["files"][out.name]["made"]["key"]


def _edit_made(out: Path, made: object) -> None:
    record_file = out.parent / RECORD
    record = json.loads(record_file.read_text())
    record["files"][out.name]["made"] = made
    record_file.write_text(json.dumps(record))


@pytest.mark.parametrize(
    "edit",
    [
        lambda key: "garbage",
        lambda key: None,
        lambda key: {"key": [key]},
        lambda key: {"key": {}},
        lambda key: {"key": {**key, "checkpoint_sha256": "0" * 64}},
        lambda key: {"key": {**key, "source": key["source"] + "\nUP TO DATE"}},
        lambda key: {"key": {**key, "version": 10**40}},
        lambda key: {"key": {**key, "command": "prepare"}},
        lambda key: {"key": {k: v for k, v in key.items() if k != "source"}},
    ],
    ids=[
        "a string", "null", "key a list", "key empty", "other checkpoint", "newline in source",
        "huge number", "another command", "no source",
    ],
)  # fmt: skip
def test_an_edited_record_entry_converts_again(checkpoint, tmp_path, edit):
    out = tmp_path / "c.safetensors"
    assert _convert(checkpoint, out).code == 0
    _edit_made(out, edit(_key(out)))
    again = _convert(checkpoint, out)
    assert again.code == 0 and _outcome(again) == ("PASSED", WIDTH), again.stderr
    assert "Traceback" not in again.stderr
    assert _outcome(_convert(checkpoint, out))[0] == "UP TO DATE"


def test_a_width_written_into_the_record_is_never_printed(checkpoint, tmp_path):
    out = tmp_path / "c.safetensors"
    assert _convert(checkpoint, out).code == 0
    _edit_made(out, {"key": _key(out), "input_dim": 999, "width": "7\nPASSED"})
    again = _convert(checkpoint, out)
    assert again.code == 0 and _outcome(again) == ("UP TO DATE", WIDTH), again.stderr
    assert "999" not in again.stderr


def _safetensors(header: object, data: bytes = b"", length: int | None = None) -> bytes:
    text = json.dumps(header).encode() if not isinstance(header, bytes) else header
    return struct.pack("<Q", len(text) if length is None else length) + text + data


def _ours(
    shape: object = (2, 10), dtype: str = "F32", span: object = None, fmt: str = "virnucpro-classifier"
) -> dict:
    """A header like a conversion's (only the tensor the width is read from)."""
    size = 4 * 2 * 10
    weight = {"dtype": dtype, "shape": list(shape) if isinstance(shape, tuple) else shape,
              "data_offsets": [0, size] if span is None else span}  # fmt: skip
    return {"__metadata__": {"format": fmt}, "hidden_layer.weight": weight}


FORGED = {
    "not json": _safetensors(b"{not json", bytes(80)),
    "not utf-8": _safetensors(b'{"\xff": 1}', bytes(80)),
    "a list": _safetensors([1, 2], bytes(80)),
    "huge header length": _safetensors(_ours(), bytes(80), length=2**63),
    "header past the end": _safetensors(_ours(), b"", length=4096),
    "another format": _safetensors(_ours(fmt="other"), bytes(80)),
    "no metadata": _safetensors({"hidden_layer.weight": _ours()["hidden_layer.weight"]}, bytes(80)),
    "fp16": _safetensors(_ours(dtype="F16"), bytes(80)),
    "huge width": _safetensors(_ours(shape=(2, 10**40)), bytes(80)),
    "width a bool": _safetensors(_ours(shape=[2, True]), bytes(80)),
    "width a string": _safetensors(_ours(shape=[2, "10\nPASSED"]), bytes(80)),
    "width zero": _safetensors(_ours(shape=(2, 0)), bytes(80)),
    "three dimensions": _safetensors(_ours(shape=(2, 10, 1)), bytes(80)),
    "span too short": _safetensors(_ours(span=[0, 8]), bytes(80)),
    "span past the end": _safetensors(_ours(), bytes(8)),
    "deep nesting": _safetensors(b"[" * 30_000 + b"]" * 30_000, bytes(80)),
    "header too long": _safetensors(b" " * 70_000 + json.dumps(_ours()).encode(), bytes(80)),
    "empty": b"",
}


@pytest.mark.parametrize("name", sorted(FORGED))
def test_the_width_is_read_only_from_a_conversions_header(tmp_path, name):
    path = tmp_path / "c.safetensors"
    path.write_bytes(FORGED[name])
    assert converted_input_width(path) is None


def test_the_width_is_read_from_a_conversion(checkpoint, tmp_path):
    path = tmp_path / "c.safetensors"
    assert _convert(checkpoint, path).code == 0
    assert converted_input_width(path) == WIDTH
    well_formed = tmp_path / "w.safetensors"
    well_formed.write_bytes(_safetensors(_ours(), bytes(80)))
    assert converted_input_width(well_formed) == 10


@pytest.mark.parametrize("name", ["huge width", "another format", "not json"])
def test_a_forged_output_is_converted_again(checkpoint, tmp_path, name):
    """An output replaced together with its entry (size and SHA-256, the made entry kept): what anyone who
    can write the folder can do. Its header is not a conversion's, so the checkpoint is converted again
    and no figure of the forged file is printed."""
    out = tmp_path / "c.safetensors"
    assert _convert(checkpoint, out).code == 0
    written = out.read_bytes()
    out.write_bytes(FORGED[name])
    record_file = out.parent / RECORD
    record = json.loads(record_file.read_text())
    entry = record["files"][out.name]
    entry.pop("stamp")
    entry.update(bytes=len(FORGED[name]), sha256=sha256_file(out))
    record_file.write_text(json.dumps(record))
    again = _convert(checkpoint, out)
    assert again.code == 0 and _outcome(again) == ("PASSED", WIDTH), again.stderr
    assert out.read_bytes() == written


def test_a_checkpoint_through_a_pipe_is_refused_in_one_line(checkpoint, tmp_path):
    """``convert-classifier <(cat model.pth) out``: a pipe is read once, so it cannot be hashed and then
    read; it is refused as no file (exit 2, one line), as before the rerun rule hashed checkpoints."""
    import os
    import threading

    read_end, write_end = os.pipe()

    def feed() -> None:
        with open(write_end, "wb") as pipe, contextlib.suppress(BrokenPipeError):
            pipe.write(checkpoint.read_bytes())

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        result = _convert(Path(f"/dev/fd/{read_end}"), tmp_path / "out" / "c.safetensors")
    finally:
        os.close(read_end)
        feeder.join(timeout=10)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.code == 2 and len(errors) == 1 and "is not a file" in errors[0], result.stderr
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_named_in_bytes_that_are_not_utf8_converts(checkpoint, tmp_path):
    """A file name is bytes on Linux; one that is not UTF-8 (a Latin-1 name, say) reaches Python as lone
    surrogates, which the safetensors header cannot hold: it is kept escaped, and the rerun finds it."""
    import os

    named = Path(os.fsdecode(bytes(tmp_path) + b"/mod\xe8le.pth"))
    shutil.copyfile(checkpoint, named)
    out = tmp_path / "out" / "c.safetensors"
    first = _convert(named, out)
    assert first.code == 0 and "PASSED" in first.stderr, first.stderr
    data = out.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    assert json.loads(data[8 : 8 + length])["__metadata__"]["source"] == "mod\\udce8le.pth"
    assert "UP TO DATE" in _convert(named, out).stderr
