"""The Snakemake workflow shipped with the package: ``virnucpro-trt workflow -o DIR`` writes it out.

``Snakefile`` (build the engine set once, split, one ``predict`` job per part, merge), ``config.yaml``
(the settings, with comments) and ``profiles/slurm/config.yaml`` (a profile for
snakemake-executor-plugin-slurm). The files are package data, copied as they are; nothing is templated,
so what a user reads in DIR is what runs. ``demo`` fills config.yaml with the random-weight demo models
and generated reads, so the workflow runs end to end on any machine without downloads.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from virnucpro_trt.errors import UserError

WORKFLOW_FILES = ("Snakefile", "config.yaml", "profiles/slurm/config.yaml")
_SOURCE = Path(__file__).parent
DEMO_READS = 600
# 3 shards of the demo's reads (256, 256, 88), one per part of its 3-part split; predict's default rule
# would make them one shard (at least 4,096 records: runtime/shards.py), so one part and two empty ones.
DEMO_SHARD_RECORDS = 256
DEMO_SEED = 2027


def write_workflow(folder: Path, demo: bool = False) -> list[Path]:
    """Copy the workflow files into ``folder`` (never over existing files); returns what was written."""
    targets = [folder / name for name in WORKFLOW_FILES]
    if demo:
        targets.append(folder / "demo" / "reads.fa")
    existing = [str(path) for path in targets if path.exists()]
    if existing:
        raise UserError(f"{existing[0]} exists; write the workflow into another folder (or remove it)")
    texts = {name: (_SOURCE / name).read_text(encoding="utf-8") for name in WORKFLOW_FILES}
    if demo:
        texts["config.yaml"] = _demo_config(texts["config.yaml"], folder.resolve())
    for name, text in texts.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return targets


def _demo_config(template: str, folder: Path) -> str:
    """config.yaml with the demo models, generated reads and a result folder beside the workflow."""
    from virnucpro_trt.demo import demo_inputs
    from virnucpro_trt.sequences.synthetic import generate_reads, write_fasta

    models = demo_inputs()
    reads = folder / "demo" / "reads.fa"
    reads.parent.mkdir(parents=True, exist_ok=True)
    write_fasta(generate_reads(DEMO_READS, 500, seed=DEMO_SEED, coding_fraction=0.6, prefix="demo"), reads)
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
    return "# DEMO: random-weight models and generated reads (virnucpro-trt workflow --demo)\n" + text
