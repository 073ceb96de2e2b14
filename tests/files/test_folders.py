"""``made_folder``: the output folders a run makes are removed again when it leaves them empty, and no
folder that was there before it is ever removed."""

from __future__ import annotations

from pathlib import Path

import pytest

from virnucpro_trt.errors import UserError
from virnucpro_trt.files.folders import made_folder


def test_every_level_it_made_goes_when_the_run_fails(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), made_folder(tmp_path / "a" / "b" / "c") as folder:
        assert folder.is_dir()
        raise RuntimeError("a bad record")
    assert list(tmp_path.iterdir()) == []


def test_folders_that_were_there_stay_even_when_empty(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    with made_folder(tmp_path / "a" / "b" / "c"):
        pass
    assert [p.name for p in tmp_path.iterdir()] == ["a"] and list((tmp_path / "a").iterdir()) == []
    with made_folder(tmp_path / "a"):
        pass
    assert (tmp_path / "a").is_dir()


def test_a_folder_holding_results_stays_and_so_does_every_level_above(tmp_path: Path) -> None:
    with made_folder(tmp_path / "a" / "b" / "c") as folder:
        (folder / "result.txt").write_text("x\n")
    assert (tmp_path / "a" / "b" / "c" / "result.txt").is_file()
    with made_folder(tmp_path / "x" / "y") as folder:
        (folder.parent / "note.txt").write_text("someone else's\n")  # written beside it meanwhile
    assert not (tmp_path / "x" / "y").exists() and (tmp_path / "x" / "note.txt").is_file()


def test_a_link_in_the_way_is_not_removed(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with made_folder(tmp_path / "link" / "new"):
        pass
    assert (tmp_path / "link").is_symlink() and list((tmp_path / "real").iterdir()) == []


def test_a_folder_reached_through_dotdot_below_a_new_one_is_never_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``-o new/../P/Q/out``: P and P/Q were there (reached through ``new``, which the call makes), so
    only ``out`` and ``new`` are this call's to remove."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "P" / "Q").mkdir(parents=True)
    with pytest.raises(RuntimeError), made_folder(Path("new/../P/Q/out")):
        assert (tmp_path / "P" / "Q" / "out").is_dir() and (tmp_path / "new").is_dir()
        raise RuntimeError("a bad record")
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["P", "P/Q"]


def test_a_dangling_link_or_a_file_in_the_way_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "dang").symlink_to(tmp_path / "nowhere")
    (tmp_path / "afile").write_text("x\n")
    for name, what in (("dang", "a dangling symbolic link"), ("afile", "a file, not a folder")):
        with pytest.raises(UserError, match=f"{name} is {what}; choose another output location"):
            made_folder(tmp_path / name).__enter__()
    assert (tmp_path / "dang").is_symlink() and (tmp_path / "afile").read_text() == "x\n"


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc (no file can be made)")
def test_a_folder_where_no_file_can_be_made_is_refused_at_once() -> None:
    with pytest.raises(UserError, match=r"^cannot write in /proc: .*; choose another output location$"):
        made_folder(Path("/proc")).__enter__()


def test_the_writability_probe_leaves_nothing(tmp_path: Path) -> None:
    with made_folder(tmp_path / "out") as folder:
        assert list(folder.iterdir()) == []


def test_a_level_the_run_removed_itself_does_not_keep_the_ones_above(tmp_path: Path) -> None:
    with made_folder(tmp_path / "m" / "n") as folder:
        folder.rmdir()
    assert list(tmp_path.iterdir()) == []


def test_nothing_there_means_no_entry_or_an_empty_real_folder(tmp_path):
    """What a folder renamed into place whole may replace (the demo's model cache, bench's random set)."""
    from virnucpro_trt.files.folders import nothing_there

    assert nothing_there(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    assert nothing_there(tmp_path / "empty")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    (tmp_path / "file").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "empty")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    assert not any(nothing_there(tmp_path / name) for name in ("full", "file", "link", "dangling"))


def test_what_is_in_the_way_of_a_folder_is_named_as_it_is(tmp_path):
    """A link to a file is not "dangling": the refusal names what the user will find there."""
    from virnucpro_trt.files.names import not_a_folder

    (tmp_path / "afile").write_text("x")
    (tmp_path / "to-file").symlink_to(tmp_path / "afile")
    (tmp_path / "dangling").symlink_to(tmp_path / "nothing")
    assert not_a_folder(tmp_path / "afile") == "a file, not a folder"
    assert not_a_folder(tmp_path / "to-file") == "a symbolic link to a file, not a folder"
    assert not_a_folder(tmp_path / "dangling") == "a dangling symbolic link"
