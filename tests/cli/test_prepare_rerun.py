"""``prepare`` run again onto its own two unchanged files writes nothing (``UP TO DATE``, the counts a
computing run prints); anything that changes the files (input bytes, chunk length, the tool's version, a
file removed or edited) writes them again under the ownership rules, and ``--force`` always does. The
record is anyone's to edit: an entry of another shape never skips and never crashes, and no count is
taken from it. Each case is the real CLI."""

from __future__ import annotations

import gzip
import io
import json
import re
import sys
from pathlib import Path

import pytest

from tests.cli.helpers import CliResult, run_cli
from virnucpro_trt.files.digests import sha256_file
from virnucpro_trt.files.ownership import RECORD
from virnucpro_trt.pipeline import prepare as prepare_module
from virnucpro_trt.sequences.prepare import NUCLEOTIDE_FILE, PROTEIN_FILE

FILES = (NUCLEOTIDE_FILE, PROTEIN_FILE)
_COUNTS = re.compile(r"(PASSED|UP TO DATE): (\d+) records -> (\d+) chunks -> (\d+) kept frames in ")


@pytest.fixture()
def reads(reads_fasta, tmp_path) -> Path:
    """A private copy of the session's reads: tests change it in place."""
    path = tmp_path / "in" / "reads.fa"
    path.parent.mkdir()
    path.write_bytes(reads_fasta.read_bytes())
    return path


def _prepare(reads: Path | str, out: Path, *extra: str) -> CliResult:
    return run_cli("prepare", str(reads), "-o", str(out), *extra)


def _identities(out: Path) -> list[tuple[int, int, bytes]]:
    """Both files as written (a file written again has a new inode and modification time)."""
    return [((out / n).stat().st_ino, (out / n).stat().st_mtime_ns, (out / n).read_bytes()) for n in FILES]


def _counts(result: CliResult) -> tuple[str, tuple[int, int, int]]:
    """The outcome and the records, chunks and frames of the one line that reports them."""
    found = [m for line in result.stderr.splitlines() if (m := _COUNTS.search(line))]
    assert len(found) == 1, result.stderr
    word, *numbers = found[0].groups()
    return word, (int(numbers[0]), int(numbers[1]), int(numbers[2]))


def _edit_made(out: Path, made: object, names: tuple[str, ...] = FILES) -> None:
    record_file = out / RECORD
    record = json.loads(record_file.read_text())
    for name in names:
        record["files"][name]["made"] = made
    record_file.write_text(json.dumps(record))


def _no_writing(*args, **kwargs):
    raise AssertionError("the rerun wrote the files again")


def test_a_rerun_onto_its_own_files_writes_nothing(reads, tmp_path, monkeypatch):
    out = tmp_path / "out"
    first = _prepare(reads, out)
    assert first.code == 0, first.stderr
    outcome, counts = _counts(first)
    assert outcome == "PASSED" and counts[2] > 0
    written = _identities(out)
    with monkeypatch.context() as patch:
        patch.setattr(prepare_module, "write_identified_files", _no_writing)
        again = _prepare(reads, out)
    assert again.code == 0, again.stderr
    assert _counts(again) == ("UP TO DATE", counts)  # the figures a computing run prints
    assert [line for line in again.stderr.splitlines() if "INFO" in line and "UP TO DATE" in line]
    assert _identities(out) == written

    forced = _prepare(reads, out, "--force")
    assert forced.code == 0 and _counts(forced) == ("PASSED", counts), forced.stderr
    assert "--force: writing" in forced.stderr
    assert [entry[1] for entry in _identities(out)] != [entry[1] for entry in written]  # written again
    assert [entry[2] for entry in _identities(out)] == [entry[2] for entry in written]  # the same bytes
    assert _counts(_prepare(reads, out)) == ("UP TO DATE", counts)


def test_stdin_with_the_same_bytes_is_up_to_date(reads, tmp_path, monkeypatch):
    """Stdin is copied before anything reads it, and the copy is hashed: the bytes as read name the input
    (compression and format are found from content, never a name), so ``-`` given the file's bytes finds
    the files made from that file, and other bytes on stdin write them again."""
    out = tmp_path / "out"
    assert _prepare(reads, out).code == 0
    written = _identities(out)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(reads.read_bytes())))
    again = _prepare("-", out)
    assert again.code == 0 and _counts(again)[0] == "UP TO DATE", again.stderr
    assert _identities(out) == written
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(reads.read_bytes() + b">more\nACGT\n")))
    other = _prepare("-", out)
    assert other.code == 0 and _counts(other)[0] == "PASSED", other.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted([RECORD, *FILES])  # no stdin copy left


