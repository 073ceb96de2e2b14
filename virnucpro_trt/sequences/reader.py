"""Read FASTA/FASTQ input (plain, gzip, bzip2, xz or stdin), validated as it streams.

Why validate here: upstream accepts anything and fails much later (or never: a protein FASTA yields
nonsense "reads"). Every problem is reported as one :class:`~virnucpro_trt.errors.InputFormatError`
line naming the record (1-based number and id) and what is wrong, before any GPU time is spent.
Validation runs once per block at C speed; the per-record checks only run for a block that fails it.
"""

from __future__ import annotations

import logging
import os
import re
import string
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from itertools import islice
from typing import Literal

from virnucpro_trt.errors import InputFormatError
from virnucpro_trt.sequences.parsing import Block, fasta_blocks, fastq_blocks, first_id, record_label
from virnucpro_trt.sequences.sources import (
    CorruptInput,
    decoded_blocks,
    display_name,
    open_input,
    sniff_format,
)

log = logging.getLogger(__name__)

__all__ = [
    "DNA_ALPHABET",
    "IUPAC_NUCLEOTIDES",
    "PROTEIN_ALPHABET",
    "SeqRecord",
    "judge_dna_letters",
    "read_records",
    "refuse_nucleotide_like",
]

#: IUPAC nucleotide codes (U included), either case: what DNA records are made of.
IUPAC_NUCLEOTIDES = "ACGTURYSWKMBDHVN" + "ACGTURYSWKMBDHVN".lower()
#: What a DNA record may hold, kept as read: any letter, the gaps ``-`` and ``.``, and ``*``. Upstream
#: reads whatever Biopython parses; translation drops a codon with anything but A/C/G/T in it and the
#: DNA tokenizer reads such a letter as unknown, so an X-masked or gapped read is scored as upstream
#: scores it (:func:`judge_dna_letters` warns, and refuses an input that is protein). Digits and other
#: marks are no sequence text: refused.
DNA_ALPHABET = string.ascii_letters + "-.*"
#: Amino-acid letters in either case, ``*`` (stop), and the gaps ``-`` and ``.``, which ESM-2's vocabulary
#: holds as tokens of their own.
PROTEIN_ALPHABET = string.ascii_letters + "*-."
_ALPHABETS = {"dna": DNA_ALPHABET, "protein": PROTEIN_ALPHABET}
_NUCLEOTIDE_LETTERS = str.maketrans("", "", "ACGTUNacgtun")
_IUPAC_DELETED = str.maketrans("", "", IUPAC_NUCLEOTIDES)
_MASKS_DELETED = str.maketrans("", "", "Xx-.")  # hard-masked bases and gaps: neither DNA nor protein
_GAPS_DELETED = str.maketrans("", "", "-.")
_IUPAC_BYTES = IUPAC_NUCLEOTIDES.encode("ascii")
_JUDGED_TOGETHER = 1024  # records checked in one C-speed pass (the common case: nothing to say)


@dataclass(frozen=True, slots=True)
class SeqRecord:
    """One validated input record. ``index`` is 0-based; messages print it 1-based."""

    index: int
    id: str
    description: str  # the whole title line after '>' / '@', trailing whitespace removed
    sequence: str  # as read: case and IUPAC codes kept; "" for a header without sequence


_SURROGATE = re.compile("[\udc80-\udcff]")
# Bounds on one record, so that one hostile or mistaken record cannot exhaust memory downstream (a
# worker holds a shard's frames and embeddings, ~13 kB per kept frame; one record never spans shards):
# a record may be as long as a shard may hold bases (runtime/shards.MAX_SHARD_BASES: a 32 Mbp contig is
# up to ~400,000 frames, a few GB in one worker), a header as long as no real one is.
MAX_RECORD_LETTERS = 32_000_000
MAX_TITLE_CHARS = 65_536


