"""The Snakemake workflow shipped with the package: ``virnucpro-trt workflow -o DIR`` writes it out.

``Snakefile`` (build the engine set once, split, one ``predict`` job per part, merge), ``config.yaml``
(the settings, with comments) and ``profiles/slurm/config.yaml`` (a profile for
snakemake-executor-plugin-slurm). The files are package data, copied as they are; nothing is templated,
so what a user reads in DIR is what runs. ``demo`` fills config.yaml with the random-weight demo models
and generated reads, so the workflow runs end to end on any machine without downloads.
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path

from virnucpro_trt.errors import UserError
from virnucpro_trt.files.exclusive import write_new_text
from virnucpro_trt.files.folders import made_folder
from virnucpro_trt.files.names import check_parent_folders
from virnucpro_trt.files.run_lock import KeptFiles, outdir_lock

WORKFLOW_FILES = ("Snakefile", "config.yaml", "profiles/slurm/config.yaml")
_SOURCE = Path(__file__).parent
DEMO_READS = 600
DEMO_READS_FILE = "demo/reads.fa"
# 3 shards of the demo's reads (256, 256, 88), one per part of its 3-part split; predict's default rule
# would make them one shard (at least 4,096 records: runtime/shards.py), so one part and two empty ones.
DEMO_SHARD_RECORDS = 256
DEMO_SEED = 2027
KEPT_FILES = KeptFiles((*WORKFLOW_FILES, DEMO_READS_FILE))  # their temporaries: what a run keeps there


def write_workflow(folder: Path, demo: bool = False) -> list[Path]:
    """Copy the workflow files into ``folder`` (never over other files); returns what was written.

    Idempotent: a file already holding exactly the bytes it would get counts as written, so the same
    command again writes nothing (exit 0) and one interrupted between files writes the rest (each file
    appears whole or not at all: :func:`~virnucpro_trt.files.exclusive.write_new_text`). A file at one
    of the names with other content, a symbolic link (a dangling one included) or anything else there
    is refused in one line before anything is written; each new file is created exclusively
    (``O_EXCL | O_NOFOLLOW``: ``files/exclusive.py``), never written through. A link in place of one of
    the subfolders it writes into (``profiles``, ``demo``) is refused too. The files are written holding
    the folder's lock (one run at a time; it notes each temporary file, so the rerun after a SIGKILL
    removes it), in a folder made for them only if it was missing (removed again on a failure).
    """
    check_parent_folders(folder)
    texts = {name: (_SOURCE / name).read_text(encoding="utf-8") for name in WORKFLOW_FILES}
    if demo:
        texts["config.yaml"], texts[DEMO_READS_FILE] = _demo_texts(texts["config.yaml"], folder.resolve())
    missing = _missing(folder, texts)
    if not missing:
        return []
    with made_folder(folder), outdir_lock(folder, KEPT_FILES) as lock:
        noted = functools.partial(lock.note, growing=True) if lock is not None else None
        for name in missing:
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            write_new_text(path, texts[name], noted)
    return [folder / name for name in missing]


def _missing(folder: Path, texts: dict[str, str]) -> list[str]:
    """The names still to write. Refuses (exit 2) a name taken by anything but a regular file with these
    very bytes (links included), and a subfolder on the way that is a symbolic link or not a folder."""
    missing = []
    for name, text in texts.items():
        path = folder / name
        for sub in path.relative_to(folder).parents:
            step = folder / sub
            if step != folder and os.path.lexists(step) and (step.is_symlink() or not step.is_dir()):
                raise UserError(
                    f"{step} is {'a symbolic link' if step.is_symlink() else 'not a folder'}; write the "
                    "workflow into another folder (or remove it)"
                )
        if not os.path.lexists(path):
            missing.append(name)
        elif path.is_symlink() or not path.is_file():
            what = "a symbolic link" if path.is_symlink() else "not a regular file"
            raise UserError(f"{path} exists ({what}); write the workflow into another folder (or remove it)")
        elif path.stat().st_size != len(data := text.encode()) or path.read_bytes() != data:
            raise UserError(
                f"{path} exists with other content; write the workflow into another folder (or remove it)"
            )
    return missing


def _demo_texts(template: str, folder: Path) -> tuple[str, str]:
    """config.yaml with the demo models, generated reads (at ``DEMO_READS_FILE``) and a result folder
    beside the workflow, and the reads' FASTA text (deterministic: a rerun compares equal)."""
    from virnucpro_trt.demo import demo_inputs
    from virnucpro_trt.sequences.synthetic import generate_reads

    models = demo_inputs()
    reads = folder / DEMO_READS_FILE
    generated = generate_reads(DEMO_READS, 500, seed=DEMO_SEED, coding_fraction=0.6, prefix="demo")
    fasta = "".join(f">{rid}\n{seq}\n" for rid, seq in generated)  # 2-line FASTA
    values = {
        "input": str(reads),
        "outdir": str(folder / "demo-out"),
        "parts": 3,
        "shard_records": DEMO_SHARD_RECORDS,
        "dnabert": str(models.dnabert),
        "esm": str(models.esm),
        "classifier": str(models.classifier),
        "device": "cpu",
        "threads": 1,
        "demo": True,
    }
    text = template
    for key, value in values.items():
        # JSON strings are YAML double-quoted scalars: any path is written safely.
        text, count = re.subn(rf"(?m)^{key}: [^#\n]*", f"{key}: {json.dumps(value)}  ", text, count=1)
        assert count == 1, key
    return "# DEMO: random-weight models and generated reads (virnucpro-trt workflow --demo)\n" + text, fasta
