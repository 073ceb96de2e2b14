"""Tokenizers for the two encoders, batch-first and free of per-character Python.

* :class:`DnaTokenizer` wraps the checkpoint's own ``tokenizer.json`` (BPE + ``[CLS] $A [SEP]`` template)
  through the Rust ``tokenizers`` batch encoder. Truncation and padding are switched off: upstream never
  truncates DNABERT-S input, and padding is done by :func:`pad_batch` so both models share one path.
  Special ids are read from the file, never assumed.
* :class:`ProteinTokenizer` reproduces fair-esm's ``BatchConverter`` for ESM-2: ``<cls>`` + the first 1024
  residues + ``<eos>``; characters outside the alphabet become ``<unk>``. Single characters go through a
  256-entry numpy lookup table over the bytes of the whole batch at once.

``tokenizer.json`` is hostile input like every model file. The Rust library *panics* on some malformed
files (a template naming an undefined special token, a garbled ``Precompiled`` normalizer), and a panic
reaches Python as ``pyo3_runtime.PanicException``, a ``BaseException`` that no ``except Exception``
catches. So the known triggers are refused before Rust sees the file (:func:`check_tokenizer_json`), every
call into the library is wrapped (:func:`_rust_call`), and the file is probed with a few sequences at load
time, so a broken file fails when it is loaded, not mid-run inside a worker.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import tokenizers

from virnucpro_trt.errors import CheckpointError, shown
from virnucpro_trt.files.json_fields import parse_json
from virnucpro_trt.models.checkpoint_io import read_text_file

FAIR_ESM_ALPHABET: tuple[str, ...] = (
    "<cls>", "<pad>", "<eos>", "<unk>",
    "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K", "Q", "N", "F", "Y", "M", "H", "W", "C",
    "X", "B", "U", "Z", "O", ".", "-", "<null_1>", "<mask>",
)  # fmt: skip
"""ESM-2's 33 tokens in id order (fair-esm ``Alphabet.from_architecture("ESM-1b")``)."""

ESM_TRUNCATION_RESIDUES = 1024
"""fair-esm ``esm-extract`` default ``truncation_seq_length``: residues kept before BOS/EOS are added."""

_SPECIAL_TOKEN = re.compile(r"(<[^<>]+>)")

DNA_PROBES: tuple[str, ...] = ("ACGT", "ACGTNACGTTGCATGCAN" * 8)
"""Sequences every DNA tokenizer must encode at load time as ``[CLS] ... [SEP]`` (bases and N, short and
over a hundred bases, as the reads are), through the batch encoder the runs use."""


def _is_rust_panic(exc: BaseException) -> bool:
    """Whether ``exc`` is pyo3's ``PanicException`` (a Rust panic; the class is not importable)."""
    kind = type(exc)
    return kind.__name__ == "PanicException" and kind.__module__ == "pyo3_runtime"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


@contextmanager
def _rust_call(source: str, doing: str, any_error: bool = False) -> Iterator[None]:
    """Turn what the ``tokenizers`` library raises for a bad file into one CheckpointError naming it.

    That is its plain ``Exception`` (it exports no error type; ``any_error``: every ``Exception``, for
    calls whose only input is the file) and a Rust panic (``PanicException``, a ``BaseException``).
    Anything else, KeyboardInterrupt and SystemExit included, passes through.
    """
    try:
        yield
    except CheckpointError:
        raise
    except BaseException as exc:
        library_error = type(exc) is Exception or (any_error and isinstance(exc, Exception))
        if not (_is_rust_panic(exc) or library_error):
            raise
        kind = "the tokenizers library panicked" if _is_rust_panic(exc) else "tokenizers error"
        raise CheckpointError(f"{source}: {doing} failed ({kind}: {_first_line(exc)})") from None


