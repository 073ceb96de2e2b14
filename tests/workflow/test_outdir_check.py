"""The workflow's check of OUTDIR before Snakemake runs the merge into it (``workflow/outdir_check.py``).

Snakemake removes a job's declared outputs before running it and takes outputs newer than their inputs
as done, so a user's file at a result name was deleted unseen and another run's results were reported
as this workflow's. The check accepts only a merge of the workflow's own part folders, unchanged, or
the files a killed merge of them noted in its lock; the merges here are real, on the tiny models.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.cli.helpers import predict_tiny, run_cli
from virnucpro_trt.files.run_lock import LOCK_FILE, LOCK_TEXT
from virnucpro_trt.workflow.outdir_check import foreign_results


@pytest.fixture(scope="module")
def merged(tiny_set, reads_fasta, tmp_path_factory) -> Path:
    """A workflow's OUTDIR as its jobs leave it: parts/, part-results/NNNN/ and the merge's results."""
    out = tmp_path_factory.mktemp("outdir") / "out"
    assert run_cli("split", str(reads_fasta), "--parts", "2", "-o", str(out / "parts")).code == 0
    folders = []
    for part in sorted((out / "parts").glob("part-*.fa*")):
        folders.append(out / "part-results" / part.name.split(".")[0].removeprefix("part-"))
        assert predict_tiny(tiny_set, part, folders[-1]).code == 0
    assert run_cli("merge", *map(str, folders), "-o", str(out)).code == 0
    return out


def _copy(merged: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(merged, out, symlinks=True)
    return out


def test_an_outdir_without_results_or_with_this_workflows_merge_passes(merged, tmp_path):
    assert foreign_results(tmp_path / "nothing", tmp_path / "nothing" / "part-results") is None
    assert foreign_results(merged, merged / "part-results") is None
    out = _copy(merged, tmp_path)  # the same workflow folder moved: its parts are elsewhere now
    assert "not a merge of this workflow's parts" in foreign_results(out, out / "part-results")
    (merged / "frames.tsv").rename(tmp_path / "frames.tsv")  # a merged file deleted: the merge reruns
    try:
        assert foreign_results(merged, merged / "part-results") is None
    finally:
        (tmp_path / "frames.tsv").rename(merged / "frames.tsv")


def test_a_users_file_an_edited_result_and_another_runs_results_are_refused(
    merged, tiny_set, reads_fasta, tmp_path
):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "sequences.tsv").write_text("my table\n")
    why = foreign_results(mine, mine / "part-results")
    assert why == (
        f"{mine} holds result files this workflow did not make (sequences.tsv: no run.json accounts for "
        "them); move them away or give the workflow another outdir"
    )
    whole = tmp_path / "whole"  # one predict of the whole input, copied where the workflow merges
    assert predict_tiny(tiny_set, reads_fasta, whole).code == 0
    assert "not a merge of this workflow's parts" in foreign_results(whole, whole / "part-results")
    edited = tmp_path / "edited"
    shutil.copytree(merged, edited, symlinks=True)
    run = json.loads((edited / "run.json").read_text())
    for part in run["parts"]:  # its own merge, as if run there
        part["folder"] = str(edited / "part-results" / Path(part["folder"]).name)
    (edited / "run.json").write_text(json.dumps(run))
    assert foreign_results(edited, edited / "part-results") is None
    with (edited / "sequences.tsv").open("a") as handle:
        handle.write("note\n")
    assert "(sequences.tsv: changed since this workflow's merge wrote them)" in foreign_results(
        edited, edited / "part-results"
    )
    fifo = tmp_path / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / "frames.tsv")
    assert "is a device, FIFO or socket" in foreign_results(fifo, fifo / "part-results")


def test_the_files_a_killed_merge_noted_are_its_own(merged, tmp_path):
    """A merge SIGKILLed after renaming results into place, before its run.json, noted them in its lock
    file: they pass while they are as noted; a lock file others may write is not believed."""
    out = tmp_path / "killed"
    out.mkdir()
    run = json.loads((merged / "run.json").read_text())
    names = ["prediction_results.txt", "sequences.tsv"]
    for name in names:
        shutil.copyfile(merged / name, out / name)
    note = {"results": {name: run["outputs"][name] for name in names}}
    lock = out / LOCK_FILE
    lock.write_text(LOCK_TEXT + json.dumps(note) + "\n")
    lock.chmod(0o644)
    assert foreign_results(out, out / "part-results") is None
    lock.chmod(0o666)
    assert "no run.json accounts for them" in foreign_results(out, out / "part-results")
    lock.chmod(0o644)
    (out / "sequences.tsv").write_text("changed\n")
    assert "no run.json accounts for them" in foreign_results(out, out / "part-results")
