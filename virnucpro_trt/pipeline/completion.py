"""Once a run's run.json is in place its results are complete: an interrupt after that is no failure.

A run that has renamed its run.json into place still cleans up (its work folder, its copy of stdin, its
lock). Ctrl-C or a scheduler's SIGTERM in those moments used to end it with exit 130, and a workflow
manager took a finished job for failed (and reran it). Now such an interrupt only cuts the clean-up
short: a warning, exit 0, and the same command finds the run finished and removes what is left.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from virnucpro_trt.pipeline.run_record import RunRecord
from virnucpro_trt.runtime.coordinator import RunInterrupted

log = logging.getLogger(__name__)


class Completion:
    """Holds a run's record from the moment its run.json is in place (:meth:`done`)."""

    def __init__(self) -> None:
        self.summary: RunRecord | None = None

    def done(self, summary: RunRecord) -> None:
        """Call right after run.json is renamed into place (or found to hold this very run's results)."""
        self.summary = summary

    def result(self) -> RunRecord:
        """The record, after :meth:`interrupt_is_no_failure` ended a block on an interrupt."""
        if self.summary is None:
            raise RuntimeError("the run ended without a summary")  # the block returned or raised before
        return self.summary

    @contextlib.contextmanager
    def interrupt_is_no_failure(self, left: str = "") -> Iterator[None]:
        """Within the block, an interrupt after :meth:`done` is a warning (``left``: what the same command
        removes then) and the block ends as if it had returned; one before :meth:`done` goes on."""
        try:
            yield
        except (KeyboardInterrupt, RunInterrupted):
            if self.summary is None:
                raise
            log.warning("interrupted after the results were complete; they stand%s", left)
