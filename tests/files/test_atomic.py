"""Temporary result files: unguessable names, created exclusively, so a planted link is never written
through (``files/atomic.py``), for every writer that uses them."""

from __future__ import annotations

import errno
import resource
from pathlib import Path

import numpy as np
import pytest

from virnucpro_trt.files import atomic
from virnucpro_trt.outputs.atomic import ResultSet
from virnucpro_trt.outputs.embeddings_h5 import EmbeddingsWriter


def _plant(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[Path, Path]:
    """A link at the temporary name every writer will pick, pointing at a file outside."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    planted = tmp_path / "out" / ".planted.partial"
    planted.parent.mkdir()
    planted.symlink_to(victim)
    monkeypatch.setattr(atomic, "temporary_name", lambda path, on_create=None: planted)
    return victim, planted


def test_every_temporary_name_is_one_a_run_lock_may_remove(tmp_path: Path) -> None:
    """A lock's rerun removes only names of this form (``files/run_lock.py``): one that did not match,
    for an output named with a newline, a space or a dot, would be refused when noted."""
    for name in ("x.tsv", "a\nb.h5", "with space", ".hidden", "é.fa", "x.1-2-abcdef01.partial"):
        made = atomic.temporary_name(tmp_path / name).name
        assert atomic.TEMPORARY_NAME.fullmatch(made), made
    others = ("notes.txt", ".x.partial", ".x.1-2-ABCDEF01.partial", "x.1-2-abcdef01.partial", ".work.lock")
    for name in others:
        assert not atomic.TEMPORARY_NAME.fullmatch(name), name


def test_temporary_names_differ_each_time(tmp_path: Path) -> None:
    names = {atomic.temporary_name(tmp_path / "x.tsv") for _ in range(50)}
    assert len(names) == 50 and all(n.name.startswith(".x.tsv.") and n.suffix == ".partial" for n in names)


def test_no_writer_writes_through_a_link_at_its_temporary_name(monkeypatch, tmp_path: Path) -> None:
    victim, planted = _plant(monkeypatch, tmp_path)
    with pytest.raises(FileExistsError):
        atomic.write_text_atomic(tmp_path / "out" / "a.txt", "new\n")
    def planted_name(path: Path, on_create: object = None) -> Path:
        return planted

    monkeypatch.setattr("virnucpro_trt.outputs.atomic.temporary_name", planted_name)
    with pytest.raises(FileExistsError), ResultSet(tmp_path / "out", ["b.tsv"]):
        pass
    monkeypatch.setattr("virnucpro_trt.outputs.embeddings_h5.temporary_name", planted_name)
    with pytest.raises((FileExistsError, OSError)):
        EmbeddingsWriter(tmp_path / "out" / "e.h5", 4, {})
    assert victim.read_text() == "keep me\n" and planted.is_symlink()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".planted.partial"]


def test_writers_still_write(tmp_path: Path) -> None:
    atomic.write_text_atomic(tmp_path / "a.txt", "x\n")
    with ResultSet(tmp_path, ["b.tsv"]) as results:
        results["b.tsv"].write("y\n")
        results.commit()
    with EmbeddingsWriter(tmp_path / "e.h5", 2, {}) as writer:
        writer.append(["r"], np.ones((1, 2), dtype=np.float32), ["ok"])
        writer.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.tsv", "e.h5"]


def test_an_interrupt_just_after_a_temporary_file_is_created_leaves_nothing(monkeypatch, tmp_path: Path):
    """SIGINT/SIGTERM (a KeyboardInterrupt here) landing between the creation of a temporary file and the
    writer's hold on it left the hidden ``.partial`` behind (seen with signals sent as the files
    appeared); every writer now removes it."""
    import builtins

    import h5py

    real_open, real_file = builtins.open, h5py.File

    def open_then_interrupt(*args, **kwargs):
        real_open(*args, **kwargs).close()
        raise KeyboardInterrupt

    def file_then_interrupt(*args, **kwargs):
        real_file(*args, **kwargs).close()
        raise KeyboardInterrupt

    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(atomic, "open", open_then_interrupt, raising=False)
    with pytest.raises(KeyboardInterrupt):
        atomic.write_text_atomic(out / "a.txt", "x\n")
    monkeypatch.setattr("virnucpro_trt.outputs.atomic.open", open_then_interrupt, raising=False)
    with pytest.raises(KeyboardInterrupt), ResultSet(out, ["b.tsv", "c.tsv"]):
        pass
    monkeypatch.setattr(h5py, "File", file_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        EmbeddingsWriter(out / "e.h5", 4, {})
    assert list(out.iterdir()) == []


def test_an_interrupt_while_an_embeddings_file_is_set_up_leaves_nothing(monkeypatch, tmp_path: Path) -> None:
    """Its datasets are made before any ``with`` holds the writer: a failure there removed nothing."""
    import h5py

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(h5py.File, "create_dataset", interrupted)
    with pytest.raises(KeyboardInterrupt):
        EmbeddingsWriter(tmp_path / "e.h5", 4, {})
    assert list(tmp_path.iterdir()) == []


def test_published_results_wait_for_the_record_given_back(tmp_path: Path) -> None:
    """``ResultSet.publish`` writes the texts its ``record`` gives back (a run's run.json) complete before
    any result is renamed into place: a write past the file-size limit (or a full disk) there left
    complete results standing without their run.json. Now nothing is shown and no temporary stays; a
    write that fits puts every file in place, the entries given to ``record`` those of the results."""
    seen: list[dict[str, dict[str, object]]] = []

    def record(entries: dict[str, dict[str, object]]) -> dict[str, str]:
        seen.append(entries)
        return {"note.txt": "n\n", "run.json": "x" * 6000}

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    with ResultSet(tmp_path, ["a.tsv", "b.tsv"]) as results:
        results["a.tsv"].write("row\n" * 100)
        results["b.tsv"].write("row\n")
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))  # Python ignores SIGXFSZ: EFBIG
        try:
            with pytest.raises(OSError) as raised:
                results.publish(record)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert raised.value.errno == errno.EFBIG
    assert list(tmp_path.iterdir()) == []
    with ResultSet(tmp_path, ["a.tsv", "b.tsv"]) as results:
        results["a.tsv"].write("row\n" * 100)
        results["b.tsv"].write("row\n")
        results.publish(record)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tsv", "b.tsv", "note.txt", "run.json"]
    assert sorted(seen[-1]) == ["a.tsv", "b.tsv"] and seen[-1]["a.tsv"]["bytes"] == 400
    assert (tmp_path / "run.json").read_text() == "x" * 6000
