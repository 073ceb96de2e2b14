"""``virnucpro-trt``: prepare, embed, predict, demo, env, convert-classifier, download.

Exit codes: 0 success; 2 bad usage or bad input (one line on stderr, no traceback); 1 the run failed
(one line; the traceback goes to ``--log-file`` and, with ``-vv``, to the terminal); 130 interrupted.
Nothing here reaches the network except ``download``, which exists to do exactly that.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from virnucpro_trt import __version__
from virnucpro_trt.cli.command_options import (
    CLI_STATE,
    CONTEXT,
    DEFAULT_BUDGETS,
    MAX_WORKERS_PER_GPU,
    THREAD_COUNT,
    FiniteFloatRange,
    OutputPath,
    checkpoint_options,
    chunk_length_option,
    device_option,
    group_logging_options,
    logging_options,
    max_batch_tokens_option,
    max_padding_option,
    outdir_option,
    precision_option,
    replace_option,
    shard_records_option,
)
from virnucpro_trt.cli.process_checks import prepare_standard_streams, working_folder_problem
from virnucpro_trt.engines.registry import auto_help
from virnucpro_trt.errors import (
    CANNOT_CREATE,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    VirnucproError,
    describe_os_error,
    describe_shortage,
    shortage_line,
)
from virnucpro_trt.interrupts import sigterm_as_interrupt, stop_signals_to_take
from virnucpro_trt.models.kinds import DNABERT_S, ENCODER_NAMES, ESM2
from virnucpro_trt.outputs.demo_note import DEMO_LABEL
from virnucpro_trt.runtime.stall_watch import LOAD_ALLOWANCE_S, MIN_LIMIT_S, WARN_S
from virnucpro_trt.settings import (
    ATTENTION_KERNELS,
    BACKENDS,
    DEFAULT_ATTENTION,
    DEFAULT_STALL_TIMEOUT_S,
    ENGINE_BACKENDS,
    MAX_SHAPE,
    EmbedSettings,
    EncoderSettings,
    PaddingCap,
    PredictSettings,
    RunControl,
)

log = logging.getLogger("virnucpro_trt")

_CONTEXT = CONTEXT


def _offline() -> None:
    """Model lookups never download, and no library phones home (``environment.stay_offline``)."""
    from virnucpro_trt.environment import stay_offline

    stay_offline()


# -v/-q/--log-file after the command name (and, through the group, before it).


# Where an engine backend without --engines gets its engines: predict/demo build them into OUTDIR,
# embed (one output file, no folder of its own) needs a directory built by `virnucpro-trt build`.
_ENGINES_IN_OUTDIR = "Without --engines, engines are built into OUTDIR/engines and reused."
_ENGINES_NEEDED = "An engine backend needs --engines ENGINE_DIR (built by `virnucpro-trt build`)."


def encoder_options(
    func: Callable[..., Any], without_engines: str = _ENGINES_IN_OUTDIR
) -> Callable[..., Any]:
    """Options shared by every command that runs the encoders (``without_engines``: the --backend help's
    word on where engines come from without --engines)."""

    @click.option(
        "--backend",
        type=click.Choice(BACKENDS),
        default=None,
        help="torch (eager PyTorch, the default) or a compiled-engine backend (onnxruntime, inductor, "
        f"tensorrt, auto). {without_engines} {auto_help()}",
    )
    @device_option
    @precision_option(
        None,
        "Encoder precision (default fp32, which reproduces upstream; bf16/fp16 keep fp32 statistics; "
        "fp8 only with engines on Hopper-class GPUs). With --engines: the engines' own.",
    )
    @click.option(
        "--engines",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Engine directory from `virnucpro-trt build` (its manifest is checked before use).",
    )
    @click.option("--rebuild", is_flag=True, help="Rebuild the --engines directory if it does not match.")
    @max_batch_tokens_option(f"Token budget per batch (padded tokens). Default: {DEFAULT_BUDGETS}.")
    @max_padding_option
    @click.option(
        "-t",
        "--threads",
        type=THREAD_COUNT,
        default=None,
        help="CPU threads for torch (default: the CPUs this process may use: its CPU affinity, the "
        "cgroup CPU quota and SLURM_CPUS_PER_TASK).",
    )
    @functools.wraps(func)
    def wrapper(
        *args: Any,
        backend: str | None,
        device: str,
        precision: str | None,
        max_batch_tokens: int | None,
        padding_cap: PaddingCap | None,
        threads: int | None,
        engines: Path | None,
        rebuild: bool,
        **kwargs: Any,
    ) -> Any:
        if rebuild and engines is None:
            raise click.UsageError("--rebuild needs --engines DIR")
        encoders = EncoderSettings(backend, device, precision, max_batch_tokens, threads, padding_cap)
        return func(*args, encoders=encoders, engines=engines, rebuild=rebuild, **kwargs)

    return wrapper


@click.group(context_settings=_CONTEXT)
@click.version_option(__version__, "--version", prog_name="virnucpro-trt")
@group_logging_options
def cli(verbose: int, quiet: bool, log_file: Path | None) -> None:
    """VirNucPro viral short-read classification: the same answers as upstream, compiled and fast.

    -v/-q/--log-file work before the command name and after it.

    \b
    Quick start (random demo weights, CPU, under a minute):
        virnucpro-trt demo -o demo-out
    """


@cli.command(context_settings=_CONTEXT)
@click.argument("input_path", metavar="INPUT")
@outdir_option("Output folder for identified_nucleotide.fa and identified_protein.faa.")
@chunk_length_option()
@replace_option(
    also="A rerun onto its own unchanged files made from the same input bytes and chunk length writes "
    "nothing (UP TO DATE); with --force it writes them again."
)
@logging_options
def prepare(input_path: str, outdir: Path, chunk_length: str, force: bool) -> None:
    """Chunk reads and keep stop-free frames, writing upstream's two FASTA files.

    INPUT is FASTA or FASTQ (plain, gzip, bzip2 or xz; '-' for stdin).
    """
    from virnucpro_trt.pipeline.prepare import run_prepare

    summary = run_prepare(input_path, outdir, int(chunk_length), force)
    found = (summary.records, summary.chunks, summary.frames, outdir)
    if summary.computed:
        log.info("PASSED: %d records -> %d chunks -> %d kept frames in %s", *found)
    else:
        log.info(
            "UP TO DATE: %d records -> %d chunks -> %d kept frames in %s (made from the same input and "
            "chunk length; --force writes them again)", *found,
        )  # fmt: skip


@cli.command(context_settings=_CONTEXT)
@click.argument("input_path", metavar="INPUT")
@click.option(
    "--model",
    "model_name",
    required=True,
    type=click.Choice(ENCODER_NAMES),
    help="Which encoder: dnabert-s for DNA, esm2 for proteins.",
)
@click.option(
    "--weights",
    default=None,
    help="Checkpoint folder/file, Hugging Face id or fair-esm name (optional with --engines).",
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=OutputPath(dir_okay=False, path_type=Path),
    help="HDF5 file with datasets ids (utf-8), embeddings (float32 [N, D]) and status (ok/empty; an empty "
    "record's row is NaN).",
)
@click.option(
    "--allow-nucleotide-letters",
    is_flag=True,
    help="esm2: embed records made only of A/C/G/T/U/N as protein. Without it, an input that looks like "
    "DNA/RNA (most of its records made only of those letters) is refused; a few such records among "
    "proteins (poly-G frames, say) pass.",
)
@replace_option(
    also="A rerun onto its own unchanged output made from the same input, settings and model computes "
    "nothing (UP TO DATE); with --force it computes the embeddings again."
)
@functools.partial(encoder_options, without_engines=_ENGINES_NEEDED)
@logging_options
def embed(
    input_path: str,
    model_name: str,
    weights: str | None,
    output: Path,
    allow_nucleotide_letters: bool,
    force: bool,
    encoders: EncoderSettings,
    engines: Path | None,
    rebuild: bool,
) -> None:
    """Pooled embeddings of every record of INPUT, in input order, as HDF5.

    INPUT is DNA for dnabert-s (letters, '-', '.' and '*'; an input that is protein is refused) and
    protein for esm2 (letters, '*', '-' and '.'; an input that looks like DNA/RNA is refused unless
    --allow-nucleotide-letters).
    """
    _offline()
    from virnucpro_trt.pipeline.embed import run_embed

    if weights is None and engines is None:
        raise click.UsageError("missing --weights (or --engines ENGINE_DIR)")
    settings = EmbedSettings(
        input_path, output, model_name, weights, encoders, engines, rebuild, allow_nucleotide_letters, force
    )
    summary = run_embed(settings)
    if summary.computed:
        log.info("PASSED: %d embeddings of width %d -> %s", summary.records, summary.dim, output)
    else:
        log.info("UP TO DATE: %d embeddings -> %s", summary.records, output)


def _parse_gpus(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        indices = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected comma-separated GPU indices such as 0,1") from None
    if not indices or min(indices) < 0:
        raise click.BadParameter(f"{value!r}: expected comma-separated GPU indices such as 0,1")
    return indices


def _check_stall_timeout(ctx: click.Context, param: click.Parameter, value: float) -> float:
    """0 (warn only) or at least :data:`MIN_LIMIT_S`: below it healthy workers, silent between two
    heartbeats, were stopped in every shard and the run failed blaming a shard."""
    if 0 < value < MIN_LIMIT_S:
        raise click.BadParameter(
            f"{value:.12g}: 0 (warn only) or at least {MIN_LIMIT_S:g} seconds (a working worker may be "
            "silent for a few seconds)"
        )
    return value


def _predict_options(func: Callable[..., Any]) -> Callable[..., Any]:
    @outdir_option("Output folder.")
    @chunk_length_option()
    @click.option(
        "--min-length",
        type=click.IntRange(min=0),
        default=0,
        show_default=True,
        metavar="N",
        help="Reads shorter than N bases are not chunked or scored; sequences.tsv lists them with status "
        "too_short. 0 scores every read, as upstream does.",
    )
    @click.option("--save-embeddings", is_flag=True, help="Also write embeddings.h5 (per kept frame).")
    @click.option(
        "--gpus",
        callback=_parse_gpus,
        default=None,
        metavar="I,J,...",
        help="CUDA devices to run on, one worker process each (indices as visible under "
        "CUDA_VISIBLE_DEVICES). Default: every visible GPU.",
    )
    @click.option(
        "--workers",
        type=THREAD_COUNT,
        default=None,
        help="CPU runs: number of worker processes, each with --threads/N torch threads (default 1, "
        "which runs inside the main process).",
    )
    @click.option(
        "--workers-per-gpu",
        type=click.IntRange(min=1, max=MAX_WORKERS_PER_GPU),
        default=1,
        show_default=True,
        help="CUDA runs: worker processes per GPU, each with its own copy of the models (a second one can "
        "hide the CPU half of each shard). The results do not depend on it.",
    )
    @click.option(
        "--stall-timeout",
        type=FiniteFloatRange(min=0),
        callback=_check_stall_timeout,
        default=DEFAULT_STALL_TIMEOUT_S,
        show_default=True,
        metavar="SECONDS",
        help="A worker that holds shards and says nothing this long (a hung GPU, a stopped process) is "
        f"stopped and restarted, its shards run again; warned of at half of it (at most {WARN_S:.0f} s). "
        f"Loading the models is allowed {LOAD_ALLOWANCE_S:.0f} s more. 0: warn only; else at least "
        f"{MIN_LIMIT_S:.0f}, and well above the time one batch takes.",
    )
    @shard_records_option()
    @click.option(
        "--keep-work", is_flag=True, help="Keep OUTDIR/.work (shards, per-shard results) after success."
    )
    @click.option(
        "--force",
        is_flag=True,
        help="Replace what OUTDIR holds at predict's result names: another run's results or unfinished "
        "work (OUTDIR/.work) of another input or settings, and files of yours at those names; on this "
        "run's own finished results, compute them again.",
    )
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    return wrapper


@cli.command(context_settings=_CONTEXT)
@click.argument("input_path", metavar="INPUT", required=False)
@checkpoint_options(required=False)
@click.option(
    "--demo",
    is_flag=True,
    help="Use the built-in RANDOM-WEIGHT demo models (and example reads when INPUT is omitted).",
)
@_predict_options
@encoder_options
@logging_options
def predict(
    input_path: str | None,
    dnabert: str | None,
    esm: str | None,
    classifier: str | None,
    demo: bool,
    outdir: Path,
    chunk_length: str,
    min_length: int,
    save_embeddings: bool,
    gpus: tuple[int, ...] | None,
    workers: int | None,
    workers_per_gpu: int,
    stall_timeout: float,
    shard_records: int | None,
    keep_work: bool,
    force: bool,
    encoders: EncoderSettings,
    engines: Path | None,
    rebuild: bool,
) -> None:
    """Classify the reads of INPUT as viral or not (upstream files plus per-sequence tables).

    INPUT is FASTA or FASTQ (plain, gzip, bzip2 or xz; '-' for stdin). The input is split into shards
    run by one worker per GPU (or --workers on CPU); an interrupted run resumes when rerun unchanged.
    """
    _offline()
    if demo and (given := [spec for spec in (dnabert, esm, classifier) if spec]):
        from virnucpro_trt.demo import demo_models_folder
        from virnucpro_trt.files.names import is_within

        if not all(is_within(Path(spec), demo_models_folder()) for spec in given):
            log.warning(
                "--demo with models of your own (--dnabert, --esm, --classifier): the results are still "
                "labelled as the random-weight demo's; leave --demo out for real predictions"
            )
    if demo and input_path:  # a missing or unreadable input is said before the demo models are built
        from virnucpro_trt.pipeline.run_paths import check_input_file

        check_input_file(input_path)
    if demo and not (dnabert and esm and classifier and input_path):  # (built on first use)
        from virnucpro_trt.demo import demo_inputs

        models = demo_inputs()
        dnabert = dnabert or str(models.dnabert)
        esm = esm or str(models.esm)
        classifier = classifier or str(models.classifier)
        input_path = input_path or str(models.reads)
    required = [("INPUT", input_path)]
    if engines is None:  # engines carry their own weights; a rebuild's need of them: rebuild_engine_set
        required += [("--dnabert", dnabert), ("--esm", esm), ("--classifier", classifier)]
    missing = [name for name, value in required if not value]
    if missing:
        raise click.UsageError(
            f"missing {', '.join(missing)} (or --engines ENGINE_DIR, or --demo for the random-weight demo)"
        )
    settings = PredictSettings(
        str(input_path),
        outdir,
        dnabert,
        esm,
        classifier,
        int(chunk_length),
        encoders,
        save_embeddings,
        engines,
        rebuild,
        shard_records,
        RunControl(gpus, workers, keep_work, force, workers_per_gpu, stall_timeout),
        min_length=min_length,
    )
    _run_predict(settings, demo)


def _run_predict(settings: PredictSettings, demo: bool) -> None:
    from virnucpro_trt.cli.progress import ProgressReporter
    from virnucpro_trt.pipeline.predict import run_predict
    from virnucpro_trt.runtime.coordinator import RunInterrupted

    if demo:
        log.warning("DEMO: the models are RANDOM WEIGHTS built for this demo — the labels mean nothing")
    try:
        summary = run_predict(
            settings, ProgressReporter(enabled=not CLI_STATE["quiet"]), command=sys.argv, demo=demo
        )
    except RunInterrupted as exc:
        click.echo(str(exc), err=True)
        raise click.exceptions.Exit(exc.exit_code) from None
    counts = summary.counts
    label = DEMO_LABEL if demo else ""
    if summary.reused:
        log.info(
            "PASSED%s: already finished, nothing recomputed: %d records, %d frames scored, %d sequences "
            "labelled virus in %s",
            label, counts["records"], counts["frames"], counts["virus_sequences"], settings.outdir,
        )  # fmt: skip
        return
    log.info(
        "PASSED%s: %d records, %d frames scored, %d sequences labelled virus -> %s (%.1f s)",
        label,
        counts["records"],
        counts["frames"],
        counts["virus_sequences"],
        settings.outdir,
        summary.timings_s["total"],
    )


@cli.command(context_settings=_CONTEXT)
@outdir_option("Output folder.")
@chunk_length_option()
@encoder_options
@click.option(
    "--force",
    is_flag=True,
    help="Replace what OUTDIR holds at the demo's result names (another run's results, files of yours "
    "there, or this demo's results changed since); on the demo's own finished results, run it again.",
)
@logging_options
def demo(
    outdir: Path,
    chunk_length: str,
    encoders: EncoderSettings,
    engines: Path | None,
    rebuild: bool,
    force: bool,
) -> None:
    """Run predict end to end on example reads with a small RANDOM-WEIGHT model set (built once, cached)."""
    _offline()
    from virnucpro_trt.demo import demo_inputs

    models = demo_inputs()
    settings = PredictSettings(
        str(models.reads),
        outdir,
        str(models.dnabert),
        str(models.esm),
        str(models.classifier),
        int(chunk_length),
        encoders,
        False,
        engines,
        rebuild,
        run=RunControl(force=force),
    )
    _run_predict(settings, True)


@cli.command(context_settings=_CONTEXT)
@checkpoint_options(required=True)
@click.option(
    "--backend",
    type=click.Choice(("auto", *ENGINE_BACKENDS)),
    default="auto",
    show_default=True,
    help=auto_help(),
)
@precision_option("fp32")
@device_option
@outdir_option("Engine directory.")
@max_batch_tokens_option(f"Token budget the engines are shaped for (default {DEFAULT_BUDGETS}).")
@click.option(
    "--max-length",
    type=click.IntRange(min=4, max=MAX_SHAPE),
    default=None,
    help=f"Longest input in tokens (default: {DNABERT_S.max_length} for {DNABERT_S.title}, "
    f"{ESM2.max_length} for {ESM2.title}).",
)
@click.option("--keep-failing", is_flag=True, help="Keep engines that fail the parity gate (recorded).")
@click.option(
    "--hardware-compatible", is_flag=True, help="TensorRT: build engines that run on any Ampere+ GPU."
)
@click.option(
    "--attention",
    type=click.Choice(list(ATTENTION_KERNELS)),
    default=DEFAULT_ATTENTION,
    show_default=True,
    help="AOTInductor on CUDA: SDPA kernel in the engine (DNABERT-S; ESM-2 in bf16/fp16/fp8 runs the "
    "project's own Triton attention instead). cudnn plans every new batch shape, which runs with varying "
    "batches pay again and again.",
)
@replace_option(also="And build again when the folder already holds the same engines (else skipped).")
@logging_options
def build(
    dnabert: str,
    esm: str,
    classifier: str,
    backend: str,
    precision: str,
    device: str,
    outdir: Path,
    max_batch_tokens: int | None,
    max_length: int | None,
    keep_failing: bool,
    hardware_compatible: bool,
    attention: str,
    force: bool,
) -> None:
    """Compile DNABERT-S and ESM-2 into engines for this machine, parity-gated, with a manifest."""
    _offline()
    from virnucpro_trt.engines.build import BuildSettings, build_engines

    settings = BuildSettings(
        dnabert, esm, classifier, outdir, backend, precision, device, max_batch_tokens, max_length,
        keep_failing, hardware_compatible, attention, force,
    )  # fmt: skip
    outcome = build_engines(settings, command=sys.argv)
    manifest = outcome.manifest
    for kind in ENCODER_NAMES if outcome.built else ():  # a set found made was gated when it was built
        entry = manifest.models[kind]
        parity = entry.parity
        assert parity is not None  # the build gated every encoder it built
        log.info(
            "%s: %s (parity: max |diff| %.3g, min cosine %.6f, %s)", kind, entry.artifact, parity.max_abs,
            parity.min_cosine, "passed" if parity.passed else "FAILED (kept)",
        )  # fmt: skip
    log.info(
        "%s: %s %s engines for %s in %s",
        "PASSED" if outcome.built else "UP TO DATE",
        manifest.backend,
        manifest.precision,
        manifest.device.name,
        outdir,
    )


@cli.command(context_settings=_CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def env(as_json: bool) -> None:
    """Versions, devices, ONNX Runtime providers and whether TensorRT is importable."""
    from virnucpro_trt.environment import environment_report

    report = environment_report()
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"virnucpro-trt {report['virnucpro_trt']}  python {report['python']}  {report['platform']}")
    for name, version in report["libraries"].items():
        click.echo(f"  {name:16s} {version or 'not installed'}")
    click.echo(f"  {'torch CUDA':16s} {report['torch_cuda'] or 'none (CPU build)'}")
    devices = report["cuda_devices"] or []
    click.echo(f"CUDA devices: {len(devices)}")
    for dev in devices:
        click.echo(
            f"  cuda:{dev['index']} {dev['name']} (sm {dev['compute_capability']}, {dev['memory_gib']} GiB)"
        )
    click.echo(f"ONNX Runtime providers: {report['onnxruntime_providers']}")
    trt = report["tensorrt"]
    click.echo(
        f"TensorRT: {'importable ' + trt['version'] if trt['importable'] else 'not importable'}"
        + ("" if trt["importable"] else f" ({trt['reason']})")
    )


@cli.command("convert-classifier", context_settings=_CONTEXT)
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("output", type=OutputPath(dir_okay=False, path_type=Path))
@replace_option(
    also="A rerun onto its own unchanged output converted from the same checkpoint bytes writes nothing "
    "(UP TO DATE); with --force it converts again."
)
@logging_options
def convert_classifier(checkpoint: Path, output: Path, force: bool) -> None:
    """Convert upstream's pickled classifier (read safely, no code runs) to .safetensors.

    OUTPUT must not be CHECKPOINT itself (by any path or link to it).
    """
    from virnucpro_trt.pipeline.convert import run_convert_classifier

    summary = run_convert_classifier(checkpoint, output, force)
    if summary.computed:
        log.info("PASSED: %s -> %s (input width %d)", checkpoint, output, summary.input_dim)
    else:
        log.info(
            "UP TO DATE: %s -> %s (input width %d; converted from the same checkpoint; --force converts "
            "it again)", checkpoint, output, summary.input_dim,
        )  # fmt: skip


@cli.command(context_settings=_CONTEXT)
@click.argument("repo_id")
@logging_options
def download(repo_id: str) -> None:
    """Download a Hugging Face model (e.g. zhihan1996/DNABERT-S) into the local cache. Uses the network.

    Fetches one copy of the weights (safetensors, else PyTorch .bin) with the config and tokenizer files.
    """
    from virnucpro_trt.models.resolve import download_model

    path = download_model(repo_id)
    click.echo(str(path))


# click 8.2 raises this for the program alone; 8.1 (pyproject allows it) has no such class and shows the
# help itself (exit 0): naming the class directly failed every usage error there with an AttributeError.
_NO_ARGS_IS_HELP: Any = getattr(click.exceptions, "NoArgsIsHelpError", ())


def main(argv: list[str] | None = None) -> None:
    """Console entry point: maps every failure to one line and a documented exit code."""
    CLI_STATE["outputs"] = []  # the output paths this command names (OutputPath), for the error lines
    try:
        with sigterm_as_interrupt():  # a scheduler's stop cleans up like Ctrl-C (interrupts.py)
            code = cli.main(args=argv, prog_name="virnucpro-trt", standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except _NO_ARGS_IS_HELP as exc:  # the program alone: its help, as --help shows it
        click.echo(exc.format_message())
        code = exc.exit_code
    except click.UsageError as exc:  # click prints usage, a hint and a blank line: one line instead
        command = exc.ctx.command_path if exc.ctx is not None else "virnucpro-trt"
        message = " ".join(exc.format_message().split())  # "Choose from:" lists one choice per line
        click.echo(f"error: {message} (see '{command} --help')", err=True)
        code = exc.exit_code
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        code = EXIT_INTERRUPTED
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        code = EXIT_INTERRUPTED
    except VirnucproError as exc:
        if (shortage := shortage_line(exc)) is not None:  # named as the file's fault on the way up
            line, code = shortage
            _report(f"error: {line}", exc)
        else:
            _report(f"error: {exc}", exc)
            code = exc.exit_code
    except BrokenPipeError:
        code = 0
    except OSError as exc:
        known = describe_os_error(exc) or _output_not_creatable(exc)
        line, code = known if known else (f"unexpected failure: {type(exc).__name__}: {exc}", EXIT_FAILURE)
        _report(f"error: {line}", exc, unexpected=known is None)
    except MemoryError as exc:
        line, code = describe_shortage(exc)
        _report(f"error: {line}", exc)
    except Exception as exc:  # unexpected: one line, the traceback in the log file / with -vv
        _report(f"error: unexpected failure: {type(exc).__name__}: {exc}", exc, unexpected=True)
        code = EXIT_FAILURE
    except BaseException as exc:  # a Rust panic (pyo3's PanicException) is no Exception: still one line
        if type(exc).__name__ != "PanicException":
            raise
        _report(f"error: unexpected failure: a library panicked: {exc}", exc, unexpected=True)
        code = EXIT_FAILURE
    sys.exit(code if isinstance(code, int) else 0)


def console() -> None:
    """The ``virnucpro-trt`` program (and ``python -m virnucpro_trt``): :func:`main`, then the program
    ends itself (:func:`_exit_with`) with the command's exit code. Only the program does this, and
    checks its process first (closed standard streams, a removed working folder: ``process_checks``):
    :func:`main` also runs inside other processes (the tests)."""
    prepare_standard_streams()
    try:
        if (problem := working_folder_problem()) is not None:
            click.echo(f"error: {problem}", err=True)
            sys.exit(EXIT_USAGE)
        main()
    except SystemExit as done:
        _exit_with(done.code if isinstance(done.code, int) else (0 if done.code is None else 1))


def _exit_with(code: int) -> NoReturn:
    """End the process the way Python's exit would, but without tearing its modules down.

    The command has finished and said so by then. Python's own exit first puts the signal handlers back
    to the defaults, then tears down every module torch loaded (up to a second): a SIGINT or SIGTERM in
    that second killed the process (exit 130 or 143) after a complete run, and an inline worker still
    inside a batch (an interrupt the coordinator stopped waiting for: a CPU batch of the real models
    takes minutes) had torch's thread pools destroyed under it (abort, exit 134). So: threads that are
    not daemons are joined and the exit functions run (the log's flush among them), as Python does,
    with a signal meanwhile ending the process at once with ``code``; then ``os._exit``. An unwritable
    stdout makes it 120, as Python's exit does.
    """

    def _now(signum: int, frame: object) -> None:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)

    for sig in (signal.SIGINT, *stop_signals_to_take()):
        signal.signal(sig, _now)
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    try:
        if sys.stdout is not None:  # None: started without one (main() run in-process, ``>&-``)
            sys.stdout.flush()
    except Exception:
        code = code or 120
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    os._exit(code)


def _output_not_creatable(exc: OSError) -> tuple[str, int] | None:
    """A missing-path error on the way to one of the command's output paths (``-o`` below ``/proc``,
    where no folder can be made): a place to change, exit 2. Elsewhere (an input or a cache file gone
    mid-run) it stays an unexpected failure."""
    if exc.errno not in CANNOT_CREATE or not exc.filename:
        return None
    failed = Path(os.fsdecode(exc.filename)).absolute()
    for output in CLI_STATE.get("outputs", ()):
        if failed == output or failed in output.parents or output in failed.parents:
            reason = exc.strerror or str(exc)
            return f"cannot create {failed}: {reason}; choose another output location", EXIT_USAGE
    return None


def _report(line: str, exc: BaseException, unexpected: bool = False) -> None:
    """``line`` on stderr as one line. An unexpected exception's message is cut at its first line (a
    library's may go on with a stack dump); this tool's own messages are kept whole, a line break or
    other control character in them (a path's) shown escaped: cut, ``error: input /data/a`` had lost
    the path's rest and the reason."""
    if unexpected:
        line = line.split("\n")[0]
    first_line = " ".join("".join(c if c.isprintable() else ascii(c)[1:-1] for c in line).split())
    logging.getLogger("virnucpro_trt").debug("%s", "".join(traceback.format_exception(exc)))
    if unexpected and CLI_STATE["verbose"] >= 2:
        traceback.print_exception(exc)
    click.echo(first_line, err=True)


__all__ = ["EXIT_USAGE", "cli", "console", "main"]


def _register_optional_commands() -> None:
    """Commands that live in their own modules (kept import-light: only click at import time)."""
    from virnucpro_trt.cli.bench_command import bench
    from virnucpro_trt.cli.merge_command import merge
    from virnucpro_trt.cli.split_command import split
    from virnucpro_trt.cli.workflow_command import workflow

    for command in (bench, split, merge, workflow):
        cli.add_command(command)


_register_optional_commands()
