"""``virnucpro-trt convert-classifier``: upstream's pickled classifier, read safely, as ``.safetensors``.

Where it writes is checked before the checkpoint is read, by the rules every command follows: an output
that names the checkpoint itself (the same path, a relative spelling, a symbolic or hard link) is refused
(``run_paths.check_run_paths``) — the conversion would replace the only copy of the weights it reads,
even with ``--force``; and a file at the output path is replaced only when an earlier command wrote it
and it is unchanged since, anything else unless ``--force`` (``files/ownership.py``). A rerun onto its
own unchanged output converted from the same checkpoint bytes writes nothing (:func:`_made`).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from virnucpro_trt import __version__
from virnucpro_trt.errors import CheckpointError
from virnucpro_trt.files.folders import made_folder
from virnucpro_trt.files.ownership import check_replaceable, made_from, record_path, record_written
from virnucpro_trt.files.run_lock import check_not_a_lock_name, output_lock, output_lock_name
from virnucpro_trt.models.classifier import (
    converted_input_width,
    load_classifier_weights,
    save_classifier_safetensors,
)
from virnucpro_trt.models.identity import identify_checkpoint
from virnucpro_trt.pipeline.run_paths import check_input_file, check_run_paths

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConvertSummary:
    """What ``convert-classifier`` wrote, or found written: the classifier's input width, and whether it
    converted the checkpoint (False: found the output made, :func:`_made`)."""

    input_dim: int
    computed: bool


def run_convert_classifier(checkpoint: Path, output: Path, force: bool = False) -> ConvertSummary:
    """Check both paths (an unreadable checkpoint is refused before any folder is made, as every
    command's input is), hash ``checkpoint``, and either find ``output`` made from it or read it (no
    pickled code runs) and write ``output`` whole or not at all. The output's lock is held throughout
    (one run per output file; it notes the temporary files, so the rerun after a SIGKILL removes them)."""
    check_input_file(str(checkpoint))
    if not checkpoint.is_file():  # a pipe (<(...)) or a device: once hashed, its bytes are gone
        raise CheckpointError(f"classifier checkpoint {checkpoint} is not a file")
    check_run_paths(
        [checkpoint], [output, record_path(output.parent), output.parent / output_lock_name(output)]
    )
    check_not_a_lock_name(output)
    check_replaceable([output], force)
    with made_folder(output.parent), output_lock(output) as lock:
        noted = functools.partial(lock.note, growing=True) if lock is not None else None
        identity = identify_checkpoint("classifier", checkpoint)
        made = _made(identity.sha256, checkpoint.name)
        if made_from([output], made["key"]):
            width = None if force else converted_input_width(output)
            if width is not None:
                return ConvertSummary(width, computed=False)
            if force:
                log.warning("--force: converting %s again (it was unchanged)", output)
        weights = load_classifier_weights(checkpoint, identity)  # refused if changed since it was hashed
        save_classifier_safetensors(weights, output, source=checkpoint.name, on_create=noted)
        record_written([output], noted, made)
    return ConvertSummary(weights.input_dim, computed=True)


def _made(checkpoint_sha256: str, source: str) -> dict[str, Any]:
    """What the output is converted from, as its record entry keeps it (``files/ownership.py``: ``made``).

    ``key``: the tool's version, the checkpoint's SHA-256 and its file name, which the output's metadata
    keeps as ``source`` (the same weights under another name make other bytes). A finished output is
    found made only while its header still reads as a conversion's (``converted_input_width``): the width
    printed then is its tensor's, never a figure from the record, which anyone in the folder may edit.
    """
    key = {"command": "convert-classifier", "version": __version__, "checkpoint_sha256": checkpoint_sha256}
    return {"key": {**key, "source": source}}