def test_compressed_input_is_named_by_its_own_bytes(reads, tmp_path):
    """A gzip input is the same input while its bytes are; the same reads uncompressed are other bytes,
    so they write the files again (the same content: computing is the safe side)."""
    packed = tmp_path / "in" / "reads.fa.gz"
    packed.write_bytes(gzip.compress(reads.read_bytes(), mtime=0))
    out = tmp_path / "out"
    assert _prepare(packed, out).code == 0
    written = _identities(out)
    again = _prepare(packed, out)
    assert _counts(again)[0] == "UP TO DATE" and _identities(out) == written, again.stderr
    plain = _prepare(reads, out)
    assert _counts(plain)[0] == "PASSED", plain.stderr
    assert [entry[2] for entry in _identities(out)] == [entry[2] for entry in written]


@pytest.mark.parametrize(
    "change", ["input", "chunk length", "version", "nucleotide removed", "protein removed"]
)
def test_what_changes_the_files_writes_them_again(reads, tmp_path, monkeypatch, change):
    out = tmp_path / "out"
    assert _prepare(reads, out).code == 0
    extra: tuple[str, ...] = ()
    if change == "input":
        reads.write_text(reads.read_text() + ">extra\nATGAAACCCGGGTTTAAACCCGGGTTTAAATAG\n")
    elif change == "chunk length":
        extra = ("--chunk-length", "300")
    elif change == "version":
        monkeypatch.setattr(prepare_module, "__version__", "0.0.0-other")
    else:
        (out / (NUCLEOTIDE_FILE if change.startswith("nucleotide") else PROTEIN_FILE)).unlink()
    again = _prepare(reads, out, *extra)
    assert again.code == 0 and _counts(again)[0] == "PASSED", (change, again.stderr)
    assert all((out / name).is_file() for name in FILES)
    assert _counts(_prepare(reads, out, *extra))[0] == "UP TO DATE", change


@pytest.mark.parametrize("name", FILES)
def test_a_file_edited_since_is_still_refused(reads, tmp_path, name):
    out = tmp_path / "out"
    assert _prepare(reads, out).code == 0
    with open(out / name, "ab") as handle:
        handle.write(b">mine\nACGT\n")
    again = _prepare(reads, out)
    assert again.code == 2 and "changed since virnucpro-trt wrote it" in again.stderr, again.stderr
    assert (out / name).read_bytes().endswith(b">mine\nACGT\n")
    forced = _prepare(reads, out, "--force")
    assert forced.code == 0 and _counts(forced)[0] == "PASSED", forced.stderr
    assert not (out / name).read_bytes().endswith(b">mine\nACGT\n")


def _key(out: Path) -> dict:
    return json.loads((out / RECORD).read_text())["files"][NUCLEOTIDE_FILE]["made"]["key"]


@pytest.mark.parametrize(
    "edit",
    [
        lambda key: "garbage",
        lambda key: None,
        lambda key: [key],
        lambda key: {"key": "x"},
        lambda key: {"key": {}},
        lambda key: {"key": {**key, "chunk_length": "500"}},
        lambda key: {"key": {**key, "chunk_length": 10**40}},
        lambda key: {"key": {**key, "version": key["version"] + "\nUP TO DATE"}},
        lambda key: {"key": {**key, "input_sha256": "0" * 64}},
        lambda key: {"key": {**key, "command": "embed"}},
        lambda key: {"key": {k: v for k, v in key.items() if k != "chunk_length"}},
        lambda key: {"key": {**key, "extra": 1}},
    ],
    ids=[
        "a string", "null", "a list", "key a string", "key empty", "chunk length a string", "huge number",
        "newline in version", "other input", "another command", "no chunk length", "an extra field",
    ],
)  # fmt: skip
def test_an_edited_record_entry_writes_the_files_again(reads, tmp_path, edit):
    """The record is anyone's to edit: what it says the files were made from is compared, never trusted;
    no shape of it ends the run with a traceback."""
    out = tmp_path / "out"
    assert _prepare(reads, out).code == 0
    _edit_made(out, edit(_key(out)))
    again = _prepare(reads, out)
    assert again.code == 0 and _counts(again)[0] == "PASSED", again.stderr
    assert "Traceback" not in again.stderr
    assert _counts(_prepare(reads, out))[0] == "UP TO DATE"  # recorded afresh


