"""Progress reporting: a rich bar (rate, ETA) on a terminal, periodic plain log lines otherwise.

Implements :class:`~virnucpro_trt.runtime.progress.ProgressTasks`: the pipeline only sees a
``Callable[[int], None]`` per stage, so it stays free of any UI library and of the CLI.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterator

log = logging.getLogger("virnucpro_trt.progress")


class ProgressReporter:
    """Creates one progress task per stage (:class:`~virnucpro_trt.runtime.progress.ProgressTasks`)."""

    def __init__(self, enabled: bool = True, interval_s: float = 10.0):
        self.enabled = enabled
        self.interval_s = interval_s
        self.tty = sys.stderr.isatty()

    @contextlib.contextmanager
    def task(self, description: str, total: int, unit: str) -> Iterator[Callable[[int], None]]:
        if not self.enabled or total <= 0:
            yield lambda n: None
            return
        if self.tty:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            columns = (
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(f"{unit}"),
                TaskProgressColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
            )
            start = time.perf_counter()
            with Progress(*columns, transient=False) as bar:
                task_id = bar.add_task(description, total=total, rate="")

                def advance(n: int) -> None:
                    done = bar.tasks[0].completed + n
                    rate = done / max(time.perf_counter() - start, 1e-9)
                    bar.update(task_id, advance=n, rate=f"{rate:,.0f} {unit}/s")

                yield advance
            return
        yield from _plain(description, total, unit, self.interval_s)


def _plain(description: str, total: int, unit: str, interval_s: float) -> Iterator[Callable[[int], None]]:
    start = time.perf_counter()
    state = {"done": 0, "last": start}

    def advance(n: int) -> None:
        state["done"] += n
        now = time.perf_counter()
        if now - state["last"] >= interval_s or state["done"] >= total:
            state["last"] = now
            elapsed = max(now - start, 1e-9)
            rate = state["done"] / elapsed
            eta = (total - state["done"]) / rate if rate > 0 else float("inf")
            log.info(
                "%s: %d/%d %s (%.0f %s/s, ETA %.0fs)",
                description,
                state["done"],
                total,
                unit,
                rate,
                unit,
                eta,
            )

    yield advance
