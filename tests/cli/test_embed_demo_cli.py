"""``embed`` against independent references, ``prepare`` round trip, and the built-in demo."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from tests.cli.helpers import run_cli
from tests.cli.result_checks import check_sequence_rows
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


def test_embed_esm_takes_gaps_as_the_vocabulary_tokens_they_are(tiny_set, tmp_path):
    """``-`` and ``.`` are tokens of ESM-2's vocabulary (an aligned protein holds them); they were
    refused as input errors. They embed now as transformers embeds them."""
    proteins = {"gapped": "MK-LV.AG--W", "dots": "MKT.AYIA", "plain": "MKTAYIA"}
    fasta = tmp_path / "gaps.faa"
    fasta.write_text("".join(f">{pid}\n{seq}\n" for pid, seq in proteins.items()))
    out = tmp_path / "gaps.h5"
    args = ["embed", str(fasta), "--model", "esm2", "--weights", str(tiny_set.esm_hf), "-o", str(out)]
    result = run_cli(*args, "--device", "cpu")
    assert result.code == 0, result.stderr
    reference = _esm_reference(tiny_set.esm_hf)
    with h5py.File(out) as h5:
        assert [i.decode() for i in h5["ids"][:]] == list(proteins)
        expected = np.stack([reference(seq) for seq in proteins.values()])
        np.testing.assert_allclose(h5["embeddings"][:], expected, atol=1e-5, rtol=0)


def test_embed_refuses_dna_alphabet_errors(tiny_set, tmp_path):
    fasta = tmp_path / "prot.faa"
    fasta.write_text(">p\nMKVLEQ\n")  # a protein: fewer than half its letters are A/C/G/T/U/N
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


def test_embed_esm2_refuses_dna_unless_told_and_dnabert_refuses_protein(tiny_set, reads_fasta, tmp_path):
    def embed(path: Path, model: str, weights: Path, *extra: str):
        out = tmp_path / f"{path.stem}-{model}.h5"
        args = ["embed", str(path), "--model", model, "--weights", str(weights), "-o", str(out), *extra]
        result = run_cli(*args)
        return result, out

    result, out = embed(reads_fasta, "esm2", tiny_set.esm_hf)  # the reads themselves, as "protein"
    lines = result.stderr.strip().splitlines()
    assert result.code == 2 and len(lines) == 1 and not out.exists()
    assert "looks like DNA/RNA, not protein" in lines[0] and "--model dnabert-s" in lines[0]
    assert "Traceback" not in result.stderr

    aligned = tmp_path / "aligned.fa"  # gapped DNA (an alignment) is DNA: gaps are ESM-2 tokens now
    aligned.write_text(">a1\nACGT--ACGTTG.CA\n>a2\nAC-GTACGTT\n")
    result, out = embed(aligned, "esm2", tiny_set.esm_hf)
    assert result.code == 2 and "2 of 2 records are made only of A/C/G/T/U/N" in result.stderr, result.stderr

    poly_ga = tmp_path / "poly_ga.faa"  # a real dipeptide-repeat protein made only of G and A
    poly_ga.write_text(">polyGA\n" + "GA" * 25 + "\n")
    result, out = embed(poly_ga, "esm2", tiny_set.esm_hf)
    assert result.code == 2 and "(the first: record 1 (id 'polyGA'))" in result.stderr and not out.exists()
    result, out = embed(poly_ga, "esm2", tiny_set.esm_hf, "--allow-nucleotide-letters")
    assert result.code == 0, result.stderr
    with h5py.File(out) as h5:
        assert [i.decode() for i in h5["ids"][:]] == ["polyGA"]
    with poly_ga.open("a") as handle:  # among proteins, such a record needs no option
        handle.write(">other\nMKTAYIAKQRQISFVKSHFSRQ\n>third\nMKVLAAGIWRRKK\n")
    result, out = embed(poly_ga, "esm2", tiny_set.esm_hf)
    assert result.code == 0, result.stderr

    proteins = tmp_path / "proteins.faa"  # protein letters given to the DNA model
    proteins.write_text(">p1\nMKTAYIAKQRQISFVKSHFSRQ\n")
    result, out = embed(proteins, "dnabert-s", tiny_set.dnabert)
    assert result.code == 2 and "1 of 1 records are protein, not DNA" in result.stderr and not out.exists()


def test_embed_reads_lower_case_letters_as_the_same_bases_and_residues(tiny_set, tmp_path):
    """Both vocabularies are upper case: a soft-masked (lower-case) record embeds as its upper-case
    self, not as a row of unknown tokens."""
    cases = {
        "dnabert-s": (tiny_set.dnabert, "ACGTTGCAAGGCTTAACGGATCCAGTACGATCGA"),
        "esm2": (tiny_set.esm_hf, "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ"),
    }
    for model, (weights, text) in cases.items():
        path = tmp_path / f"{model}.fa"
        path.write_text(f">upper\n{text}\n>lower\n{text.lower()}\n>mixed\n{text[:9].lower()}{text[9:]}\n")
        out = tmp_path / f"{model}.h5"
        result = run_cli("embed", str(path), "--model", model, "--weights", str(weights), "-o", str(out))
        assert result.code == 0, result.stderr
        with h5py.File(out) as h5:
            rows = np.asarray(h5["embeddings"][:])
        np.testing.assert_allclose(rows[1:], rows[[0, 0]], atol=1e-6, rtol=0, err_msg=model)


def test_embed_dnabert_refuses_a_record_past_its_token_limit_unless_the_budget_is_raised(
    tiny_set, tmp_path, monkeypatch
):
    """DNABERT-S takes each record whole in embed: one past the larger of the batch budget and
    DNABERT_RECORD_TOKENS is named in one line before anything is embedded (a 100 Mbp read was
    tokenized whole and the process killed at 24 GB); a raised budget embeds it."""
    from virnucpro_trt.pipeline import embed

    monkeypatch.setattr(embed, "DNABERT_RECORD_TOKENS", 16)  # the tiny model's scale
    rng = np.random.default_rng(5)
    reads = tmp_path / "contigs.fa"
    long = "".join(rng.choice(list("ACGT"), 6000))
    reads.write_text(f">short\nACGTACGTAAGG\n>contig_7\n{long}\n")
    args = ("embed", str(reads), "--model", "dnabert-s", "--weights", str(tiny_set.dnabert), "--device")
    args = (*args, "cpu")
    short = tmp_path / "short.fa"
    short.write_text(">short\nACGTACGTAAGG\n")
    earlier = run_cli(*args[:1], str(short), *args[2:], "-o", str(tmp_path / "e.h5"))
    assert earlier.code == 0, earlier.stderr
    before = (tmp_path / "e.h5").read_bytes()
    for budget in ("64", "1024"):  # refused on its letters alone (6,000), then on its counted tokens
        result = run_cli(*args, "-o", str(tmp_path / "e.h5"), "--max-batch-tokens", budget)
        assert result.code == 2 and result.stderr.strip().splitlines()[-1].startswith(
            f"error: {reads}: 'contig_7' is 6,000 bases, {'at least ' if budget == '64' else ''}"
        ), result.stderr
        assert f"more than the {int(budget):,} one record may take" in result.stderr
        assert len([line for line in result.stderr.splitlines() if line.startswith("error")]) == 1
        assert (tmp_path / "e.h5").read_bytes() == before  # refused before the earlier output went
    result = run_cli(*args, "-o", str(tmp_path / "e.h5"), "--max-batch-tokens", "8192")
    assert result.code == 0, result.stderr
    with h5py.File(tmp_path / "e.h5") as handle:
        assert handle["embeddings"].shape[0] == 2


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


def test_demo_runs_end_to_end_and_says_random(tiny_set, tmp_path, monkeypatch):
    monkeypatch.setenv("VIRNUCPRO_TRT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    result = run_cli("demo", "-o", str(out))  # the first demo also builds the models
    assert result.code == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    messages = [line.split(None, 2)[2] for line in lines]  # "HH:MM:SS LEVEL message"
    assert len(set(messages)) == len(messages), "a log line shows twice"
    assert sum("loaded esm2" in m for m in messages) == 1
    assert messages[-1].startswith("PASSED (DEMO, RANDOM WEIGHTS: the labels mean nothing): 50 records")
    note = out / "DEMO_RANDOM_WEIGHTS.txt"
    assert "RANDOM WEIGHTS" in note.read_text() and "mean nothing" in note.read_text()
    assert oct(note.stat().st_mode & 0o777) == oct((out / "sequences.tsv").stat().st_mode & 0o777)
    run = json.loads((out / "run.json").read_text())
    assert run["demo_random_weights"] is True
    assert run["counts"]["frames"] > 0
    # A rerun finds it finished and still says DEMO; a changed result is refused, naming --force, which
    # demo takes (it said "add --force" and had none: helper-43).
    again = run_cli("demo", "-o", str(out))
    assert again.code == 0 and "PASSED (DEMO, RANDOM WEIGHTS" in again.stderr.strip().splitlines()[-1]
    results = out / "prediction_results.txt"
    kept = results.read_bytes()
    results.write_bytes(kept + b"my edit\n")
    edited = run_cli("demo", "-o", str(out))
    assert edited.code == 2 and "--force" in edited.stderr
    forced = run_cli("demo", "-o", str(out), "--force")
    assert forced.code == 0, forced.stderr
    assert results.read_bytes() == kept
    rows = check_sequence_rows(out)
    assert {r["status"] for r in rows.values()} == {"scored", "no_stop_free_frame", "empty"}
    assert {r["label"] for r in rows.values() if r["status"] == "scored"} == {"virus", "others"}
    # The demo's models given by path onto the demo's folder: the same results, but not a --demo run,
    # so it is not reused as one (the DEMO marker would not match the command), and vice versa.
    models = run["models"]
    by_path = [
        "predict", run["input"]["path"], "-o", str(out), "--dnabert", models["dnabert"]["path"],
        "--esm", models["esm"]["path"], "--classifier", models["classifier"]["path"],
    ]  # fmt: skip
    result = run_cli(*by_path)
    assert result.code == 2 and "results of another run (a --demo run)" in result.stderr, result.stderr
    plain = tmp_path / "plain"
    assert run_cli(*by_path[:3], str(plain), *by_path[4:]).code == 0
    result = run_cli("predict", "--demo", "-o", str(plain))
    assert result.code == 2 and "(not a --demo run)" in result.stderr, result.stderr
    assert not (plain / "DEMO_RANDOM_WEIGHTS.txt").exists()
    # Results of another version of the tool are another run's (never reused as this one's), as are
    # unfinished shards of it.
    record = json.loads((plain / "run.json").read_text())
    (plain / "run.json").write_text(json.dumps({**record, "version": "0.0.9"}))
    result = run_cli(*by_path[:3], str(plain), *by_path[4:])
    assert result.code == 2 and "(made by virnucpro-trt 0.0.9, this is" in result.stderr, result.stderr
    (plain / "run.json").write_text(json.dumps({**record, "version": "9\nerror: fake\x1b[31m"}))
    result = run_cli(*by_path[:3], str(plain), *by_path[4:])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.code == 2 and len(errors) == 1 and "--force" in errors[0], result.stderr
    assert "\x1b" not in result.stderr and "'9\\nerror: fake\\x1b[31m'" in errors[0], errors
    # Second run reuses the cached models (and predict --demo is the same thing).
    result = run_cli("predict", "--demo", "-o", str(tmp_path / "demo2"), "-q")
    assert result.code == 0, result.stderr
    assert (tmp_path / "demo2" / "prediction_results.txt").read_text() == (
        out / "prediction_results.txt"
    ).read_text()
    assert (tmp_path / "demo2" / "DEMO_RANDOM_WEIGHTS.txt").is_file()

    # The note is one of the run's outputs: an input there is refused, and a run with real weights
    # into the demo's folder removes it.
    reads = Path(json.loads((out / "run.json").read_text())["input"]["path"])
    note.write_bytes(reads.read_bytes())
    result = run_cli("predict", str(note), "-o", str(out), "--demo")
    assert result.code == 2 and "a file this run writes" in result.stderr
    note.unlink()
    result = run_cli(
        "predict", str(reads), "-o", str(tmp_path / "demo2"), "--dnabert", str(tiny_set.dnabert),
        "--esm", str(tiny_set.esm_hf), "--classifier", str(tiny_set.classifier), "--device", "cpu", "--force",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    assert not (tmp_path / "demo2" / "DEMO_RANDOM_WEIGHTS.txt").exists()
    assert "DEMO" not in result.stderr.strip().splitlines()[-1]
    assert json.loads((tmp_path / "demo2" / "run.json").read_text())["demo_random_weights"] is False