def _walk(value: Any) -> Iterator[dict[str, Any]]:
    """Every JSON object inside a parsed JSON value (iteratively: depth is not bounded by the file)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def check_tokenizer_json(data: Any, source: str) -> None:
    """Refuse the tokenizer.json contents known to make the Rust library panic instead of erring.

    * A ``TemplateProcessing`` whose template names a special token its ``special_tokens`` lacks
      (panics at the first encode), or whose special token has no ids or as many ids as tokens.
    * A ``Precompiled`` normalizer (SentencePiece's compiled character map): a short or garbled map
      panics on load or at the first encode. DNA BPE tokenizers have no use for one.
    * Two ``TemplateProcessing`` in one post-processor: the second is handed the first one's pieces and
      panics ("not yet implemented") at the first encode.
    * A BPE ``continuing_subword_prefix`` that a merge's second token does not start with: the library
      cuts the prefix's length in bytes off that token, which panics when the token is shorter and
      *aborts the process* (a panic no handler catches) when the cut falls inside a character.

    And the one setting that makes tokenization random: BPE ``dropout`` (a training-time augmentation)
    skips merges by chance at every encode, so the same reads would embed differently run to run, and
    resumed shards, merged parts and reruns would silently disagree. It must be absent, null or 0.
    """
    if not isinstance(data, dict):
        raise CheckpointError(f"{source}: not a tokenizers file (expected a JSON object)")
    model = data.get("model")
    dropout = model.get("dropout") if isinstance(model, dict) else None
    if dropout not in (None, 0, 0.0) or isinstance(dropout, bool):
        raise CheckpointError(
            f"{source}: its model sets BPE dropout {str(dropout)[:20]}, which makes tokenization random "
            "(a training setting); set it to null"
        )
    for node in _walk(data.get("normalizer")):
        if node.get("type") == "Precompiled":
            raise CheckpointError(
                f"{source}: has a 'Precompiled' (SentencePiece) normalizer, which a DNA tokenizer does "
                "not use and which the tokenizers library cannot read safely; refused"
            )
    if isinstance(model, dict) and model.get("type", "BPE") == "BPE":
        _check_merge_prefix(model, source)
    processors = list(_walk(data.get("post_processor")))
    templates = [node for node in processors if node.get("type") == "TemplateProcessing"]
    if len(templates) > 1:
        raise CheckpointError(
            f"{source}: its post-processor chains {len(templates)} TemplateProcessing steps, which the "
            "tokenizers library cannot run (one adds [CLS] and [SEP]); refused"
        )
    for node in templates:
        _check_template(node, source)


def _check_merge_prefix(model: dict[str, Any], source: str) -> None:
    """With a ``continuing_subword_prefix``, every merge's second token starts with it (a trained BPE's
    do: only word-initial pieces lack it), so the library's cut of the prefix is whole."""
    prefix = model.get("continuing_subword_prefix")
    merges = model.get("merges")
    if not isinstance(prefix, str) or not prefix or not isinstance(merges, list):
        return
    for merge in merges:
        pair = merge.split(" ") if isinstance(merge, str) else merge if isinstance(merge, list) else []
        if pair and isinstance(pair[-1], str) and not pair[-1].startswith(prefix):
            raise CheckpointError(
                f"{source}: the BPE merge {shown(merge, 40)} lacks the continuing_subword_prefix "
                f"{prefix[:20]!r} its model sets, which the tokenizers library cannot read safely"
            )


