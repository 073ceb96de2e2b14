"""``virnucpro-trt split``: one input as parts on the shard boundaries of one run, predicted anywhere.

Only click is imported at module level (``cli/main.py`` registers this on every start-up).
"""

from __future__ import annotations

import logging
from pathlib import Path

import click

from virnucpro_trt.cli.command_options import (
    CONTEXT,
    OutputPath,
    chunk_length_option,
    logging_options,
    shard_records_option,
)
from virnucpro_trt.pipeline.split_manifest import MAX_PARTS
from virnucpro_trt.settings import SplitSettings

log = logging.getLogger("virnucpro_trt")


@click.command("split", context_settings=CONTEXT)
@click.argument("input_path", metavar="INPUT")
@click.option(
    "-o", "--outdir", required=True, type=OutputPath(file_okay=False, path_type=Path),
    help="Empty folder for the part files and split.json.",
)  # fmt: skip
@click.option("--parts", type=click.IntRange(min=1, max=MAX_PARTS), default=None, help="Exactly N parts.")
@click.option(
    "--records-per-part", type=click.IntRange(min=1), default=None, help="Parts of about R records."
)
@click.option("--gzip", "gzip_parts", is_flag=True, help="Write the parts gzip-compressed (.fa.gz).")
@shard_records_option(
    "As predict's --shard-records for the whole input (default: its default rule). Each part is then "
    "predicted with exactly those shards."
)
@chunk_length_option("Only for the kept frames split.json counts per part (the work each part is).")
@logging_options
def split(
    input_path: str,
    outdir: Path,
    parts: int | None,
    records_per_part: int | None,
    gzip_parts: bool,
    shard_records: int | None,
    chunk_length: str,
) -> None:
    """Cut INPUT into part files on the shard boundaries one `predict` of it would use.

    Predict each part with `virnucpro-trt predict PART -o PART_OUT ...` (anywhere, in any order), then
    `virnucpro-trt merge PART_OUT... -o OUTDIR`: the same files as one predict of INPUT, byte for byte.
    INPUT is FASTA or FASTQ (plain, gzip, bzip2 or xz; '-' for stdin), validated as predict does.
    """
    if (parts is None) == (records_per_part is None):
        raise click.UsageError("give exactly one of --parts N or --records-per-part R")
    from virnucpro_trt.pipeline.split import run_split

    outcome = run_split(
        SplitSettings(
            input_path, outdir, parts, records_per_part, int(chunk_length), shard_records, gzip_parts
        )
    )
    manifest = outcome.manifest
    log.info(
        "%s: %d record(s) in %d part(s) -> %s (split %s)",
        "PASSED" if outcome.written else "UP TO DATE",
        manifest.records, len(manifest.parts), outdir, manifest.split_id[:12],
    )  # fmt: skip
