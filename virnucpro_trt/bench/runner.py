"""The benchmark loop: one workload, every configuration in turn, each row compared with the reference.

Order matters only for the reference, which runs first: every other row's parity is computed against
its embeddings and scores as soon as that row finishes, so at most two configurations' outputs are in
memory at once, and a configuration's models are released before the next one is opened (the full-size
fp32 reference alone holds 11 GiB on the GPU). A failing configuration becomes a ``failed`` row and the
loop goes on; the report is handed to ``on_row`` after every row so a run cut short keeps its figures.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from virnucpro_trt.bench.config_names import DEFAULT_BENCH_BACKENDS, REFERENCE
from virnucpro_trt.bench.configs import (
    ConfigSpec,
    OpenContext,
    Unavailable,
    open_configuration,
    plan_configurations,
    resolve_precisions,
)
from virnucpro_trt.bench.hardware import hardware_report
from virnucpro_trt.bench.models import (
    ModelSet,
    RandomSize,
    load_masters,
    named_models,
    random_models_in,
)
from virnucpro_trt.bench.parity import path_parity
from virnucpro_trt.bench.path import STAGES, PathResult, run_path
from virnucpro_trt.bench.report import fill_compile_speedups, new_report, result_row
from virnucpro_trt.bench.timing import measure
from virnucpro_trt.bench.workload import (
    DEFAULT_CODING_FRACTION,
    DEFAULT_READ_LENGTH,
    DEFAULT_READS,
    DEFAULT_SEED,
    Workload,
    fasta_workload,
    generated_workload,
)
from virnucpro_trt.environment import available_cpus
from virnucpro_trt.errors import UserError, one_line
from virnucpro_trt.files.swept_folders import swept_folder
from virnucpro_trt.settings import DEFAULT_CHUNK_LENGTH

log = logging.getLogger(__name__)

BENCH_FOLDER_PREFIX = "vt-bench-"  # the work folder without --workdir (files/swept_folders.py)

DEFAULT_REFERENCE_FRAMES = 1000


@dataclass(frozen=True)
class BenchSettings:
    """Everything a bench run needs (the CLI fills it; ``run_bench`` never reads the command line)."""

    input: Path | None = None
    reads: int = DEFAULT_READS
    read_length: int = DEFAULT_READ_LENGTH
    length_mix: str = "fixed"  # see sequences/synthetic.LENGTH_MIXES
    seed: int = DEFAULT_SEED
    coding_fraction: float = DEFAULT_CODING_FRACTION
    chunk_length: int = DEFAULT_CHUNK_LENGTH
    dnabert: str | None = None
    esm: str | None = None
    classifier: str | None = None
    random_weights: str | None = None  # "full" | "tiny" | "full-outliers" | "tiny-outliers"
    backends: tuple[str, ...] = DEFAULT_BENCH_BACKENDS
    precision: str = "auto"  # one or several, comma-separated: "bf16,fp8"
    engines: tuple[Path, ...] = ()
    workdir: Path | None = None
    device: str = "auto"
    max_batch_tokens: int | None = None
    repeats: int = 3
    reference_frames: int | None = DEFAULT_REFERENCE_FRAMES
    threads: int | None = None
    command: list[str] = field(default_factory=list)


def _workload(settings: BenchSettings) -> Workload:
    if settings.input is not None:
        return fasta_workload(settings.input, settings.chunk_length)
    return generated_workload(
        settings.reads, settings.read_length, settings.seed, settings.coding_fraction, settings.chunk_length,
        settings.length_mix,
    )  # fmt: skip


def _models(settings: BenchSettings, workdir: Path, device: torch.device) -> ModelSet:
    if settings.random_weights:
        if device.type == "cpu" and settings.random_weights.startswith("full"):
            log.warning("--random-weights full on a CPU: ESM-2 3B runs at a few frames per second here")
        size = cast(RandomSize, settings.random_weights)
        return random_models_in(workdir, size, device)
    assert settings.dnabert and settings.esm and settings.classifier
    return named_models(settings.dnabert, settings.esm, settings.classifier)


def run_bench(
    settings: BenchSettings, on_row: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Run every configuration on one workload; return the report (see :mod:`.report` for its schema)."""
    from virnucpro_trt.runtime.device import resolve_device

    if settings.repeats < 1:
        raise UserError("--repeats must be at least 1")
    device = resolve_device(settings.device)
    precisions = resolve_precisions(settings.precision, device)
    torch.set_num_threads(settings.threads or available_cpus())
    specs = plan_configurations(settings.backends, precisions, settings.engines)  # bad --engines: exit 2 now
    workload = _workload(settings)  # a bad input fails before any model is loaded
    log.info(
        "workload: %d reads -> %d kept frames (%s); configurations: %s",
        workload.reads, workload.frames, workload.source, ", ".join(s.name for s in specs),
    )  # fmt: skip
    with ExitStack() as stack:
        # a SIGKILLed bench's folder (random checkpoints: gigabytes at full size) goes with the next bench
        workdir = settings.workdir or stack.enter_context(swept_folder(BENCH_FOLDER_PREFIX))
        workdir.mkdir(parents=True, exist_ok=True)
        models = _models(settings, workdir, device)
        ctx = OpenContext(
            models, load_masters(models), device, workdir, settings.max_batch_tokens, settings.threads
        )
        report = new_report(
            hardware_report(device), _describe_workload(workload, ctx), models.describe(), settings
        )
        report["settings"]["precision_resolved"] = ",".join(precisions)
        reference: PathResult | None = None
        for spec in specs:
            row, result = _run_one(spec, ctx, workload, settings, reference, report)
            if spec.backend == REFERENCE:
                reference = result
            report["results"].append(row)
            fill_compile_speedups(report["results"])
            if on_row is not None:
                on_row(report)
            del result
            _release(device)
        report["complete"] = True
    return report


