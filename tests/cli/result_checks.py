"""What a user checks in a ``predict`` OUTDIR: every row of ``sequences.tsv`` against the other files.

Read with the standard library only (csv, by column name), the way a user's script would, and
restated from the README's rule, not from the package's code:

* a chunk is virus iff max score2 >= max score1 over its frames in ``prediction_results.txt``, which
  is also what ``prediction_results_highestscore.csv`` says;
* a read is ``virus`` iff ``virus_chunks`` >= 1, and ``virus_chunks`` counts its virus chunks;
* ``best_p_virus``/``best_p_others`` are the two probabilities of one frame of the read in
  ``frames.tsv``: the first one with the highest P(virus).
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np


def read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def check_sequence_rows(outdir: Path, min_length: int = 0) -> dict[str, dict[str, str]]:
    """Assert every row of ``outdir/sequences.tsv`` agrees with the other files; returns rows by id."""
    sequences = read_tsv(outdir / "sequences.tsv")
    frames = read_tsv(outdir / "frames.tsv")
    upstream = read_tsv(outdir / "prediction_results.txt")
    highest_rows = read_tsv(outdir / "prediction_results_highestscore.csv")
    highest = {r["Modified_ID"]: r["Is_Virus"] for r in highest_rows}

    assert [f["frame_id"] for f in frames] == [u["Sequence_ID"] for u in upstream]
    chunk_max: dict[str, list[np.float32]] = {}
    for row in upstream:
        best = chunk_max.setdefault(row["Sequence_ID"][:-2], [np.float32(-1), np.float32(-1)])
        best[0] = max(best[0], np.float32(row["score1"]))
        best[1] = max(best[1], np.float32(row["score2"]))
    chunk_virus = {chunk: bool(b[1] >= b[0]) for chunk, b in chunk_max.items()}
    assert {chunk: str(v) for chunk, v in chunk_virus.items()} == highest

    by_read: dict[str, list[dict[str, str]]] = defaultdict(list)
    for frame in frames:
        by_read[frame["sequence_id"]].append(frame)
    rows = {}
    for row in sequences:
        rid = row["sequence_id"]
        rows[rid] = row
        mine = by_read.pop(rid, [])
        assert int(row["kept_frames"]) == len(mine), rid
        chunk_ids = {f"{rid}_chunk_{f['chunk']}" for f in mine}
        virus = sum(chunk_virus[c] for c in chunk_ids)
        assert int(row["virus_chunks"]) == virus, rid
        assert int(row["chunks"]) >= len(chunk_ids), rid
        length = int(row["length"])
        if length == 0:
            assert row["status"] == "empty" and row["chunks"] == "0", rid
        elif length < min_length:
            assert row["status"] == "too_short" and row["chunks"] == "0", rid
        elif not mine:
            assert row["status"] == "no_stop_free_frame" and int(row["chunks"]) > 0, rid
        else:
            assert row["status"] == "scored", rid
        if not mine:
            assert (row["best_p_virus"], row["best_p_others"], row["label"]) == ("NA", "NA", "NA"), rid
            continue
        p_virus = [np.float32(f["p_virus"]) for f in mine]
        best = mine[int(np.argmax(p_virus))]
        assert (row["best_p_virus"], row["best_p_others"]) == (best["p_virus"], best["p_others"]), rid
        assert row["label"] == ("virus" if virus >= 1 else "others"), rid
        if row["label"] == "virus":  # never below the best P(others) of a chunk that called it virus
            viral = [c for c in chunk_ids if chunk_virus[c]]
            assert any(np.float32(row["best_p_virus"]) >= chunk_max[c][0] for c in viral), rid
    assert not by_read, f"frames of reads missing from sequences.tsv: {sorted(by_read)[:3]}"
    return rows
