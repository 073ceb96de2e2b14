"""Option groups shared by the commands, declared once.

Only click and the torch-free tables (``settings``, ``models/kinds``) are imported here: ``cli/main.py``
registers every command on each start-up, and ``virnucpro-trt --help`` must not pay for torch.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from virnucpro_trt.models.kinds import MODELS
from virnucpro_trt.settings import (
    CHUNK_LENGTHS,
    DEFAULT_CPU_BATCH_TOKENS,
    DEFAULT_CUDA_BATCH_TOKENS,
    PRECISIONS,
)

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

# What each checkpoint option accepts (the flags themselves come from the kinds table).
_CHECKPOINT_HELP = {
    "dnabert-s": "DNABERT-S folder or Hugging Face id (e.g. zhihan1996/DNABERT-S).",
    "esm2": "ESM-2 folder, fair-esm .pt, Hugging Face id or fair-esm name.",
    "classifier": "Upstream classifier (500_model.pth / 300_model.pth) or .safetensors.",
}
DEFAULT_BUDGETS = f"{DEFAULT_CPU_BATCH_TOKENS} on CPU, {DEFAULT_CUDA_BATCH_TOKENS} on CUDA"


def logging_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """-v/-q/--log-file, set up before the command runs (as on every command of cli/main.py)."""

    @click.option("-v", "--verbose", count=True, help="More detail (-vv: tracebacks and library logs).")
    @click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
    @click.option(
        "--log-file", type=click.Path(dir_okay=False, path_type=Path), help="Also log (DEBUG) here."
    )
    @functools.wraps(func)
    def wrapper(*args: Any, verbose: int, quiet: bool, log_file: Path | None, **kwargs: Any) -> Any:
        from virnucpro_trt.cli.logging_setup import setup_logging

        setup_logging(verbose, quiet, log_file)
        # the CLI's error handler prints tracebacks of unexpected errors at -vv
        state = getattr(sys.modules.get("virnucpro_trt.cli.main"), "_STATE", None)
        if isinstance(state, dict):
            state.update(verbose=verbose, quiet=quiet)
        return func(*args, **kwargs)

    return wrapper


def checkpoint_options(required: bool) -> Decorator:
    """--dnabert, --esm and --classifier: the three checkpoints of a run, by the kinds table's flags."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        for kind in reversed(MODELS):  # click lists options in decorator order, outermost first
            func = click.option(MODELS[kind].flag, required=required, help=_CHECKPOINT_HELP[kind])(func)
        return func

    return decorate


def outdir_option(help_text: str) -> Decorator:
    return click.option(
        "-o", "--outdir", required=True, type=click.Path(file_okay=False, path_type=Path), help=help_text
    )


def chunk_length_option(
    help_text: str = "Chunk length (must match the classifier: 300_model.pth / 500_model.pth).",
) -> Decorator:
    return click.option(
        "--chunk-length",
        type=click.Choice([str(c) for c in CHUNK_LENGTHS]),
        default="500",
        show_default=True,
        help=help_text,
    )


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
    return click.option("--max-batch-tokens", type=click.IntRange(min=16), default=None, help=help_text)