def _check_template(template: dict[str, Any], source: str) -> None:
    """Every special token a template names is defined, with as many ids as tokens (at least one)."""
    specials = template.get("special_tokens")
    if not isinstance(specials, dict):
        raise CheckpointError(f"{source}: post-processor template without a 'special_tokens' object")
    for name, entry in specials.items():
        ids = entry.get("ids") if isinstance(entry, dict) else None
        tokens = entry.get("tokens") if isinstance(entry, dict) else None
        if not isinstance(ids, list) or not isinstance(tokens, list) or not ids or len(ids) != len(tokens):
            raise CheckpointError(
                f"{source}: post-processor special token {str(name)[:40]!r} needs as many ids as tokens "
                "(at least one)"
            )
    for side in ("single", "pair"):
        pieces = template.get(side)
        for piece in pieces if isinstance(pieces, list) else ():
            special = piece.get("SpecialToken") if isinstance(piece, dict) else None
            name = special.get("id") if isinstance(special, dict) else None
            if isinstance(special, dict) and not (isinstance(name, str) and name in specials):
                raise CheckpointError(
                    f"{source}: the post-processor's {side} template names the special token "
                    f"{str(name)[:40]!r}, which its special_tokens do not define"
                )


def pad_batch(sequences: Sequence[np.ndarray], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad token id arrays into ``(input_ids [B, T] int64, attention_mask [B, T] int64)``.

    Right padding is what :class:`~virnucpro_trt.models.esm2.Esm2Encoder` pooling expects. Numpy output
    feeds ONNX Runtime / TensorRT directly and ``torch.from_numpy`` without a copy.
    """
    if not sequences:
        raise ValueError("pad_batch needs at least one sequence")
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    input_ids = np.full((len(sequences), int(lengths.max())), pad_id, dtype=np.int64)
    for row, ids in zip(input_ids, sequences, strict=True):
        row[: len(ids)] = ids
    attention_mask = (np.arange(input_ids.shape[1])[None, :] < lengths[:, None]).astype(np.int64)
    return input_ids, attention_mask


class DnaTokenizer:
    """DNABERT-S tokenizer from ``tokenizer.json``: ``[CLS] BPE... [SEP]``, no truncation, no padding."""

    def __init__(self, tokenizer: tokenizers.Tokenizer, source: str = "<memory>", data: Any = None):
        """``data``: the parsed JSON ``tokenizer`` was read from. Without it the tokenizer is serialised
        to read its settings, which walks every id up to the largest: never done to a file's tokenizer
        (one vocabulary id of 2**31 cost 8 GB and minutes before the ids were checked)."""
        self.source = source
        with _rust_call(source, "setting up the tokenizer", any_error=True):
            tokenizer.no_truncation()
            tokenizer.no_padding()
            self._json = data if data is not None else json.loads(tokenizer.to_str())
        check_tokenizer_json(self._json, source)
        self._tokenizer = tokenizer
        # The most letters one token can stand for: a sequence of n letters has at least n / this tokens.
        self.longest_token = max(map(len, tokenizer.get_vocab(with_added_tokens=False)), default=1)
        self.cls_id = self._special_id("[CLS]")
        self.sep_id = self._special_id("[SEP]")
        self.pad_id = self._special_id("[PAD]")
        self._probe()

    def _probe(self) -> None:
        """Encode :data:`DNA_PROBES` now: each must come out as ``[CLS] ... [SEP]``, and runs of each
        base without ``[UNK]``.

        A file that breaks the library at encode time (or never wraps its input) then fails here, at
        load, in the process that reports it, instead of at the first batch of every worker.
        """
        for probe in self.encode_batch(DNA_PROBES):
            ids = probe.tolist()
            if len(ids) < 3 or ids[0] != self.cls_id or ids[-1] != self.sep_id:
                raise CheckpointError(
                    f"{self.source}: the post-processor does not wrap input as [CLS] ... [SEP] "
                    f"(got ids {ids[:8]}{' ...' if len(ids) > 8 else ''})"
                )
        with _rust_call(self.source, "looking up [UNK]"):
            unk = self._tokenizer.token_to_id("[UNK]")
        runs = [base * 12 for base in "ACGT"]
        for run, ids in zip(runs, self.encode_batch(runs), strict=True):
            if unk is not None and unk in ids[1:-1].tolist():
                raise CheckpointError(  # every read would embed as unknown tokens, without a word
                    f"{self.source}: the tokenizer reads plain DNA ({run[0]}s) as [UNK]; it is no DNA "
                    "tokenizer (DNABERT-S's BPE covers every base)"
                )

    @classmethod
    def from_file(cls, path: str | Path) -> DnaTokenizer:
        """``tokenizer.json``, read through the bounded reader every model text file goes through, and
        checked (:func:`check_tokenizer_json`) before the Rust library parses it."""
        text = read_text_file(Path(path))
        try:
            data = parse_json(text)
        except ValueError as exc:  # not JSON, nested too deeply, an integer of too many digits
            raise CheckpointError(f"{path}: not a readable tokenizers file (not valid JSON: {exc})") from None
        check_tokenizer_json(data, str(path))
        with _rust_call(str(path), "reading the tokenizers file", any_error=True):
            tokenizer = tokenizers.Tokenizer.from_str(text)
        return cls(tokenizer, str(path), data)

    def _special_id(self, token: str) -> int:
        with _rust_call(self.source, f"looking up {token}"):
            token_id = self._tokenizer.token_to_id(token)
        if token_id is None:
            raise CheckpointError(f"{self.source}: tokenizer has no {token} token")
        return int(token_id)

    @property
    def vocab_size(self) -> int:
        return int(self._tokenizer.get_vocab_size(with_added_tokens=True))

    @property
    def max_id(self) -> int:
        """The largest id this tokenizer can emit: over the vocabulary, the added tokens and every id
        the post-processor's template names (those are not checked against the vocabulary by
        ``tokenizers``). Ids need not be dense, so the vocabulary's size does not bound them."""
        with _rust_call(self.source, "reading the vocabulary"):
            ids = list(self._tokenizer.get_vocab(with_added_tokens=True).values())
        ids.extend(_integers(self._json.get("post_processor")))
        return max(ids, default=-1)

    def encode_batch(self, sequences: Sequence[str]) -> list[np.ndarray]:
        """Token ids (int64) per sequence, using the Rust parallel batch encoder.

        A failure inside the library (an error or a Rust panic) is a CheckpointError naming the file:
        the input is DNA text, so what breaks on it is the tokenizer.
        """
        with _rust_call(self.source, "encoding"):
            encodings = self._tokenizer.encode_batch(list(sequences), add_special_tokens=True)
            return [np.asarray(encoding.ids, dtype=np.int64) for encoding in encodings]


