"""DNA (tokenizer.json) and protein (ESM alphabet) tokenizers, and batch padding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from virnucpro_trt.errors import CheckpointError
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


def test_pad_batch_right_pads() -> None:
    ids, mask = pad_batch([np.array([5, 6, 7]), np.array([8])], pad_id=1)
    assert ids.tolist() == [[5, 6, 7], [8, 1, 1]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert ids.dtype == np.int64 and mask.dtype == np.int64
