"""How a run reports progress without knowing how it is shown.

A stage asks for a task (description, total, unit) and gets back a callable that advances it by n. The
CLI shows tasks as a rich bar on a terminal and as periodic log lines otherwise
(``cli/progress.py``); library callers and tests get :class:`SilentProgress`. The protocol lives here,
below the pipeline, so that the pipeline never imports the CLI.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Protocol

Advance = Callable[[int], None]


class ProgressTasks(Protocol):
    """Creates one progress task per stage."""

    def task(self, description: str, total: int, unit: str) -> contextlib.AbstractContextManager[Advance]:
        """A task of ``total`` ``unit``s; the context yields the callable that advances it."""
        ...


def _ignore(n: int) -> None:
    pass


class SilentProgress:
    """:class:`ProgressTasks` that shows nothing."""

    @contextlib.contextmanager
    def task(self, description: str, total: int, unit: str) -> Iterator[Advance]:
        yield _ignore