def _integers(value: Any) -> list[int]:
    """Every integer (not bool) inside a parsed JSON value: a post-processor's token ids among them."""
    found: list[int] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, int) and not isinstance(item, bool):
            found.append(item)
    return found


def check_token_ids_fit(tokenizer: DnaTokenizer | ProteinTokenizer, rows: int, where: str) -> None:
    """Every id the tokenizer can emit must index a row of the encoder's word embedding.

    A larger id is an IndexError deep inside the encoder at the first batch that contains it, in every
    worker that retries the shard; checked where the tokenizer meets the checkpoint instead.
    """
    if tokenizer.max_id >= rows:
        raise CheckpointError(
            f"{where}: the tokenizer emits token ids up to {tokenizer.max_id}, but the word embedding has "
            f"{rows} rows (ids 0..{rows - 1}): the tokenizer and the weights do not belong together"
        )


class ProteinTokenizer:
    """ESM-2 tokenizer with fair-esm's ids and truncation, case-sensitive.

    Deliberate difference: fair-esm's ``Alphabet.encode`` raises ``KeyError`` on a character outside the
    alphabet (e.g. ``J`` or a lower-case letter); here each such character becomes one ``<unk>``, like the
    Hugging Face ESM tokenizer. Translated reads only contain the 20 amino acids, so upstream inputs
    tokenize identically. Tokens written as ``<name>`` inside a sequence (``<mask>``...) are recognised as
    fair-esm recognises them; such sequences take a slower per-sequence path, plain residues never do.
    """

    def __init__(
        self, tokens: Sequence[str] = FAIR_ESM_ALPHABET, max_residues: int = ESM_TRUNCATION_RESIDUES
    ):
        self.tokens = tuple(tokens)
        self.token_to_id = {token: index for index, token in enumerate(self.tokens)}
        missing = [t for t in ("<cls>", "<pad>", "<eos>", "<unk>") if t not in self.token_to_id]
        if missing:
            raise CheckpointError(f"ESM vocabulary lacks {', '.join(missing)}")
        self.cls_id = self.token_to_id["<cls>"]
        self.pad_id = self.token_to_id["<pad>"]
        self.eos_id = self.token_to_id["<eos>"]
        self.unk_id = self.token_to_id["<unk>"]
        self.mask_id = self.token_to_id.get("<mask>")
        self.max_residues = max_residues
        self._table = np.full(256, self.unk_id, dtype=np.int64)
        for token, index in self.token_to_id.items():
            if len(token) == 1 and ord(token) < 128:
                self._table[ord(token)] = index

    @classmethod
    def from_vocab_file(
        cls, path: str | Path, max_residues: int = ESM_TRUNCATION_RESIDUES
    ) -> ProteinTokenizer:
        """Read an HF ESM ``vocab.txt`` (one token per line, in id order; size bounded, no repeats).

        Every line is a token, a blank one too, as transformers' ``EsmTokenizer`` reads the file: the id
        of a token is its line number, so dropping blank lines would shift every id after one (the
        embeddings would silently differ from the reference's). A blank token is never emitted.
        """
        lines = read_text_file(Path(path)).splitlines()
        tokens = [line.strip() for line in lines]
        repeated = sorted(t for t, n in Counter(tokens).items() if n > 1 and t)
        if repeated:
            raise CheckpointError(f"{path}: repeats the token(s) {', '.join(repeated[:4])[:80]}")
        return cls(tokens, max_residues)

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    @property
    def max_id(self) -> int:
        """Ids are positions in the vocabulary: the largest one a token that can be emitted has (blank
        lines of a vocab.txt hold ids but are never emitted)."""
        return max(index for index, token in enumerate(self.tokens) if token)

    def encode_batch(self, sequences: Sequence[str]) -> list[np.ndarray]:
        """``<cls>`` + first ``max_residues`` tokens + ``<eos>`` per sequence, int64."""
        plain = [i for i, s in enumerate(sequences) if "<" not in s]
        out: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * len(sequences)
        if plain:
            # One lookup over the concatenated bytes; 'replace' keeps one byte per character.
            joined = "".join(sequences[i] for i in plain).encode("ascii", errors="replace")
            ids = self._table[np.frombuffer(joined, dtype=np.uint8)]
            start = 0
            for i in plain:
                length = len(sequences[i])
                out[i] = self._wrap(ids[start : start + length])
                start += length
        for i, sequence in enumerate(sequences):
            if "<" in sequence:
                out[i] = self._wrap(self._ids_with_specials(sequence))
        return out

    def _ids_with_specials(self, sequence: str) -> np.ndarray:
        pieces: list[np.ndarray] = []
        for piece in _SPECIAL_TOKEN.split(sequence):
            if piece in self.token_to_id and len(piece) > 1:
                pieces.append(np.array([self.token_to_id[piece]], dtype=np.int64))
            elif piece:
                pieces.append(self._table[np.frombuffer(piece.encode("ascii", errors="replace"), np.uint8)])
        return np.concatenate(pieces) if pieces else np.empty(0, dtype=np.int64)

    def _wrap(self, ids: np.ndarray) -> np.ndarray:
        ids = ids[: self.max_residues]
        out = np.empty(len(ids) + 2, dtype=np.int64)
        out[0] = self.cls_id
        out[1:-1] = ids
        out[-1] = self.eos_id
        return out
