"""Option groups shared by the commands, declared once; logging (-v/-q/--log-file) works before or after
the command name.

Only click and the torch-free tables (``settings``, ``models/kinds``, ``errors``, ``files/names``) are
imported here: ``cli/main.py`` registers every command on each start-up, and ``virnucpro-trt --help``
must not pay for torch.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from virnucpro_trt.cli.process_checks import check_compiler_cache_variables
from virnucpro_trt.errors import UserError
from virnucpro_trt.files.names import check_parent_folders, is_within, same_file
from virnucpro_trt.files.ownership import RECORD
from virnucpro_trt.files.run_lock import LOCK_FILE, output_lock_name
from virnucpro_trt.models.kinds import MODELS
from virnucpro_trt.settings import (
    CHUNK_LENGTHS,
    DEFAULT_CHUNK_LENGTH,
    DEFAULT_CPU_BATCH_TOKENS,
    DEFAULT_CUDA_BATCH_TOKENS,
    DEFAULT_PADDING_CAP,
    MAX_BATCH_TOKENS,
    PRECISIONS,
    PaddingCap,
    padding_cap_text,
    parse_padding_cap,
)

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

MAX_THREADS = 1024
"""The most CPU threads (``--threads``) and CPU worker processes (``--workers``) a command takes: more
than a machine has cores. Unbounded, 20,000 threads failed in libgomp, 99,999 segfaulted, 2^31
overflowed inside torch, and ``--workers 10^8`` filled memory before a worker started."""
THREAD_COUNT = click.IntRange(min=1, max=MAX_THREADS)
MAX_WORKERS_PER_GPU = 16  # each holds its own copy of the models: past a few, they no longer fit a GPU


class FiniteFloatRange(click.FloatRange):
    """A float range that also refuses ``nan`` and ``inf``: ``nan`` fails every comparison, so click's
    range let it through (``--coding-fraction nan`` generated reads from it, ``--gate nan`` ran a whole
    bench to a verdict no run could meet)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{number} is not a finite number", param, ctx)
        return number


Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

# What each checkpoint option accepts (the flags themselves come from the kinds table).
_CHECKPOINT_HELP = {
    "dnabert-s": "DNABERT-S folder or Hugging Face id (e.g. zhihan1996/DNABERT-S).",
    "esm2": "ESM-2 folder, fair-esm .pt, Hugging Face id or fair-esm name.",
    "classifier": "Upstream classifier (500_model.pth / 300_model.pth) or .safetensors.",
}
DEFAULT_BUDGETS = f"{DEFAULT_CPU_BATCH_TOKENS} on CPU, {DEFAULT_CUDA_BATCH_TOKENS} on CUDA"


# Verbosity of the running command, read again by the error handler after click's context is gone.
CLI_STATE: dict[str, Any] = {"verbose": 0, "quiet": False}

_VERBOSE_HELP = "More detail (-vv: tracebacks and library logs)."
_QUIET_HELP = "Only warnings and errors."
_LOG_FILE_HELP = "Also log (DEBUG) here."


def group_logging_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """-v/-q/--log-file on the ``virnucpro-trt`` group, so ``virnucpro-trt -v predict ...`` works too."""
    func = click.option("--log-file", type=_LOG_FILE, help=_LOG_FILE_HELP)(func)
    func = click.option("-q", "--quiet", is_flag=True, help=_QUIET_HELP)(func)
    return click.option("-v", "--verbose", count=True, help=_VERBOSE_HELP)(func)


def start_logging(verbose: int, quiet: bool, log_file: Path | None) -> None:
    """Set up logging for the running command from its own -v/-q/--log-file and the group's.

    Both places count: ``virnucpro-trt -v predict -v`` is -vv, ``-q`` anywhere is quiet, the
    command's ``--log-file`` wins over the group's.
    """
    from virnucpro_trt import __version__
    from virnucpro_trt.cli.logging_setup import setup_logging

    context = click.get_current_context(silent=True)
    root = context.find_root() if context is not None else None
    if root is not None and root is not context:  # the group's own options (a command run alone has none)
        verbose += int(root.params.get("verbose") or 0)
        quiet = quiet or bool(root.params.get("quiet"))
        log_file = log_file or root.params.get("log_file")
    if context is not None and log_file is not None:
        check_log_file_place(log_file, context)
    setup_logging(verbose, quiet, log_file)
    CLI_STATE.update(verbose=verbose, quiet=quiet)
    logging.getLogger("virnucpro_trt").debug("virnucpro-trt %s: %s", __version__, " ".join(sys.argv))


