"""Shard size rule, shard files written during validation, the index, and the work folder's trust rules."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from virnucpro_trt.errors import InputFormatError, UserError
from virnucpro_trt.files.digests import sha256_file
from virnucpro_trt.files.run_lock import outdir_lock
from virnucpro_trt.outputs.shard_results import write_shard_results
from virnucpro_trt.pipeline.inputs import validate_input
from virnucpro_trt.runtime.resume import WorkDir
from virnucpro_trt.runtime.shard_marker import ShardReport, marker_path, result_roles
from virnucpro_trt.runtime.shards import (
    INDEX_SCHEMA,
    PIECE_RECORDS,
    InputCounts,
    ShardIndex,
    ShardSplitter,
    default_shard_records,
    read_shard_index,
    write_shard_index,
)
from virnucpro_trt.sequences.reader import read_records


@pytest.mark.parametrize(
    ("records", "expected"),
    [(0, 4096), (20_000, 4096), (262_143, 4096), (300_000, 4608), (10**6, 15616), (10**9, 16384)],
)
def test_default_shard_size_depends_on_the_record_count_only(records, expected):
    assert default_shard_records(records) == expected
    assert expected % 256 == 0


def _write_reads(path, n, length=60):
    bases = "ACGT"
    with open(path, "w") as handle:
        for i in range(n):
            seq = "".join(bases[(i * 7 + j) % 4] for j in range(length if i % 13 != 5 else 0))
            handle.write(f">read{i} description {i}\n{seq[:30]}\n{seq[30:]}\n")
    return path


def _shard(tmp_path, reads, shard_records):
    splitter = ShardSplitter(tmp_path / "shards", shard_records)
    summary = validate_input(reads, str(reads), "dna", 300, splitter=splitter)
    return summary, splitter.finish()


def test_shards_are_consecutive_two_line_fasta_with_counts(tmp_path, monkeypatch):
    import virnucpro_trt.runtime.shards as shards_module

    monkeypatch.setattr(shards_module, "MIN_SHARD_RECORDS", PIECE_RECORDS)  # the floor scaled down
    reads = _write_reads(tmp_path / "r.fa", 1000)
    summary, shards = _shard(tmp_path, reads, None)  # default: 1000 records -> 256 per shard
    assert [s.records for s in shards] == [256, 256, 256, 232]
    assert [s.first for s in shards] == [0, 256, 512, 768]
    assert sum(s.frames for s in shards) == summary.frames
    assert sum(s.chunks for s in shards) == summary.chunks
    assert sum(s.bases for s in shards) == summary.bases
    original = list(read_records(reads))
    again = [r for s in shards for r in read_records(tmp_path / "shards" / s.file)]
    assert [(r.id, r.sequence) for r in again] == [(r.id, r.sequence) for r in original]
    text = (tmp_path / "shards" / shards[0].file).read_text()
    assert text.startswith(">read0\nACGT") and "description" not in text
    assert not list((tmp_path / "shards").glob("piece-*"))
    assert shards[1].describe() == "shard 1 (records 257-512)"


def test_explicit_shard_records_and_the_bases_cap(tmp_path, monkeypatch):
    reads = _write_reads(tmp_path / "r.fa", 100)
    _, shards = _shard(tmp_path, reads, 30)
    assert [s.records for s in shards] == [30, 30, 30, 10]
    import virnucpro_trt.runtime.shards as shards_module

    monkeypatch.setattr(shards_module, "MAX_SHARD_BASES", 600)
    _, capped = _shard(tmp_path / "capped", reads, 30)
    assert all(s.bases <= 600 for s in capped) and sum(s.records for s in capped) == 100


def test_a_layout_gives_exactly_its_shards_and_must_be_filled_exactly(tmp_path, monkeypatch):
    reads = _write_reads(tmp_path / "r.fa", 100)
    import virnucpro_trt.runtime.shards as shards_module

    # The bases cap does not cut a layout's shards: the layout already holds the whole input's cuts.
    monkeypatch.setattr(shards_module, "MAX_SHARD_BASES", 600)
    splitter = ShardSplitter(tmp_path / "a", layout=[7, 50, 43], titles=True)
    summary = validate_input(reads, "r.fa", "dna", 300, splitter=splitter)
    shards = splitter.finish()
    assert [(s.first, s.records) for s in shards] == [(0, 7), (7, 50), (57, 43)]
    assert sum(s.frames for s in shards) == summary.frames
    text = (tmp_path / "a" / shards[0].file).read_text()
    assert text.startswith(">read0 description 0\n")  # titles=True keeps the whole title line
    again = [r for s in shards for r in read_records(tmp_path / "a" / s.file)]
    assert [(r.id, r.description, r.sequence) for r in again] == [
        (r.id, r.description, r.sequence) for r in read_records(reads)
    ]
    # plan() is the rule finish() applies, without touching the files
    planner = ShardSplitter(tmp_path / "p", 30)
    validate_input(reads, "r.fa", "dna", 300, splitter=planner)
    planned = planner.plan()
    assert [p.records for p in planned] == [s.records for s in _shard(tmp_path / "q", reads, 30)[1]]
    assert all(path.exists() for p in planned for path in p.pieces)

    for layout, word in (([7, 50], "more"), ([7, 50, 44], "fewer"), ([7, 50, 43, 1], "fewer")):
        splitter = ShardSplitter(tmp_path / f"bad{len(layout)}{word}", layout=layout)
        with pytest.raises(InputFormatError, match=f"holds {word} records than the shard layout"):
            validate_input(reads, "r.fa", "dna", 300, splitter=splitter)
            splitter.finish()


COUNTS = InputCounts(sha256="a" * 64, size_bytes=26_000, records=50, empty_records=0, bases=25_000, chunks=50,
                     frames=80)  # fmt: skip


def _index(shards: list) -> ShardIndex:
    return ShardIndex(shards, COUNTS, 20)


def test_index_round_trip_and_damaged_shard(tmp_path):
    reads = _write_reads(tmp_path / "r.fa", 50)
    _, shards = _shard(tmp_path, reads, 20)
    folder = tmp_path / "shards"
    write_shard_index(folder, _index(shards))
    assert read_shard_index(folder) == _index(shards)
    assert all(s.sha256 == sha256_file(folder / s.file) for s in shards)
    (folder / shards[1].file).write_text(">x\nACGT\n")
    assert read_shard_index(folder) is None


@pytest.mark.parametrize(
    ("where", "key", "value"),
    [
        ("top", "input", None),
        ("top", "records_per_shard", 0),
        ("top", "shards", {"0": {}}),
        ("input", "records", "50"),
        ("input", "sha256", "not a digest"),
        ("input", "frames", True),
        ("input", "extra", 1),
        ("shard", "first", None),
        ("shard", "records", -1),
        ("shard", "file", "../r.fa"),
        ("shard", "stamp", [1, "2"]),
        ("shard", "extra", 1),
    ],
)
def test_an_index_with_any_field_not_as_written_is_stale(tmp_path, where, key, value):
    """Every field is read typed: a missing or retyped one makes the index stale (the input is sharded
    again), where a ``KeyError`` or ``TypeError`` used to surface later, in the run."""
    reads = _write_reads(tmp_path / "r.fa", 50)
    _, shards = _shard(tmp_path, reads, 20)
    folder = tmp_path / "shards"
    write_shard_index(folder, _index(shards))
    path = folder / "index.json"
    written = path.read_text()
    data = json.loads(written)
    target = {"top": data, "input": data["input"], "shard": data["shards"][0]}[where]
    target[key] = value
    path.write_text(json.dumps(data))
    assert read_shard_index(folder) is None
    path.write_text(written)
    assert read_shard_index(folder) == _index(shards)  # as written: trusted


@pytest.mark.parametrize("name", ["input", "shards", "records_per_shard"])
def test_an_index_without_a_field_is_stale(tmp_path, name):
    reads = _write_reads(tmp_path / "r.fa", 50)
    _, shards = _shard(tmp_path, reads, 20)
    folder = tmp_path / "shards"
    write_shard_index(folder, _index(shards))
    path = folder / "index.json"
    path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != name}))
    assert read_shard_index(folder) is None


def test_shards_joined_from_pieces_are_hashed_as_they_are_written(tmp_path, monkeypatch):
    """A shard of several pieces gets its SHA-256 from the bytes copied into it (not a read-back);
    the digest is the file's."""
    import virnucpro_trt.runtime.shards as shards_module

    monkeypatch.setattr(shards_module, "default_shard_records", lambda records: 2 * PIECE_RECORDS)
    hashed: list[str] = []
    monkeypatch.setattr(shards_module, "sha256_file", lambda path: hashed.append(Path(path).name) or "0" * 64)
    _, shards = _shard(tmp_path, _write_reads(tmp_path / "r.fa", 1100), None)
    assert [s.records for s in shards] == [512, 512, 76]  # two pieces, two pieces, one
    assert hashed == [shards[2].file]  # the one-piece shard was renamed into place, then hashed
    assert all(s.sha256 == sha256_file(tmp_path / "shards" / s.file) for s in shards[:2])


