"""A worker's log records go to the coordinator over its pipe; once the coordinator is gone (killed, or
hung up with its terminal), a record has nowhere to go and is dropped in silence.

Before, each record a worker logged after its coordinator died printed "--- Logging error ---" and a
BrokenPipeError traceback: about 200 lines on the terminal of a user who had just closed the run.
"""

from __future__ import annotations

import logging
import multiprocessing

from virnucpro_trt.runtime.worker import WorkerSlot, _PipeLogHandler, _Sender


def test_a_record_after_the_coordinator_is_gone_is_dropped_without_a_traceback(capsys) -> None:
    ours, theirs = multiprocessing.Pipe()
    theirs.close()  # the coordinator's end: gone
    handler = _PipeLogHandler(_Sender(ours), WorkerSlot(0, "cpu", 1))
    record = logging.LogRecord("virnucpro_trt", logging.INFO, __file__, 1, "shard %d done", (3,), None)
    handler.handle(record)
    assert capsys.readouterr().err == ""
