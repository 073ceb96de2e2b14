"""DNA (tokenizer.json) and protein (ESM alphabet) tokenizers, and batch padding."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from virnucpro_trt.errors import CheckpointError
from virnucpro_trt.models import checkpoint_io
from virnucpro_trt.models.checkpoints import load_dnabert, load_esm2, precheck_encoder
from virnucpro_trt.models.random_checkpoints import random_dna, train_dna_tokenizer
from virnucpro_trt.models.tokenization import FAIR_ESM_ALPHABET, DnaTokenizer, ProteinTokenizer, pad_batch


def test_dna_special_ids_are_read_from_the_file(tmp_path: Path) -> None:
    unusual = train_dna_tokenizer(128, seed=1, special_tokens=("[PAD]", "[MASK]", "[SEP]", "[UNK]", "[CLS]"))
    unusual.save(str(tmp_path / "tokenizer.json"))
    tokenizer = DnaTokenizer.from_file(tmp_path / "tokenizer.json")
    assert (tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id) == (4, 2, 0)
    dna = random_dna(3, 50, seed=2)
    for ids, raw in zip(tokenizer.encode_batch(dna), unusual.encode_batch(dna), strict=True):
        assert ids.dtype == np.int64
        assert ids[0] == 4 and ids[-1] == 2
        assert ids.tolist() == raw.ids


def test_dna_file_truncation_and_padding_are_switched_off(tmp_path: Path) -> None:
    trained = train_dna_tokenizer(128, seed=1)
    trained.enable_truncation(16)
    trained.enable_padding(length=64, pad_id=3, pad_token="[PAD]")
    trained.save(str(tmp_path / "tokenizer.json"))
    tokenizer = DnaTokenizer.from_file(tmp_path / "tokenizer.json")
    long, short = tokenizer.encode_batch([random_dna(1, 3000, seed=4)[0], "ACG"])
    assert len(long) > 600 and long[-1] == tokenizer.sep_id
    assert len(short) < 10 and tokenizer.pad_id not in short.tolist()


def test_dna_tokenizer_without_template_is_refused(tmp_path: Path) -> None:
    trained = train_dna_tokenizer(128, seed=1)
    trained.post_processor = None
    trained.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(CheckpointError, match=r"\[CLS\] \.\.\. \[SEP\]"):
        DnaTokenizer.from_file(tmp_path / "tokenizer.json")


def test_a_tokenizer_that_reads_dna_as_unknown_is_refused(tmp_path: Path) -> None:
    """A tokenizer.json without DNA tokens made every read [CLS] [UNK]... [SEP] and embedded it without
    a word; a base that comes out as [UNK] is refused at load."""
    import tokenizers

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4, "A": 5, "C": 6, "G": 7, "X": 8}
    for kept in (vocab, {k: v for k, v in vocab.items() if k != "G"}):
        model = tokenizers.models.BPE(vocab=kept, merges=[], unk_token="[UNK]")
        tokenizer = tokenizers.Tokenizer(model)
        tokenizer.post_processor = tokenizers.processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
        )
        tokenizer.save(str(tmp_path / "tokenizer.json"))
        with pytest.raises(CheckpointError, match=r"reads plain DNA \((Ts|Gs)\) as \[UNK\]"):
            DnaTokenizer.from_file(tmp_path / "tokenizer.json")
    trained = train_dna_tokenizer(128, seed=1)  # every base in its alphabet: loads
    trained.save(str(tmp_path / "tokenizer.json"))
    DnaTokenizer.from_file(tmp_path / "tokenizer.json")


def test_protein_truncation_at_1024_residues() -> None:
    tokenizer = ProteinTokenizer()
    protein = "".join(np.random.default_rng(0).choice(list("ACDEFGHIKLMNPQRSTVWY"), 1500))
    (ids,) = tokenizer.encode_batch([protein])
    assert len(ids) == 1026 and ids[0] == 0 and ids[-1] == 2
    assert ids[1:-1].tolist() == [FAIR_ESM_ALPHABET.index(c) for c in protein[:1024]]


def test_protein_unknown_letters_and_special_tokens() -> None:
    tokenizer = ProteinTokenizer()
    plain, odd, special, empty = tokenizer.encode_batch(["MKV", "MJa*é", "M<mask>K<unk>", ""])
    assert plain.tolist() == [0, 20, 15, 7, 2]
    assert odd.tolist() == [0, 20, 3, 3, 3, 3, 2]  # one <unk> per unknown character, accents included
    assert special.tolist() == [0, 20, 32, 15, 3, 2]
    assert empty.tolist() == [0, 2]


def test_protein_vocab_file_order_is_honoured(tmp_path: Path) -> None:
    tokens = list(FAIR_ESM_ALPHABET)
    tokens[4], tokens[5] = tokens[5], tokens[4]  # swap L and A
    (tmp_path / "vocab.txt").write_text("\n".join(tokens) + "\n")
    tokenizer = ProteinTokenizer.from_vocab_file(tmp_path / "vocab.txt")
    assert tokenizer.encode_batch(["LA"])[0].tolist() == [0, 5, 4, 2]


@pytest.mark.parametrize("blank_at", [5, 12, len(FAIR_ESM_ALPHABET)])
def test_a_blank_line_in_vocab_txt_holds_an_id_as_in_transformers(tmp_path: Path, blank_at: int) -> None:
    """transformers' EsmTokenizer keeps every line of vocab.txt as a token, blank ones too; dropping them
    shifted every later id (``MKLA`` -> 0,20,15,4,5,2 here, 0,21,16,5,6,2 in transformers: helper-42)."""
    transformers = pytest.importorskip("transformers")
    tokens = list(FAIR_ESM_ALPHABET)
    tokens.insert(blank_at, "")
    (tmp_path / "vocab.txt").write_text("\n".join(tokens) + "\n")
    ours = ProteinTokenizer.from_vocab_file(tmp_path / "vocab.txt")
    theirs = transformers.EsmTokenizer(str(tmp_path / "vocab.txt"))
    for protein in ("MKLA", "ACDEFGHIKLMNPQRSTVWYXBZUO", "M<mask>K"):
        assert ours.encode_batch([protein])[0].tolist() == theirs(protein)["input_ids"], protein
    assert ours.vocab_size == len(tokens) and ours.max_id == len(tokens) - 1 - (blank_at == len(tokens) - 1)


def test_pad_batch_right_pads() -> None:
    ids, mask = pad_batch([np.array([5, 6, 7]), np.array([8])], pad_id=1)
    assert ids.tolist() == [[5, 6, 7], [8, 1, 1]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert ids.dtype == np.int64 and mask.dtype == np.int64


# --- a tokenizer that does not fit its checkpoint, and tokenizer files of unbounded size ---


def _sparse_ids(path: Path, shift: int) -> None:
    """Move every BPE token but the first five past ``shift``: the vocabulary keeps its size."""
    data = json.loads(path.read_text())
    vocab = data["model"]["vocab"]
    for token in list(vocab)[5:]:
        vocab[token] += shift
    path.write_text(json.dumps(data))


def test_dna_max_id_counts_sparse_ids_and_the_templates_ids(tmp_path: Path) -> None:
    """The vocabulary's size does not bound its ids, and the template's ids are not taken from it."""
    trained = train_dna_tokenizer(128, seed=1)
    trained.save(str(tmp_path / "tokenizer.json"))
    assert DnaTokenizer.from_file(tmp_path / "tokenizer.json").max_id == 127
    _sparse_ids(tmp_path / "tokenizer.json", 1000)
    sparse = DnaTokenizer.from_file(tmp_path / "tokenizer.json")
    assert (sparse.vocab_size, sparse.max_id) == (128, 1127)
    data = json.loads((tmp_path / "tokenizer.json").read_text())
    data["post_processor"]["single"].insert(2, {"SpecialToken": {"id": "[X]", "type_id": 0}})
    data["post_processor"]["special_tokens"]["[X]"] = {"id": "[X]", "ids": [9999], "tokens": ["[X]"]}
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    assert DnaTokenizer.from_file(tmp_path / "tokenizer.json").max_id == 9999


def test_tokenizer_ids_past_the_embedding_are_refused_by_loader_and_preflight(
    dnabert_dir: Path, esm_hf_dir: Path, tmp_path: Path
) -> None:
    """Sparse ids (same vocabulary size) passed the old size check and failed as an IndexError in every
    worker; an extra vocab.txt line is the ESM-2 form of the same mistake."""
    dnabert = shutil.copytree(dnabert_dir, tmp_path / "dnabert")
    _sparse_ids(dnabert / "tokenizer.json", 10_000)
    esm = shutil.copytree(esm_hf_dir, tmp_path / "esm")
    with open(esm / "vocab.txt", "a") as handle:
        handle.write("<extra>\n")
    for kind, folder, load in (("dnabert-s", dnabert, load_dnabert), ("esm2", esm, load_esm2)):
        for check in (load, lambda path, kind=kind: precheck_encoder(kind, path)):
            with pytest.raises(
                CheckpointError, match=r"the tokenizer emits token ids up to \d+, but the word "
            ):
                check(folder)
    precheck_encoder("dnabert-s", dnabert_dir)  # the real pairs pass
    precheck_encoder("esm2", esm_hf_dir)


def test_tokenizer_files_are_read_with_the_model_text_limit(tmp_path: Path, monkeypatch) -> None:
    """tokenizer.json and vocab.txt were read whole whatever their size; now like config.json."""
    trained = train_dna_tokenizer(128, seed=1)
    trained.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "vocab.txt").write_text("\n".join(FAIR_ESM_ALPHABET) + "\n")
    (tmp_path / "config.json").write_text(json.dumps({"pad": "x" * 5000}))
    monkeypatch.setattr(checkpoint_io, "MAX_TEXT_BYTES", 64)
    readers = [
        (DnaTokenizer.from_file, "tokenizer.json"),
        (ProteinTokenizer.from_vocab_file, "vocab.txt"),
        (checkpoint_io.read_json, "config.json"),
    ]
    for read, name in readers:
        assert (tmp_path / name).stat().st_size > 64
        with pytest.raises(CheckpointError, match=rf"{name}: larger than 64 bytes"):
            read(tmp_path / name)


def test_vocab_file_that_is_not_text_or_repeats_a_token_is_refused(tmp_path: Path) -> None:
    (tmp_path / "binary.txt").write_bytes(b"<cls>\n\xff\xfe\n")
    with pytest.raises(CheckpointError, match="not UTF-8 text"):
        ProteinTokenizer.from_vocab_file(tmp_path / "binary.txt")
    (tmp_path / "twice.txt").write_text("\n".join([*FAIR_ESM_ALPHABET, "A"]) + "\n")
    with pytest.raises(CheckpointError, match="repeats the token"):
        ProteinTokenizer.from_vocab_file(tmp_path / "twice.txt")