def _names_written(command: str) -> tuple[str, ...] | None:
    """The names ``command`` writes directly in its ``-o`` folder, hidden ones included (a temporary
    ``.NAME.*.partial`` beside each is its too); None when the whole folder is its own (an engine
    directory, a split's parts folder). Read from the modules that write them, at run time."""
    if command in ("predict", "demo"):
        from virnucpro_trt.pipeline.predict import ENGINE_CACHE, OUTPUT_NAMES
        from virnucpro_trt.runtime.resume import WORK_DIR

        return (*OUTPUT_NAMES, ENGINE_CACHE, WORK_DIR)
    if command == "merge":
        from virnucpro_trt.pipeline.merge_parts import RESULT_NAMES

        return (*RESULT_NAMES, LOCK_FILE)
    if command == "prepare":
        from virnucpro_trt.sequences.prepare import NUCLEOTIDE_FILE, PROTEIN_FILE

        return (NUCLEOTIDE_FILE, PROTEIN_FILE, RECORD, LOCK_FILE)
    if command == "workflow":
        from virnucpro_trt.workflow import DEMO_READS_FILE, WORKFLOW_FILES

        return (*(Path(name).parts[0] for name in (*WORKFLOW_FILES, DEMO_READS_FILE)), LOCK_FILE)
    return None


def _written_there(first: str, names: tuple[str, ...]) -> bool:
    """Whether ``first`` (a name directly in the output folder) is one of ``names`` or a temporary
    file the command writes one of them under (``files/atomic.temporary_name``)."""
    if first in names:
        return True
    return first.endswith(".partial") and any(first.startswith(f".{name}.") for name in names)


def check_log_file_place(log_file: Path, context: click.Context) -> None:
    """Refuse (exit 2, before the log is opened) a ``--log-file`` that is, or lies in, something the
    command reads or writes: its output file (or, beside it, the outputs record and the temporary
    names it writes under), in its ``-o`` folder a name it writes there (results, work folder, lock,
    records, temporary names), an input file or a file inside an input folder (reads, checkpoints, a
    merge's parts), or a file with other names (hard links: appending to it appends to them).

    The log is appended to, so opened first it would change an input (a part's run.json, the reads, a
    checkpoint) or be taken for a result no run accounts for (a refusal naming the wrong reason), or
    with ``--force`` be replaced under the open log. Elsewhere, OUTDIR included, is fine. And since a
    command also reads files no option names (a model found in a cache, the split.json beside a part,
    the demo's models and reads), an existing file is appended to only when it is a log of this tool's.
    """
    from virnucpro_trt.cli.logging_setup import holds_other_than_our_log

    command = context.command.name or ""

    def refuse(what: str) -> NoReturn:
        raise UserError(f"--log-file {log_file} is {what}; put the log elsewhere (or under another name)")

    check_parent_folders(log_file, "put the log elsewhere")
    if log_file.is_file() and not log_file.is_symlink() and log_file.stat().st_nlink > 1:
        refuse("a file with other names (hard links), which the log would be appended to")
    for param in context.command.params:
        value = context.params.get(param.name or "")
        if param.name == "log_file":
            continue
        if isinstance(param.type, OutputPath) and value is not None:
            output = Path(value)
            if param.type.dir_okay and is_within(log_file, output) and not same_file(log_file, output):
                first = log_file.resolve().relative_to(output.resolve()).parts[0]
                names = _names_written(command)
                clash = names is None or _written_there(first, names)
            else:
                # a file output: its record, its lock and the temporaries beside it
                beside = (output.name, RECORD, output_lock_name(output))
                clash = same_file(log_file, output) or (
                    same_file(log_file.parent, output.parent) and _written_there(log_file.name, beside)
                )
            if clash:
                refuse(f"where {command} writes its output")
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        for item in values:
            if isinstance(item, (str, Path)) and str(item) not in ("", "-") and os.path.exists(item):
                given = Path(item)
                if same_file(log_file, given) or (given.is_dir() and is_within(log_file, given)):
                    refuse(f"{'inside ' if given.is_dir() else ''}{given}, which {command} reads")
    if holds_other_than_our_log(log_file):
        refuse("a file that is not a virnucpro-trt log, which the log would be appended to")


def logging_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """-v/-q/--log-file on a command, after its name; set up (with the group's) before it runs, and
    the compiler cache variables checked (every command that computes or writes has these options)."""

    @click.option("-v", "--verbose", count=True, help=_VERBOSE_HELP)
    @click.option("-q", "--quiet", is_flag=True, help=_QUIET_HELP)
    @click.option("--log-file", type=_LOG_FILE, help=_LOG_FILE_HELP)
    @functools.wraps(func)
    def wrapper(*args: Any, verbose: int, quiet: bool, log_file: Path | None, **kwargs: Any) -> Any:
        start_logging(verbose, quiet, log_file)
        check_compiler_cache_variables()
        return func(*args, **kwargs)

    return wrapper


