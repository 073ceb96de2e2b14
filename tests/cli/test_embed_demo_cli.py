"""``embed`` against independent references, ``prepare`` round trip, and the built-in demo."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from tests.cli.helpers import run_cli
from tests.reference_pipeline import _dnabert_reference, _esm_reference, reference_frames
from tests.sequences.reference import ref_identified


def _frames(reads_fasta: Path):
    return reference_frames(reads_fasta, 500)


def test_embed_dnabert_matches_reference(tiny_set, reads_fasta, tmp_path):
    frames = _frames(reads_fasta)[:25]
    fasta = tmp_path / "dna.fa"
    fasta.write_text("".join(f">{fid}\n{dna}\n" for fid, dna, _ in frames) + ">nothing\n\n")
    out = tmp_path / "dna.h5"
    result = run_cli(
        "embed",
        str(fasta),
        "--model",
        "dnabert-s",
        "--weights",
        str(tiny_set.dnabert),
        "-o",
        str(out),
        "--device",
        "cpu",
        "--max-batch-tokens",
        "512",
    )
    assert result.code == 0, result.stderr
    reference = _dnabert_reference(tiny_set.dnabert)
    with h5py.File(out) as h5:
        ids = [i.decode() for i in h5["ids"][:]]
        emb = h5["embeddings"][:]
        status = [s.decode() for s in h5["status"][:]]
        assert h5.attrs["model"] == "dnabert-s"
    assert ids == [fid for fid, _, _ in frames] + ["nothing"]
    assert emb.dtype == np.float32 and emb.shape == (26, 64)
    expected = np.stack([reference(dna) for _, dna, _ in frames])
    np.testing.assert_allclose(emb[:25], expected, atol=1e-5, rtol=0)
    assert status[-1] == "empty" and np.isnan(emb[-1]).all() and status[0] == "ok"


def test_embed_esm_matches_transformers_for_both_formats(tiny_set, reads_fasta, tmp_path):
    frames = _frames(reads_fasta)[:25]
    fasta = tmp_path / "prot.faa"
    fasta.write_text("".join(f">{fid}\n{protein}\n" for fid, _, protein in frames))
    reference = _esm_reference(tiny_set.esm_hf)
    expected = np.stack([reference(protein) for _, _, protein in frames])
    for weights in (tiny_set.esm_hf, tiny_set.esm_pt):
        out = tmp_path / f"{weights.name}.h5"
        result = run_cli(
            "embed",
            str(fasta),
            "--model",
            "esm2",
            "--weights",
            str(weights),
            "-o",
            str(out),
            "--device",
            "cpu",
        )
        assert result.code == 0, result.stderr
        with h5py.File(out) as h5:
            np.testing.assert_allclose(h5["embeddings"][:], expected, atol=1e-5, rtol=0)


def test_embed_refuses_dna_alphabet_errors(tiny_set, tmp_path):
    fasta = tmp_path / "prot.faa"
    fasta.write_text(">p\nMKVLEQ\n")  # L, E, Q are not IUPAC nucleotide codes
    result = run_cli(
        "embed",
        str(fasta),
        "--model",
        "dnabert-s",
        "--weights",
        str(tiny_set.dnabert),
        "-o",
        str(tmp_path / "x.h5"),
    )
    assert result.code == 2 and not (tmp_path / "x.h5").exists()


def test_prepare_cli_byte_identical_to_reference(reads_fasta, tmp_path):
    from Bio import SeqIO

    records = [(r.id, str(r.seq)) for r in SeqIO.parse(str(reads_fasta), "fasta")]
    for chunk_length in (300, 500):
        out = tmp_path / str(chunk_length)
        result = run_cli("prepare", str(reads_fasta), "-o", str(out), "--chunk-length", str(chunk_length))
        assert result.code == 0, result.stderr
        nuc, prot = ref_identified(records, chunk_length)
        assert (out / "identified_nucleotide.fa").read_text() == nuc
        assert (out / "identified_protein.faa").read_text() == prot


def test_demo_runs_end_to_end_and_says_random(tmp_path, monkeypatch):
    monkeypatch.setenv("VIRNUCPRO_TRT_CACHE", str(tmp_path / "cache"))
    result = run_cli("demo", "-o", str(tmp_path / "demo"))
    assert result.code == 0, result.stderr
    assert "RANDOM WEIGHTS" in result.stderr
    run = json.loads((tmp_path / "demo" / "run.json").read_text())
    assert run["demo_random_weights"] is True
    assert run["counts"]["frames"] > 0
    statuses = {
        line.split("\t")[-1] for line in (tmp_path / "demo" / "sequences.tsv").read_text().splitlines()[1:]
    }
    assert statuses == {"scored", "no_stop_free_frame", "empty"}
    # Second run reuses the cached models (and predict --demo is the same thing).
    result = run_cli("predict", "--demo", "-o", str(tmp_path / "demo2"), "-q")
    assert result.code == 0, result.stderr
    assert (tmp_path / "demo2" / "prediction_results.txt").read_text() == (
        tmp_path / "demo" / "prediction_results.txt"
    ).read_text()