def test_one_entry_of_the_two_edited_writes_both_again(reads, tmp_path):
    out = tmp_path / "out"
    assert _prepare(reads, out).code == 0
    _edit_made(out, {"key": {**_key(out), "chunk_length": 300}}, (PROTEIN_FILE,))
    again = _prepare(reads, out)
    assert again.code == 0 and _counts(again)[0] == "PASSED", again.stderr


def test_counts_written_into_the_record_are_never_printed(reads, tmp_path):
    """Counts added to a matching entry change nothing: the skip counts records and chunks from the input
    and frames from the files themselves."""
    out = tmp_path / "out"
    first = _prepare(reads, out)
    _edit_made(out, {"key": _key(out), "records": 999, "chunks": 10**30, "frames": "7\nPASSED"})
    again = _prepare(reads, out)
    assert again.code == 0 and _counts(again) == ("UP TO DATE", _counts(first)[1]), again.stderr
    assert "999" not in again.stderr and str(10**30) not in again.stderr


def _forge(out: Path, texts: dict[str, str]) -> None:
    """Replace files and their record entries (size and SHA-256, no stamp), keeping the made entry: what
    anyone who can write the folder can do."""
    record_file = out / RECORD
    record = json.loads(record_file.read_text())
    for name, text in texts.items():
        (out / name).write_text(text)
        entry = record["files"][name]
        entry.pop("stamp")
        entry.update(bytes=len(text.encode()), sha256=sha256_file(out / name))
    record_file.write_text(json.dumps(record))


@pytest.mark.parametrize(
    "texts",
    [
        {NUCLEOTIDE_FILE: ">a\nACG\n>b\nACG\n", PROTEIN_FILE: ">a\nM\n"},  # the two disagree
        {NUCLEOTIDE_FILE: ">a\nACG\n>b\n", PROTEIN_FILE: ">a\nM\n>b\n"},  # half a record
        {NUCLEOTIDE_FILE: ">a\nACG\n" * 10_000, PROTEIN_FILE: ">a\nM\n" * 10_000},  # more than 6 a chunk
    ],
    ids=["rows disagree", "odd lines", "too many rows"],
)
def test_files_that_do_not_add_up_are_written_again(reads, tmp_path, texts):
    """Files forged together with their entries are found not made when their rows cannot be this input's
    kept frames; they are written again, not reported as facts."""
    out = tmp_path / "out"
    assert _prepare(reads, out).code == 0
    written = [entry[2] for entry in _identities(out)]
    _forge(out, texts)
    again = _prepare(reads, out)
    assert again.code == 0 and _counts(again)[0] == "PASSED", again.stderr
    assert [entry[2] for entry in _identities(out)] == written


def test_an_input_changed_while_read_leaves_no_files_and_no_skip(reads, tmp_path, monkeypatch):
    """The input is hashed while validated, then read again to write the files: rewritten in between
    (an editor saving in place, a download still running), the files would be of other bytes than the
    hash names, and every rerun would find them made. The run is refused in one line and leaves
    neither file; the next run writes them from what the input now holds."""
    out = tmp_path / "out"
    original = reads.read_bytes()
    write = prepare_module.write_identified_files

    def rewritten_first(*args, **kwargs):
        reads.write_bytes(b">other\n" + b"ATG" * 200 + b"\n")
        return write(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(prepare_module, "write_identified_files", rewritten_first)
        raced = _prepare(reads, out)
    assert raced.code == 2 and "changed while prepare read it; run prepare" in raced.stderr, raced.stderr
    assert not any((out / name).exists() for name in FILES)
    assert _counts(_prepare(reads, out))[0] == "PASSED"
    assert _counts(_prepare(reads, out))[0] == "UP TO DATE"
    reads.write_bytes(original)
    assert _counts(_prepare(reads, out))[0] == "PASSED"