def _describe_workload(workload: Workload, ctx: OpenContext) -> dict[str, Any]:
    """The workload block, with token counts from the checkpoints' own tokenizers."""
    from virnucpro_trt.sequences.prepare import prepare_blocks

    dna: list[str] = []
    proteins: list[str] = []
    for block in prepare_blocks(workload.records, workload.chunk_length):
        dna += block.frames.dna
        proteins += block.frames.protein
    dna_tokenizer, esm_tokenizer = ctx.masters.tokenizers(ctx.models)
    dna_tokens = sum(len(t) for t in dna_tokenizer.encode_batch(dna))
    esm_tokens = sum(len(t) for t in esm_tokenizer.encode_batch(proteins))
    return {
        **workload.describe(),
        "tokens": int(dna_tokens + esm_tokens),
        "dnabert_tokens": int(dna_tokens),
        "esm_tokens": int(esm_tokens),
    }


def _rotated(records: list, index: int, repeats: int) -> list:
    """Pass ``index`` starts at a different read (docs/performance.md: rotate inputs between passes)."""
    if index == 0 or not records:
        return records
    offset = (index * len(records)) // (repeats + 1)
    return records[offset:] + records[:offset]


def _run_one(
    spec: ConfigSpec,
    ctx: OpenContext,
    workload: Workload,
    settings: BenchSettings,
    reference: PathResult | None,
    report: dict[str, Any],
) -> tuple[dict[str, Any], PathResult | None]:
    """Open, time and compare one configuration; never raises for the configuration's own failures."""
    records = workload.records
    if spec.backend == REFERENCE and settings.reference_frames:
        records = workload.prefix_for_frames(settings.reference_frames)
    log.info("%s: opening", spec.name)
    try:
        opened = open_configuration(spec, ctx)
    except Unavailable as exc:
        log.warning("%s: unavailable: %s", spec.name, exc)
        return result_row(spec, ctx.device, "unavailable", reason=str(exc)), None
    except Exception as exc:
        log.debug("%s failed to open", spec.name, exc_info=True)
        log.error("%s: failed: %s", spec.name, one_line(exc, 400))
        return result_row(spec, ctx.device, "failed", reason=one_line(exc, 400)), None
    facts: dict[str, Any] = {
        "batching": opened.batching, "engine": opened.engine, "compile": opened.compile,
        "open_s": opened.open_s,
    }  # fmt: skip
    try:
        log.info(
            "%s: warm-up pass and %d timed passes over %d reads", spec.name, settings.repeats, len(records)
        )
        models = opened.models  # released when this function returns, before the next one opens
        measurement = measure(
            lambda i: run_path(models, _rotated(records, i, settings.repeats), workload.chunk_length),
            settings.repeats,
            ctx.device,
        )
        result = measurement.warmup_result  # input order: the one pass whose frames need no un-rotating
        parity_reference = result if spec.backend == REFERENCE else reference
        parity = path_parity(parity_reference, result, spec.precision) if parity_reference else None
    except Exception as exc:
        log.debug("%s failed", spec.name, exc_info=True)
        log.error("%s: failed: %s", spec.name, one_line(exc, 400))
        return result_row(spec, ctx.device, "failed", reason=one_line(exc, 400), **facts), None
    finally:
        if opened.finish is not None:
            opened.finish()
    stages = {s: float(np.median([r.stages_s.get(s, 0.0) for r in measurement.results])) for s in STAGES}
    row = result_row(
        spec,
        ctx.device,
        "ok",
        frames=result.frames,
        reads=result.reads,
        tokens=result.tokens,
        seconds=measurement.median_s,
        passes_s=measurement.passes_s,
        warmup_s=measurement.warmup_s,
        stages_s=stages,
        workload=report["workload"],
        reference_row=next((r for r in report["results"] if r["backend"] == REFERENCE), None),
        parity=parity,
        padding=result.padding,
        **facts,
    )
    log.info(
        "%s: %.1f frames/s (median of %d passes)%s", spec.name, row["frames_per_s"], settings.repeats,
        f", {row['speedup_vs_reference']:.2f}x the reference" if row["speedup_vs_reference"] else "",
    )  # fmt: skip
    return row, result


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
