"""The two files upstream VirNucPro writes, byte for byte (docs/upstream.md §5).

``prediction_results.txt``: one row per kept frame, in input order,
``Sequence_ID\\tPrediction\\tscore1\\tscore2`` with score1 = P(others), score2 = P(virus), printed as
numpy float32 ``str()``.

``prediction_results_highestscore.csv`` (tab-separated despite its name): one row per chunk that had at
least one kept frame, ``Modified_ID`` = the frame id without its last two characters, ``Is_Virus`` =
max(score2) >= max(score1) over the chunk's frames, rows sorted by Modified_ID as strings.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import IO

import numpy as np

from virnucpro_trt.models.classifier import LABELS
from virnucpro_trt.outputs.formatting import f32_column

PREDICTION_HEADER = "Sequence_ID\tPrediction\tscore1\tscore2\n"
HIGHEST_HEADER = "Modified_ID\tIs_Virus\n"


def write_prediction_rows(
    out: IO[str], frame_ids: Sequence[str], probs: np.ndarray, labels: np.ndarray
) -> None:
    """Append rows for one block of frames (``probs`` [N, 2] float32, ``labels`` 0/1)."""
    s1 = f32_column(probs[:, 0])
    s2 = f32_column(probs[:, 1])
    out.write(
        "".join(
            f"{fid}\t{LABELS[lab]}\t{a}\t{b}\n"
            for fid, lab, a, b in zip(frame_ids, labels.tolist(), s1, s2, strict=True)
        )
    )


class ChunkMaxima:
    """Running max(score1), max(score2) per chunk id, for the highest-score file."""

    def __init__(self) -> None:
        self._max: dict[str, list[np.float32]] = {}

    def update(self, frame_ids: Sequence[str], probs: np.ndarray) -> None:
        for fid, (p0, p1) in zip(frame_ids, probs.astype(np.float32), strict=True):
            self._fold(fid[:-2], p0, p1)

    def _fold(self, key: str, p0: np.float32, p1: np.float32) -> None:
        cur = self._max.get(key)
        if cur is None:
            self._max[key] = [p0, p1]
        else:
            if p0 > cur[0]:
                cur[0] = p0
            if p1 > cur[1]:
                cur[1] = p1

    def __len__(self) -> int:
        return len(self._max)

    def is_virus(self, chunk_id: str) -> bool | None:
        cur = self._max.get(chunk_id)
        return None if cur is None else bool(cur[1] >= cur[0])

    def write(self, out: IO[str]) -> None:
        out.write(HIGHEST_HEADER)
        out.write(
            "".join(f"{key}\t{bool(self._max[key][1] >= self._max[key][0])}\n" for key in sorted(self._max))
        )

    def write_maxima(self, out: IO[str]) -> None:
        """Per chunk, sorted by id: ``id\tmax score1\tmax score2``.

        Scores are float32 ``str()``, the shortest text that reads back to the same float32, so maxima
        written by a shard and folded in again with :meth:`merge_maxima` compare exactly as before.
        """
        table = self._max
        out.write("".join(f"{key}\t{table[key][0]}\t{table[key][1]}\n" for key in sorted(table)))

    def merge_maxima(self, lines: Iterable[str]) -> None:
        """Fold in rows written by :meth:`write_maxima` (the maximum of maxima is the maximum)."""
        for line in lines:
            key, p0_text, p1_text = line.rstrip("\n").split("\t")
            self._fold(key, np.float32(p0_text), np.float32(p1_text))