def _bad_character(seq: str, allowed: str) -> tuple[int, str] | None:
    """First character of ``seq`` outside ``allowed``: ``(1-based position, the character)``."""
    match = re.search(f"[^{re.escape(allowed)}]", seq)
    return None if match is None else (match.start() + 1, match.group())


def _bad_sequence_message(seq: str, allowed: str, alphabet: str) -> str:
    position, char = _bad_character(seq, allowed)  # type: ignore[misc]
    if _SURROGATE.fullmatch(char):
        return f"undecodable byte 0x{ord(char) - 0xDC00:02x} at position {position} (input is not UTF-8 text)"
    return (
        f"invalid {alphabet.upper()} character {char!r} at position {position}; "
        f"allowed: {_describe(alphabet)}"
    )


def _first_bad_sequence(seqs: list[str], allowed: str, allowed_bytes: bytes) -> int | None:
    """Index of the first sequence that leaves the alphabet; one C-speed pass when all is well."""
    joined = "".join(seqs)
    if joined.isascii() and not joined.encode("ascii").translate(None, allowed_bytes):
        return None
    return next(i for i, seq in enumerate(seqs) if _bad_character(seq, allowed))


def _ids(titles: list[str]) -> list[str]:
    """:func:`_first_id` of every title, in one C-level split when every title is a single word.

    Titles are non-empty and right-stripped here, so each holds at least one word, and the joined
    split has exactly one word per title iff no title has a description.
    """
    if all(titles):
        words = " ".join(titles).split()
        if len(words) == len(titles):
            return words
        return [title.split(None, 1)[0] for title in titles]
    return list(map(first_id, titles))


def _check_one(
    name: str, number: int, rid: str, title: str, seen: dict[str, int], message: str | None, letters: int
) -> None:
    """All record-level checks, in the order a user would fix them; raises the first that fails."""
    if len(title) > MAX_TITLE_CHARS:
        shown = rid if len(rid) <= 60 else rid[:60] + "..."
        raise InputFormatError(
            f"{name}: {record_label(number, shown or None)}: header of {len(title):,} characters, more than "
            f"the {MAX_TITLE_CHARS:,} one may have"
        )
    if letters > MAX_RECORD_LETTERS:
        raise InputFormatError(
            f"{name}: {record_label(number, rid or None)} is {letters:,} letters long, more than the "
            f"{MAX_RECORD_LETTERS:,} one record may have (memory is bounded per record); cut it into pieces "
            "first (e.g. seqkit sliding)"
        )
    if not rid:
        raise InputFormatError(  # titles are right-stripped: '>' alone or followed by blanks only
            f"{name}: {record_label(number, None)} has an empty id (nothing but blanks after its '>' or '@')"
        )
    if not title.isascii() and _SURROGATE.search(title):
        raise InputFormatError(f"{name}: {record_label(number, rid)}: header is not UTF-8 text")
    if "\0" in title:
        raise InputFormatError(f"{name}: {record_label(number, rid)}: header contains a NUL byte")
    if message is not None:
        raise InputFormatError(f"{name}: {record_label(number, rid)}: {message}")
    first = seen.setdefault(rid, number)
    if first != number:
        raise InputFormatError(
            f"{name}: {record_label(number, rid)} is a duplicate id of record {first}; ids must be unique"
        )


def _block_is_clean(ids: list[str], titles: list[str], seqs: list[str], seen: dict[str, int]) -> bool:
    """Cheap whole-block test that no record-level check can fail (the usual case)."""
    if not all(ids) or len(set(ids)) != len(ids) or not seen.keys().isdisjoint(ids):
        return False
    if max(map(len, seqs), default=0) > MAX_RECORD_LETTERS:
        return False
    if max(map(len, titles), default=0) > MAX_TITLE_CHARS:
        return False
    joined = "".join(titles)
    return joined.isascii() and "\0" not in joined


