"""``virnucpro-trt convert-classifier``: upstream's pickled classifier, read safely, as ``.safetensors``.

Where it writes is checked before the checkpoint is read, by the rules every command follows: an output
that names the checkpoint itself (the same path, a relative spelling, a symbolic or hard link) is refused
(``run_paths.check_run_paths``) — the conversion would replace the only copy of the weights it reads,
even with ``--force``; and a file at the output path is replaced only when an earlier command wrote it
and it is unchanged since, anything else unless ``--force`` (``files/ownership.py``).
"""

from __future__ import annotations

import functools
from pathlib import Path

from virnucpro_trt.files.folders import made_folder
from virnucpro_trt.files.ownership import check_replaceable, record_path, record_written
from virnucpro_trt.files.run_lock import check_not_a_lock_name, output_lock, output_lock_name
from virnucpro_trt.models.classifier import (
    ClassifierWeights,
    load_classifier_weights,
    save_classifier_safetensors,
)
from virnucpro_trt.pipeline.run_paths import check_run_paths


def run_convert_classifier(checkpoint: Path, output: Path, force: bool = False) -> ClassifierWeights:
    """Check both paths, read ``checkpoint`` (no pickled code runs), write ``output`` whole or not at all;
    returns the weights. The output's lock is held while writing (one run per output file; it notes the
    temporary files, so the rerun after a SIGKILL removes them)."""
    check_run_paths(
        [checkpoint], [output, record_path(output.parent), output.parent / output_lock_name(output)]
    )
    check_not_a_lock_name(output)
    check_replaceable([output], force)
    weights = load_classifier_weights(checkpoint)
    with made_folder(output.parent), output_lock(output) as lock:
        noted = functools.partial(lock.note, growing=True) if lock is not None else None
        save_classifier_safetensors(weights, output, source=checkpoint.name, on_create=noted)
        record_written([output], noted)
    return weights
