"""What the workflow's OUTDIR may hold before Snakemake runs the merge into it.

Snakemake removes a job's declared outputs before it runs the job, and takes outputs newer than their
inputs as done. ``merge``'s own checks (``pipeline/merge_parts.py``) therefore never saw a user's
``sequences.tsv`` in OUTDIR, deleted unseen, nor another run's results copied there, which the workflow
then reported as done ("Nothing to be done"). So the Snakefile checks OUTDIR as it is read, before any
job: every file at a result name must be a merge's of this workflow's own part folders
(``OUTDIR/part-results/NNNN``, by the merge's run.json), unchanged since, or noted by a merge of them
killed before its run.json (its lock file's note). Anything else stops the workflow with one line.
"""

from __future__ import annotations

import os
from pathlib import Path

from virnucpro_trt.files.ownership import changed_since, unreplaceable_among
from virnucpro_trt.files.result_names import RESULT_NAMES, RUN_JSON
from virnucpro_trt.files.run_lock import noted_results
from virnucpro_trt.pipeline.run_record import read_previous_run

_ADVICE = "move them away or give the workflow another outdir"


def foreign_results(outdir: Path, results_dir: Path) -> str | None:
    """Why the workflow may not merge into ``outdir`` (one line), or None when every file at a result
    name there is this workflow's own (``results_dir``: its part folders' parent)."""
    if (never := unreplaceable_among(outdir, RESULT_NAMES)) is not None:
        return f"{never}; move it away or give the workflow another outdir"
    present = [name for name in RESULT_NAMES if os.path.lexists(outdir / name)]
    if not present:
        return None
    previous, why = read_previous_run(outdir / RUN_JSON, "it did not finish")
    if previous is None and why is None:  # no run.json: a merge killed before writing it noted its files
        left = noted_results(outdir)
        if all(name in left and changed_since(outdir, name, left[name]) is None for name in present):
            return None
        why = "no run.json accounts for them"
    elif previous is not None:
        folders = [part.get("folder") for part in previous.parts or ()]
        if not folders or not all(_is_part_folder(folder, results_dir) for folder in folders):
            why = f"they are not a merge of this workflow's parts in {results_dir}"
        elif changed := [
            name
            for name in present
            if name != RUN_JSON and changed_since(outdir, name, previous.outputs.get(name))
        ]:
            present, why = changed, "changed since this workflow's merge wrote them"
    if why is None:
        return None
    return f"{outdir} holds result files this workflow did not make ({', '.join(present)}: {why}); {_ADVICE}"


def _is_part_folder(folder: object, results_dir: Path) -> bool:
    """Whether a merged part's recorded folder is one of this workflow's, ``results_dir/NNNN``."""
    if not isinstance(folder, str):
        return False
    path = Path(folder)
    return path.name.isdigit() and path.parent.resolve() == results_dir.resolve()
