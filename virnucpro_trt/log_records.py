"""What a log record carries to the CLI's handlers besides its message.

A worker process sends its records to the coordinator with the worker's label in front of the message
(``[gpu0] ...``); the record also keeps the text without the label under :data:`WORKER_TEXT`, so the
CLI can tell that a worker's warning says what the main process or another worker already said. A
warning of an event (a worker died, fell silent, was restarted) is marked :data:`EVERY_TIME`: the same
text twice is two events, and each is shown.
"""

from __future__ import annotations

import logging

WORKER_TEXT = "virnucpro_worker_text"
EVERY_TIME = "virnucpro_every_time"
EVENT = {EVERY_TIME: True}  # ``extra=`` of a warning that is an event, not a repeated fact


def unlabelled_text(record: logging.LogRecord) -> str:
    """The record's message without a worker's label: what two processes' same warning share."""
    text = getattr(record, WORKER_TEXT, None)
    return text if isinstance(text, str) else record.getMessage()
