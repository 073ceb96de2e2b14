"""Formatting of upstream's two result files."""

from __future__ import annotations

import io

import numpy as np

from virnucpro_trt.outputs.formatting import f32, f32_column
from virnucpro_trt.outputs.upstream import ChunkMaxima, write_prediction_rows


def test_scores_print_like_numpy_float32_str():
    assert f32(0.12100612) == "0.12100612"
    assert f32(np.float32(0.8789939)) == "0.8789939"
    assert f32_column(np.array([1e-8, 1.0, 0.5], dtype=np.float32)) == ["1e-08", "1.0", "0.5"]


def test_prediction_rows_and_highest_score():
    ids = ["b_chunk_1F1", "b_chunk_1R2", "a_chunk_2R1", "a_chunk_10F3"]
    probs = np.array([[0.7, 0.3], [0.2, 0.8], [0.5, 0.5], [0.9, 0.1]], dtype=np.float32)
    labels = (probs[:, 1] > probs[:, 0]).astype(np.int8)
    out = io.StringIO()
    write_prediction_rows(out, ids, probs, labels)
    assert out.getvalue().splitlines() == [
        "b_chunk_1F1\tothers\t0.7\t0.3",
        "b_chunk_1R2\tvirus\t0.2\t0.8",
        "a_chunk_2R1\tothers\t0.5\t0.5",
        "a_chunk_10F3\tothers\t0.9\t0.1",
    ]
    maxima = ChunkMaxima()
    maxima.update(ids, probs)
    hs = io.StringIO()
    maxima.write(hs)
    # max over frames per chunk (b: 0.7 vs 0.8 -> True), a tie counts as virus (>=), string sort order.
    assert hs.getvalue() == ("Modified_ID\tIs_Virus\na_chunk_10\tFalse\na_chunk_2\tTrue\nb_chunk_1\tTrue\n")
