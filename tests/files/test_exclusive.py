"""Files a run creates beside the user's (the workflow's files): never over anything already there, and
whole or not at all (``files/exclusive.py``)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from virnucpro_trt.errors import UserError
from virnucpro_trt.files import exclusive


def test_a_new_file_is_written_and_nothing_at_the_name_is_written_over(tmp_path: Path) -> None:
    exclusive.write_new_text(tmp_path / "a.txt", "whole\n")
    assert (tmp_path / "a.txt").read_text() == "whole\n"
    (tmp_path / "mine.txt").write_text("keep me\n")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for name in ("a.txt", "mine.txt", "dangling"):
        with pytest.raises(UserError, match="will not write over it"):
            exclusive.write_new_text(tmp_path / name, "other\n")
    assert (tmp_path / "mine.txt").read_text() == "keep me\n" and not (tmp_path / "nowhere").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "dangling", "mine.txt"]  # no temporaries


def test_an_interrupted_write_leaves_no_file_cut_short(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Stopped in the middle (Ctrl-C), nothing is at the name: a rerun writes it, where a partial file
    at the name used to be refused as "other content" until removed by hand."""
    real_link = os.link

    def interrupted(src: str, dst: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(exclusive.os, "link", interrupted)
    with pytest.raises(KeyboardInterrupt):
        exclusive.write_new_text(tmp_path / "Snakefile", "rule all:\n" * 1000)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(exclusive.os, "link", real_link)
    exclusive.write_new_text(tmp_path / "Snakefile", "rule all:\n")
    assert (tmp_path / "Snakefile").read_text() == "rule all:\n"


def test_without_hard_links_the_file_is_written_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def no_links(src: str, dst: str) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(exclusive.os, "link", no_links)
    exclusive.write_new_text(tmp_path / "config.yaml", "a: 1\n")
    assert (tmp_path / "config.yaml").read_text() == "a: 1\n" and len(list(tmp_path.iterdir())) == 1
    with pytest.raises(UserError):
        exclusive.write_new_text(tmp_path / "config.yaml", "b: 2\n")
