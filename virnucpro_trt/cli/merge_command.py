"""``virnucpro-trt merge``: the parts' predict results of one split joined into one run's files.

Only click is imported at module level (``cli/main.py`` registers this on every start-up).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from virnucpro_trt.cli.command_options import CONTEXT, OutputPath, logging_options
from virnucpro_trt.outputs.demo_note import DEMO_LABEL
from virnucpro_trt.settings import MergeSettings

log = logging.getLogger("virnucpro_trt")


@click.command("merge", context_settings=CONTEXT)
@click.argument(
    "part_outs", metavar="PART_OUT...", nargs=-1, required=True,
    type=click.Path(file_okay=False, path_type=Path),
)  # fmt: skip
@click.option(
    "-o", "--outdir", required=True, type=OutputPath(file_okay=False, path_type=Path),
    help="Folder for the merged result files.",
)  # fmt: skip
@click.option(
    "--force", is_flag=True,
    help="Replace what OUTDIR holds at merge's result names (another run's or merge's results, or files "
    "of yours at those names); on this merge's own results, merge again.",
)  # fmt: skip
@logging_options
def merge(part_outs: tuple[Path, ...], outdir: Path, force: bool) -> None:
    """Join the predict output folders of every part of one split into one run's result files.

    Refuses (exit 2, nothing written) a missing part, a part given twice, parts of different splits
    and parts run with different models, weights, engines or settings. Run again onto its own finished
    results, it does nothing (exit 0); other results in OUTDIR are refused unless --force.
    """
    from virnucpro_trt.pipeline.merge_parts import run_merge

    summary = run_merge(MergeSettings(tuple(part_outs), outdir, force), command=sys.argv)
    counts, split = summary.counts, summary.split
    log.info(
        "%s%s: %d part(s), %d records, %d frames scored, %d sequences labelled virus -> %s",
        "UP TO DATE" if summary.reused else "PASSED",
        DEMO_LABEL if summary.demo_random_weights else "",
        split.parts if split is not None else 0, counts["records"], counts["frames"],
        counts["virus_sequences"],
        outdir,
    )  # fmt: skip
