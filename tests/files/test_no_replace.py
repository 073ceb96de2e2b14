"""Results put in place never over a file another program wrote there while the run worked
(files/no_replace.py, and the writers that use it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from virnucpro_trt.errors import UserError
from virnucpro_trt.files import no_replace
from virnucpro_trt.outputs.atomic import ResultSet
from virnucpro_trt.outputs.embeddings_h5 import EmbeddingsWriter


@pytest.mark.parametrize("renameat2", [True, False], ids=["renameat2", "checked-rename"])
def test_a_rename_never_replaces(tmp_path: Path, monkeypatch, renameat2: bool) -> None:
    if not renameat2:
        monkeypatch.setattr(no_replace, "_RENAMEAT2", None)
    source, target = tmp_path / "new", tmp_path / "taken"
    source.write_text("ours")
    target.write_text("theirs")
    with pytest.raises(FileExistsError):
        no_replace.rename_no_replace(source, target)
    assert target.read_text() == "theirs" and source.read_text() == "ours"
    target.unlink()
    target.symlink_to(tmp_path / "nowhere")  # a dangling link is something there too
    with pytest.raises(FileExistsError):
        no_replace.rename_no_replace(source, target)
    target.unlink()
    no_replace.rename_no_replace(source, target)
    assert target.read_text() == "ours" and not source.exists()


def test_a_result_set_leaves_a_file_that_appeared_meanwhile(tmp_path: Path) -> None:
    """``embed -o OUTDIR/frames.tsv`` finished while ``predict -o OUTDIR`` worked: predict renamed its
    own frames.tsv over the embeddings and said PASSED."""
    with (
        pytest.raises(UserError, match="appeared while this run was working"),
        ResultSet(tmp_path, ["a.txt", "b.txt"]) as results,
    ):
        results["a.txt"].write("a\n")
        results["b.txt"].write("b\n")
        results.close()
        (tmp_path / "b.txt").write_text("theirs")
        results.rename()
    assert (tmp_path / "b.txt").read_text() == "theirs"
    assert not (tmp_path / "a.txt").exists()  # none shown: every name is checked before any rename
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.txt"]  # the temporaries went


def test_an_hdf5_output_replaces_only_the_file_its_command_checked(tmp_path: Path) -> None:
    """The other way round: ``embed -o OUTDIR/sequences.tsv`` renamed its HDF5 file over the
    sequences.tsv that ``predict`` wrote there after embed had started."""
    output = tmp_path / "out.h5"

    def write() -> EmbeddingsWriter:
        writer = EmbeddingsWriter(output, 4, {"model": "test"})
        writer.append(["a"], np.ones((1, 4), np.float32), ["ok"])
        writer.close()
        return writer

    writer = write()
    output.write_text("theirs")
    with pytest.raises(UserError, match="appeared while this run was working"), writer:
        writer.rename()
    assert output.read_text() == "theirs"
    writer = write()  # the file there when it began (what --force or the rerun rule allowed) is replaced
    with writer:
        writer.rename()
    assert output.read_bytes()[:4] == b"\x89HDF"
    writer = write()
    output.write_text("changed")  # ... but not once it changed
    with pytest.raises(UserError, match="appeared while this run was working"), writer:
        writer.rename()
    assert output.read_text() == "changed"


def test_a_result_set_never_removes_a_file_at_its_names(tmp_path: Path) -> None:
    """It removed whatever was at its names as it began; its callers clear them when their run begins,
    so a file there by then is another program's."""
    (tmp_path / "a.txt").write_text("theirs")
    with (
        pytest.raises(UserError, match="appeared while this run was working"),
        ResultSet(tmp_path, ["a.txt"]),
    ):
        pass
    assert (
        sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
        and (tmp_path / "a.txt").read_text() == "theirs"
    )
