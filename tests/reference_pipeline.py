"""An independent, slow re-statement of upstream's prediction path, used to check ``predict`` end to end.

Nothing here uses the package's sequence code, native models, tokenizers or classifier loader:
records are read with Biopython's ``SeqIO.parse`` (as upstream does), chunked and translated by the
spec-literal reference of ``tests/sequences/reference.py``, DNABERT-S runs through the plain docs/models.md
re-statement one sequence at a time with Hugging Face's ``PreTrainedTokenizerFast`` (as upstream's
``AutoTokenizer``), ESM-2 runs through ``transformers.EsmModel`` one protein at a time, and the classifier
is upstream's whole pickled module loaded with plain ``torch.load`` (trusted: the test wrote it).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from Bio import SeqIO

from tests.models.test_dnabert_reference import plain_dnabert
from tests.sequences.reference import ref_chunk_bounds, ref_frames
from virnucpro_trt.models.dnabert import DnabertConfig
from virnucpro_trt.models.random_classifier import MLPClassifier as UpstreamMLP

_SUFFIX = ("F1", "F2", "F3", "R1", "R2", "R3")


def reference_frames(fasta: Path, chunk_length: int) -> list[tuple[str, str, str]]:
    """(frame id, DNA, protein) in upstream order."""
    out = []
    for record in SeqIO.parse(str(fasta), "fasta"):
        seq = str(record.seq)
        for i, (start, end) in enumerate(ref_chunk_bounds(len(seq), chunk_length)):
            chunk_id = f"{record.id}_chunk_{i + 1}"
            for frame, protein, dna in ref_frames(seq[start:end]):
                out.append((chunk_id + _SUFFIX[frame - 1], dna, protein))
    return out


def _dnabert_reference(folder: Path):
    import json

    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    state = {k.removeprefix("bert."): v for k, v in state.items()}
    config = DnabertConfig.from_hf_config(json.loads((folder / "config.json").read_text()))

    def embed(dna: str) -> np.ndarray:
        ids = tokenizer(dna)["input_ids"]
        return plain_dnabert(state, config, ids).mean(dim=0).float().numpy()

    return embed


def _esm_reference(folder: Path):
    from transformers import EsmModel, EsmTokenizer

    model = EsmModel.from_pretrained(str(folder), add_pooling_layer=False).eval()
    tokenizer = EsmTokenizer(str(folder / "vocab.txt"))

    def embed(protein: str) -> np.ndarray:
        ids = torch.tensor([tokenizer(protein)["input_ids"]])
        with torch.no_grad():
            hidden = model(input_ids=ids).last_hidden_state[0]
        return hidden[1 : 1 + min(1024, len(protein))].mean(dim=0).numpy()

    return embed


def _classifier_reference(path: Path):
    main = sys.modules["__main__"]
    main.MLPClassifier = UpstreamMLP  # type: ignore[attr-defined]
    try:
        model = torch.load(path, weights_only=False).eval()
    finally:
        del main.MLPClassifier  # type: ignore[attr-defined]
    return model


def reference_predictions(
    fasta: Path, chunk_length: int, dnabert: Path, esm_hf: Path, classifier: Path
) -> tuple[list[str], np.ndarray]:
    """Frame ids and probabilities [N, 2] the way upstream computes them."""
    frames = reference_frames(fasta, chunk_length)
    if not frames:
        return [], np.zeros((0, 2), dtype=np.float32)
    dna_embed = _dnabert_reference(dnabert)
    esm_embed = _esm_reference(esm_hf)
    features = np.stack([np.concatenate([dna_embed(dna), esm_embed(protein)]) for _, dna, protein in frames])
    model = _classifier_reference(classifier)
    with torch.no_grad():
        probs = torch.softmax(model(torch.from_numpy(features.astype(np.float32))), dim=1).numpy()
    return [fid for fid, _, _ in frames], probs


def read_prediction_results(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    lines = path.read_text().splitlines()
    assert lines[0] == "Sequence_ID\tPrediction\tscore1\tscore2"
    rows = [line.split("\t") for line in lines[1:]]
    ids = [r[0] for r in rows]
    labels = [r[1] for r in rows]
    scores = np.array([[float(r[2]), float(r[3])] for r in rows], dtype=np.float64).reshape(-1, 2)
    return ids, labels, scores


def highest_score_rows(ids: list[str], probs: np.ndarray) -> list[str]:
    """Upstream's highest-score table computed from (frame id, probabilities) rows."""
    best: dict[str, list[float]] = {}
    for fid, (p0, p1) in zip(ids, probs, strict=True):
        cur = best.setdefault(fid[:-2], [-1.0, -1.0])
        cur[0], cur[1] = max(cur[0], p0), max(cur[1], p1)
    return [f"{key}\t{best[key][1] >= best[key][0]}" for key in sorted(best)]
