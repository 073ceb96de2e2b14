"""Output paths: the tool replaces what it wrote (unchanged since) and refuses anything else unless forced.

Each case is a file someone may have at an output path: their own file, one of ours edited since, a
link, a folder, a damaged or forged record. Only the tool's own, untouched output is replaced quietly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from virnucpro_trt.errors import UserError
from virnucpro_trt.files import ownership, stamps
from virnucpro_trt.files.ownership import (
    RECORD,
    changed_since,
    check_replaceable,
    made_from,
    output_entry,
    record_path,
    record_written,
)


def _write(path: Path, data: bytes = b"ours\n") -> Path:
    path.write_bytes(data)
    return path


def test_a_missing_path_and_the_tools_own_output_are_replaced(tmp_path: Path) -> None:
    target = tmp_path / "out.h5"
    check_replaceable([target], force=False)  # nothing there yet
    record_written([_write(target)])
    check_replaceable([target], force=False)  # a rerun onto its own output
    record = json.loads(record_path(tmp_path).read_text())
    assert record["files"]["out.h5"]["sha256"] == output_entry(target)["sha256"]


def test_a_file_the_tool_did_not_write_is_refused_unless_forced(tmp_path: Path) -> None:
    mine = _write(tmp_path / "thesis.txt", b"two years of work\n")
    with pytest.raises(UserError, match=r"thesis.txt exists and virnucpro-trt did not write it;.*--force"):
        check_replaceable([mine], force=False)
    check_replaceable([mine], force=True)
    assert mine.read_bytes() == b"two years of work\n"  # checking never touches it


def test_an_empty_file_is_replaced_but_not_an_empty_files_link(tmp_path: Path) -> None:
    """An empty file (``mktemp``'s, a workflow's placeholder) holds nothing to lose; a link to one is
    still not the tool's, and one byte makes a file someone's."""
    empty = _write(tmp_path / "placeholder.h5", b"")
    check_replaceable([empty], force=False)
    link = tmp_path / "link.h5"
    link.symlink_to(empty)
    with pytest.raises(UserError, match="did not write it"):
        check_replaceable([link], force=False)
    with pytest.raises(UserError, match="did not write it"):
        check_replaceable([_write(tmp_path / "one.h5", b"\n")], force=False)


def test_an_output_changed_since_it_was_written_is_refused(tmp_path: Path) -> None:
    target = _write(tmp_path / "out.faa")
    record_written([target])
    with open(target, "ab") as handle:
        handle.write(b"my notes\n")
    with pytest.raises(UserError, match="was changed since virnucpro-trt wrote it"):
        check_replaceable([target], force=False)
    # the same size and content restored, in place: the stamp differs, the digest decides
    target.write_bytes(b"ours\n")
    check_replaceable([target], force=False)
    # same size, other bytes, mtime set back: still refused
    stat = target.stat()
    target.write_bytes(b"OURS\n")
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(UserError, match="changed since"):
        check_replaceable([target], force=False)


def test_an_unchanged_output_is_not_hashed_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = _write(tmp_path / "big.h5")
    record_written([target])

    def no_hashing(path: object) -> str:
        raise AssertionError("an untouched output was hashed again")

    monkeypatch.setattr(stamps, "sha256_file", no_hashing)  # where recorded digests are checked
    check_replaceable([target], force=False)


def test_links_folders_and_the_record_itself(tmp_path: Path) -> None:
    elsewhere = _write(tmp_path / "elsewhere.txt", b"someone's\n")
    link = tmp_path / "link.h5"
    link.symlink_to(elsewhere)
    with pytest.raises(UserError, match="did not write it"):
        check_replaceable([link], force=False)
    folder = tmp_path / "results.h5"
    folder.mkdir()
    with pytest.raises(UserError, match="is a folder"):
        check_replaceable([folder], force=True)
    with pytest.raises(UserError, match="record of written files"):
        check_replaceable([tmp_path / RECORD], force=True)


def test_a_damaged_or_foreign_record_vouches_for_nothing(tmp_path: Path) -> None:
    target = _write(tmp_path / "out.h5")
    signed = {"tool": "virnucpro-trt"}
    for text in (json.dumps({**signed, "schema": 99, "files": {}}), json.dumps({**signed, "files": [1]})):
        record_path(tmp_path).write_text(text)
        with pytest.raises(UserError, match="did not write it"):
            check_replaceable([target], force=False)
    entry = {**output_entry(target), "sha256": "0" * 64}  # names the file with another digest
    record_path(tmp_path).write_text(json.dumps({**signed, "schema": 1, "files": {"out.h5": entry}}))
    with pytest.raises(UserError, match="changed since"):
        check_replaceable([target], force=False)


def test_another_users_record_vouches_for_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a shared sticky folder (/tmp) another user could plant a record naming this user's file with
    its size and SHA-256; the next prepare/embed/convert-classifier replaced it unasked (helper-42). In a
    folder only its owner or group writes, the members' records stay trusted (helper-49)."""
    target = _write(tmp_path / "out.h5")
    record_written([target])
    check_replaceable([target], force=False)  # this user's own record: replaced quietly
    owner = record_path(tmp_path).stat().st_uid
    monkeypatch.setattr(ownership.os, "geteuid", lambda: owner + 1)  # the record is now someone else's
    tmp_path.chmod(0o755)
    check_replaceable([target], force=False)  # a folder only its owner (or a group) writes: trusted
    for shared in (0o1777, 0o757):  # sticky like /tmp, or writable by anyone
        tmp_path.chmod(shared)
        with pytest.raises(UserError, match="did not write it"):
            check_replaceable([target], force=False)
        check_replaceable([target], force=True)
    tmp_path.chmod(0o755)


