"""What a worker's log record carries to the main process besides its labelled message.

A worker process sends its records to the coordinator with the worker's label in front of the message
(``[gpu0] ...``); the record also keeps the text without the label under :data:`WORKER_TEXT`, so the
CLI can tell that a worker's warning says what the main process or another worker already said.
"""

from __future__ import annotations

import logging

WORKER_TEXT = "virnucpro_worker_text"


def unlabelled_text(record: logging.LogRecord) -> str:
    """The record's message without a worker's label: what two processes' same warning share."""
    text = getattr(record, WORKER_TEXT, None)
    return text if isinstance(text, str) else record.getMessage()
