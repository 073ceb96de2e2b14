"""A forged ``split.json`` cannot make ``predict`` allocate per claimed shard (audit case X2).

The layout of a part is believed only up to the records its file can hold: the part file's size must be
the listed one, and at most ``size / 2`` records fit in a plain file (``516 * size`` in gzip). Anything
else is refused with one line before the layout is expanded.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tests.cli.helpers import run_cli
from virnucpro_trt.files.digests import sha256_file
from virnucpro_trt.pipeline.split_manifest import (
    PartEntry,
    SplitFileError,
    SplitManifest,
    find_part,
    max_records,
    read_split_manifest,
    write_split_manifest,
)

ONE_READ = ">d1\nACGTACGTTAGCATCGATCGATCGTAGCTAGCTAGCATCGA\n"


def _forged(
    folder: Path,
    records: int,
    size_bytes: int | None = None,
    data: bytes | None = None,
    name: str = "part-0001.fa",
) -> Path:
    """``folder/part-0001.fa`` (one read) listed in ``split.json`` as ``records`` one-record shards."""
    folder.mkdir(parents=True, exist_ok=True)
    part = folder / name
    part.write_bytes(data if data is not None else ONE_READ.encode())
    sha = sha256_file(part)
    size = part.stat().st_size if size_bytes is None else size_bytes
    entry = PartEntry(1, part.name, sha, size, 0, records, 1, 1, ((1, records),))
    manifest = SplitManifest("x.fa", sha, size, records, 1, 1, 500, 1, 1, (entry,), "0.1.0")
    write_split_manifest(folder, manifest)
    return part


def test_max_records_bounds_plain_and_gzip_parts():
    assert max_records(0, gzip=False) == 0
    assert max_records(len(ONE_READ), gzip=False) == (len(ONE_READ) + 1) // 2
    assert max_records(100, gzip=True) == 100 * 1032 // 2


def test_a_billion_one_record_shards_are_refused_when_read(tmp_path):
    part = _forged(tmp_path / "parts", 10**9)
    with pytest.raises(SplitFileError, match="cannot fit in its 46-byte file"):
        read_split_manifest(part.parent / "split.json")


def test_a_size_that_is_not_the_files_is_refused(tmp_path):
    part = _forged(tmp_path / "parts", 20_000, size_bytes=10**6)  # passes the JSON-only bound
    with pytest.raises(SplitFileError, match=r"lists 1000000 bytes, its file .* has 46"):
        find_part(part, sha256_file(part))


def test_more_records_than_a_plain_part_can_hold_are_refused(tmp_path):
    # the honest size passes split.json's own (gzip) bound, but the file is plain FASTA: 23 records at most
    part = _forged(tmp_path / "parts", 10_000)
    with pytest.raises(SplitFileError, match="lists 10000 records, more than its 46-byte file can hold"):
        find_part(part, sha256_file(part))


def test_a_gzip_part_gets_the_gzip_bound_and_other_compressions_are_refused(tmp_path):
    data = gzip.compress(ONE_READ.encode() * 50, mtime=0)
    part = _forged(tmp_path / "gz", 50, data=data, name="part-0001.fa.gz")
    assert find_part(part, sha256_file(part)).shard_sizes() == [1] * 50
    # gzip content under a plain name (or plain under .gz) is never split's: refused, not given 516x
    hidden = _forged(tmp_path / "hidden", 50, data=data)
    with pytest.raises(SplitFileError, match="compressed in a way split never writes"):
        find_part(hidden, sha256_file(hidden))
    plain = _forged(tmp_path / "plain", 1, name="part-0001.fa.gz")
    with pytest.raises(SplitFileError, match="compressed in a way split never writes"):
        find_part(plain, sha256_file(plain))
    bz = _forged(tmp_path / "bz", 1, data=b"BZh91AY&SY" + b"\0" * 40)
    with pytest.raises(SplitFileError, match="compressed in a way split never writes"):
        find_part(bz, sha256_file(bz))


def test_predict_of_a_forged_part_exits_2_in_one_line(tiny_set, tmp_path):
    part = _forged(tmp_path / "parts", 10_000)
    result = run_cli(
        "predict", str(part), "-o", str(tmp_path / "out"), "--dnabert", str(tiny_set.dnabert),
        "--esm", str(tiny_set.esm_hf), "--classifier", str(tiny_set.classifier), "--device", "cpu",
    )  # fmt: skip
    assert result.code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "more than its 46-byte file can hold" in lines[-1]
    assert "Traceback" not in result.stderr
    assert json.loads((part.parent / "split.json").read_text())["parts"][0]["records"] == 10_000


def test_a_split_rerun_onto_a_forged_layout_is_refused_before_expanding_it(tmp_path):
    """split run again onto a PARTS_DIR whose split.json claims 20,000 one-record shards for a 46-byte
    plain part (within split.json's own gzip bound; input, version and settings all matching): refused
    by the part's real bytes, in one line, before the claimed layout is expanded or anything written."""
    from virnucpro_trt import __version__

    part = _forged(tmp_path / "parts", 20_000)
    data = json.loads((part.parent / "split.json").read_text())
    assert data["version"] == __version__  # else the rerun would stop at the version, not the layout
    reads = tmp_path / "x.fa"
    reads.write_bytes(part.read_bytes())  # the input split.json names, by SHA-256
    before = sorted(p.name for p in part.parent.iterdir())
    result = run_cli("split", str(reads), "-o", str(part.parent), "--parts", "1", "--shard-records", "1")
    assert result.code == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "lists 20000 records, more than its 46-byte file can hold" in last
    assert sorted(p.name for p in part.parent.iterdir()) == before
