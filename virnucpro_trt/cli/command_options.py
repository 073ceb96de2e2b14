"""Options of the commands that live in their own modules (split, merge, workflow).

Only click is imported here: ``cli/main.py`` registers these commands on every start-up.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


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
