"""The one table of the files a finished run (``predict``, or ``merge`` of a split's parts) leaves in
OUTDIR. Here, in the lowest layer, so that every layer names them alike (the ``.work`` checks, the
writers, the CLI, the Snakefile), and torch-free."""

from __future__ import annotations

from collections.abc import Collection

PREDICTION_RESULTS = "prediction_results.txt"  # upstream's names, kept
HIGHEST_SCORE = "prediction_results_highestscore.csv"
SEQUENCES_TSV = "sequences.tsv"
FRAMES_TSV = "frames.tsv"
RUN_JSON = "run.json"
EMBEDDINGS_H5 = "embeddings.h5"
DEMO_NOTE = "DEMO_RANDOM_WEIGHTS.txt"  # beside results computed with the demo's random weights

FINAL_TEXT_FILES = (PREDICTION_RESULTS, HIGHEST_SCORE, SEQUENCES_TSV, FRAMES_TSV)
# Every result file a run may write, whatever its options (an older one of any is removed first).
RESULT_NAMES = (*FINAL_TEXT_FILES, RUN_JSON, EMBEDDINGS_H5, DEMO_NOTE)


def result_file_names(save_embeddings: bool, demo: bool) -> list[str]:
    """The files one finished run writes, run.json included, for its options."""
    return [*FINAL_TEXT_FILES, RUN_JSON] + [EMBEDDINGS_H5] * save_embeddings + [DEMO_NOTE] * demo


def unrecorded_results(outputs: Collection[str], save_embeddings: bool, demo: bool) -> list[str]:
    """The files a finished run with these options writes that ``outputs`` (its run.json's record) leaves
    out, sorted. A finished run (``predict``'s or ``merge``'s) is reused only when this is empty: a file
    left out of the record is never checked against it, so a truncated or deleted one passed as complete."""
    return sorted(set(result_file_names(save_embeddings, demo)) - {RUN_JSON} - set(outputs))
