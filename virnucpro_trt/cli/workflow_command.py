"""``virnucpro-trt workflow``: write the Snakemake workflow (Snakefile, config, Slurm profile) into DIR.

Only click is imported at module level (``cli/main.py`` registers this on every start-up).
"""

from __future__ import annotations

import logging
from pathlib import Path

import click

from virnucpro_trt.cli.command_options import CONTEXT, OutputPath, logging_options

log = logging.getLogger("virnucpro_trt")


@click.command("workflow", context_settings=CONTEXT)
@click.option(
    "-o", "--outdir", required=True, type=OutputPath(file_okay=False, path_type=Path),
    help="Folder for Snakefile, config.yaml and profiles/slurm/config.yaml.",
)  # fmt: skip
@click.option(
    "--demo",
    is_flag=True,
    help="Fill config.yaml with the RANDOM-WEIGHT demo models and generated reads (runs anywhere).",
)
@logging_options
def workflow(outdir: Path, demo: bool) -> None:
    """Write the Snakemake workflow: build engines once, split, one predict job per part, merge.

    \b
    On this machine:  snakemake -s DIR/Snakefile --cores 2 --config input=... outdir=... parts=3 ...
    On Slurm:         snakemake -s DIR/Snakefile --profile DIR/profiles/slurm --config ...
    Needs snakemake and snakemake-executor-plugin-slurm: pip install 'virnucpro-trt[cluster]'.
    """
    from virnucpro_trt.workflow import write_workflow

    written = write_workflow(outdir, demo=demo)
    for path in written:
        log.info("wrote %s", path)
    if not written:
        log.info("%s already holds this workflow: nothing to do", outdir)
    if demo:
        log.warning("DEMO: the models are RANDOM WEIGHTS built for this demo — the labels mean nothing")
    status = "PASSED" if written else "UP TO DATE"
    log.info("%s: run it with: snakemake -s %s --cores 2", status, outdir / "Snakefile")
