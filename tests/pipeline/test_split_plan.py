"""Where split cuts, and how strictly split.json is read (predict trusts it to choose its shards)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from virnucpro_trt.files.digests import sha256_file
from virnucpro_trt.pipeline.split import part_ranges
from virnucpro_trt.pipeline.split_manifest import (
    MAX_SPLIT_JSON_BYTES,
    PartEntry,
    SplitFileError,
    SplitManifest,
    find_part,
    part_file_name,
    read_split_manifest,
    run_length,
    write_split_manifest,
)
from virnucpro_trt.settings import SplitPart


def _sizes(shards: list[int], ranges: list[tuple[int, int]]) -> list[int]:
    return [sum(shards[a:b]) for a, b in ranges]


def test_parts_are_balanced_on_shard_boundaries():
    shards = [256, 256, 256, 132]
    assert part_ranges(shards, parts=3) == [(0, 1), (1, 2), (2, 4)]
    assert part_ranges(shards, parts=1) == [(0, 4)]
    assert part_ranges(shards, parts=4) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    # nearest boundary to every 1/3, never an empty part while there are enough shards
    assert _sizes([10] * 30, part_ranges([10] * 30, parts=3)) == [100, 100, 100]
    assert part_ranges([1000, 10, 10, 10], parts=3) == [(0, 1), (1, 2), (2, 4)]
    # fewer shards than parts: one shard each, the last parts empty (a workflow needs exactly N files)
    assert part_ranges([256, 100], parts=4) == [(0, 1), (1, 2), (2, 2), (2, 2)]
    assert part_ranges([], parts=2) == [(0, 0), (0, 0)]


def test_records_per_part_cuts_near_every_multiple():
    assert _sizes([256] * 10, part_ranges([256] * 10, records_per_part=1000)) == [1024, 1024, 512]
    assert part_ranges([256] * 10, records_per_part=10**6) == [(0, 10)]
    assert part_ranges([256, 256], records_per_part=10) == [(0, 1), (1, 2)]  # no empty parts here
    assert part_ranges([], records_per_part=10) == [(0, 0)]
    with pytest.raises(ValueError):
        part_ranges([1], parts=2, records_per_part=2)


def test_names_and_run_length():
    assert part_file_name(3, 12) == "part-0003.fa"
    assert part_file_name(3, 12345, gzip=True) == "part-00003.fa.gz"
    assert run_length([256, 256, 256, 100, 7, 7]) == [(256, 3), (100, 1), (7, 2)]
    assert run_length([]) == []


def _manifest(tmp_path: Path) -> tuple[SplitManifest, Path]:
    folder = tmp_path / "parts"
    folder.mkdir()
    (folder / "part-0001.fa").write_text(">a\nACGT\n>b\nAC\n")
    (folder / "part-0002.fa").write_text("")
    (folder / "part-0003.fa").write_text("")
    entries = []
    first = 0
    for index, records in ((1, 2), (2, 0), (3, 0)):
        path = folder / part_file_name(index, 3)
        layout = tuple(run_length([1] * records))
        entries.append(
            PartEntry(index, path.name, sha256_file(path), path.stat().st_size, first, records, 6, 1, layout)
        )
        first += records
    manifest = SplitManifest("in.fa", "a" * 64, 10, 2, 6, 1, 500, 1, 1, tuple(entries), "0.1.0")
    write_split_manifest(folder, manifest)
    return manifest, folder


def test_split_json_round_trip_and_part_lookup(tmp_path):
    manifest, folder = _manifest(tmp_path)
    assert read_split_manifest(folder / "split.json") == manifest
    part = find_part(folder / "part-0001.fa", sha256_file(folder / "part-0001.fa"))
    assert isinstance(part, SplitPart) and part.index == 1 and part.shard_sizes() == [1, 1]
    assert SplitPart.from_json(json.loads(json.dumps(part.__dict__))) == part
    # two empty parts have the same bytes: the file name says which one
    empty = sha256_file(folder / "part-0003.fa")
    assert find_part(folder / "part-0003.fa", empty).index == 3
    (folder / "renamed.fa").write_text("")
    with pytest.raises(SplitFileError, match="parts 2, 3"):
        find_part(folder / "renamed.fa", empty)
    (folder / "other.fa").write_text(">z\nA\n")  # not listed: an ordinary input
    assert find_part(folder / "other.fa", sha256_file(folder / "other.fa")) is None
    assert find_part(tmp_path / "nowhere.fa", empty) is None


@pytest.mark.parametrize("damage", [lambda b: b[:8], lambda b: b.replace(b"ACGT", b"ACGA")])
def test_a_damaged_part_file_is_refused_not_run_as_an_ordinary_input(tmp_path, damage) -> None:
    """A part file under its listed name whose bytes are not the listed ones (a truncated copy on a
    cluster node) ran as an ordinary input, exit 0, its results complete-looking; only merge refused
    them, as "not a part of a split"."""
    _, folder = _manifest(tmp_path)
    part = folder / "part-0001.fa"
    part.write_bytes(damage(part.read_bytes()))
    with pytest.raises(SplitFileError, match=r"lists part 1 under this name with other content"):
        find_part(part, sha256_file(part))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(records=3), "split_id does not match|parts hold 2 records"),
        (lambda d: d["parts"][0].update(records=3), "layout"),
        (lambda d: d["parts"][0].update(layout=[[1, 1], [0, 1]]), "integer >= 1"),
        (lambda d: d["parts"][0].update(file="../evil.fa"), r"file: expected a part.s file name \(part-NNNN"),
        (lambda d: d["parts"][0].update(sha256="x" * 64), "SHA-256"),
        (lambda d: d["parts"][1].update(first_record=5), "out of order"),
        (lambda d: d["parts"][1].update(index=True), "index"),
        (lambda d: d.update(schema=2), "schema"),
        (lambda d: d.update(input_sha256="b" * 64), "split_id does not match"),
        (lambda d: d.update(parts="nope"), "parts"),
    ],
)
def test_a_changed_or_malformed_split_json_is_refused(tmp_path, change, message):
    _, folder = _manifest(tmp_path)
    data = json.loads((folder / "split.json").read_text())
    change(data)
    (folder / "split.json").write_text(json.dumps(data))
    with pytest.raises(SplitFileError, match=message):
        read_split_manifest(folder / "split.json")


def test_split_json_size_and_syntax_are_bounded(tmp_path, monkeypatch):
    import virnucpro_trt.pipeline.split_manifest as split_manifest

    assert MAX_SPLIT_JSON_BYTES >= 1 << 20
    monkeypatch.setattr(split_manifest, "MAX_SPLIT_JSON_BYTES", 4096)
    path = tmp_path / "split.json"
    path.write_bytes(b" " * 4097)
    with pytest.raises(SplitFileError, match="larger than"):
        read_split_manifest(path)
    path.write_text("[" * 4000)  # deeper than the JSON parser recurses
    with pytest.raises(SplitFileError, match="not a valid split file"):
        read_split_manifest(path)
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(SplitFileError, match="not a valid split file"):
        read_split_manifest(path)
