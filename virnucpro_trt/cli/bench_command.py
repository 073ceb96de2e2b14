"""``virnucpro-trt bench``: one workload, every configuration side by side against the upstream way.

Only click (and the torch-free tables) is imported at module level: ``cli/main.py`` registers this command
on every start-up, and ``virnucpro-trt --help`` must not pay for torch. Everything else is imported when
the command runs. The options it shares with ``build`` and ``predict`` come from ``command_options``.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Any

import click

from virnucpro_trt.bench.config_names import DEFAULT_BENCH_BACKENDS, RANDOM_SIZES, parse_precisions
from virnucpro_trt.cli.command_options import (
    CONTEXT,
    DEFAULT_BUDGETS,
    THREAD_COUNT,
    FiniteFloatRange,
    OutputPath,
    checkpoint_options,
    chunk_length_option,
    device_option,
    logging_options,
    max_batch_tokens_option,
    replace_option,
)
from virnucpro_trt.errors import UserError
from virnucpro_trt.models.kinds import MODELS, checkpoint_specs

log = logging.getLogger("virnucpro_trt")

_DEFAULT_BACKENDS = ",".join(DEFAULT_BENCH_BACKENDS)
_BACKENDS_HELP = (
    "Comma-separated configurations to compare with the reference: torch (eager PyTorch at --precision), "
    "onnxruntime, inductor, tensorrt (engines built on the fly into --workdir by the real build code), "
    "compile (the peer: the same models under torch.compile; fp8 through torchao's float8 quantisation). "
    f"Default: {_DEFAULT_BACKENDS}; with --engines: torch."
)
_LENGTH_MIXES = ("fixed", "mixed", "illumina")  # sequences/synthetic.LENGTH_MIXES


def _precisions(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """One precision or several, comma-separated (each configuration runs at each)."""
    try:
        return ",".join(parse_precisions(value))
    except UserError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


def _usage(message: str) -> click.UsageError:
    return click.UsageError(message)


def _check_sources(
    input_path: Path | None,
    reads: int | None,
    read_length: int | None,
    models: dict[str, str | None],
    random_weights: str | None,
    length_mix: str | None = None,
) -> None:
    """One workload source and one model source, or a usage error naming the conflict."""
    if input_path is not None and (reads is not None or read_length is not None or length_mix is not None):
        raise _usage("give INPUT or --reads/--read-length/--length-mix (generated reads), not both")
    if read_length is not None and length_mix not in (None, "fixed"):
        raise _usage(f"--read-length sets the fixed mix's length; --length-mix {length_mix} has its own")
    named = [flag for flag, value in models.items() if value]
    if random_weights and named:
        raise _usage(f"--random-weights replaces the checkpoints: drop {', '.join(named)}")
    if not random_weights and len(named) < len(models):
        missing = [flag for flag, value in models.items() if not value]
        raise _usage(
            f"missing {', '.join(missing)} "
            f"(or --random-weights {'|'.join(RANDOM_SIZES)} for random weights of the real shapes)"
        )


@click.command("bench", context_settings=CONTEXT)
@click.argument(
    "input_path", metavar="[INPUT]", required=False, type=click.Path(dir_okay=False, path_type=Path)
)
@click.option("--reads", type=click.IntRange(min=1), default=None, help="Generate N reads (default 1000).")
@click.option(
    "--read-length", type=click.IntRange(min=1), default=None, help="Length of generated reads (default 500)."
)
@click.option(
    "--length-mix",
    type=click.Choice(_LENGTH_MIXES),
    default=None,
    help="Lengths of generated reads: fixed (--read-length, default), mixed (100-1000 bp, log-uniform) "
    "or illumina (150 bp, 1 in 5 trimmed to 100-149 bp). The table and JSON report each encoder's padding.",
)
@click.option(
    "--seed", type=click.IntRange(min=0), default=42, show_default=True, help="Seed of the generated reads."
)
@click.option(
    "--coding-fraction",
    type=FiniteFloatRange(0.0, 1.0),
    default=0.7,
    show_default=True,
    help="Share of generated reads with a coding region (the rest is random DNA, which keeps no frame).",
)
@chunk_length_option()
@checkpoint_options(required=False)
@click.option(
    "--random-weights",
    type=click.Choice(RANDOM_SIZES),
    default=None,
    help="Random weights in the real formats instead of checkpoints: full (DNABERT-S 12x768 + ESM-2 3B; "
    "GPU speed work) or tiny (CPU tests); -outliers: the same with a few LayerNorm gain channels scaled "
    "20-50x, as trained models have (fp8 parity is judged on these too).",
)
@click.option("--backends", default=None, help=_BACKENDS_HELP)
@click.option(
    "--precision",
    default="auto",
    show_default=True,
    callback=_precisions,
    help="Precision of the torch, compile and engine configurations: auto (bf16 on CUDA, fp32 on CPU), "
    "fp32, fp16, bf16, fp8, or several comma-separated (bf16,fp8: every configuration at each). The "
    "reference is always fp32.",
)
@click.option(
    "--engines",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="An engine directory from `virnucpro-trt build` to compare too (manifest checked; repeatable).",
)
@click.option(
    "--workdir",
    type=OutputPath(file_okay=False, path_type=Path),
    default=None,
    help="Where random checkpoints and built engines go, reused by later runs (default: a temporary folder).",
)
@device_option
@max_batch_tokens_option(f"Token budget per batch for torch and engines (default {DEFAULT_BUDGETS}).")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True, help="Timed passes.")
@click.option(
    "--reference-frames",
    type=click.IntRange(min=0),
    default=1000,
    show_default=True,
    help="Time the (slow) reference on the reads holding the first N frames, extrapolated per frame; "
    "0: all frames.",
)
@click.option("-t", "--threads", type=THREAD_COUNT, default=None, help="CPU threads for torch.")
@click.option(
    "--json", "json_path", type=OutputPath(dir_okay=False, path_type=Path), help="Write the results here."
)
@click.option(
    "--plot",
    "plot_path",
    type=OutputPath(dir_okay=False, path_type=Path),
    help="Draw frames/s bars with speedup labels (PNG; needs matplotlib).",
)
@replace_option
@click.option(
    "--gate",
    type=FiniteFloatRange(min=0.0, min_open=True),
    default=None,
    help="Exit 1 unless the best engine is at least X times faster than the reference.",
)
@logging_options
def bench(
    input_path: Path | None,
    reads: int | None,
    read_length: int | None,
    length_mix: str | None,
    seed: int,
    coding_fraction: float,
    chunk_length: str,
    dnabert: str | None,
    esm: str | None,
    classifier: str | None,
    random_weights: str | None,
    backends: str | None,
    precision: str,
    engines: tuple[Path, ...],
    workdir: Path | None,
    device: str,
    max_batch_tokens: int | None,
    repeats: int,
    reference_frames: int,
    threads: int | None,
    json_path: Path | None,
    plot_path: Path | None,
    force: bool,
    gate: float | None,
) -> None:
    """Compare the upstream way (reference), eager PyTorch and every engine on one workload.

    Each configuration runs the whole path (prepare -> tokenize -> DNABERT-S -> ESM-2 -> classifier) over
    the same kept frames: a warm-up pass, then the median of --repeats passes. Parity of every row is
    measured against the reference's embeddings and scores. INPUT is a FASTA/FASTQ file; without it,
    reads with coding regions are generated (seeded).

    \b
    CPU smoke run (tiny random weights, under a minute):
        virnucpro-trt bench --random-weights tiny --reads 200 --backends torch,onnxruntime
    GPU (see .github/workflows/gpu-bench.yml):
        virnucpro-trt bench --random-weights full --reads 20000 --backends torch,inductor,onnxruntime \\
            --precision bf16 --gate 3 --json bench.json --plot bench.png
    Against torch.compile, in bf16 and fp8, on weights with outlier channels:
        virnucpro-trt bench --random-weights full-outliers --reads 20000 --backends torch,compile,inductor \\
            --precision bf16,fp8 --json bench.json
    """
    from virnucpro_trt.environment import stay_offline

    stay_offline()  # model lookups never download, no library phones home
    named = checkpoint_specs(dnabert, esm, classifier)
    _check_sources(
        input_path,
        reads,
        read_length,
        {MODELS[kind].flag: spec for kind, spec in named.items()},
        random_weights,
        length_mix,
    )
    reports = [path for path in (json_path, plot_path) if path is not None]
    _check_report_paths(reports, [input_path, dnabert, esm, classifier, *engines], workdir, force)
    if plot_path is not None:
        from virnucpro_trt.bench.plot import require_matplotlib

        require_matplotlib()  # before the run, not after it
    from virnucpro_trt.bench.configs import parse_backends
    from virnucpro_trt.bench.runner import BenchSettings
    from virnucpro_trt.bench.workload import DEFAULT_READ_LENGTH, DEFAULT_READS

    if input_path is not None and not input_path.is_file():
        raise _usage(f"INPUT {input_path} is not a file")
    default_backends = "torch" if engines else _DEFAULT_BACKENDS
    settings = BenchSettings(
        input=input_path,
        reads=reads or DEFAULT_READS,
        read_length=read_length or DEFAULT_READ_LENGTH,
        length_mix=length_mix or "fixed",
        seed=seed,
        coding_fraction=coding_fraction,
        chunk_length=int(chunk_length),
        dnabert=dnabert,
        esm=esm,
        classifier=classifier,
        random_weights=random_weights,
        backends=parse_backends(default_backends if backends is None else backends),
        precision=precision,
        engines=tuple(engines),
        workdir=workdir,
        device=device,
        max_batch_tokens=max_batch_tokens,
        repeats=repeats,
        reference_frames=reference_frames or None,
        threads=threads,
        command=[Path(sys.argv[0]).name, *sys.argv[1:]],
    )
    _run(settings, json_path, plot_path, gate)


def _check_report_paths(reports: list[Path], inputs: list[Any], workdir: Path | None, force: bool) -> None:
    """The ``--json`` and ``--plot`` files follow every command's output rule (``files/ownership.py``):
    a file there that bench did not write is refused before the run (exit 2) unless ``--force``, and
    neither may be one of the run's inputs, lie in an input folder or in a folder of ``--workdir`` (its
    models and engines), nor be the other report; checked before anything runs."""
    from virnucpro_trt.errors import UserError
    from virnucpro_trt.files.names import check_parent_folders, is_within, same_file
    from virnucpro_trt.files.ownership import check_replaceable, record_path
    from virnucpro_trt.pipeline.run_paths import check_run_paths

    if len(reports) == 2 and same_file(*reports):
        raise UserError(f"--json and --plot both name {reports[0]}; give each its own file")
    for path in reports:
        check_parent_folders(path)
        if workdir is not None and is_within(path.parent, workdir) and not same_file(path.parent, workdir):
            raise UserError(
                f"{path} lies in a folder of --workdir {workdir}, where bench keeps its models and engines; "
                "put the report beside them or elsewhere"
            )
    check_run_paths(inputs, [*reports, *(record_path(path.parent) for path in reports)])
    check_replaceable(reports, force)


def _run(settings: Any, json_path: Path | None, plot_path: Path | None, gate: float | None) -> None:
    from virnucpro_trt.bench.gate import evaluate_gate
    from virnucpro_trt.bench.report import write_json
    from virnucpro_trt.bench.runner import run_bench
    from virnucpro_trt.bench.table import print_table
    from virnucpro_trt.files.folders import made_folder
    from virnucpro_trt.files.ownership import record_written

    def save(report: dict[str, Any]) -> None:  # after every row: a run cut short keeps its figures
        if json_path is not None:
            write_json(report, json_path)
            record_written([json_path])  # so the next row, and a rerun, may replace it

    with contextlib.ExitStack() as folders:  # made (and checked writable) before any model loads
        for folder in dict.fromkeys(path.parent for path in (json_path, plot_path) if path is not None):
            folders.enter_context(made_folder(folder))
        report = run_bench(settings, on_row=save)
        verdict = evaluate_gate(report["results"], gate) if gate is not None else None
        report["gate"] = verdict.to_json() if verdict else None
        save(report)
        print_table(report)
        if plot_path is not None:
            from virnucpro_trt.bench.plot import draw

            draw(report, plot_path)
            record_written([plot_path])
            log.info("plot written to %s", plot_path)
    _finish(report, verdict)


def _finish(report: dict[str, Any], verdict: Any) -> None:
    """One status line; exit 1 when the reference or any configuration failed, or the gate did not pass.
    Without a gate, rows whose answers failed parity do not fail the run (it compares; ``--gate``
    judges), but the line names them."""
    from virnucpro_trt.bench.gate import parity_failures

    rows = report["results"]
    failed = [r for r in rows if r["status"] == "failed"]
    reference = rows[0] if rows else None
    line = None
    if reference is None or reference["status"] != "ok":
        line = f"FAILED: the reference did not run: {reference['reason'] if reference else 'no rows'}"
    elif verdict is not None and not verdict.passed:
        line = verdict.message
    elif failed:
        names = ", ".join(f"{r['config']} ({r['reason']})" for r in failed)
        line = f"FAILED: {len(failed)} configuration(s) failed: {names}"
    if line is not None:
        click.echo(" ".join(line.split())[:1000], err=True)
        raise click.exceptions.Exit(1)
    ran = sum(r["status"] == "ok" for r in rows)
    summary = verdict.message if verdict is not None else f"PASSED: {ran} configurations compared"
    if verdict is None and (wrong := parity_failures(rows)):  # the gate's message names them itself
        summary += f", but parity FAILED for {', '.join(wrong)} (the table's notes say by how much)"
    unavailable = [r["config"] for r in rows if r["status"] == "unavailable"]
    log.info("%s%s", summary, f"; unavailable here: {', '.join(unavailable)}" if unavailable else "")