def test_a_file_at_the_records_name_that_is_no_record_of_ours_is_not_replaced(tmp_path: Path) -> None:
    """Recording the outputs replaces the file at the record's name: a user's notes or a link there
    were replaced without a word; refused before anything is written, unless --force."""
    target = tmp_path / "out.h5"
    elsewhere = _write(tmp_path / "elsewhere.txt", b"theirs\n")
    for make in (
        lambda p: p.write_text("my notes\n"),
        lambda p: p.write_text(json.dumps({"schema": 1, "files": {}})),  # unsigned: not ours
        lambda p: p.write_text("[1, 2]"),
        lambda p: p.symlink_to(elsewhere),
    ):
        record = record_path(tmp_path)
        if os.path.lexists(record):
            record.unlink()
        make(record)
        refused = r"outputs\.json (is not a plain file|is not virnucpro-trt's record)"
        with pytest.raises(UserError, match=refused):
            check_replaceable([target], force=False)
        check_replaceable([target], force=True)  # --force takes it over
    assert elsewhere.read_bytes() == b"theirs\n"
    record = record_path(tmp_path)
    record.unlink()
    record.mkdir()  # a folder there: refused even with --force (no command removes folders)
    with pytest.raises(UserError, match=r"outputs\.json is a folder"):
        check_replaceable([target], force=True)


def test_records_keep_other_outputs_and_drop_removed_ones(tmp_path: Path) -> None:
    a, b = _write(tmp_path / "a.h5", b"a\n"), _write(tmp_path / "b.h5", b"b\n")
    record_written([a])
    record_written([b])
    assert sorted(json.loads(record_path(tmp_path).read_text())["files"]) == ["a.h5", "b.h5"]
    a.unlink()
    record_written([b])
    assert sorted(json.loads(record_path(tmp_path).read_text())["files"]) == ["b.h5"]