def test_a_same_size_edit_of_a_shard_makes_the_index_stale(tmp_path, caplog):
    """A size check alone let an edited shard through on resume, to be run as the user's records."""
    reads = _write_reads(tmp_path / "r.fa", 50)
    _, shards = _shard(tmp_path, reads, 20)
    folder = tmp_path / "shards"
    write_shard_index(folder, _index(shards))
    path = folder / shards[1].file
    text = path.read_text()
    stat = path.stat()
    edited = path.with_suffix(".edited")  # a new file put in place: a new inode, whatever the clock's tick
    edited.write_text(text.replace(">read20\n", ">READ20\n"))  # same size, same record count
    os.utime(edited, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(edited, path)
    assert path.stat().st_size == shards[1].size_bytes
    assert read_shard_index(folder) is None
    assert f"{path} changed since it was written" in caplog.text
    path.write_text(text)  # the bytes written: trusted again
    assert read_shard_index(folder) is not None


def test_an_index_without_digests_is_stale(tmp_path):
    """An index of the earlier schema (sizes only) is not trusted: the input is sharded again."""
    reads = _write_reads(tmp_path / "r.fa", 50)
    _, shards = _shard(tmp_path, reads, 20)
    folder = tmp_path / "shards"
    old = [{k: v for k, v in s.to_json().items() if k != "sha256"} for s in shards]
    (folder / "index.json").write_text(json.dumps({"schema": 1, "shards": old}))
    assert read_shard_index(folder) is None
    forged = [{**s.to_json(), "sha256": "not a digest"} for s in shards]
    (folder / "index.json").write_text(json.dumps({"schema": INDEX_SCHEMA, "shards": forged}))
    assert read_shard_index(folder) is None
    no_stamp = [{k: v for k, v in s.to_json().items() if k != "stamp"} for s in shards]
    (folder / "index.json").write_text(json.dumps({"schema": 2, "shards": no_stamp}))
    assert read_shard_index(folder) is None


def test_a_resume_does_not_read_untouched_shards_again(tmp_path, monkeypatch):
    """A shard that still carries the stamp recorded when it was written is trusted without hashing it
    again (the rule wherever a digest is recorded: files/stamps.py); a rewritten one is hashed."""
    from virnucpro_trt.files import stamps

    reads = _write_reads(tmp_path / "r.fa", 50)
    _, shards = _shard(tmp_path, reads, 20)
    folder = tmp_path / "shards"
    write_shard_index(folder, _index(shards))
    hashed: list[Path] = []
    monkeypatch.setattr(stamps, "sha256_file", lambda path: hashed.append(Path(path)) or "0" * 64)
    assert read_shard_index(folder) is not None and hashed == []
    path = folder / shards[0].file
    copy = path.with_suffix(".copy")
    copy.write_bytes(path.read_bytes())
    os.replace(copy, path)  # same bytes, a new stamp (inode): hashed, and the stand-in digest differs
    assert read_shard_index(folder) is None and hashed == [path]


def _commit_shards(work: WorkDir, reads: Path) -> list:
    """Split ``reads`` into 20-record shards in ``work`` and record the state ("sha-a", "fp-1")."""
    folder = work.fresh_shards_folder()
    splitter = ShardSplitter(folder, 20)
    validate_input(reads, "r.fa", "dna", 300, splitter=splitter)
    shards = splitter.finish()
    write_shard_index(folder, _index(shards))
    work.commit_shards(folder)
    work.write_state("sha-a", "fp-1", {})
    return shards


REPORT = ShardReport({}, {}, worker=0, device="cpu", device_name="cpu", attempt=1, pid=1)
TEXT = result_roles(embeddings=False)


def test_work_dir_state_refusal_force_and_marker_checks(tmp_path):
    work = WorkDir(tmp_path)
    assert work.open("sha-a", "fp-1", force=False) is False
    reads = _write_reads(tmp_path / "r.fa", 40)
    _commit_shards(work, reads)
    # Nothing finished yet: other settings just start over.
    assert work.open("sha-a", "fp-2", force=False) is False and not work.root.exists()

    shards = _commit_shards(work, reads)
    contents = {"prediction": b"row\n", "frames": b"", "sequences": b"s\n", "maxima": b""}
    for shard in shards:
        write_shard_results(work.results, shard, contents, REPORT)
    assert work.open("sha-a", "fp-1", force=False) is True
    assert sorted(work.finished_shards(shards, TEXT)) == [0, 1]
    # A result file changed after its marker was written: that shard is redone.
    (work.results / "shard-000001.prediction.txt").write_bytes(b"rox\n")
    assert sorted(work.finished_shards(shards, TEXT)) == [0]
    assert not marker_path(work.results, shards[1]).exists()
    # A marker for other records is not trusted either.
    marker = json.loads(marker_path(work.results, shards[0]).read_text())
    marker["records"] += 1
    marker_path(work.results, shards[0]).write_text(json.dumps(marker))
    assert work.finished_shards(shards, TEXT) == {}

    for shard in shards:
        write_shard_results(work.results, shard, contents, REPORT)
    edited = r"different input \(another file, or this one edited since the run started\).*--force"
    with pytest.raises(UserError, match=edited):
        work.open("sha-b", "fp-1", force=False)
    with pytest.raises(UserError, match="different settings"):
        work.open("sha-a", "fp-9", force=False)
    assert work.open("sha-a", "fp-9", force=True) is False and not work.root.exists()


def test_one_run_per_output_folder(tmp_path):
    with outdir_lock(tmp_path / "out"):
        with pytest.raises(UserError, match="another virnucpro-trt run"), outdir_lock(tmp_path / "out"):
            pass
        assert (tmp_path / "out" / ".work.lock").exists()
    assert not (tmp_path / "out" / ".work.lock").exists()
    with outdir_lock(tmp_path / "out"):  # released: usable again
        pass
