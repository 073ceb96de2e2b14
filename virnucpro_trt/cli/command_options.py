"""Options shared by the commands: logging (-v/-q/--log-file, before or after the command name).

Only click is imported here: ``cli/main.py`` registers these commands on every start-up.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


# Verbosity of the running command, read again by the error handler after click's context is gone.
CLI_STATE: dict[str, Any] = {"verbose": 0, "quiet": False}

_VERBOSE_HELP = "More detail (-vv: tracebacks and library logs)."
_QUIET_HELP = "Only warnings and errors."
_LOG_FILE_HELP = "Also log (DEBUG) here."


def group_logging_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """-v/-q/--log-file on the ``virnucpro-trt`` group, so ``virnucpro-trt -v predict ...`` works too."""
    func = click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path), help=_LOG_FILE_HELP)(
        func
    )
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
    setup_logging(verbose, quiet, log_file)
    CLI_STATE.update(verbose=verbose, quiet=quiet)
    logging.getLogger("virnucpro_trt").debug("virnucpro-trt %s: %s", __version__, " ".join(sys.argv))


def logging_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """-v/-q/--log-file on a command, after its name; set up (with the group's) before it runs."""

    @click.option("-v", "--verbose", count=True, help=_VERBOSE_HELP)
    @click.option("-q", "--quiet", is_flag=True, help=_QUIET_HELP)
    @click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path), help=_LOG_FILE_HELP)
    @functools.wraps(func)
    def wrapper(*args: Any, verbose: int, quiet: bool, log_file: Path | None, **kwargs: Any) -> Any:
        start_logging(verbose, quiet, log_file)
        return func(*args, **kwargs)

    return wrapper