def test_outputs_are_made_from_a_key_only_when_every_one_is_unchanged_and_recorded_with_it(
    tmp_path: Path,
) -> None:
    """``made_from``: every target unchanged and recorded with an equal ``key``; no target, one of another
    key or none, one changed since, or an entry of another shape is not made (compute again)."""
    one, two = _write(tmp_path / "a.fa"), _write(tmp_path / "b.faa")
    key = {"command": "prepare", "version": "1", "chunk_length": 500}
    record_written([one, two], made={"key": key})
    assert made_from([one, two], key) and made_from([one], dict(key))
    assert not made_from([], key)
    assert not made_from([one, two], {**key, "chunk_length": 300})
    record_written([two], made={"key": [key]})
    assert made_from([one], key) and not made_from([one, two], key)
    record_written([two], made={"key": key})
    _write(two, b"edited\n")
    assert not made_from([one, two], key)
    record_written([two])  # recorded without what it was made from
    assert not made_from([one, two], key)


def test_changed_since_is_predicts_rule_too(tmp_path: Path) -> None:
    """The entries run.json keeps for predict's results are checked by the same function."""
    target = _write(tmp_path / "frames.tsv")
    entry = output_entry(target)
    assert changed_since(tmp_path, "frames.tsv", entry) is None
    target.write_bytes(b"other\n")
    assert changed_since(tmp_path, "frames.tsv", entry) == "its frames.tsv was changed or removed since"
    target.unlink()
    assert changed_since(tmp_path, "frames.tsv", entry) is not None


def test_an_unwritable_record_is_a_warning_not_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    target = _write(tmp_path / "out.h5")

    def refuse(path: Path, text: str, on_create: object = None) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(ownership, "write_text_atomic", refuse)
    record_written([target])
    assert "a rerun onto them will need --force" in caplog.text


def test_a_finished_job_is_reused_computed_again_or_refused_by_one_rule(tmp_path: Path) -> None:
    """predict's and merge's reruns: this job's unchanged results are reused (or computed again with
    force); changed since, or another job's, refused naming why unless force."""
    outputs = {"frames.tsv": output_entry(_write(tmp_path / "frames.tsv"))}
    reuse = ownership.reuse_finished
    assert reuse(tmp_path, outputs, None, False, "this run", "another run's") is True
    assert reuse(tmp_path, outputs, None, True, "this run", "another run's") is False
    with pytest.raises(UserError, match=r"holds another run's \(a different input\); .* --force to replace"):
        reuse(tmp_path, outputs, "a different input", False, "this run", "another run's")
    assert reuse(tmp_path, outputs, "a different input", True, "this run", "another run's") is False
    _write(tmp_path / "frames.tsv", b"edited\n")
    with pytest.raises(UserError, match=r"of this run, but its own frames\.tsv was changed since; .* make"):
        reuse(tmp_path, outputs, None, False, "this run", "another run's")
    assert reuse(tmp_path, outputs, None, True, "this run", "another run's") is False
    assert (tmp_path / "frames.tsv").read_bytes() == b"edited\n"  # deciding removes nothing


def test_two_commands_finishing_in_one_folder_keep_both_entries(tmp_path: Path, monkeypatch) -> None:
    """Recording reads the folder's record, adds its entries and writes it back. A large output takes
    seconds to hash: a second command that recorded its own output meanwhile lost its entry (its rerun
    was then refused as "not written by virnucpro-trt"). Outputs are hashed first, and the record is
    read and written under a lock on the folder."""
    import threading
    import time

    slow, fast = _write(tmp_path / "slow.h5"), _write(tmp_path / "fast.h5")
    hashing = threading.Event()
    real_entry = ownership.output_entry

    def slow_entry(path: Path) -> dict:
        if path.name == "slow.h5":
            hashing.set()
            time.sleep(1.0)
        return real_entry(path)

    monkeypatch.setattr(ownership, "output_entry", slow_entry)
    first = threading.Thread(target=record_written, args=([slow],))
    first.start()
    assert hashing.wait(10)
    record_written([fast])  # while the first is still hashing
    first.join(10)
    files = json.loads(record_path(tmp_path).read_text())["files"]
    assert sorted(files) == ["fast.h5", "slow.h5"]
    check_replaceable([slow, fast], force=False)  # both the tool's, so both may be replaced