def read_records(
    path: str | os.PathLike[str], alphabet: Literal["dna", "protein"] = "dna", name: str | None = None
) -> Iterator[SeqRecord]:
    """Yield the records of a FASTA/FASTQ file (plain/gzip/bzip2/xz, ``-`` = stdin), validated.

    Compression is recognised by magic bytes and the format by the first non-blank character ('>'
    FASTA, '@' FASTQ), never by the file name. Raises :class:`InputFormatError` (one line) at the
    first bad record: empty or duplicate id, a character outside the alphabet (DNA: IUPAC codes in
    either case, kept as read; protein: letters and ``*``), undecodable bytes, malformed FASTQ,
    corrupt compressed data. Records before the bad one are yielded first. Empty records (a header
    without sequence) are valid and have ``sequence == ""``; an empty or blank file yields nothing
    (the caller decides whether to warn). Messages name the input ``name``, by default its path (the
    caller of a copy of stdin passes ``<stdin>``: the user never named the copy).
    """
    if alphabet not in _ALPHABETS:
        raise ValueError(f"alphabet must be 'dna' or 'protein', got {alphabet!r}")
    name = name or display_name(path)
    with ExitStack() as stack:
        stream, compression = open_input(path, stack, name)
        fmt, stream = sniff_format(stream, name, compression)
        if fmt == "empty":
            return
        texts = decoded_blocks(stream, compression)
        blocks = fasta_blocks(texts, name) if fmt == "fasta" else fastq_blocks(texts, name)
        last: SeqRecord | None = None
        try:
            for last in _validated(blocks, name, alphabet):
                yield last
        except CorruptInput as exc:
            where = f" after {record_label(last.index + 1, last.id)}" if last else " before the first record"
            raise InputFormatError(f"{name}: {exc}{where}") from None


def _validated(
    blocks: Iterable[Block],
    name: str,
    alphabet: str,
) -> Iterator[SeqRecord]:
    """Check and number parsed blocks of ``(exact re-parse or None, titles, sequences)``.

    Bulk-cut blocks come with a function that re-reads them with the reference (Biopython) rules;
    it runs only when a block fails validation, since the two readings differ only on whitespace.
    """
    allowed = _ALPHABETS[alphabet]
    allowed_bytes = allowed.encode("ascii")
    seen: dict[str, int] = {}
    index = 0
    for reparse, titles, seqs in blocks:
        bad = _first_bad_sequence(seqs, allowed, allowed_bytes)
        if bad is not None and reparse is not None:  # maybe only trailing tabs etc.: the exact rules
            titles, seqs = reparse()
            bad = _first_bad_sequence(seqs, allowed, allowed_bytes)
        ids = _ids(titles)
        count = len(ids)
        if bad is None and _block_is_clean(ids, titles, seqs, seen):
            seen.update(zip(ids, range(index + 1, index + count + 1), strict=True))
            yield from map(SeqRecord, range(index, index + count), ids, titles, seqs)
            index += count
            continue
        for offset, (rid, title, seq) in enumerate(zip(ids, titles, seqs, strict=True)):
            message = _bad_sequence_message(seq, allowed, alphabet) if offset == bad else None
            _check_one(name, index + 1, rid, title, seen, message, len(seq))
            yield SeqRecord(index, rid, title, seq)
            index += 1


def refuse_nucleotide_like(records: Iterable[SeqRecord], name: str) -> Iterator[SeqRecord]:
    """Yield protein records, refusing an input that is DNA/RNA (:class:`InputFormatError`, one line,
    raised once the last record has passed).

    Nucleotide letters are valid amino-acid codes, so the protein alphabet alone lets a DNA FASTA
    through to ESM-2, which then embeds nonsense without a word. Refused: an input where most non-empty
    records are made only of A, C, G, T, U and N (either case). Judged on the whole input, not per
    record: real proteins made only of those letters exist (poly-G and poly-Q-like frames that
    ``prepare`` keeps from NovaSeq poly-G reads), and one of them must not fail a protein file. Gaps
    (``-``, ``.``) are set aside: an aligned DNA record is still DNA. Callers offer a way around it
    (``embed --allow-nucleotide-letters``).
    """
    nucleotide_only = non_empty = 0
    first: SeqRecord | None = None
    for record in records:
        seq = record.sequence.translate(_GAPS_DELETED)
        if seq:
            non_empty += 1
            if not seq.translate(_NUCLEOTIDE_LETTERS):
                nucleotide_only += 1
                first = first or record
        yield record
    if first is not None and 2 * nucleotide_only > non_empty:
        raise InputFormatError(
            f"{name}: {nucleotide_only} of {non_empty} records are made only of A/C/G/T/U/N (the first: "
            f"{record_label(first.index + 1, first.id)}): this looks like DNA/RNA, not protein"
            f"{_NUCLEOTIDE_HINT}"
        )