def checkpoint_options(required: bool) -> Decorator:
    """--dnabert, --esm and --classifier: the three checkpoints of a run, by the kinds table's flags."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        for kind in reversed(MODELS):  # click lists options in decorator order, outermost first
            func = click.option(MODELS[kind].flag, required=required, help=_CHECKPOINT_HELP[kind])(func)
        return func

    return decorate


class OutputPath(click.Path):
    """A path a command writes to (``-o``): refused in one line, exit 2, before anything runs, when it is
    empty (``-o ""`` would quietly mean the current folder) or lies below a file (``-o notes.txt/out``
    would fail later as a ``NotADirectoryError``). ``advice`` ends the latter's line."""

    def __init__(self, *args: Any, advice: str = "choose another output location", **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.advice = advice

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and value == "":
            name = "/".join(param.opts) if param is not None and param.opts else "the output path"
            if param is not None and param.param_type_name == "argument":
                name = param.human_readable_name
            folder = " (. for the current folder)" if self.dir_okay else ""
            raise UserError(f"{name}: an empty path; name the output{folder}")
        converted = super().convert(value, param, ctx)
        check_parent_folders(Path(converted), self.advice)
        CLI_STATE.setdefault("outputs", []).append(Path(converted).absolute())
        return converted


_LOG_FILE = OutputPath(dir_okay=False, path_type=Path, advice="put the log elsewhere")


def outdir_option(help_text: str) -> Decorator:
    return click.option(
        "-o", "--outdir", required=True, type=OutputPath(file_okay=False, path_type=Path), help=help_text
    )


def chunk_length_option(
    help_text: str = "Chunk length (must match the classifier: 300_model.pth / 500_model.pth).",
) -> Decorator:
    return click.option(
        "--chunk-length",
        type=click.Choice([str(c) for c in CHUNK_LENGTHS]),
        default=str(DEFAULT_CHUNK_LENGTH),
        show_default=True,
        help=help_text,
    )


def shard_records_option(
    help_text: str = "Records per shard (default: records/64 clamped to 4096..16384, in steps of 256). Part "
    "of the resume key: it changes batch composition.",
) -> Decorator:
    return click.option("--shard-records", type=click.IntRange(min=1), default=None, help=help_text)


device_option = click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")


def precision_option(default: str | None, help_text: str | None = None) -> Decorator:
    """One of :data:`~virnucpro_trt.settings.PRECISIONS`."""
    return click.option(
        "--precision",
        type=click.Choice(PRECISIONS),
        default=default,
        show_default=default is not None,
        help=help_text,
    )


def max_batch_tokens_option(help_text: str) -> Decorator:
    """The token budget per batch (padded tokens); ``help_text`` says what it is for in that command."""
    return click.option(
        "--max-batch-tokens", type=click.IntRange(min=16, max=MAX_BATCH_TOKENS), default=None, help=help_text
    )


class PaddingCapType(click.ParamType):
    """``SHARE[:FLOOR_TOKENS]`` (a :class:`~virnucpro_trt.settings.PaddingCap`) or ``none``."""

    name = "SHARE[:FLOOR]|none"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is None or isinstance(value, PaddingCap):
            return value
        try:
            return parse_padding_cap(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def max_padding_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """The batcher's padding cap: a batch closes before an item that would make padding more than
    SHARE of its computed tokens, once it computes FLOOR tokens."""
    return click.option(
        "--max-padding",
        "padding_cap",
        type=PaddingCapType(),
        default=padding_cap_text(DEFAULT_PADDING_CAP),
        show_default=True,
        help="Close a batch before padding passes SHARE of its computed tokens, once it computes FLOOR "
        "tokens (e.g. 0.05:8192: fewer padded tokens on mixed read lengths, smaller batches); none: "
        "batches fill the token budget.",
    )(func)


def replace_option(func: Callable[..., Any] | None = None, *, also: str = "") -> Any:
    """``--force`` for a command that owns no run folder: replace a file at an output path even when
    virnucpro-trt did not write it (or it changed since). Without it such a file is refused, exit 2
    (``files/ownership.py``); the tool's own unchanged output is replaced either way. ``also``: what
    else the flag does for this command (one sentence)."""
    if func is None:
        return lambda f: replace_option(f, also=also)
    return click.option(
        "--force",
        is_flag=True,
        help="Replace a file at the output path that virnucpro-trt did not write (or that changed since "
        "it wrote it). Without it such a file is refused; the tool's own earlier output is replaced anyway."
        + (f" {also}" if also else ""),
    )(func)
