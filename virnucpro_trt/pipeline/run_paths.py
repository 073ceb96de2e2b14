"""Where a command reads and where it writes, checked before anything is created.

A run overwrites its result files and removes its working files. So an input that *is* one of those
files (``OUTDIR/frames.tsv``, ``embed -o reads.fa``), holds one of them (a model folder), or lies inside
the working area, would be destroyed by the very run that reads it; and an OUTDIR inside another run's
``.work`` would be swept away with it.
Each is refused with one line (exit 2) before the output folder exists.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterable
from pathlib import Path

from virnucpro_trt.errors import InputFormatError, UserError
from virnucpro_trt.files.names import is_within, same_file
from virnucpro_trt.runtime.resume import inside_work_area

STDIN = "-"


def is_stream(input_spec: str) -> bool:
    """stdin (``-``) or a pipe (``<(zcat a.fq.gz b.fq.gz)``): read once, so it is copied first."""
    return input_spec == STDIN or stat.S_ISFIFO(os.stat(input_spec).st_mode)


def check_input_file(input_spec: str) -> None:
    """The input exists and is a regular file or a pipe (stdin too), so a missing input fails before
    OUTDIR exists and a device such as /dev/zero is never read. A regular file must give its first
    byte: one that cannot be read (no permission, EIO from a failing disk or a link to /proc/self/mem)
    is named in one line here, not met as an unexpected OSError half-way through a run."""
    if input_spec == STDIN:
        if sys.stdin is None:  # started with stdin closed (``<&-``): Python has no stream for it
            raise InputFormatError("input -: stdin is closed; pipe the reads in or give a file")
        return
    path = Path(input_spec)
    if not path.exists():
        raise InputFormatError(f"input {input_spec}: no such file")
    if path.is_dir():
        raise InputFormatError(f"input {input_spec}: is a directory, expected a FASTA/FASTQ file")
    if not (path.is_file() or is_stream(input_spec)):
        raise InputFormatError(f"input {input_spec}: not a regular file or a pipe")
    if path.is_file():
        try:
            with open(path, "rb") as handle:
                handle.read(1)
        except OSError as exc:
            raise InputFormatError(f"input {input_spec}: cannot be read ({exc.strerror or exc})") from None


def check_run_paths(
    inputs: Iterable[str | Path | None], outputs: Iterable[Path], work_areas: Iterable[Path] = ()
) -> None:
    """Refuse an input that is an output or lies in a working area, an output inside an input folder
    (a model folder: ``embed -o MODEL/model.safetensors --force`` wrote over the weights it read), and
    outputs inside another run's working area. ``None`` and stdin inputs are skipped."""
    outputs, work_areas = list(outputs), list(work_areas)
    for output in outputs:
        foreign = inside_work_area(output.parent)
        if foreign is not None and not any(is_within(foreign, area) for area in work_areas):
            raise UserError(
                f"{output.parent} is inside another run's working area {foreign}, which that run removes; "
                "choose an output folder elsewhere"
            )
    for item in inputs:
        if item is None or str(item) == STDIN:
            continue
        path = Path(item)
        for area in work_areas:
            if is_within(path, area):
                raise UserError(
                    f"input {item} lies inside {area}, this run's working area (its files are removed); "
                    "move it elsewhere"
                )
        folder = path.is_dir()
        for output in outputs:
            if same_file(path, output):
                raise UserError(
                    f"input {item} is {output}, a file this run writes; choose another output location"
                )
            if folder and is_within(output, path):
                shown = output if same_file(output.parent, path) else output.parent  # OUTDIR, not its files
                raise UserError(
                    f"{shown} lies inside {item}, a folder this run reads (a model's files would be "
                    "written over); choose an output location outside it"
                )