def judge_dna_letters(
    records: Iterable[SeqRecord], name: str, refuse_protein: bool = True
) -> Iterator[SeqRecord]:
    """Yield DNA records; once the last has passed, refuse an input that is protein, else warn once
    about characters outside the IUPAC nucleotide codes.

    Such characters (an X-masked read, alignment gaps, a stray letter) are read as upstream reads them:
    a codon holding one yields no amino acid, and DNABERT-S reads it as an unknown token. A protein
    FASTA given as reads would be scored the same way, as nonsense, without a word: refused
    (:class:`InputFormatError`, one line) when most non-empty records are proteins, i.e. fewer than
    half of their letters (masks and gaps aside) are A/C/G/T/U/N: about a quarter of a real protein's
    residues are, nearly all of a read's. Judged on the whole input, as :func:`refuse_nucleotide_like`
    judges protein input: one odd record must not fail a run. ``refuse_protein=False`` only warns (a
    part of a split input, which ``split`` judged whole). Records are checked a batch at a time at C
    speed; only a batch holding such characters is looked at record by record.
    """
    outside = proteins = non_empty = 0
    first_outside: tuple[SeqRecord, str] | None = None
    first_protein: SeqRecord | None = None
    stream = iter(records)
    while batch := list(islice(stream, _JUDGED_TOGETHER)):
        seqs = [r.sequence for r in batch]
        non_empty += len(seqs) - seqs.count("")
        if "".join(seqs).encode("ascii", "replace").translate(None, _IUPAC_BYTES):  # which records
            for each in batch:
                seq = each.sequence
                rest = seq.translate(_IUPAC_DELETED)
                if rest:
                    outside += 1
                    first_outside = first_outside or (each, rest[0])
                    letters = seq.translate(_MASKS_DELETED)
                    if 2 * len(letters.translate(_NUCLEOTIDE_LETTERS)) > len(letters):
                        proteins += 1
                        first_protein = first_protein or each
        yield from batch
    if first_protein is not None and 2 * proteins > non_empty and refuse_protein:
        raise InputFormatError(
            f"{name}: {proteins} of {non_empty} records are protein, not DNA (the first: "
            f"{record_label(first_protein.index + 1, first_protein.id)}); give the reads, or embed "
            "proteins with embed --model esm2"
        )
    if first_outside is not None:
        record, char = first_outside
        protein_like = f"; {proteins} of them look like protein" if proteins else ""
        log.warning(
            "%s: %d record(s) hold characters outside the IUPAC nucleotide codes (the first: %s, %r)%s; a "
            "codon holding one yields no amino acid, and DNABERT-S reads them as unknown tokens, as "
            "upstream does",
            name,
            outside,
            record_label(record.index + 1, record.id),
            char,
            protein_like,
        )


_NUCLEOTIDE_HINT = (
    "; esm2 embeds proteins: use --model dnabert-s for DNA, or translate the reads first "
    "(virnucpro-trt prepare); --allow-nucleotide-letters embeds such records as protein anyway"
)


def _describe(alphabet: str) -> str:
    if alphabet == "dna":
        return "letters in either case (IUPAC nucleotide codes; others yield no amino acid), '-', '.' and '*'"
    return "letters A-Z in either case, '*', '-' and '.'"
